// The link's SSL_CTX: TLS 1.3 only, our CA, our certificate and key, one ALPN protocol, and the
// peer authenticated during the handshake (a certificate is required both ways; its chain and
// purpose are checked in the verify callback, so a peer without a good certificate gets the TLS
// alert that says why and never a record layer).
#pragma once

#include <napi.h>
#include <openssl/ssl.h>

#include <memory>
#include <string>

namespace idg {

struct Context {
  SSL_CTX* ctx = nullptr;
  std::string alpn;  // one protocol
  bool server = false;
  ~Context() {
    if (ctx) SSL_CTX_free(ctx);
  }
};

/** Why a context could not be made: OpenSSL's error (sslError != 0) or a plain message. */
struct ContextError {
  std::string what;
  unsigned long sslError = 0;
};

/** tlsContext({ server, ca, cert, key, alpn, ciphersuites }); null with `err` set on failure. */
std::shared_ptr<Context> MakeContext(const Napi::Object& o, ContextError& err);

}  // namespace idg
