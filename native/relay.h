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

/** What a relay's callback gets as its first argument (relayEvents in JavaScript). */
enum RelayEvent {
  kLocalEof = 1,    // the socket's peer sent FIN, and every byte before it went out as frames
  kPeerFin = 2,     // the stream's peer sent FIN (its data before it is queued for the socket)
  kFinSent = 3,     // after halfClose: the queue went to the socket, then our FIN
  kLocalError = 4,  // reading or writing the socket failed (arg: errno)
  kPeerReset = 5,   // the stream's peer sent RST
  kWindowError = 6, // the peer sent past the receive window: a protocol error (the link goes)
  kDataAfterFin = 7,// the peer sent data after its FIN: the stream is broken
  kStall = 8,       // the receive window is used up with bytes still waiting for the socket
};

/** The environment's relays, as JavaScript drives them (native/relay_bindings.cc). */
class RelayTable : public RelayHooks {
 public:
  /** relayOpen(link, stream, fd, options): the relay's id, or 0 when it cannot be now. */
  virtual Napi::Value Open(const Napi::CallbackInfo& info) = 0;
  /** Whether the link tracks frames and none of the stream's is half-way up to JavaScript. */
  virtual bool CanOpen(uint32_t link, uint32_t stream) = 0;
  /** The stream's peer ended: FIN to the socket once its queue is written (kFinSent). */
  virtual void HalfClose(uint32_t id) = 0;
  /** Stop relaying and close the relay's descriptor; `reset`: SO_LINGER 0 first. */
  virtual void Close(uint32_t id, bool reset) = 0;
  virtual Napi::Value Stats(uint32_t id) = 0;
  /** Bytes moved both ways, or -1 once closed. */
  virtual double Bytes(uint32_t id) = 0;
  virtual size_t Count() const = 0;
  /** The function that gets every relay's events: (relay id, RelayEvent, errno). */
  virtual void SetDispatch(Napi::Function fn) = 0;
};

RelayTable& RelaysOf(Napi::Env env);

void RegisterRelay(Napi::Env env, Napi::Object exports);

}  // namespace idg
