// The tunnel link's TLS as JavaScript sees it (src/sys/native.ts): argument checks, then the
// environment's registry of links (native/tlslink.cc).
#include <napi.h>

#include "errors.h"
#include "exports.h"
#include "tls_registry.h"

namespace idg {
namespace {

// tlsContext({ server, ca, cert, key, alpn, ciphersuites }): id
Napi::Value TlsContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) return ThrowTypeError(env, "tlsContext(options): bad arguments");
  Napi::Object o = info[0].As<Napi::Object>();
  for (const char* k : {"ca", "cert", "key"})
    if (!o.Get(k).IsBuffer()) return ThrowTypeError(env, "tlsContext: ca, cert and key must be Buffers");
  return TlsLinksOf(env).NewContext(o);
}

Napi::Value TlsContextFree(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "tlsContextFree(id)");
  TlsLinksOf(info.Env()).FreeContext(IdArg(info));
  return info.Env().Undefined();
}

// tlsOpen(ctx, fd, server, rekeyRecords, callback(kind, arg)): id
Napi::Value TlsOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 2) || !info[2].IsBoolean() || !info[3].IsNumber() || !info[4].IsFunction())
    return ThrowTypeError(env, "tlsOpen(ctx, fd, server, rekeyRecords, callback): bad arguments");
  return TlsLinksOf(env).Open(IdArg(info), info[1].As<Napi::Number>().Int32Value(), info[2].As<Napi::Boolean>(),
                            info[3].As<Napi::Number>().DoubleValue(), info[4].As<Napi::Function>());
}

Napi::Value TlsWrite(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1) || !info[1].IsArray())
    return ThrowTypeError(info.Env(), "tlsWrite(id, buffers): bad arguments");
  return TlsLinksOf(info.Env()).Write(IdArg(info), info[1].As<Napi::Array>());
}

Napi::Value TlsRead(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "tlsRead(id, on)");
  TlsLinksOf(info.Env()).SetReading(IdArg(info), info[1].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value TlsEnd(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "tlsEnd(id)");
  return TlsLinksOf(info.Env()).End(IdArg(info));
}

Napi::Value TlsClose(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "tlsClose(id)");
  TlsLinksOf(info.Env()).Close(IdArg(info));
  return info.Env().Undefined();
}

Napi::Value TlsStats(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "tlsStats(id)");
  return TlsLinksOf(info.Env()).Stats(IdArg(info));
}

Napi::Value TlsTrackFrames(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "tlsTrackFrames(id)");
  return Napi::Boolean::New(info.Env(), TlsLinksOf(info.Env()).TrackFrames(IdArg(info)));
}

Napi::Value TlsCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(TlsLinksOf(info.Env()).Count()));
}

}  // namespace

void RegisterTls(Napi::Env env, Napi::Object exports) {
  exports.Set("tlsContext", Napi::Function::New(env, TlsContext, "tlsContext"));
  exports.Set("tlsContextFree", Napi::Function::New(env, TlsContextFree, "tlsContextFree"));
  exports.Set("tlsOpen", Napi::Function::New(env, TlsOpen, "tlsOpen"));
  exports.Set("tlsWrite", Napi::Function::New(env, TlsWrite, "tlsWrite"));
  exports.Set("tlsRead", Napi::Function::New(env, TlsRead, "tlsRead"));
  exports.Set("tlsEnd", Napi::Function::New(env, TlsEnd, "tlsEnd"));
  exports.Set("tlsClose", Napi::Function::New(env, TlsClose, "tlsClose"));
  exports.Set("tlsStats", Napi::Function::New(env, TlsStats, "tlsStats"));
  exports.Set("tlsTrackFrames", Napi::Function::New(env, TlsTrackFrames, "tlsTrackFrames"));
  exports.Set("tlsCount", Napi::Function::New(env, TlsCount, "tlsCount"));
  exports.Set("tlsEvents", [&] {
    Napi::Object o = Napi::Object::New(env);
    o.Set("secure", static_cast<double>(kSecure));
    o.Set("data", static_cast<double>(kData));
    o.Set("end", static_cast<double>(kEnd));
    o.Set("drain", static_cast<double>(kDrain));
    o.Set("error", static_cast<double>(kError));
    return o;
  }());
}

}  // namespace idg
