// The link's output and input buffers and the OpenSSL BIOs on them.
//
// OpenSSL seals records (and writes its handshake messages, KeyUpdates and alerts) into a BIO; ours
// appends to the output buffer instead of writing to the socket, so that every record of a batched
// write leaves in one send(2) (native/tlslink.cc flushes it). While the link seals JavaScript's
// writes, a whole record goes to the kernel from OpenSSL's own buffer instead (with the small
// records queued before it, one sendmsg(2)), and only what the kernel does not take is copied: the
// copy from OpenSSL's buffer into ours was a tenth of the link's CPU. The BIO never refuses bytes:
// what bounds the buffer is the link's backpressure (JavaScript stops writing at its high-water
// mark, and the link stops reading while OpenSSL's own answers pile up; see
// OutBuffer::addedWhileReading).
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
  /**
   * The link's socket while it seals JavaScript's writes (else -1): a record of kSendDirect bytes
   * or more is sent from OpenSSL's buffer with what is queued before it, with MSG_MORE (the
   * flush after the write pushes); what the kernel does not take is queued, and then so is the
   * rest of the write.
   */
  int sendFd = -1;
  /** A send with MSG_MORE went last: the flush pushes it even with nothing queued. */
  bool morePending = false;
  /** An error of such a send: the link fails with it at its next flush. */
  int sendErrno = 0;

  size_t queued() const { return buf.size() - off; }
  bool empty() const { return off == buf.size(); }
  /** Everything went: reset, and shrink after a burst. */
  void consumed();
};

/** Records of at least this many bytes go to the socket from OpenSSL's buffer (OutBuffer::sendFd). */
constexpr size_t kSendDirect = 4096;

/** A BIO whose writes append to `out` (not owned), or go to out->sendFd first (see there). */
BIO* NewOutBio(OutBuffer* out);

/**
 * Received bytes not yet taken by OpenSSL: buf[off, size). During the handshake the link fills it
 * with one read(2) per wake-up and OpenSSL takes each message from it. After the handshake the
 * BIO reads the socket itself once this is empty (readFd): with OpenSSL's read-ahead and its
 * default buffer of one record, each read(2) brings a record straight into OpenSSL's buffer, where
 * it is opened, instead of a copy of it from ours. (A read-ahead buffer of many records would
 * move what is left of it to the front before every record: a multiple of the data.)
 */
struct InBuffer {
  ByteBuf buf;
  size_t off = 0;
  bool eof = false;  // the peer's FIN: read(2) returned 0
  int readFd = -1;   // the socket, once the BIO reads it itself
  int readErrno = 0; // its read(2) failed with this: OpenSSL sees SSL_ERROR_SYSCALL

  size_t available() const { return buf.size() - off; }
  /** Room for `n` more bytes at the end (what was taken is dropped first). */
  uint8_t* room(size_t n);
  void added(size_t n) { buf.resize_to(buf.size() + n); }
};

/** A BIO whose reads take from `in` (not owned), then from in->readFd if set: retry when there is nothing, EOF after the peer's FIN. */
BIO* NewInBio(InBuffer* in);

}  // namespace idg
