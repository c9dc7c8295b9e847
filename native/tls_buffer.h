// The link's output buffer and the OpenSSL BIO that writes into it.
//
// OpenSSL seals records (and writes its handshake messages, KeyUpdates and alerts) into a BIO; ours
// appends to this buffer instead of writing to the socket, so that every record of a batched write
// leaves in one send(2) (native/tlslink.cc flushes it). The BIO never refuses bytes: what bounds the
// buffer is the link's backpressure (JavaScript stops writing at its high-water mark, and the link
// stops reading while OpenSSL's own answers pile up; see OutBuffer::addedWhileReading).
#pragma once

#include <openssl/bio.h>

#include <cstddef>
#include <cstdint>

namespace idg {

/** A growable byte buffer that, unlike std::vector, does not zero what it grows into. */
class ByteBuf {
 public:
  ByteBuf() = default;
  ByteBuf(const ByteBuf&) = delete;
  ByteBuf& operator=(const ByteBuf&) = delete;
  ~ByteBuf();
  uint8_t* data() { return p_; }
  size_t size() const { return size_; }
  size_t capacity() const { return cap_; }
  void clear() { size_ = 0; }
  void reserve(size_t n);
  void append(const void* src, size_t n);
  /** Set the size (at most the capacity). */
  void resize_to(size_t n) { size_ = n; }
  /** Give the memory back when empty (after a burst). */
  void release();

 private:
  uint8_t* p_ = nullptr;
  size_t size_ = 0, cap_ = 0;
};

/** Sealed bytes not yet taken by the kernel: buf[off, size). */
struct OutBuffer {
  ByteBuf buf;
  size_t off = 0;
  /** Set while the link is inside SSL_read: what OpenSSL appends then is its own (KeyUpdate answers, alerts). */
  bool reading = false;
  /** OpenSSL's own bytes appended since the buffer was last empty. */
  size_t addedWhileReading = 0;

  size_t queued() const { return buf.size() - off; }
  bool empty() const { return off == buf.size(); }
  /** Everything went: reset, and shrink after a burst. */
  void consumed();
};

/** A BIO whose writes append to `out` (not owned). */
BIO* NewOutBio(OutBuffer* out);

/**
 * Received bytes not yet taken by OpenSSL: buf[off, size). The link fills it with one read(2) per
 * wake-up; OpenSSL (without read-ahead) takes each record from it. OpenSSL's own read-ahead on the
 * socket would move what is left in its buffer to the front before every record, which costs a
 * multiple of the data with a buffer of many records.
 */
struct InBuffer {
  ByteBuf buf;
  size_t off = 0;
  bool eof = false;  // the peer's FIN: read(2) returned 0

  size_t available() const { return buf.size() - off; }
  /** Room for `n` more bytes at the end (what was taken is dropped first). */
  uint8_t* room(size_t n);
  void added(size_t n) { buf.resize_to(buf.size() + n); }
};

/** A BIO whose reads take from `in` (not owned): retry when it is empty, EOF after the peer's FIN. */
BIO* NewInBio(InBuffer* in);

}  // namespace idg
