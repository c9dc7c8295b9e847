#include "tls_context.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <cstring>

namespace idg {
namespace {

int AlpnSelect(SSL*, const unsigned char** out, unsigned char* outLen, const unsigned char* in, unsigned int inLen,
               void* arg) {
  auto* ctx = static_cast<Context*>(arg);
  for (unsigned int i = 0; i < inLen;) {
    const unsigned int len = in[i];
    if (i + 1 + len > inLen) break;
    if (len == ctx->alpn.size() && std::memcmp(in + i + 1, ctx->alpn.data(), len) == 0) {
      *out = in + i + 1;
      *outLen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;  // no_application_protocol (RFC 7301 3.2)
}

/**
 * OpenSSL has built and checked the chain to our CA (validity, signatures, and the purpose set on
 * the context: a server wants a TLS client certificate, a client a TLS server certificate); this
 * refuses what it refused, and checks the leaf's purpose once more itself, so that a certificate
 * for the wrong purpose is refused even if a store setting ever relaxed the chain check. A refusal
 * here is a fatal alert to the peer (unknown_ca, certificate_expired, unsupported_certificate, ...)
 * and the verification result names it on our side (SSL_get_verify_result).
 */
int VerifyPeer(int ok, X509_STORE_CTX* store) {
  if (!ok) return 0;
  if (X509_STORE_CTX_get_error_depth(store) != 0) return 1;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  X509* leaf = X509_STORE_CTX_get_current_cert(store);
  if (ssl == nullptr || leaf == nullptr) return 0;
  const int purpose = SSL_is_server(ssl) ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER;
  if (X509_check_purpose(leaf, purpose, 0) != 1) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_INVALID_PURPOSE);
    return 0;
  }
  return 1;
}

bool Fail(ContextError& err, const std::string& what, bool ssl) {
  err.what = what;
  err.sslError = ssl ? ERR_peek_last_error() : 0;
  if (ssl && err.sslError != 0) {
    char buf[256];
    ERR_error_string_n(err.sslError, buf, sizeof buf);
    err.what += std::string(": ") + buf;
  }
  ERR_clear_error();
  return false;
}

bool LoadCa(SSL_CTX* ctx, const Napi::Buffer<char>& ca, ContextError& err) {
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  BIO* bio = BIO_new_mem_buf(ca.Data(), static_cast<int>(ca.Length()));
  int n = 0;
  while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store, x);
    X509_free(x);
    n++;
  }
  BIO_free(bio);
  ERR_clear_error();
  return n > 0 || Fail(err, "tunnel.tls.ca: no certificate in the CA file", false);
}

bool LoadCert(SSL_CTX* ctx, const Napi::Buffer<char>& cert, ContextError& err) {
  BIO* bio = BIO_new_mem_buf(cert.Data(), static_cast<int>(cert.Length()));
  X509* leaf = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  if (leaf == nullptr) {
    BIO_free(bio);
    return Fail(err, "tunnel.tls.cert", true);
  }
  const int ok = SSL_CTX_use_certificate(ctx, leaf);
  X509_free(leaf);
  if (ok != 1) {
    BIO_free(bio);
    return Fail(err, "SSL_CTX_use_certificate", true);
  }
  while (X509* extra = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr))
    SSL_CTX_add0_chain_cert(ctx, extra);  // takes ownership
  ERR_clear_error();
  BIO_free(bio);
  return true;
}

bool LoadKey(SSL_CTX* ctx, const Napi::Buffer<char>& key, ContextError& err) {
  BIO* bio = BIO_new_mem_buf(key.Data(), static_cast<int>(key.Length()));
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (pkey == nullptr) return Fail(err, "tunnel.tls.key", true);
  const int ok = SSL_CTX_use_PrivateKey(ctx, pkey);
  EVP_PKEY_free(pkey);
  if (ok != 1 || SSL_CTX_check_private_key(ctx) != 1) return Fail(err, "SSL_CTX_use_PrivateKey", true);
  return true;
}

}  // namespace

std::shared_ptr<Context> MakeContext(const Napi::Object& o, ContextError& err) {
  auto c = std::make_shared<Context>();
  c->server = o.Get("server").ToBoolean();
  c->ctx = SSL_CTX_new(c->server ? TLS_server_method() : TLS_client_method());
  if (c->ctx == nullptr) return Fail(err, "SSL_CTX_new", true), nullptr;
  SSL_CTX* ctx = c->ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  const std::string suites = o.Get("ciphersuites").ToString().Utf8Value();
  if (SSL_CTX_set_ciphersuites(ctx, suites.c_str()) != 1) return Fail(err, "SSL_CTX_set_ciphersuites", true), nullptr;
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  // No tickets: a link never resumes.
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // The peer's certificate is required and checked in the handshake.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, VerifyPeer);
  SSL_CTX_set_purpose(ctx, c->server ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER);
  if (!LoadCa(ctx, o.Get("ca").As<Napi::Buffer<char>>(), err) ||
      !LoadCert(ctx, o.Get("cert").As<Napi::Buffer<char>>(), err) ||
      !LoadKey(ctx, o.Get("key").As<Napi::Buffer<char>>(), err))
    return nullptr;
  c->alpn = o.Get("alpn").ToString().Utf8Value();
  if (c->alpn.empty() || c->alpn.size() > 255)
    return Fail(err, "alpn: one protocol name of 1-255 bytes", false), nullptr;
  if (c->server) {
    SSL_CTX_set_alpn_select_cb(ctx, AlpnSelect, c.get());
  } else {
    std::string wire(1, static_cast<char>(c->alpn.size()));
    wire += c->alpn;
    if (SSL_CTX_set_alpn_protos(ctx, reinterpret_cast<const unsigned char*>(wire.data()),
                                static_cast<unsigned int>(wire.size())) != 0)
      return Fail(err, "SSL_CTX_set_alpn_protos", true), nullptr;
  }
  return c;
}

}  // namespace idg
