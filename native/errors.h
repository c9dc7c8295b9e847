// Errors from system calls, shaped like Node's own: `code` (the errno name from uv_err_name_r),
// `errno` (positive), `syscall`, and
// `description` (strerror). The TypeScript facades turn them into SystemError with advice.
//
// Exceptions are disabled (NAPI_DISABLE_CPP_EXCEPTIONS): a binding throws by setting the pending
// JavaScript exception and returning, so the Throw* helpers return undefined for `return Throw...`.
// A binding checks its arguments before any work (NumberArgs) and throws a TypeError naming its
// signature.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace idg {

/** The errno name ("EBADF"), as libuv spells it. */
std::string ErrnoName(int err);

/** A JS Error with code/errno/syscall; `what` says what was being done ("TCP_INFO on fd 12"). */
Napi::Error MakeSystemError(Napi::Env env, int err, const char* syscall, const std::string& what);

/** Throw `error`; returns undefined. */
Napi::Value Throw(const Napi::Error& error);

/** Throw MakeSystemError(env, err, syscall, what); returns undefined. */
Napi::Value ThrowSystemError(Napi::Env env, int err, const char* syscall, const std::string& what);

/** Throw a plain Error (a call the object's state does not allow); returns undefined. */
Napi::Value ThrowError(Napi::Env env, const std::string& message);

/** Throw a TypeError and return an empty value (for argument checks; exceptions are disabled). */
Napi::Value ThrowTypeError(Napi::Env env, const char* message);

/** A binding's argument check: its first `count` arguments are numbers (ids, descriptors). */
bool NumberArgs(const Napi::CallbackInfo& info, size_t count);

/** Argument `i` as an id, once NumberArgs() has passed it. */
inline uint32_t IdArg(const Napi::CallbackInfo& info, size_t i = 0) { return info[i].As<Napi::Number>().Uint32Value(); }

/**
 * After calling JavaScript from a libuv callback: what it threw becomes an uncaught exception, as
 * in any Node event callback. False when it threw.
 */
bool ReportUncaught(Napi::Env env);

}  // namespace idg
