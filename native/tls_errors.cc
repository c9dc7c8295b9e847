#include "tls_errors.h"

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "errors.h"

namespace idg {

std::string OpenSslCode(unsigned long e) {
  const char* reason = ERR_reason_error_string(e);
  std::string lib = ERR_GET_LIB(e) == ERR_LIB_SSL ? "SSL" : "OSSL";
  std::string code = "ERR_" + lib + "_";
  if (reason == nullptr) return code + std::to_string(ERR_GET_REASON(e));
  for (const char* p = reason; *p; p++) code += std::isalnum(static_cast<unsigned char>(*p)) ? std::toupper(*p) : '_';
  return code;
}

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

std::string PendingOpenSslError() {
  unsigned long e = ERR_peek_last_error();
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

Napi::Error TlsError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  ERR_clear_error();
  return e;
}

Napi::Error OpenSslError(Napi::Env env, const std::string& what) {
  return TlsError(env, OpenSslCode(ERR_peek_last_error()), what + ": " + PendingOpenSslError());
}

Napi::Error SslCallError(Napi::Env env, SSL* ssl, int sslError, int sysErrno, const char* during) {
  if (sslError == SSL_ERROR_SSL) {
    // Our verification refused the peer's chain: the result names why (CERT_HAS_EXPIRED, ...), as
    // Node's authorizationError does; OpenSSL's own reason is only "certificate verify failed".
    const long v = SSL_get_verify_result(ssl);
    const unsigned long e = ERR_peek_last_error();
    if (v != X509_V_OK && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
      return TlsError(env, VerifyCodeName(v),
                      std::string("the peer's certificate was refused: ") + X509_verify_cert_error_string(v));
    if (e != 0) return TlsError(env, OpenSslCode(e), std::string(during) + ": " + PendingOpenSslError());
  }
  if (sysErrno != 0) {
    ERR_clear_error();
    return MakeSystemError(env, sysErrno, "read", std::string(during) + ": " + std::strerror(sysErrno));
  }
  // SSL_ERROR_SYSCALL without errno: the connection went away (during the handshake; afterwards
  // OpenSSL reports an EOF without close_notify as SSL_R_UNEXPECTED_EOF_WHILE_READING).
  Napi::Error err = MakeSystemError(env, ECONNRESET, "read", during);
  err.Set("message", Napi::String::New(env, std::string(during) +
                                                ": the peer closed the connection before the TLS session was established"));
  ERR_clear_error();
  return err;
}

}  // namespace idg
