// The environment's TLS links, as the bindings (native/tls_bindings.cc) use them; the registry
// itself is native/tlslink.cc.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace idg {

/** What a link's callback gets as its first argument (tlsEvents in JavaScript). */
enum TlsEvent { kSecure = 1, kData = 2, kEnd = 3, kDrain = 4, kError = 5 };

class TlsLinks {
 public:
  virtual ~TlsLinks() = default;
  virtual Napi::Value NewContext(const Napi::Object& o) = 0;
  virtual void FreeContext(uint32_t id) = 0;
  virtual Napi::Value Open(uint32_t ctxId, int fd, bool server, double rekey, Napi::Function callback) = 0;
  virtual Napi::Value Write(uint32_t id, const Napi::Array& bufs) = 0;
  virtual void SetReading(uint32_t id, bool on) = 0;
  virtual Napi::Value End(uint32_t id) = 0;
  virtual Napi::Value Stats(uint32_t id) = 0;
  /** Split the link's plaintext into yamux frames (native/relay.h); false once any went up. */
  virtual bool TrackFrames(uint32_t id) = 0;
  virtual void Close(uint32_t id) = 0;
  virtual size_t Count() const = 0;
};

/** This environment's registry (made on first use, torn down with the environment). */
TlsLinks& TlsLinksOf(Napi::Env env);

}  // namespace idg
