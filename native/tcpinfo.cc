// TCP_INFO and SO_ERROR by file descriptor, for the tunnel's own sockets. Synchronous getsockopt:
// both are a copy out of the socket, no waiting. Argument types are checked in src/sys/tcpinfo.ts.
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <string>

#include "errors.h"
#include "exports.h"
#include "tcp_info_row.h"

namespace idg {
namespace {

// tcpInfo(fd): Uint32Array of the tcp_info row (tcp_info_row.h)
Napi::Value TcpInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1)) return ThrowTypeError(env, "tcpInfo(fd): fd must be a number");
  const int fd = info[0].As<Napi::Number>().Int32Value();
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) {
    MakeSystemError(env, errno, "getsockopt", "TCP_INFO on fd " + std::to_string(fd)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint32Array row = Napi::Uint32Array::New(env, kTcpInfoColumns);
  FillTcpInfoRow(row.Data(), &ti, len);
  return row;
}

// socketError(fd): the pending error (0 or an errno). Reading SO_ERROR clears it in the kernel.
Napi::Value SocketError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1)) return ThrowTypeError(env, "socketError(fd): fd must be a number");
  const int fd = info[0].As<Napi::Number>().Int32Value();
  int value = 0;
  socklen_t len = sizeof value;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &len) != 0) {
    MakeSystemError(env, errno, "getsockopt", "SO_ERROR on fd " + std::to_string(fd)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, value);
}

}  // namespace

Napi::Array TcpInfoColumnNames(Napi::Env env) {
  static const char* const names[] = {IDG_TCP_INFO_COLUMNS(IDG_NAME_STRING)};
  Napi::Array result = Napi::Array::New(env);
  uint32_t i = 0;
  for (const char* n : names) result.Set(i++, Napi::String::New(env, n));
  return result;
}

void RegisterTcpInfo(Napi::Env env, Napi::Object exports) {
  exports.Set("tcpInfo", Napi::Function::New(env, TcpInfo, "tcpInfo"));
  exports.Set("socketError", Napi::Function::New(env, SocketError, "socketError"));
  exports.Set("tcpInfoColumns", TcpInfoColumnNames(env));
}

}  // namespace idg
