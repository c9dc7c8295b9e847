// OpenSSL's errors and verification results, named as Node's TLS names them, so that the codes
// classifyTlsError() in src/tunnel/linktls.ts looks for are the same whichever TLS made them.
#pragma once

#include <napi.h>
#include <openssl/ssl.h>

#include <string>

namespace idg {

/** Node's code for an OpenSSL error: ERR_SSL_<REASON> (lib/internal/errors, crypto_util.cc). */
std::string OpenSslCode(unsigned long e);

/** Node's names for X509 verification results (CERT_HAS_EXPIRED, ...). */
std::string VerifyCodeName(long v);

/** OpenSSL's text for its most recent error. */
std::string PendingOpenSslError();

/** An Error with `code`; clears OpenSSL's error queue. */
Napi::Error TlsError(Napi::Env env, const std::string& code, const std::string& message);

/** `what` failed: OpenSSL's most recent error, its text after `what` and its code; clears the queue. */
Napi::Error OpenSslError(Napi::Env env, const std::string& what);

/**
 * The error of an SSL call that failed with SSL_get_error() == `sslError` (not WANT_*): OpenSSL's
 * reason (a peer's alert, a bad record, an unexpected EOF, a refused certificate with its
 * verification result), or the system error `sysErrno` (0: the peer closed the connection).
 */
Napi::Error SslCallError(Napi::Env env, SSL* ssl, int sslError, int sysErrno, const char* during);

}  // namespace idg
