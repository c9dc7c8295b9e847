#include "tls_handshake.h"

#include <openssl/x509.h>

#include <string>

namespace idg {
namespace {

constexpr uint8_t kKeyUpdate = 24;  // RFC 8446 4.6.3

void CountMessage(int writing, int, int contentType, const void* buf, size_t len, SSL*, void* arg) {
  auto* c = static_cast<RecordCounters*>(arg);
  if (!c->secure) return;
  if (contentType == SSL3_RT_HEADER) {
    if (writing) {
      c->txRecords++;
      c->txSinceKey++;
    } else {
      c->rxRecords++;
    }
  } else if (contentType == SSL3_RT_HANDSHAKE && len >= 1 && static_cast<const uint8_t*>(buf)[0] == kKeyUpdate) {
    if (writing) {
      c->keyUpdatesSent++;
      c->txSinceKey = 0;
    } else {
      c->keyUpdatesReceived++;
    }
  }
}

}  // namespace

SSL* NewLinkSsl(SSL_CTX* ctx, bool server, InBuffer* in, OutBuffer* out, RecordCounters* counters) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return nullptr;
  BIO* rbio = NewInBio(in);
  BIO* wbio = NewOutBio(out);
  if (rbio == nullptr || wbio == nullptr) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(ssl);
    return nullptr;
  }
  SSL_set_bio(ssl, rbio, wbio);  // owned by the SSL now
  SSL_set_msg_callback(ssl, CountMessage);
  SSL_set_msg_callback_arg(ssl, counters);
  if (server) SSL_set_accept_state(ssl);
  else SSL_set_connect_state(ssl);
  return ssl;
}

Napi::Object SecureInfo(Napi::Env env, SSL* ssl) {
  Napi::Object info = Napi::Object::New(env);
  X509* peer = SSL_get1_peer_certificate(ssl);
  if (peer != nullptr) {
    const int len = i2d_X509(peer, nullptr);
    if (len > 0) {
      Napi::Buffer<uint8_t> der = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(len));
      uint8_t* p = der.Data();
      i2d_X509(peer, &p);
      info.Set("peerCertificate", der);
    }
    X509_free(peer);
  }
  const unsigned char* alpn = nullptr;
  unsigned int alpnLen = 0;
  SSL_get0_alpn_selected(ssl, &alpn, &alpnLen);
  if (alpn != nullptr && alpnLen > 0)
    info.Set("alpn", Napi::String::New(env, std::string(reinterpret_cast<const char*>(alpn), alpnLen)));
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
  info.Set("cipher", Napi::String::New(env, cipher ? SSL_CIPHER_standard_name(cipher) : ""));
  return info;
}

}  // namespace idg
