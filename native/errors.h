// Errors from system calls, shaped like Node's own: `code` (the errno name from uv_err_name_r),
// `errno` (positive), `syscall`, and
// `description` (strerror). The TypeScript facades turn them into SystemError with advice.
#pragma once

#include <napi.h>

#include <string>

namespace idg {

/** The errno name ("EBADF"), as libuv spells it. */
std::string ErrnoName(int err);

/** A JS Error with code/errno/syscall; `what` says what was being done ("TCP_INFO on fd 12"). */
Napi::Error MakeSystemError(Napi::Env env, int err, const char* syscall, const std::string& what);

/** Throw a TypeError and return an empty value (for argument checks; exceptions are disabled). */
Napi::Value ThrowTypeError(Napi::Env env, const char* message);

}  // namespace idg
