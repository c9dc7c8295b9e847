#include "tls_buffer.h"

#include <cstdlib>
#include <cstring>

namespace idg {

ByteBuf::~ByteBuf() { std::free(p_); }

void ByteBuf::reserve(size_t n) {
  if (n <= cap_) return;
  size_t c = cap_ ? cap_ : 64 * 1024;
  while (c < n) c *= 2;
  auto* q = static_cast<uint8_t*>(std::realloc(p_, c));
  if (q == nullptr) std::abort();  // as operator new would
  p_ = q;
  cap_ = c;
}

void ByteBuf::append(const void* src, size_t n) {
  reserve(size_ + n);
  std::memcpy(p_ + size_, src, n);
  size_ += n;
}

void ByteBuf::release() {
  if (size_ != 0) return;
  std::free(p_);
  p_ = nullptr;
  cap_ = 0;
}

void OutBuffer::consumed() {
  buf.clear();
  off = 0;
  addedWhileReading = 0;
  if (buf.capacity() > 4 * 1024 * 1024) buf.release();
}

uint8_t* InBuffer::room(size_t n) {
  if (off > 0) {
    const size_t left = available();
    if (left > 0) std::memmove(buf.data(), buf.data() + off, left);  // at most a partial record
    buf.resize_to(left);
    off = 0;
  }
  buf.reserve(buf.size() + n);
  return buf.data() + buf.size();
}

namespace {

int InRead(BIO* bio, char* data, size_t len, size_t* readbytes) {
  auto* in = static_cast<InBuffer*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (in == nullptr) return 0;
  const size_t n = len < in->available() ? len : in->available();
  if (n == 0) {
    if (!in->eof) BIO_set_retry_read(bio);
    return 0;
  }
  std::memcpy(data, in->buf.data() + in->off, n);
  in->off += n;
  *readbytes = n;
  return 1;
}

long InCtrl(BIO* bio, int cmd, long, void*) {
  auto* in = static_cast<InBuffer*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_EOF:
      return in != nullptr && in->eof && in->available() == 0 ? 1 : 0;
    case BIO_CTRL_PENDING:
      return in != nullptr ? static_cast<long>(in->available()) : 0;
    case BIO_CTRL_FLUSH:
      return 1;
    default:
      return 0;
  }
}

int OutWrite(BIO* bio, const char* data, size_t len, size_t* written) {
  auto* out = static_cast<OutBuffer*>(BIO_get_data(bio));
  if (out == nullptr) return 0;
  if (out->empty() && out->off > 0) out->consumed();
  out->buf.append(data, len);
  if (out->reading) out->addedWhileReading += len;
  *written = len;
  return 1;
}

long OutCtrl(BIO*, int cmd, long, void*) {
  // OpenSSL flushes its write BIO after each flight; nothing to do, the link sends.
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

int OutCreate(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

const BIO_METHOD* OutMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ipdeadgate link output");
    if (m == nullptr) return m;
    BIO_meth_set_write_ex(m, OutWrite);
    BIO_meth_set_ctrl(m, OutCtrl);
    BIO_meth_set_create(m, OutCreate);
    return m;
  }();
  return method;
}

const BIO_METHOD* InMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ipdeadgate link input");
    if (m == nullptr) return m;
    BIO_meth_set_read_ex(m, InRead);
    BIO_meth_set_ctrl(m, InCtrl);
    BIO_meth_set_create(m, OutCreate);
    return m;
  }();
  return method;
}

}  // namespace

BIO* NewInBio(InBuffer* in) {
  const BIO_METHOD* m = InMethod();
  BIO* bio = m ? BIO_new(m) : nullptr;
  if (bio != nullptr) BIO_set_data(bio, in);
  return bio;
}

BIO* NewOutBio(OutBuffer* out) {
  const BIO_METHOD* m = OutMethod();
  BIO* bio = m ? BIO_new(m) : nullptr;
  if (bio != nullptr) BIO_set_data(bio, out);
  return bio;
}

}  // namespace idg
