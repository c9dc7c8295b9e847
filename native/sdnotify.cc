// sd_notify(3) without libsystemd: one datagram to the unix socket systemd names in NOTIFY_SOCKET
// ("READY=1", "WATCHDOG=1", "STOPPING=1", ...). Node has no unix DATAGRAM sockets, so this is the
// whole native part; reading NOTIFY_SOCKET and choosing messages is TypeScript (src/sys/sdnotify.ts).
// A path starting with '@' is in the abstract namespace (unix(7)): the '@' becomes a NUL byte.
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "errors.h"
#include "exports.h"
#include "unique_fd.h"

namespace idg {
namespace {

// sdNotify(socketPath, message): sends one datagram; throws a system error on failure.
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString())
    return ThrowTypeError(env, "sdNotify(path, message): both must be strings");
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const std::string message = info[1].As<Napi::String>().Utf8Value();
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return ThrowTypeError(env, "sdNotify: the socket path is empty or longer than sun_path");
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';
  const socklen_t len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size());

  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.Valid()) {
    MakeSystemError(env, errno, "socket", "opening a datagram socket for " + path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ssize_t sent;
  do {
    sent = ::sendto(fd.Get(), message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<struct sockaddr*>(&addr), len);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    MakeSystemError(env, errno, "sendto", "notifying systemd at " + path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return env.Undefined();
}

}  // namespace

void RegisterSdNotify(Napi::Env env, Napi::Object exports) {
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
}

}  // namespace idg
