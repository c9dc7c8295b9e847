#include "errors.h"

#include <uv.h>

#include <cstring>

namespace idg {

std::string ErrnoName(int err) {
  char name[64];
  // libuv error codes are negated errno values on Unix.
  uv_err_name_r(-err, name, sizeof name);
  return name;
}

Napi::Error MakeSystemError(Napi::Env env, int err, const char* syscall, const std::string& what) {
  const std::string code = ErrnoName(err);
  const char* description = std::strerror(err);
  Napi::Error error = Napi::Error::New(env, code + ": " + what + " failed (" + syscall + ": " + description + ")");
  error.Set("code", Napi::String::New(env, code));
  error.Set("description", Napi::String::New(env, description));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

Napi::Value Throw(const Napi::Error& error) {
  error.ThrowAsJavaScriptException();
  return error.Env().Undefined();
}

Napi::Value ThrowSystemError(Napi::Env env, int err, const char* syscall, const std::string& what) {
  return Throw(MakeSystemError(env, err, syscall, what));
}

Napi::Value ThrowError(Napi::Env env, const std::string& message) { return Throw(Napi::Error::New(env, message)); }

Napi::Value ThrowTypeError(Napi::Env env, const char* message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool NumberArgs(const Napi::CallbackInfo& info, size_t count) {
  for (size_t i = 0; i < count; i++)
    if (!info[i].IsNumber()) return false;  // past the last argument: undefined
  return true;
}

bool ReportUncaught(Napi::Env env) {
  if (!env.IsExceptionPending()) return true;
  Napi::Error error = env.GetAndClearPendingException();
  napi_fatal_exception(env, error.Value());
  return false;
}

}  // namespace idg
