// Module entry point: each concern registers its exports from its own file (exports.h).
#include <napi.h>

#include "exports.h"
#include "relay.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  idg::RegisterSockDiag(env, exports);
  idg::RegisterTcpInfo(env, exports);
  idg::RegisterWatcher(env, exports);
  idg::RegisterPeerCred(env, exports);
  idg::RegisterPcap(env, exports);
  idg::RegisterSdNotify(env, exports);
  idg::RegisterTls(env, exports);
  idg::RegisterRelay(env, exports);
  idg::RegisterFileLock(env, exports);
  return exports;
}

NODE_API_MODULE(ipdeadgate_native, Init)
