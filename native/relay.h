// The native relay of bridged tunnel sessions (native/relay.cc), and the small interface between it
// and the link's TLS (native/tlslink.cc).
//
// A link that tracks frames has its decrypted plaintext split into yamux frames here before it goes
// up to JavaScript: the frames of relayed streams are handled here (Data written to the stream's
// local socket, window updates, FIN and RST), every other frame goes up unchanged, in order. A
// frame header is never split between two callbacks (a partial one is held back and put in front
// of the next read pass), so every frame's fate is decided on its whole header.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace idg {

class ByteBuf;

/** What relays need from the link's TLS (implemented by native/tlslink.cc). */
class RelayLinkPort {
 public:
  virtual ~RelayLinkPort() = default;
  /**
   * Seal whole frames behind everything written before on the link and send what the kernel takes.
   * False: the link failed (closed and reported to JavaScript; nothing of it may be touched after).
   */
  virtual bool SendFrames(uint32_t link, const uint8_t* p, size_t n) = 0;
  /** Sealed bytes the kernel has not taken; SIZE_MAX when the link is gone. */
  virtual size_t Unsent(uint32_t link) = 0;
};

/** The environment's relays, as the link's TLS drives them. */
class RelayHooks {
 public:
  virtual ~RelayHooks() = default;
  /** The link will split its plaintext into frames from its first byte. */
  virtual void Track(uint32_t link, RelayLinkPort* port) = 0;
  /** A read pass starts: the header bytes held back from the last one, copied to `plain`. */
  virtual size_t Prefix(uint32_t link, uint8_t* plain) = 0;
  /**
   * Split `n` bytes of plaintext into frames; relayed frames are handled here. The frames for
   * JavaScript are moved to the front of `plain`: returns their length. Window updates to send
   * are appended to `ctrl` (the link seals them before its next send). Calls no JavaScript.
   */
  virtual size_t Demux(uint32_t link, uint8_t* plain, size_t n, ByteBuf& ctrl) = 0;
  /** Everything sealed on the link went to the kernel: relays waiting for room read again. */
  virtual void Drained(uint32_t link) = 0;
  /** The link closed: its relays stop (their sessions end through JavaScript's own path). */
  virtual void LinkGone(uint32_t link) = 0;
};

RelayHooks& RelayHooksOf(Napi::Env env);

void RegisterRelay(Napi::Env env, Napi::Object exports);

}  // namespace idg
