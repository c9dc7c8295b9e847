// A link's SSL object and what its finished handshake tells JavaScript.
//
// The SSL reads from the link's input buffer (filled with one read(2) of many records per wake-up)
// and writes into its output buffer (sent with one send(2)): tls_buffer.h. OpenSSL seals and opens
// every record, before and after the handshake.
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

/** An SSL on `in` and `out` (not owned) in accept or connect state; null on failure (OpenSSL's error queue says why). */
SSL* NewLinkSsl(SSL_CTX* ctx, bool server, InBuffer* in, OutBuffer* out, RecordCounters* counters);

/** { peerCertificate: Buffer (DER), alpn?, cipher } of a finished handshake. */
Napi::Object SecureInfo(Napi::Env env, SSL* ssl);

}  // namespace idg
