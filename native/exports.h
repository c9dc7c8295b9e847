// Each concern registers its exports from its own file; addon.cc calls them all.
#pragma once

#include <napi.h>

namespace idg {

void RegisterSockDiag(Napi::Env env, Napi::Object exports);
void RegisterTcpInfo(Napi::Env env, Napi::Object exports);
void RegisterWatcher(Napi::Env env, Napi::Object exports);
void RegisterPeerCred(Napi::Env env, Napi::Object exports);
void RegisterPcap(Napi::Env env, Napi::Object exports);
void RegisterSdNotify(Napi::Env env, Napi::Object exports);
void RegisterTls(Napi::Env env, Napi::Object exports);
void RegisterFileLock(Napi::Env env, Napi::Object exports);

/** Names of the tcp_info row columns (tcp_info_row.h), for TypeScript's load-time check. */
Napi::Array TcpInfoColumnNames(Napi::Env env);

}  // namespace idg
