// A link's SSL object and what its finished handshake tells JavaScript.
//
// The SSL reads the socket itself (a socket BIO with read-ahead into one large buffer, so that one
// read(2) takes many records) and writes into the link's output buffer (tls_buffer.h), which the
// link sends; OpenSSL seals and opens every record, before and after the handshake.
#pragma once

#include <napi.h>
#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>

#include "tls_buffer.h"

namespace idg {

/** Counted by OpenSSL's message callback once the handshake is over (tlsStats, the rekey policy). */
struct RecordCounters {
  bool secure = false;
  uint64_t txRecords = 0, rxRecords = 0;
  uint64_t txSinceKey = 0;  // records sealed under our current key
  uint64_t keyUpdatesSent = 0, keyUpdatesReceived = 0;
};

/** OpenSSL's read buffer: one read(2) takes up to this much. */
constexpr size_t kReadAhead = 256 * 1024;

/** An SSL for `fd` (not owned) in accept or connect state; null on failure (OpenSSL's error queue says why). */
SSL* NewLinkSsl(SSL_CTX* ctx, int fd, bool server, OutBuffer* out, RecordCounters* counters);

/** { peerCertificate: Buffer (DER), alpn?, cipher } of a finished handshake. */
Napi::Object SecureInfo(Napi::Env env, SSL* ssl);

}  // namespace idg
