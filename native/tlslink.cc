// The tunnel link's TLS data path: OpenSSL's TLS 1.3 handshake on the link's socket, then our own
// TLS 1.3 record layer (RFC 8446 section 5) with the traffic keys that handshake made, all polled
// on the environment's libuv loop.
//
// Why ours and not Node's TLSSocket: the tunnel was measured behind ssh -L (AES-GCM) and
// stunnel4 in CPU per GB (docs/BENCHMARKS.md), and the profile put the gap in Node's TLS layer,
// not the cipher: Node joins every batched write into a new allocation before SSL_write, OpenSSL copies it again into its
// record buffer, and each 16 KiB record is decrypted into a stack buffer, copied into a fresh
// JavaScript buffer and handed up with one callback. Kernel TLS (the `tls` ULP), which would take the
// same keys, is not built into the kernels we run on. So this does in the addon what the kernel's
// record layer would: after OpenSSL's handshake (certificates, verification, ALPN: unchanged) it
// takes the application traffic secrets from OpenSSL's key-log callback and
//   - encrypts straight from the JavaScript buffers of a batched write into one output buffer
//     (AEAD out of place: no copy of the plaintext), many records per write(2);
//   - reads up to 256 KiB of records per wake-up and decrypts them straight into one JavaScript
//     buffer handed up with one callback.
// The wire is plain TLS 1.3: any TLS 1.3 peer (Node, OpenSSL's s_client/s_server) talks to it; the
// tests check both ways. It also does what Node's TLS never does for a long-lived link: a KeyUpdate
// before AES-GCM's record limit (RFC 8446 5.5), and it answers a peer's KeyUpdate.
//
// Lifetime: each link is a handle in this environment's registry, closed exactly once (close(),
// a fatal error, or the environment's cleanup hook): the poll is stopped and uv_close()d, and the
// socket is closed in the close callback, once libuv is done with it.
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "env_data.h"
#include "errors.h"
#include "exports.h"
#include "unique_fd.h"

namespace idg {
namespace {

constexpr size_t kMaxPlain = 16384;                 // RFC 8446 5.1: 2^14
constexpr size_t kMaxCipher = kMaxPlain + 256;      // RFC 8446 5.2
constexpr size_t kHeader = 5;
constexpr size_t kTag = 16;
constexpr size_t kReadBuffer = 256 * 1024;          // one read(2) per wake-up at most this much
constexpr uint8_t kTypeAlert = 21, kTypeHandshake = 22, kTypeAppData = 23;
// RFC 8446 5.5: at most 2^24.5 AES-GCM records per key. We update our key well before.
constexpr uint64_t kDefaultRekeyRecords = uint64_t(1) << 23;

enum Event { kSecure = 1, kData = 2, kEnd = 3, kDrain = 4, kError = 5 };

// ---------------------------------------------------------------- key schedule (RFC 8446 7.1)

/** HKDF-Expand-Label(secret, label, "", length): OpenSSL's HKDF (expand only) on the TLS 1.3 label. */
bool ExpandLabel(const EVP_MD* md, const std::vector<uint8_t>& secret, const std::string& label,
                 size_t length, std::vector<uint8_t>& out) {
  // struct HkdfLabel { uint16 length; opaque label<7..255> = "tls13 " + label; opaque context<0..255> = ""; }
  const std::string full = "tls13 " + label;
  std::vector<uint8_t> info = {static_cast<uint8_t>(length >> 8), static_cast<uint8_t>(length),
                               static_cast<uint8_t>(full.size())};
  info.insert(info.end(), full.begin(), full.end());
  info.push_back(0);
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_HKDF, nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  EVP_KDF_free(kdf);
  if (ctx == nullptr) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(EVP_MD_get0_name(md)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end(),
  };
  out.resize(length);
  const bool ok = EVP_KDF_derive(ctx, out.data(), length, params) == 1;
  EVP_KDF_CTX_free(ctx);
  return ok;
}

/** A growable byte buffer that, unlike std::vector, does not zero what it grows into. */
class ByteBuf {
 public:
  ByteBuf() = default;
  ByteBuf(const ByteBuf&) = delete;
  ByteBuf& operator=(const ByteBuf&) = delete;
  ~ByteBuf() { std::free(p_); }
  uint8_t* data() { return p_; }
  size_t size() const { return size_; }
  size_t capacity() const { return cap_; }
  void clear() { size_ = 0; }
  void reserve(size_t n) {
    if (n <= cap_) return;
    size_t c = cap_ ? cap_ : 64 * 1024;
    while (c < n) c *= 2;
    auto* q = static_cast<uint8_t*>(std::realloc(p_, c));
    if (q == nullptr) std::abort();  // as operator new would
    p_ = q;
    cap_ = c;
  }
  void resize(size_t n) {
    reserve(n);
    size_ = n;
  }
  void shrink_to_fit() {
    if (size_ == 0) {
      std::free(p_);
      p_ = nullptr;
      cap_ = 0;
    }
  }

 private:
  uint8_t* p_ = nullptr;
  size_t size_ = 0, cap_ = 0;
};

/** One direction's traffic protection: AEAD context, static IV, sequence number, secret. */
struct Direction {
  EVP_CIPHER_CTX* ctx = nullptr;
  std::vector<uint8_t> secret;
  uint8_t iv[12] = {0};
  uint64_t seq = 0;
  ~Direction() {
    if (ctx) EVP_CIPHER_CTX_free(ctx);
  }
};

struct Suite {
  const EVP_CIPHER* cipher = nullptr;
  const EVP_MD* md = nullptr;
  size_t keyLen = 0;
};

bool SuiteFor(const SSL_CIPHER* c, Suite& s) {
  const char* name = SSL_CIPHER_standard_name(c);
  if (name == nullptr) return false;
  const std::string n(name);
  if (n == "TLS_AES_128_GCM_SHA256") s = {EVP_aes_128_gcm(), EVP_sha256(), 16};
  else if (n == "TLS_AES_256_GCM_SHA384") s = {EVP_aes_256_gcm(), EVP_sha384(), 32};
  else if (n == "TLS_CHACHA20_POLY1305_SHA256") s = {EVP_chacha20_poly1305(), EVP_sha256(), 32};
  else return false;
  return true;
}

bool Install(const Suite& suite, Direction& d, const std::vector<uint8_t>& secret, bool encrypt) {
  std::vector<uint8_t> key, iv;
  if (!ExpandLabel(suite.md, secret, "key", suite.keyLen, key) || !ExpandLabel(suite.md, secret, "iv", 12, iv))
    return false;
  if (d.ctx == nullptr) d.ctx = EVP_CIPHER_CTX_new();
  if (d.ctx == nullptr) return false;
  EVP_CIPHER_CTX_reset(d.ctx);
  const int ok = encrypt ? EVP_EncryptInit_ex(d.ctx, suite.cipher, nullptr, key.data(), nullptr)
                         : EVP_DecryptInit_ex(d.ctx, suite.cipher, nullptr, key.data(), nullptr);
  if (ok != 1) return false;
  std::memcpy(d.iv, iv.data(), 12);
  d.secret = secret;
  d.seq = 0;
  OPENSSL_cleanse(key.data(), key.size());
  return true;
}

/** KeyUpdate (RFC 8446 7.2): the next traffic secret of a direction, and its key and IV. */
bool NextKey(const Suite& suite, Direction& d, bool encrypt) {
  std::vector<uint8_t> next;
  return ExpandLabel(suite.md, d.secret, "traffic upd", d.secret.size(), next) && Install(suite, d, next, encrypt);
}

void Nonce(const Direction& d, uint8_t nonce[12]) {
  std::memcpy(nonce, d.iv, 12);
  for (int i = 0; i < 8; i++) nonce[11 - i] ^= static_cast<uint8_t>(d.seq >> (8 * i));
}

// ---------------------------------------------------------------- errors shaped like Node's TLS

/** Node's code for an OpenSSL error: ERR_SSL_<REASON> (lib/internal/errors, crypto_util.cc). */
std::string OpenSslCode(unsigned long e) {
  const char* reason = ERR_reason_error_string(e);
  std::string lib = ERR_GET_LIB(e) == ERR_LIB_SSL ? "SSL" : "OSSL";
  std::string code = "ERR_" + lib + "_";
  if (reason == nullptr) return code + std::to_string(ERR_GET_REASON(e));
  for (const char* p = reason; *p; p++) code += std::isalnum(static_cast<unsigned char>(*p)) ? std::toupper(*p) : '_';
  return code;
}

/** Node's names for X509 verification results (node's crypto X509_ERROR_CODE list). */
std::string VerifyCodeName(long v) {
  switch (v) {
#define X(name) \
  case X509_V_ERR_##name: return #name;
    X(UNABLE_TO_GET_ISSUER_CERT) X(UNABLE_TO_GET_CRL) X(UNABLE_TO_DECRYPT_CERT_SIGNATURE)
    X(UNABLE_TO_DECRYPT_CRL_SIGNATURE) X(UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY) X(CERT_SIGNATURE_FAILURE)
    X(CRL_SIGNATURE_FAILURE) X(CERT_NOT_YET_VALID) X(CERT_HAS_EXPIRED) X(CRL_NOT_YET_VALID)
    X(CRL_HAS_EXPIRED) X(ERROR_IN_CERT_NOT_BEFORE_FIELD) X(ERROR_IN_CERT_NOT_AFTER_FIELD)
    X(ERROR_IN_CRL_LAST_UPDATE_FIELD) X(ERROR_IN_CRL_NEXT_UPDATE_FIELD) X(OUT_OF_MEM)
    X(DEPTH_ZERO_SELF_SIGNED_CERT) X(SELF_SIGNED_CERT_IN_CHAIN) X(UNABLE_TO_GET_ISSUER_CERT_LOCALLY)
    X(UNABLE_TO_VERIFY_LEAF_SIGNATURE) X(CERT_CHAIN_TOO_LONG) X(CERT_REVOKED) X(INVALID_CA)
    X(PATH_LENGTH_EXCEEDED) X(INVALID_PURPOSE) X(CERT_UNTRUSTED) X(CERT_REJECTED)
    X(HOSTNAME_MISMATCH)
#undef X
    default:
      return "X509_V_ERR_" + std::to_string(v);
  }
}

int g_exIndex = -1;

class TlsRegistry;

struct Context {
  SSL_CTX* ctx = nullptr;
  std::string alpn;  // one protocol
  ~Context() {
    if (ctx) SSL_CTX_free(ctx);
  }
};

struct Link {
  uint32_t id = 0;
  TlsRegistry* registry = nullptr;
  int fd = -1;
  bool server = false;
  SSL* ssl = nullptr;
  // Until the handshake is over: the ALPN callback reads the context, which JavaScript may free.
  std::shared_ptr<Context> context;
  uv_poll_t* poll = nullptr;
  int pollEvents = 0;
  Napi::FunctionReference callback;
  // handshake
  bool secure = false;
  std::vector<uint8_t> clientSecret, serverSecret;
  // record layer
  Suite suite;
  Direction tx, rx;
  uint64_t rekeyRecords = kDefaultRekeyRecords;
  ByteBuf out;  // encrypted bytes not yet written
  size_t outOff = 0;
  bool drainWanted = false;
  std::vector<uint8_t> in;  // received bytes not yet a whole record
  size_t inLen = 0;
  std::string handshakeBuf;  // post-handshake messages (possibly split over records)
  bool reading = false;
  bool ended = false;       // EOF or close_notify seen
  bool endPending = false;  // end() asked while output was pending
  bool wroteEnd = false;    // close_notify sealed: nothing more is written
  bool finPending = false;  // ... and FIN waits for the queue to empty
  uint64_t keyUpdatesSent = 0, keyUpdatesReceived = 0;
  uint64_t txRecords = 0, rxRecords = 0;  // over every key (seq restarts at each KeyUpdate)
};

// ---------------------------------------------------------------- contexts

void KeyLog(const SSL* ssl, const char* line) {
  auto* link = static_cast<Link*>(SSL_get_ex_data(ssl, g_exIndex));
  if (link == nullptr) return;
  // "<LABEL> <client_random hex> <secret hex>"
  const char* sp1 = std::strchr(line, ' ');
  if (sp1 == nullptr) return;
  const char* sp2 = std::strchr(sp1 + 1, ' ');
  if (sp2 == nullptr) return;
  const std::string label(line, sp1);
  std::vector<uint8_t>* dst = nullptr;
  if (label == "CLIENT_TRAFFIC_SECRET_0") dst = &link->clientSecret;
  else if (label == "SERVER_TRAFFIC_SECRET_0") dst = &link->serverSecret;
  if (dst == nullptr) return;
  dst->clear();
  for (const char* p = sp2 + 1; p[0] && p[1]; p += 2) {
    char hex[3] = {p[0], p[1], 0};
    dst->push_back(static_cast<uint8_t>(std::strtoul(hex, nullptr, 16)));
  }
}

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

// The verification result is read after the handshake (as Node does): a refused certificate is
// reported by the caller with its reason, on a channel that still works.
int AcceptAnyChain(int, X509_STORE_CTX*) { return 1; }

std::string PendingOpenSslError() {
  unsigned long e = ERR_peek_last_error();
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

// ---------------------------------------------------------------- the registry

class TlsRegistry {
 public:
  explicit TlsRegistry(Napi::Env env) : env_(env) { env.AddCleanupHook([this] { Teardown(); }); }

  Napi::Value NewContext(const Napi::Object& o) {
    auto c = std::make_shared<Context>();
    const bool server = o.Get("server").ToBoolean();
    c->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (c->ctx == nullptr) return ThrowSsl("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(c->ctx, TLS1_3_VERSION);
    const std::string suites = o.Get("ciphersuites").ToString().Utf8Value();
    if (SSL_CTX_set_ciphersuites(c->ctx, suites.c_str()) != 1) return ThrowSsl("SSL_CTX_set_ciphersuites");
    SSL_CTX_set_options(c->ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
    // No tickets: a link never resumes, and nothing but records of ours follows the handshake.
    SSL_CTX_set_num_tickets(c->ctx, 0);
    SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_keylog_callback(c->ctx, KeyLog);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, AcceptAnyChain);
    // CA certificates
    X509_STORE* store = SSL_CTX_get_cert_store(c->ctx);
    {
      Napi::Buffer<char> ca = o.Get("ca").As<Napi::Buffer<char>>();
      BIO* bio = BIO_new_mem_buf(ca.Data(), static_cast<int>(ca.Length()));
      int n = 0;
      while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
        X509_STORE_add_cert(store, x);
        X509_free(x);
        n++;
      }
      BIO_free(bio);
      ERR_clear_error();
      if (n == 0) return ThrowMsg("tunnel.tls.ca: no certificate in the CA file");
    }
    {
      Napi::Buffer<char> cert = o.Get("cert").As<Napi::Buffer<char>>();
      BIO* bio = BIO_new_mem_buf(cert.Data(), static_cast<int>(cert.Length()));
      X509* leaf = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
      if (leaf == nullptr) {
        BIO_free(bio);
        return ThrowSsl("tunnel.tls.cert");
      }
      const int ok = SSL_CTX_use_certificate(c->ctx, leaf);
      X509_free(leaf);
      if (ok != 1) {
        BIO_free(bio);
        return ThrowSsl("SSL_CTX_use_certificate");
      }
      while (X509* extra = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr))
        SSL_CTX_add0_chain_cert(c->ctx, extra);  // takes ownership
      ERR_clear_error();
      BIO_free(bio);
    }
    {
      Napi::Buffer<char> key = o.Get("key").As<Napi::Buffer<char>>();
      BIO* bio = BIO_new_mem_buf(key.Data(), static_cast<int>(key.Length()));
      EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
      BIO_free(bio);
      if (pkey == nullptr) return ThrowSsl("tunnel.tls.key");
      const int ok = SSL_CTX_use_PrivateKey(c->ctx, pkey);
      EVP_PKEY_free(pkey);
      if (ok != 1 || SSL_CTX_check_private_key(c->ctx) != 1) return ThrowSsl("SSL_CTX_use_PrivateKey");
    }
    c->alpn = o.Get("alpn").ToString().Utf8Value();
    if (c->alpn.empty() || c->alpn.size() > 255) return ThrowMsg("alpn: one protocol name of 1-255 bytes");
    if (server) {
      SSL_CTX_set_alpn_select_cb(c->ctx, AlpnSelect, c.get());
    } else {
      std::string wire(1, static_cast<char>(c->alpn.size()));
      wire += c->alpn;
      if (SSL_CTX_set_alpn_protos(c->ctx, reinterpret_cast<const unsigned char*>(wire.data()),
                                  static_cast<unsigned int>(wire.size())) != 0)
        return ThrowSsl("SSL_CTX_set_alpn_protos");
    }
    const uint32_t id = nextId_++;
    contexts_[id] = std::move(c);
    return Napi::Number::New(env_, id);
  }

  void FreeContext(uint32_t id) { contexts_.erase(id); }

  Napi::Value Open(uint32_t ctxId, int fdIn, bool server, double rekey, Napi::Function callback) {
    auto cit = contexts_.find(ctxId);
    if (cit == contexts_.end()) return ThrowMsg("tlsOpen: unknown context");
    if (tornDown_) return ThrowMsg("TLS links are shut down (environment teardown)");
    // Our own descriptor: the caller's socket object may be destroyed (closing its descriptor)
    // without touching the connection.
    UniqueFd fd(::fcntl(fdIn, F_DUPFD_CLOEXEC, 3));  // closed on every failure below
    if (!fd.Valid()) return Throw(errno, "fcntl", "duplicating the link's socket");
    ::fcntl(fd.Get(), F_SETFL, ::fcntl(fd.Get(), F_GETFL) | O_NONBLOCK);
    auto link = std::make_unique<Link>();
    link->server = server;
    link->registry = this;
    if (rekey >= 1) link->rekeyRecords = static_cast<uint64_t>(rekey);
    link->context = cit->second;
    link->ssl = SSL_new(cit->second->ctx);
    if (link->ssl == nullptr) return ThrowSsl("SSL_new");
    SSL_set_ex_data(link->ssl, g_exIndex, link.get());
    SSL_set_fd(link->ssl, fd.Get());  // a socket BIO without read-ahead: OpenSSL reads record by record
    if (server) SSL_set_accept_state(link->ssl);
    else SSL_set_connect_state(link->ssl);
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env_, &loop) != napi_ok || loop == nullptr) {
      SSL_free(link->ssl);
      return ThrowMsg("no libuv loop for this environment");
    }
    auto poll = std::make_unique<uv_poll_t>();
    const int rc = uv_poll_init(loop, poll.get(), fd.Get());
    if (rc != 0) {
      SSL_free(link->ssl);
      return Throw(-rc, "uv_poll_init", uv_strerror(rc));
    }
    link->poll = poll.release();
    link->fd = fd.Release();  // the link owns it now (Release() closes it)
    link->poll->data = link.get();
    const uint32_t id = nextId_++;
    link->id = id;
    link->callback = Napi::Persistent(callback);
    Link* raw = link.get();
    links_[id] = std::move(link);
    // The handshake starts on the next wake-up, never inside this call: JavaScript has its
    // listeners in place before any event.
    SetPoll(*raw, UV_WRITABLE);
    return Napi::Number::New(env_, id);
  }

  /** Encrypt and send; the bytes the kernel did not take yet (0: all went; otherwise kDrain follows). */
  Napi::Value Write(uint32_t id, const Napi::Array& bufs) {
    Link* l = Find(id);
    if (l == nullptr) return ThrowMsg("tlsWrite: the link is closed");
    if (!l->secure) return ThrowMsg("tlsWrite: the handshake has not finished");
    if (l->wroteEnd) return ThrowMsg("tlsWrite: write after end");
    std::vector<std::pair<const uint8_t*, size_t>> pieces;
    size_t total = 0;
    for (uint32_t i = 0; i < bufs.Length(); i++) {
      Napi::Value v = bufs.Get(i);
      if (!v.IsBuffer()) return ThrowMsg("tlsWrite: not a Buffer");
      auto b = v.As<Napi::Buffer<uint8_t>>();
      if (b.Length() == 0) continue;
      pieces.emplace_back(b.Data(), b.Length());
      total += b.Length();
    }
    if (!SealAll(*l, pieces, total)) return Napi::Number::New(env_, 0);  // failed: reported
    if (!Flush(*l)) return Napi::Number::New(env_, 0);
    const size_t queued = l->out.size() - l->outOff;
    if (queued > 0) l->drainWanted = true;
    return Napi::Number::New(env_, static_cast<double>(queued));
  }

  void SetReading(uint32_t id, bool on) {
    Link* l = Find(id);
    if (l == nullptr) return;
    l->reading = on;
    if (l->secure) UpdatePoll(*l);
  }

  /**
   * close_notify and FIN once everything queued has gone; returns the bytes still queued for the
   * kernel (then kDrain follows once they and the close_notify are out).
   */
  Napi::Value End(uint32_t id) {
    Link* l = Find(id);
    if (l == nullptr) return Napi::Number::New(env_, 0);
    if (!l->wroteEnd) {
      l->endPending = true;  // before 'secure': sent once the handshake is over, as Node's TLS does
      if (l->secure && l->outOff == l->out.size()) SendEnd(*l);
      l = Find(id);
      if (l == nullptr) return Napi::Number::New(env_, 0);
    }
    return Napi::Number::New(env_, static_cast<double>(l->secure ? l->out.size() - l->outOff : 0));
  }

  Napi::Value Stats(uint32_t id) {
    Link* l = Find(id);
    if (l == nullptr) return env_.Undefined();
    Napi::Object o = Napi::Object::New(env_);
    o.Set("txRecords", Napi::Number::New(env_, static_cast<double>(l->txRecords)));
    o.Set("rxRecords", Napi::Number::New(env_, static_cast<double>(l->rxRecords)));
    o.Set("keyUpdatesSent", Napi::Number::New(env_, static_cast<double>(l->keyUpdatesSent)));
    o.Set("keyUpdatesReceived", Napi::Number::New(env_, static_cast<double>(l->keyUpdatesReceived)));
    o.Set("queued", Napi::Number::New(env_, static_cast<double>(l->out.size() - l->outOff)));
    return o;
  }

  void Close(uint32_t id) {
    auto it = links_.find(id);
    if (it == links_.end()) return;
    std::unique_ptr<Link> link = std::move(it->second);
    links_.erase(it);
    Release(std::move(link));
  }

  size_t Count() const { return links_.size(); }

 private:
  Link* Find(uint32_t id) {
    auto it = links_.find(id);
    return it == links_.end() ? nullptr : it->second.get();
  }

  static void Release(std::unique_ptr<Link> link) {
    if (link->ssl) {
      SSL_free(link->ssl);
      link->ssl = nullptr;
    }
    link->context.reset();
    if (link->poll) {
      uv_poll_stop(link->poll);
      // The descriptor is closed once libuv has let go of the handle.
      struct Closing {
        int fd;
      };
      link->poll->data = new Closing{link->fd};
      uv_close(reinterpret_cast<uv_handle_t*>(link->poll), [](uv_handle_t* h) {
        auto* c = static_cast<Closing*>(h->data);
        ::close(c->fd);
        delete c;
        delete reinterpret_cast<uv_poll_t*>(h);
      });
      link->poll = nullptr;
    } else if (link->fd >= 0) {
      ::close(link->fd);
    }
    link->fd = -1;
  }

  void SetPoll(Link& l, int events) {
    if (l.poll == nullptr) return;
    if (events == l.pollEvents) return;
    l.pollEvents = events;
    if (events == 0) {
      uv_poll_stop(l.poll);
      return;
    }
    uv_poll_start(l.poll, events, [](uv_poll_t* h, int status, int ev) {
      auto* link = static_cast<Link*>(h->data);
      link->registry->OnPoll(link->id, status, ev);
    });
  }

  void UpdatePoll(Link& l) {
    int ev = 0;
    if (l.reading && !l.ended) ev |= UV_READABLE;
    if (l.outOff < l.out.size()) ev |= UV_WRITABLE;
    SetPoll(l, ev);
  }

  void OnPoll(uint32_t id, int status, int events) {
    Link* l = Find(id);
    if (l == nullptr) return;
    Napi::HandleScope scope(env_);  // errors and buffers made below live in this wake-up's scope
    if (status < 0) {
      int soErr = 0;
      socklen_t len = sizeof soErr;
      if (::getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &soErr, &len) != 0 || soErr == 0) soErr = -status;
      return Fail(id, SysError(soErr, "poll", "polling the link's socket"));
    }
    if (!l->secure) return Handshake(id);
    if (events & UV_WRITABLE) {
      if (!Flush(*l)) return;
      if (l->outOff == l->out.size() && l->endPending && !l->wroteEnd) {
        SendEnd(*l);
        l = Find(id);
        if (l == nullptr) return;
      }
      if (l->outOff == l->out.size()) FinishEnd(*l);
      // kDrain: everything queued, the close_notify included, went to the kernel.
      if (l->outOff == l->out.size() && l->drainWanted) {
        l->drainWanted = false;
        Emit(id, kDrain, env_.Undefined());
        l = Find(id);
        if (l == nullptr) return;
      }
    }
    if ((events & UV_READABLE) && l->reading && !l->ended) ReadSome(id);
  }

  // ------------------------------------------------------------ handshake

  void Handshake(uint32_t id) {
    Link* l = Find(id);
    ERR_clear_error();
    errno = 0;
    const int r = SSL_do_handshake(l->ssl);
    if (r != 1) {
      const int e = SSL_get_error(l->ssl, r);
      if (e == SSL_ERROR_WANT_READ) return SetPoll(*l, UV_READABLE);
      if (e == SSL_ERROR_WANT_WRITE) return SetPoll(*l, UV_WRITABLE);
      if (e == SSL_ERROR_SSL) {
        unsigned long err = ERR_peek_last_error();
        return Fail(id, TlsError(OpenSslCode(err), PendingOpenSslError()));
      }
      // SSL_ERROR_SYSCALL / ZERO_RETURN: the connection went away during the handshake.
      const int sys = errno != 0 ? errno : ECONNRESET;
      Napi::Error err = SysError(sys, "read", "the link's TLS handshake");
      err.Set("message", Napi::String::New(env_, errno != 0
                                                     ? std::string("TLS handshake failed: ") + std::strerror(sys)
                                                     : "Client network socket disconnected before secure TLS "
                                                       "connection was established"));
      return Fail(id, err);
    }
    // Done. Everything about the peer is read now; OpenSSL is not needed after this.
    Napi::HandleScope scope(env_);
    Napi::Object info = Napi::Object::New(env_);
    X509* peer = SSL_get1_peer_certificate(l->ssl);
    if (peer != nullptr) {
      const int len = i2d_X509(peer, nullptr);
      if (len > 0) {
        Napi::Buffer<uint8_t> der = Napi::Buffer<uint8_t>::New(env_, static_cast<size_t>(len));
        uint8_t* p = der.Data();
        i2d_X509(peer, &p);
        info.Set("peerCertificate", der);
      }
      X509_free(peer);
      const long v = SSL_get_verify_result(l->ssl);
      if (v != X509_V_OK) {
        info.Set("verifyError", Napi::String::New(env_, VerifyCodeName(v)));
        info.Set("verifyMessage", Napi::String::New(env_, X509_verify_cert_error_string(v)));
      }
    }
    const unsigned char* alpn = nullptr;
    unsigned int alpnLen = 0;
    SSL_get0_alpn_selected(l->ssl, &alpn, &alpnLen);
    if (alpn != nullptr && alpnLen > 0)
      info.Set("alpn", Napi::String::New(env_, std::string(reinterpret_cast<const char*>(alpn), alpnLen)));
    const SSL_CIPHER* cipher = SSL_get_current_cipher(l->ssl);
    info.Set("cipher", Napi::String::New(env_, cipher ? SSL_CIPHER_standard_name(cipher) : ""));
    const bool pending = SSL_has_pending(l->ssl) == 1;
    if (cipher == nullptr || !SuiteFor(cipher, l->suite))
      return Fail(id, TlsError("ERR_TLS_CIPHER", "unsupported TLS 1.3 cipher suite"));
    if (l->clientSecret.empty() || l->serverSecret.empty())
      return Fail(id, TlsError("ERR_TLS_KEYS", "OpenSSL did not report the traffic secrets"));
    if (pending)
      return Fail(id, TlsError("ERR_TLS_BUFFERED", "OpenSSL read past the handshake (unexpected)"));
    const auto& txSecret = l->server ? l->serverSecret : l->clientSecret;
    const auto& rxSecret = l->server ? l->clientSecret : l->serverSecret;
    if (!Install(l->suite, l->tx, txSecret, true) || !Install(l->suite, l->rx, rxSecret, false))
      return Fail(id, TlsError("ERR_TLS_KEYS", "installing the traffic keys failed: " + PendingOpenSslError()));
    OPENSSL_cleanse(l->clientSecret.data(), l->clientSecret.size());
    OPENSSL_cleanse(l->serverSecret.data(), l->serverSecret.size());
    l->clientSecret.clear();
    l->serverSecret.clear();
    SSL_free(l->ssl);
    l->ssl = nullptr;
    l->context.reset();
    l->secure = true;
    l->in.resize(kReadBuffer + kMaxCipher + kHeader);
    SetPoll(*l, 0);
    Emit(id, kSecure, info);
    l = Find(id);
    if (l == nullptr) return;
    UpdatePoll(*l);
    if (l->endPending && !l->wroteEnd && l->outOff == l->out.size()) SendEnd(*l);
  }

  // ------------------------------------------------------------ sending

  /** Encrypt pieces into records of at most 16 KiB, appended to l.out. */
  bool SealAll(Link& l, const std::vector<std::pair<const uint8_t*, size_t>>& pieces, size_t total) {
    if (total == 0) return true;
    const size_t records = (total + kMaxPlain - 1) / kMaxPlain;
    if (l.outOff > 0 && l.outOff == l.out.size()) {
      l.out.clear();
      l.outOff = 0;
    }
    size_t pi = 0, po = 0;  // piece index and offset in it
    size_t left = total;
    l.out.reserve(l.out.size() + total + records * (kHeader + 1 + kTag));
    for (size_t r = 0; r < records; r++) {
      const size_t n = left < kMaxPlain ? left : kMaxPlain;
      left -= n;
      if (!SealRecord(l, kTypeAppData, n, [&](EVP_CIPHER_CTX* ctx, uint8_t* dst) {
            size_t want = n;
            while (want > 0) {
              const size_t take = std::min(want, pieces[pi].second - po);
              int outl = 0;
              if (EVP_EncryptUpdate(ctx, dst, &outl, pieces[pi].first + po, static_cast<int>(take)) != 1)
                return false;
              dst += outl;
              want -= take;
              po += take;
              if (po == pieces[pi].second) {
                pi++;
                po = 0;
              }
            }
            return true;
          }))
        return false;
    }
    return true;
  }

  /** One record of `n` content bytes (written by `fill`) and the inner content type. */
  template <typename Fill>
  bool SealRecord(Link& l, uint8_t type, size_t n, Fill fill) {
    if (l.tx.seq >= l.rekeyRecords && type == kTypeAppData && !SendKeyUpdate(l, false)) return false;
    const size_t len = n + 1 + kTag;
    const size_t at = l.out.size();
    l.out.resize(at + kHeader + len);
    uint8_t* rec = l.out.data() + at;
    rec[0] = kTypeAppData;
    rec[1] = 0x03;
    rec[2] = 0x03;
    rec[3] = static_cast<uint8_t>(len >> 8);
    rec[4] = static_cast<uint8_t>(len);
    uint8_t nonce[12];
    Nonce(l.tx, nonce);
    EVP_CIPHER_CTX* ctx = l.tx.ctx;
    int outl = 0;
    bool ok = EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) == 1 &&
              EVP_EncryptUpdate(ctx, nullptr, &outl, rec, kHeader) == 1 && fill(ctx, rec + kHeader);
    uint8_t* tail = rec + kHeader + n;
    ok = ok && EVP_EncryptUpdate(ctx, tail, &outl, &type, 1) == 1 &&
         EVP_EncryptFinal_ex(ctx, tail + 1, &outl) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, kTag, tail + 1) == 1;
    if (!ok) {
      Fail(l.id, TlsError("ERR_TLS_ENCRYPT", "encrypting a record failed: " + PendingOpenSslError()));
      return false;
    }
    l.tx.seq++;
    l.txRecords++;
    return true;
  }

  bool SealBytes(Link& l, uint8_t type, const uint8_t* data, size_t n) {
    return SealRecord(l, type, n, [&](EVP_CIPHER_CTX* ctx, uint8_t* dst) {
      int outl = 0;
      return n == 0 || EVP_EncryptUpdate(ctx, dst, &outl, data, static_cast<int>(n)) == 1;
    });
  }

  /** KeyUpdate (RFC 8446 4.6.3) under the current key, then the next key for what follows. */
  bool SendKeyUpdate(Link& l, bool requestPeer) {
    const uint8_t msg[5] = {24, 0, 0, 1, static_cast<uint8_t>(requestPeer ? 1 : 0)};
    const uint64_t saved = l.rekeyRecords;
    l.rekeyRecords = UINT64_MAX;  // no recursion
    const bool ok = SealBytes(l, kTypeHandshake, msg, sizeof msg);
    l.rekeyRecords = saved;
    if (!ok) return false;
    if (!NextKey(l.suite, l.tx, true)) {
      Fail(l.id, TlsError("ERR_TLS_KEYS", "updating the traffic key failed"));
      return false;
    }
    l.keyUpdatesSent++;
    return true;
  }

  /** Write what is queued; false when the link failed (reported). */
  bool Flush(Link& l) {
    while (l.outOff < l.out.size()) {
      const ssize_t n = ::send(l.fd, l.out.data() + l.outOff, l.out.size() - l.outOff, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        Fail(l.id, SysError(errno, "write", "writing to the link"));
        return false;
      }
      l.outOff += static_cast<size_t>(n);
    }
    if (l.outOff == l.out.size()) {
      l.outOff = 0;
      l.out.clear();
      if (l.out.capacity() > 4 * 1024 * 1024) l.out.shrink_to_fit();
    }
    UpdatePoll(l);
    return true;
  }

  /** Seal the close_notify; FIN follows once everything queued has gone (FinishEnd). */
  void SendEnd(Link& l) {
    l.endPending = false;
    l.wroteEnd = true;
    const uint8_t alert[2] = {1, 0};  // warning, close_notify
    if (!SealBytes(l, kTypeAlert, alert, 2)) return;
    l.finPending = true;
    const uint32_t id = l.id;
    if (!Flush(l)) return;
    Link* again = Find(id);
    if (again == nullptr) return;
    if (again->outOff == again->out.size()) FinishEnd(*again);
    else again->drainWanted = true;  // kDrain once the close_notify is out
  }

  void FinishEnd(Link& l) {
    if (!l.finPending) return;
    l.finPending = false;
    ::shutdown(l.fd, SHUT_WR);
  }

  // ------------------------------------------------------------ receiving

  void ReadSome(uint32_t id) {
    Link* l = Find(id);
    const ssize_t n = ::read(l->fd, l->in.data() + l->inLen, l->in.size() - l->inLen);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      return Fail(id, SysError(errno, "read", "reading from the link"));
    }
    if (n == 0) {
      if (l->inLen > 0)
        return Fail(id, TlsError("ERR_TLS_TRUNCATED", "the link ended inside a TLS record"));
      return PeerEnded(id);
    }
    l->inLen += static_cast<size_t>(n);
    // Whole records in the buffer, and how much plaintext they may hold.
    size_t off = 0, room = 0;
    while (l->inLen - off >= kHeader) {
      const uint8_t* h = l->in.data() + off;
      const size_t len = (size_t(h[3]) << 8) | h[4];
      if (len > kMaxCipher) return Fail(id, TlsError("ERR_SSL_RECORD_OVERFLOW", "record_overflow: a TLS record larger than 2^14+256"));
      if (h[0] != kTypeAppData) {
        return Fail(id, TlsError("ERR_SSL_UNEXPECTED_RECORD",
                                 "unexpected_message: a TLS record of type " + std::to_string(h[0]) +
                                     " after the handshake"));
      }
      if (len < 1 + kTag) return Fail(id, TlsError("ERR_SSL_BAD_RECORD", "a TLS record too short for its tag"));
      if (l->inLen - off < kHeader + len) break;
      room += len - kTag;  // decrypted in place: content, type byte and padding
      off += kHeader + len;
    }
    const size_t whole = off;
    if (whole == 0) return;
    Napi::HandleScope scope(env_);
    Napi::Buffer<uint8_t> plain = Napi::Buffer<uint8_t>::New(env_, room > 0 ? room : 1);
    size_t got = 0;
    bool endSeen = false;
    for (off = 0; off < whole;) {
      uint8_t* h = l->in.data() + off;
      const size_t len = (size_t(h[3]) << 8) | h[4];
      uint8_t* ct = h + kHeader;
      const size_t ctLen = len - kTag;
      uint8_t nonce[12];
      Nonce(l->rx, nonce);
      EVP_CIPHER_CTX* ctx = l->rx.ctx;
      uint8_t* dst = plain.Data() + got;
      int outl = 0, fin = 0;
      const bool ok = EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) == 1 &&
                      EVP_DecryptUpdate(ctx, nullptr, &outl, h, kHeader) == 1 &&
                      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, kTag, ct + ctLen) == 1 &&
                      EVP_DecryptUpdate(ctx, dst, &outl, ct, static_cast<int>(ctLen)) == 1 &&
                      EVP_DecryptFinal_ex(ctx, dst + outl, &fin) == 1;
      if (!ok) return Fail(id, TlsError("ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC",
                                        "bad_record_mac: a TLS record failed authentication"));
      l->rx.seq++;
      l->rxRecords++;
      off += kHeader + len;
      // TLSInnerPlaintext: content, type, zero padding.
      size_t m = ctLen;
      while (m > 0 && dst[m - 1] == 0) m--;
      if (m == 0) return Fail(id, TlsError("ERR_SSL_UNEXPECTED_RECORD", "unexpected_message: a TLS record with no content type"));
      const uint8_t type = dst[m - 1];
      m--;
      if (type == kTypeAppData) {
        got += m;
        continue;
      }
      if (type == kTypeAlert) {
        if (m == 2 && dst[1] == 0) {  // close_notify
          endSeen = true;
          break;
        }
        // Named as OpenSSL (and so Node) names a received alert: reason SSL_AD_REASON_OFFSET + the
        // alert's description, e.g. ERR_SSL_TLSV1_ALERT_UNKNOWN_CA for unknown_ca (48), which a
        // TLS 1.3 server sends after the client's handshake is over.
        const int desc = m >= 2 ? dst[1] : -1;
        const unsigned long e = desc >= 0 ? ERR_PACK(ERR_LIB_SSL, 0, SSL_AD_REASON_OFFSET + desc) : 0;
        const char* reason = e ? ERR_reason_error_string(e) : nullptr;
        return Fail(id, TlsError(reason ? OpenSslCode(e) : "ERR_SSL_TLSV1_ALERT",
                                 std::string("the peer sent TLS alert ") + std::to_string(desc) +
                                     (reason ? std::string(" (") + reason + ")" : std::string())));
      }
      if (type == kTypeHandshake) {
        l->handshakeBuf.append(reinterpret_cast<const char*>(dst), m);
        if (!PostHandshake(*l)) return;
        l = Find(id);
        if (l == nullptr) return;
        continue;
      }
      return Fail(id, TlsError("ERR_SSL_UNEXPECTED_RECORD",
                               "unexpected_message: inner content type " + std::to_string(type)));
    }
    const size_t used = endSeen ? l->inLen : whole;
    std::memmove(l->in.data(), l->in.data() + used, l->inLen - used);
    l->inLen -= used;
    if (got > 0) {
      Emit(id, kData, plain, static_cast<double>(got));
      l = Find(id);
      if (l == nullptr) return;
    }
    if (endSeen) PeerEnded(id);
  }

  /** NewSessionTicket is ignored; KeyUpdate takes the next read key (and answers if asked). */
  bool PostHandshake(Link& l) {
    while (l.handshakeBuf.size() >= 4) {
      const auto* p = reinterpret_cast<const uint8_t*>(l.handshakeBuf.data());
      const size_t len = (size_t(p[1]) << 16) | (size_t(p[2]) << 8) | p[3];
      if (len > 64 * 1024) {
        Fail(l.id, TlsError("ERR_SSL_EXCESSIVE_MESSAGE_SIZE", "a post-handshake message is too long"));
        return false;
      }
      if (l.handshakeBuf.size() < 4 + len) return true;
      const uint8_t type = p[0];
      if (type == 24) {  // key_update
        if (len != 1 || p[4] > 1) {
          Fail(l.id, TlsError("ERR_SSL_BAD_KEY_UPDATE", "decode_error: a malformed KeyUpdate"));
          return false;
        }
        if (!NextKey(l.suite, l.rx, false)) {
          Fail(l.id, TlsError("ERR_TLS_KEYS", "updating the peer's traffic key failed"));
          return false;
        }
        l.keyUpdatesReceived++;
        if (p[4] == 1 && !l.wroteEnd) {
          if (!SendKeyUpdate(l, false) || !Flush(l)) return false;
        }
      } else if (type != 4) {  // anything but new_session_ticket
        Fail(l.id, TlsError("ERR_SSL_UNEXPECTED_MESSAGE",
                            "unexpected_message: handshake message " + std::to_string(type) + " after the handshake"));
        return false;
      }
      l.handshakeBuf.erase(0, 4 + len);
    }
    return true;
  }

  void PeerEnded(uint32_t id) {
    Link* l = Find(id);
    l->ended = true;
    UpdatePoll(*l);
    Emit(id, kEnd, env_.Undefined());
  }

  // ------------------------------------------------------------ plumbing

  void Emit(uint32_t id, int kind, Napi::Value arg, double extra = 0) {
    Link* l = Find(id);
    if (l != nullptr) Call(l->callback, kind, arg, extra);
  }

  /** Report once and close: the link is gone (Find() is null) before JavaScript hears of it. */
  void Fail(uint32_t id, Napi::Error err) {
    Link* l = Find(id);
    if (l == nullptr) return;
    Napi::FunctionReference cb = std::move(l->callback);
    Close(id);
    Call(cb, kError, err.Value(), 0);
  }

  /** An exception from a callback is an uncaught exception, as in any Node event callback. */
  void Call(Napi::FunctionReference& cb, int kind, Napi::Value arg, double extra) {
    Napi::HandleScope scope(env_);
    cb.Value().MakeCallback(env_.Global(), {Napi::Number::New(env_, kind), arg, Napi::Number::New(env_, extra)},
                            context());
    if (env_.IsExceptionPending()) {
      Napi::Error error = env_.GetAndClearPendingException();
      napi_fatal_exception(env_, error.Value());
    }
  }

  Napi::Error TlsError(const std::string& code, const std::string& message) {
    Napi::Error e = Napi::Error::New(env_, message);
    e.Set("code", Napi::String::New(env_, code));
    ERR_clear_error();
    return e;
  }

  Napi::Error SysError(int err, const char* syscall, const std::string& what) {
    return MakeSystemError(env_, err, syscall, what);
  }

  Napi::Value Throw(int err, const char* syscall, const std::string& what) {
    MakeSystemError(env_, err, syscall, what).ThrowAsJavaScriptException();
    return env_.Undefined();
  }

  Napi::Value ThrowSsl(const std::string& what) {
    const std::string text = PendingOpenSslError();
    const unsigned long e = ERR_peek_last_error();
    Napi::Error err = Napi::Error::New(env_, what + ": " + text);
    err.Set("code", Napi::String::New(env_, OpenSslCode(e)));
    ERR_clear_error();
    err.ThrowAsJavaScriptException();
    return env_.Undefined();
  }

  Napi::Value ThrowMsg(const std::string& what) {
    Napi::Error::New(env_, what).ThrowAsJavaScriptException();
    return env_.Undefined();
  }

  napi_async_context context() {
    if (context_ == nullptr) context_ = std::make_unique<Napi::AsyncContext>(env_, "ipdeadgate:tls");
    return *context_;
  }

  void Teardown() {
    tornDown_ = true;
    for (auto& entry : links_) Release(std::move(entry.second));
    links_.clear();
    contexts_.clear();
    context_.reset();
  }

  Napi::Env env_;
  bool tornDown_ = false;
  uint32_t nextId_ = 1;
  std::unordered_map<uint32_t, std::unique_ptr<Link>> links_;
  std::unordered_map<uint32_t, std::shared_ptr<Context>> contexts_;
  std::unique_ptr<Napi::AsyncContext> context_;
};

TlsRegistry& Registry(Napi::Env env) { return EnvData::Get<TlsRegistry>(env); }

uint32_t IdArg(const Napi::CallbackInfo& info) { return info[0].As<Napi::Number>().Uint32Value(); }

// tlsContext({ server, ca, cert, key, alpn, ciphersuites }): id
Napi::Value TlsContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) return ThrowTypeError(env, "tlsContext(options): bad arguments");
  Napi::Object o = info[0].As<Napi::Object>();
  for (const char* k : {"ca", "cert", "key"})
    if (!o.Get(k).IsBuffer()) return ThrowTypeError(env, "tlsContext: ca, cert and key must be Buffers");
  return Registry(env).NewContext(o);
}

Napi::Value TlsContextFree(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) return ThrowTypeError(info.Env(), "tlsContextFree(id)");
  Registry(info.Env()).FreeContext(IdArg(info));
  return info.Env().Undefined();
}

// tlsOpen(ctx, fd, server, rekeyRecords, callback(kind, arg)): id
Napi::Value TlsOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsBoolean() ||
      !info[3].IsNumber() || !info[4].IsFunction())
    return ThrowTypeError(env, "tlsOpen(ctx, fd, server, rekeyRecords, callback): bad arguments");
  return Registry(env).Open(IdArg(info), info[1].As<Napi::Number>().Int32Value(), info[2].As<Napi::Boolean>(),
                            info[3].As<Napi::Number>().DoubleValue(), info[4].As<Napi::Function>());
}

Napi::Value TlsWrite(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsArray())
    return ThrowTypeError(info.Env(), "tlsWrite(id, buffers): bad arguments");
  return Registry(info.Env()).Write(IdArg(info), info[1].As<Napi::Array>());
}

Napi::Value TlsRead(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !info[0].IsNumber()) return ThrowTypeError(info.Env(), "tlsRead(id, on)");
  Registry(info.Env()).SetReading(IdArg(info), info[1].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value TlsEnd(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) return ThrowTypeError(info.Env(), "tlsEnd(id)");
  return Registry(info.Env()).End(IdArg(info));
}

Napi::Value TlsClose(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) return ThrowTypeError(info.Env(), "tlsClose(id)");
  Registry(info.Env()).Close(IdArg(info));
  return info.Env().Undefined();
}

Napi::Value TlsStats(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) return ThrowTypeError(info.Env(), "tlsStats(id)");
  return Registry(info.Env()).Stats(IdArg(info));
}

Napi::Value TlsCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Registry(info.Env()).Count()));
}

}  // namespace

void RegisterTls(Napi::Env env, Napi::Object exports) {
  if (g_exIndex < 0) g_exIndex = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  exports.Set("tlsContext", Napi::Function::New(env, TlsContext, "tlsContext"));
  exports.Set("tlsContextFree", Napi::Function::New(env, TlsContextFree, "tlsContextFree"));
  exports.Set("tlsOpen", Napi::Function::New(env, TlsOpen, "tlsOpen"));
  exports.Set("tlsWrite", Napi::Function::New(env, TlsWrite, "tlsWrite"));
  exports.Set("tlsRead", Napi::Function::New(env, TlsRead, "tlsRead"));
  exports.Set("tlsEnd", Napi::Function::New(env, TlsEnd, "tlsEnd"));
  exports.Set("tlsClose", Napi::Function::New(env, TlsClose, "tlsClose"));
  exports.Set("tlsStats", Napi::Function::New(env, TlsStats, "tlsStats"));
  exports.Set("tlsCount", Napi::Function::New(env, TlsCount, "tlsCount"));
  exports.Set("tlsEvents", [&] {
    Napi::Object o = Napi::Object::New(env);
    o.Set("secure", static_cast<double>(kSecure));
    o.Set("data", static_cast<double>(kData));
    o.Set("end", static_cast<double>(kEnd));
    o.Set("drain", static_cast<double>(kDrain));
    o.Set("error", static_cast<double>(kError));
    return o;
  }());
}

}  // namespace idg
