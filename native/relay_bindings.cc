// The native relay as JavaScript sees it (src/sys/native.ts, src/tunnel/nativebridge.ts):
// argument checks, then the environment's relays (native/relay.cc).
#include <napi.h>

#include "errors.h"
#include "exports.h"
#include "relay.h"

namespace idg {
namespace {

RelayTable& Registry(Napi::Env env) { return RelaysOf(env); }

// relayOpen(link, stream, fd, { recvWindow, recvTarget, maxWindow, sendWindow, frameSize, rttMs,
// toSocket, toPeer }): id, or 0 when the link cannot relay the stream now; its events go to the
// function given to relayDispatch()
Napi::Value RelayOpen(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 3) || !info[3].IsObject())
    return ThrowTypeError(info.Env(), "relayOpen(link, stream, fd, options): bad arguments");
  return Registry(info.Env()).Open(info);
}

Napi::Value RelayCanOpen(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 2)) return ThrowTypeError(info.Env(), "relayCanOpen(link, stream)");
  return Napi::Boolean::New(info.Env(), Registry(info.Env()).CanOpen(IdArg(info, 0), IdArg(info, 1)));
}

// relayDispatch(fn(relay, kind, errno)): every relay's events, in the loop's check phase
Napi::Value RelayDispatch(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction()) return ThrowTypeError(info.Env(), "relayDispatch(fn)");
  Registry(info.Env()).SetDispatch(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value RelayHalfClose(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "relayHalfClose(id)");
  Registry(info.Env()).HalfClose(IdArg(info, 0));
  return info.Env().Undefined();
}

Napi::Value RelayClose(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "relayClose(id, reset)");
  Registry(info.Env()).Close(IdArg(info, 0), info.Length() > 1 && info[1].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value RelayStats(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "relayStats(id)");
  return Registry(info.Env()).Stats(IdArg(info, 0));
}

Napi::Value RelayBytes(const Napi::CallbackInfo& info) {
  if (!NumberArgs(info, 1)) return ThrowTypeError(info.Env(), "relayBytes(id)");
  return Napi::Number::New(info.Env(), Registry(info.Env()).Bytes(IdArg(info, 0)));
}

Napi::Value RelayCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Registry(info.Env()).Count()));
}

}  // namespace

void RegisterRelay(Napi::Env env, Napi::Object exports) {
  exports.Set("relayOpen", Napi::Function::New(env, RelayOpen, "relayOpen"));
  exports.Set("relayCanOpen", Napi::Function::New(env, RelayCanOpen, "relayCanOpen"));
  exports.Set("relayDispatch", Napi::Function::New(env, RelayDispatch, "relayDispatch"));
  exports.Set("relayHalfClose", Napi::Function::New(env, RelayHalfClose, "relayHalfClose"));
  exports.Set("relayClose", Napi::Function::New(env, RelayClose, "relayClose"));
  exports.Set("relayStats", Napi::Function::New(env, RelayStats, "relayStats"));
  exports.Set("relayBytes", Napi::Function::New(env, RelayBytes, "relayBytes"));
  exports.Set("relayCount", Napi::Function::New(env, RelayCount, "relayCount"));
  Napi::Object ev = Napi::Object::New(env);
  ev.Set("localEof", static_cast<double>(kLocalEof));
  ev.Set("peerFin", static_cast<double>(kPeerFin));
  ev.Set("finSent", static_cast<double>(kFinSent));
  ev.Set("localError", static_cast<double>(kLocalError));
  ev.Set("peerReset", static_cast<double>(kPeerReset));
  ev.Set("windowError", static_cast<double>(kWindowError));
  ev.Set("dataAfterFin", static_cast<double>(kDataAfterFin));
  ev.Set("stall", static_cast<double>(kStall));
  exports.Set("relayEvents", ev);
}

}  // namespace idg
