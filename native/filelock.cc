// flock(2) on an open file descriptor: the daemon holds an exclusive lock on its state directory's
// lock file for as long as it runs, so a second daemon sharing the directory is refused. The lock
// goes with the descriptor: a crashed daemon never leaves one behind.
#include <sys/file.h>

#include <cerrno>
#include <string>

#include "errors.h"
#include "exports.h"

namespace idg {
namespace {

// flockExclusive(fd): true when locked, false when another open file description holds it.
Napi::Value FlockExclusive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1)) return ThrowTypeError(env, "flockExclusive(fd): fd must be a number");
  const int fd = info[0].As<Napi::Number>().Int32Value();
  int rc;
  do {
    rc = ::flock(fd, LOCK_EX | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  MakeSystemError(env, errno, "flock", "LOCK_EX on fd " + std::to_string(fd)).ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace

void RegisterFileLock(Napi::Env env, Napi::Object exports) {
  exports.Set("flockExclusive", Napi::Function::New(env, FlockExclusive, "flockExclusive"));
}

}  // namespace idg
