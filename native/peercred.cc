// SO_PEERCRED on a connected Unix socket (socket(7)): the pid/uid/gid of the process that connected
// to the control socket, so the daemon can refuse anyone but root.
#include <sys/socket.h>

#include <cerrno>
#include <string>

#include "errors.h"
#include "exports.h"

namespace idg {
namespace {

// peerCred(fd): { pid, uid, gid }
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1)) return ThrowTypeError(env, "peerCred(fd): fd must be a number");
  const int fd = info[0].As<Napi::Number>().Int32Value();
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    MakeSystemError(env, errno, "getsockopt", "SO_PEERCRED on fd " + std::to_string(fd)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

}  // namespace

void RegisterPeerCred(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
}

}  // namespace idg
