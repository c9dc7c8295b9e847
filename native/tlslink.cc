// The tunnel link's TLS data path: an OpenSSL TLS 1.3 session on the link's socket, polled on the
// environment's libuv loop, with the batching Node's TLSSocket lacks.
//
// Why not Node's TLSSocket: the tunnel was measured behind ssh -L (AES-GCM) and stunnel4 in CPU per
// GB (docs/BENCHMARKS.md), and the profile put the gap in Node's TLS layer, not the cipher: Node
// joins every batched write into a new allocation before SSL_write, and hands up each 16 KiB record
// with its own callback. Here OpenSSL does all of TLS (handshake, record protection, KeyUpdate,
// alerts, close_notify; its limits on KeyUpdates and empty records, its max_fragment_length) and
// the addon does the I/O around it:
//   - a batched write is SSL_write_ex'd piece by piece (small pieces gathered into whole records)
//     into a BIO that appends to one output buffer (tls_buffer.h), sent with one send(2);
//   - a wake-up reads the socket with one read(2) of up to 256 KiB of records into the link's
//     input buffer, which OpenSSL reads through a BIO, and SSL_read_ex's into one buffer until
//     WANT_READ, handed up with one callback. (OpenSSL's own read-ahead on the socket would do
//     the same read, but moves what is left of its buffer to the front before every record.)
// Our buffers cost two copies of every byte (a sealed record into the output buffer, a received
// record into OpenSSL's), on top of the two OpenSSL's API makes. Sending each record from
// OpenSSL's buffer (sendmsg, MSG_MORE) and letting OpenSSL read the socket itself (read-ahead, a
// read(2) per record) saves them, but on a veth pair the system call per record cost as much or
// more (docs/BENCHMARKS.md, "Copies around OpenSSL's record layer"): one send(2) per batch and one
// read(2) per wake-up stay.
// We send a KeyUpdate before AES-GCM's record limit (RFC 8446 5.5), which Node's TLS never does
// for a long-lived link.
//
// Memory: the output buffer holds what JavaScript wrote (bounded by its high-water mark: it stops
// writing until 'drain') and what OpenSSL writes on its own while reading (KeyUpdate answers,
// alerts). The link stops reading while the latter exceeds kMaxOwnOutput and the kernel has not
// taken it, so a peer that sends and never reads cannot grow it further.
//
// Lifetime: each link is a handle in this environment's registry, closed exactly once (close(),
// a fatal error, or the environment's cleanup hook): the poll and idle handles are stopped and
// uv_close()d, and the socket is closed once libuv is done with both.
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

#include "env_data.h"
#include "errors.h"
#include "exports.h"
#include "relay.h"
#include "tls_buffer.h"
#include "tls_context.h"
#include "tls_errors.h"
#include "tls_handshake.h"
#include "tls_registry.h"
#include "unique_fd.h"
#include "uv_close.h"

namespace idg {
namespace {

constexpr size_t kMaxPlain = 16384;          // RFC 8446 5.1: 2^14
constexpr size_t kReadBuffer = 256 * 1024;   // plaintext handed up per callback, at most
constexpr size_t kReadSize = 256 * 1024;     // one read(2) takes at most this much
constexpr int kMaxReadPasses = 4;            // callbacks per wake-up before yielding to the loop
// What OpenSSL may queue on its own (KeyUpdate answers, alerts) before the link stops reading.
constexpr size_t kMaxOwnOutput = 64 * 1024;
// Plaintext pieces smaller than kDirect are gathered into records of up to kGather bytes.
constexpr size_t kGather = kMaxPlain;
constexpr size_t kDirect = 4096;
// RFC 8446 5.5: at most 2^24.5 AES-GCM records per key. We update our key well before.
constexpr uint64_t kDefaultRekeyRecords = uint64_t(1) << 23;

class TlsRegistry;

struct Link {
  uint32_t id = 0;
  TlsRegistry* registry = nullptr;
  int fd = -1;
  bool server = false;
  SSL* ssl = nullptr;
  // Until the handshake is over: the ALPN callback reads the context, which JavaScript may free.
  std::shared_ptr<Context> context;
  uv_poll_t* poll = nullptr;
  uv_idle_t* idle = nullptr;  // a read pass for records OpenSSL holds already (no readable edge)
  int pollEvents = 0;
  bool idleOn = false;
  Napi::FunctionReference callback;
  bool secure = false;
  uint64_t rekeyRecords = kDefaultRekeyRecords;
  RecordCounters counters;
  InBuffer in;    // received bytes, OpenSSL takes records from them
  OutBuffer out;
  ByteBuf gather;                   // small pieces of a write, until a record's worth
  uint8_t* plain = nullptr;         // the next data callback's buffer (kReadBuffer bytes)
  bool drainWanted = false;
  bool reading = false;
  bool ended = false;       // close_notify seen
  bool endPending = false;  // end() asked while output was pending or before the handshake
  bool wroteEnd = false;    // close_notify written: nothing more is written
  bool finPending = false;  // ... and FIN waits for the queue to empty
  bool frames = false;      // the plaintext is split into yamux frames first (native/relay.h)
  uint64_t handedUp = 0;    // plaintext bytes handed to JavaScript
  uint64_t sent = 0;        // bytes the kernel took
  ~Link() { std::free(plain); }
};

class TlsRegistry final : public TlsLinks, public RelayLinkPort {
 public:
  explicit TlsRegistry(Napi::Env env) : env_(env) { env.AddCleanupHook([this] { Teardown(); }); }

  Napi::Value NewContext(const Napi::Object& o) override {
    ContextError err;
    std::shared_ptr<Context> c = MakeContext(o, err);
    if (c == nullptr && err.sslError != 0) return Throw(TlsError(env_, OpenSslCode(err.sslError), err.what));
    if (c == nullptr) return ThrowError(env_, err.what);
    const uint32_t id = nextId_++;
    contexts_[id] = std::move(c);
    return Napi::Number::New(env_, id);
  }

  void FreeContext(uint32_t id) override { contexts_.erase(id); }

  Napi::Value Open(uint32_t ctxId, int fdIn, bool server, double rekey, Napi::Function callback) override {
    auto cit = contexts_.find(ctxId);
    if (cit == contexts_.end()) return ThrowError(env_, "tlsOpen: unknown context");
    if (tornDown_) return ThrowError(env_, "TLS links are shut down (environment teardown)");
    // Our own descriptor: the caller's socket object may be destroyed (closing its descriptor)
    // without touching the connection.
    UniqueFd fd(::fcntl(fdIn, F_DUPFD_CLOEXEC, 3));  // closed on every failure below
    if (!fd.Valid()) return ThrowSystemError(env_, errno, "fcntl", "duplicating the link's socket");
    ::fcntl(fd.Get(), F_SETFL, ::fcntl(fd.Get(), F_GETFL) | O_NONBLOCK);
    auto link = std::make_unique<Link>();
    link->server = server;
    link->registry = this;
    if (rekey >= 1) link->rekeyRecords = static_cast<uint64_t>(rekey);
    link->context = cit->second;
    link->ssl = NewLinkSsl(cit->second->ctx, server, &link->in, &link->out, &link->counters);
    if (link->ssl == nullptr) return Throw(OpenSslError(env_, "SSL_new"));
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env_, &loop) != napi_ok || loop == nullptr) {
      SSL_free(link->ssl);
      return ThrowError(env_, "no libuv loop for this environment");
    }
    auto poll = std::make_unique<uv_poll_t>();
    const int rc = uv_poll_init(loop, poll.get(), fd.Get());
    if (rc != 0) {
      SSL_free(link->ssl);
      return ThrowSystemError(env_, -rc, "uv_poll_init", uv_strerror(rc));
    }
    auto idle = std::make_unique<uv_idle_t>();
    uv_idle_init(loop, idle.get());
    link->poll = poll.release();
    link->idle = idle.release();
    link->fd = fd.Release();  // the link owns it now (Release() closes it)
    link->poll->data = link.get();
    link->idle->data = link.get();
    const uint32_t id = nextId_++;
    link->id = id;
    link->callback = Napi::Persistent(callback);
    Link* raw = link.get();
    links_[id] = std::move(link);
    // The handshake starts on the next wake-up, never inside this call: JavaScript has its
    // listeners in place before any event.
    SetPoll(*raw, UV_WRITABLE);
    return Napi::Number::New(env_, id);
  }

  /** Seal and send; the bytes the kernel did not take yet (0: all went; otherwise kDrain follows). */
  Napi::Value Write(uint32_t id, const Napi::Array& bufs) override {
    Link* l = Find(id);
    if (l == nullptr) return ThrowError(env_, "tlsWrite: the link is closed");
    if (!l->secure) return ThrowError(env_, "tlsWrite: the handshake has not finished");
    if (l->wroteEnd) return ThrowError(env_, "tlsWrite: write after end");
    for (uint32_t i = 0; i < bufs.Length(); i++) {
      Napi::Value v = bufs.Get(i);
      if (!v.IsBuffer()) return ThrowError(env_, "tlsWrite: not a Buffer");
    }
    for (uint32_t i = 0; i < bufs.Length(); i++) {
      auto b = bufs.Get(i).As<Napi::Buffer<uint8_t>>();
      if (!Feed(*l, b.Data(), b.Length())) return Napi::Number::New(env_, 0);  // failed: reported
    }
    if (l->gather.size() > 0 && !WriteGathered(*l)) return Napi::Number::New(env_, 0);
    if (!Flush(*l)) return Napi::Number::New(env_, 0);
    const size_t queued = l->out.queued();
    if (queued > 0) l->drainWanted = true;
    return Napi::Number::New(env_, static_cast<double>(queued));
  }

  void SetReading(uint32_t id, bool on) override {
    Link* l = Find(id);
    if (l == nullptr) return;
    l->reading = on;
    if (!l->secure) return;
    UpdatePoll(*l);
    // Records OpenSSL read already give the socket no readable edge: a pass on the next turn.
    if (on && !l->ended && Buffered(*l)) StartIdle(*l);
  }

  /**
   * close_notify and FIN once everything queued has gone; returns the bytes still queued for the
   * kernel (then kDrain follows once they and the close_notify are out).
   */
  Napi::Value End(uint32_t id) override {
    Link* l = Find(id);
    if (l == nullptr) return Napi::Number::New(env_, 0);
    if (!l->wroteEnd) {
      l->endPending = true;  // before 'secure': sent once the handshake is over, as Node's TLS does
      if (l->secure && l->out.empty()) SendEnd(*l);
      l = Find(id);
      if (l == nullptr) return Napi::Number::New(env_, 0);
    }
    return Napi::Number::New(env_, static_cast<double>(l->secure ? l->out.queued() : 0));
  }

  /** Split the plaintext into frames from now on: only before any of it went up (false then). */
  bool TrackFrames(uint32_t id) override {
    Link* l = Find(id);
    if (l == nullptr || l->handedUp > 0) return false;
    if (!l->frames) RelayHooksOf(env_).Track(id, this);
    l->frames = true;
    return true;
  }

  bool SendFrames(uint32_t id, const uint8_t* p, size_t n) override {
    Link* l = Find(id);
    if (l == nullptr) return false;
    if (!l->secure || l->wroteEnd) return true;  // the mux is ending the link: nothing more goes
    if (!Feed(*l, p, n)) return false;
    if (l->gather.size() > 0 && !WriteGathered(*l)) return false;
    return Flush(*l);
  }

  size_t Unsent(uint32_t id) override {
    Link* l = Find(id);
    return l == nullptr ? SIZE_MAX : l->out.queued() + l->gather.size();
  }

  Napi::Value Stats(uint32_t id) override {
    Link* l = Find(id);
    if (l == nullptr) return env_.Undefined();
    const RecordCounters& c = l->counters;
    Napi::Object o = Napi::Object::New(env_);
    o.Set("txRecords", Napi::Number::New(env_, static_cast<double>(c.txRecords)));
    o.Set("rxRecords", Napi::Number::New(env_, static_cast<double>(c.rxRecords)));
    o.Set("keyUpdatesSent", Napi::Number::New(env_, static_cast<double>(c.keyUpdatesSent)));
    o.Set("keyUpdatesReceived", Napi::Number::New(env_, static_cast<double>(c.keyUpdatesReceived)));
    o.Set("queued", Napi::Number::New(env_, static_cast<double>(l->out.queued())));
    o.Set("outCapacity", Napi::Number::New(env_, static_cast<double>(l->out.buf.capacity())));
    o.Set("sent", Napi::Number::New(env_, static_cast<double>(l->sent)));
    return o;
  }

  void Close(uint32_t id) override {
    auto it = links_.find(id);
    if (it == links_.end()) return;
    std::unique_ptr<Link> link = std::move(it->second);
    links_.erase(it);
    Release(std::move(link));
  }

  size_t Count() const override { return links_.size(); }

 private:
  Link* Find(uint32_t id) {
    auto it = links_.find(id);
    return it == links_.end() ? nullptr : it->second.get();
  }

  static void Release(std::unique_ptr<Link> link) {
    if (link->frames) RelayHooksOf(link->registry->env_).LinkGone(link->id);
    if (link->ssl) {
      SSL_free(link->ssl);  // OpenSSL wipes its keys
      link->ssl = nullptr;
    }
    link->context.reset();
    // The descriptor is closed once libuv has let go of both handles.
    const int fd = std::exchange(link->fd, -1);
    CloseHandles([fd] { if (fd >= 0) ::close(fd); }, std::exchange(link->poll, nullptr),
                 std::exchange(link->idle, nullptr));
  }

  void SetPoll(Link& l, int events) {
    if (l.poll == nullptr) return;
    if (events == l.pollEvents) return;
    l.pollEvents = events;
    if (events == 0) {
      uv_poll_stop(l.poll);
      return;
    }
    uv_poll_start(l.poll, events, [](uv_poll_t* h, int status, int ev) {
      auto* link = static_cast<Link*>(h->data);
      link->registry->OnPoll(link->id, status, ev);
    });
  }

  void StartIdle(Link& l) {
    if (l.idle == nullptr || l.idleOn) return;
    l.idleOn = true;
    uv_idle_start(l.idle, [](uv_idle_t* h) {
      auto* link = static_cast<Link*>(h->data);
      link->idleOn = false;
      uv_idle_stop(h);
      TlsRegistry* r = link->registry;
      Napi::HandleScope scope(r->env_);
      r->ReadPass(link->id);
    });
  }

  /** Received bytes that give the socket no readable edge: in our input buffer or OpenSSL's. */
  static bool Buffered(Link& l) { return l.in.available() > 0 || SSL_has_pending(l.ssl) == 1; }

  /** OpenSSL's own output the kernel has not taken is over its bound: no reading until it goes. */
  static bool OwnOutputFull(const Link& l) {
    return !l.out.empty() && l.out.addedWhileReading >= kMaxOwnOutput;
  }

  void UpdatePoll(Link& l) {
    int ev = 0;
    if (l.reading && !l.ended && !OwnOutputFull(l)) ev |= UV_READABLE;
    // Also when everything went but a drain or FIN is owed: the next wake-up (at once, the socket
    // is writable) delivers it, outside whatever call emptied the buffer.
    if (!l.out.empty() || l.drainWanted || l.finPending || (l.endPending && !l.wroteEnd)) ev |= UV_WRITABLE;
    SetPoll(l, ev);
  }

  void OnPoll(uint32_t id, int status, int events) {
    Link* l = Find(id);
    if (l == nullptr) return;
    Napi::HandleScope scope(env_);  // errors and buffers made below live in this wake-up's scope
    if (status < 0) {
      int soErr = 0;
      socklen_t len = sizeof soErr;
      if (::getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &soErr, &len) != 0 || soErr == 0) soErr = -status;
      return Fail(id, MakeSystemError(env_, soErr, "poll", "polling the link's socket"));
    }
    if (!l->secure) return Handshake(id);
    if (events & UV_WRITABLE) {
      const bool wasFull = OwnOutputFull(*l);
      if (!Flush(*l)) return;
      if (l->out.empty() && l->endPending && !l->wroteEnd) {
        SendEnd(*l);
        l = Find(id);
        if (l == nullptr) return;
      }
      if (l->out.empty()) FinishEnd(*l);
      // kDrain: everything queued, the close_notify included, went to the kernel.
      if (l->out.empty() && l->drainWanted) {
        l->drainWanted = false;
        Emit(id, kDrain, env_.Undefined());
        l = Find(id);
        if (l == nullptr) return;
      }
      // Reading was held for OpenSSL's own output; what it holds already has no readable edge.
      if (wasFull && !OwnOutputFull(*l) && l->reading && Buffered(*l)) StartIdle(*l);
    }
    if ((events & UV_READABLE) && l->reading && !l->ended) ReadPass(id);
  }

  // ------------------------------------------------------------ handshake

  void Handshake(uint32_t id) {
    Link* l = Find(id);
    int r, e, sys;
    for (;;) {
      ERR_clear_error();
      errno = 0;
      r = SSL_do_handshake(l->ssl);
      e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(l->ssl, r);
      sys = errno;
      if (e != SSL_ERROR_WANT_READ) break;
      const int got = FillIn(*l);
      if (got == -EAGAIN) break;
      if (got < 0) {
        sys = -got;
        e = SSL_ERROR_SYSCALL;
        break;
      }
    }
    if (r != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
      // OpenSSL wrote its alert (a refused certificate, no common protocol, ...): send it first.
      Napi::Error err = SslCallError(env_, l->ssl, e, sys, "the link's TLS handshake");
      return Fail(id, err);
    }
    if (!Flush(*l)) return;
    if (r != 1) return SetPoll(*l, UV_READABLE | (l->out.empty() ? 0 : UV_WRITABLE));
    // Done: the peer's certificate was verified in the handshake (tls_context.cc).
    l->context.reset();
    l->secure = true;
    l->counters.secure = true;
    Napi::HandleScope scope(env_);
    Napi::Object info = SecureInfo(env_, l->ssl);
    SetPoll(*l, 0);
    Emit(id, kSecure, info);
    l = Find(id);
    if (l == nullptr) return;
    UpdatePoll(*l);
    if (l->endPending && !l->wroteEnd && l->out.empty()) {
      SendEnd(*l);
      l = Find(id);
      if (l == nullptr) return;
    }
    // Records that came with the handshake's last flight are in OpenSSL's buffer already.
    if (l->reading && Buffered(*l)) StartIdle(*l);
  }

  // ------------------------------------------------------------ sending

  /**
   * One piece of a write. A large piece (a frame's payload) is sealed straight from its buffer, in
   * whole records, after what was gathered before it as a record of its own (a frame header: a
   * small record costs less than copying the payload behind it); small pieces are gathered into
   * records.
   */
  bool Feed(Link& l, const uint8_t* p, size_t n) {
    if (n >= kDirect) {
      if (l.gather.size() > 0 && !WriteGathered(l)) return false;
      const size_t whole = n - n % kMaxPlain;
      if (whole > 0 && !SslWrite(l, p, whole)) return false;
      p += whole;
      n -= whole;
    }
    while (n > 0) {
      const size_t take = std::min(n, kGather - l.gather.size());
      l.gather.append(p, take);
      p += take;
      n -= take;
      if (l.gather.size() == kGather && !WriteGathered(l)) return false;
    }
    return true;
  }

  bool WriteGathered(Link& l) {
    const bool ok = SslWrite(l, l.gather.data(), l.gather.size());
    l.gather.clear();
    return ok;
  }

  /** SSL_write_ex in chunks, with our KeyUpdate whenever a key has sealed rekeyRecords records. */
  bool SslWrite(Link& l, const uint8_t* p, size_t n) {
    while (n > 0) {
      RecordCounters& c = l.counters;
      if (c.txSinceKey >= l.rekeyRecords && SSL_get_key_update_type(l.ssl) == SSL_KEY_UPDATE_NONE)
        SSL_key_update(l.ssl, SSL_KEY_UPDATE_NOT_REQUESTED);  // sent first by the next SSL_write
      const uint64_t left = c.txSinceKey < l.rekeyRecords ? l.rekeyRecords - c.txSinceKey : 1;
      const size_t chunk = std::min<uint64_t>(n, std::min<uint64_t>(left, 64) * kMaxPlain);
      size_t written = 0;
      ERR_clear_error();
      errno = 0;
      const int r = SSL_write_ex(l.ssl, p, chunk, &written);
      if (r != 1) {
        const int e = SSL_get_error(l.ssl, r);
        Fail(l.id, SslCallError(env_, l.ssl, e, errno, "sealing records"));
        return false;
      }
      p += written;
      n -= written;
    }
    return true;
  }

  /** Write what is queued; false when the link failed (reported). */
  bool Flush(Link& l) {
    while (!l.out.empty()) {
      const ssize_t n = ::send(l.fd, l.out.buf.data() + l.out.off, l.out.queued(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        Fail(l.id, MakeSystemError(env_, errno, "write", "writing to the link"));
        return false;
      }
      l.out.off += static_cast<size_t>(n);
      l.sent += static_cast<uint64_t>(n);
    }
    if (l.out.empty()) {
      l.out.consumed();
      if (l.frames) RelayHooksOf(env_).Drained(l.id);  // relays waiting for room read again
    }
    if (l.secure) UpdatePoll(l);
    return true;
  }

  /** close_notify (SSL_shutdown); FIN follows once everything queued has gone (FinishEnd). */
  void SendEnd(Link& l) {
    l.endPending = false;
    l.wroteEnd = true;
    ERR_clear_error();
    const int r = SSL_shutdown(l.ssl);
    if (r < 0) {
      const int e = SSL_get_error(l.ssl, r);
      return Fail(l.id, SslCallError(env_, l.ssl, e, errno, "sending close_notify"));
    }
    l.finPending = true;
    const uint32_t id = l.id;
    if (!Flush(l)) return;
    Link* again = Find(id);
    if (again == nullptr) return;
    if (again->out.empty()) FinishEnd(*again);
    else again->drainWanted = true;  // kDrain once the close_notify is out
  }

  void FinishEnd(Link& l) {
    if (!l.finPending) return;
    l.finPending = false;
    ::shutdown(l.fd, SHUT_WR);
  }

  // ------------------------------------------------------------ receiving

  /** One read(2) into the input buffer: the bytes read, 0 at the peer's FIN, else -errno (-EAGAIN: nothing yet). */
  int FillIn(Link& l) {
    if (l.in.eof) return -EAGAIN;  // OpenSSL has seen the end already
    uint8_t* at = l.in.room(kReadSize);
    for (;;) {
      const ssize_t n = ::read(l.fd, at, kReadSize);
      if (n > 0) {
        l.in.added(static_cast<size_t>(n));
        return static_cast<int>(n);
      }
      if (n == 0) {
        l.in.eof = true;
        return 0;
      }
      if (errno == EINTR) continue;
      return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
  }

  /**
   * SSL_read_ex into one buffer until OpenSSL wants the socket again (or the buffer is full), then
   * one data callback; at most kMaxReadPasses of them per wake-up.
   */
  void ReadPass(uint32_t id) {
    for (int pass = 0; pass < kMaxReadPasses; pass++) {
      Link* l = Find(id);
      if (l == nullptr || !l->reading || l->ended || OwnOutputFull(*l)) return;
      if (l->plain == nullptr) {
        l->plain = static_cast<uint8_t*>(std::malloc(kReadBuffer));
        if (l->plain == nullptr) std::abort();  // as operator new would
      }
      // A frame header held back from the last pass comes first (native/relay.h).
      size_t got = l->frames ? RelayHooksOf(env_).Prefix(id, l->plain) : 0;
      int stop = SSL_ERROR_NONE, sys = 0;
      l->out.reading = true;
      while (got < kReadBuffer && !OwnOutputFull(*l)) {
        size_t n = 0;
        ERR_clear_error();
        errno = 0;
        const int r = SSL_read_ex(l->ssl, l->plain + got, kReadBuffer - got, &n);
        if (r == 1) {
          got += n;
          stop = SSL_ERROR_NONE;  // a WANT_READ before this read is over: the buffer may fill
          continue;
        }
        stop = SSL_get_error(l->ssl, r);
        sys = errno;
        if (stop == SSL_ERROR_WANT_READ) {
          const int more = FillIn(*l);
          if (more == -EAGAIN) break;
          if (more < 0) {
            stop = SSL_ERROR_SYSCALL;
            sys = -more;
            break;
          }
          continue;  // bytes or the peer's FIN: OpenSSL takes them
        }
        break;
      }
      // The peer asked for our KeyUpdate: one answer for every request of this pass (RFC 8446
      // 4.6.3 asks for one before our next application data; OpenSSL would wait for our next write).
      if ((stop == SSL_ERROR_NONE || stop == SSL_ERROR_WANT_READ) && !l->wroteEnd &&
          SSL_get_key_update_type(l->ssl) != SSL_KEY_UPDATE_NONE &&
          SSL_key_update(l->ssl, SSL_KEY_UPDATE_NOT_REQUESTED) == 1)
        SSL_do_handshake(l->ssl);
      l->out.reading = false;
      // Relayed streams' frames are handled natively; the rest goes up. Window updates for them
      // leave with the next send.
      if (l->frames && got > 0) {
        ByteBuf ctrl;
        got = RelayHooksOf(env_).Demux(id, l->plain, got, ctrl);
        if (ctrl.size() > 0 && !SslWrite(*l, ctrl.data(), ctrl.size())) return;
      }
      // A failure is reported after the data that authenticated before it, and after the alert
      // OpenSSL wrote for it (Fail sends what is queued).
      Napi::Error err;
      if (stop != SSL_ERROR_NONE && stop != SSL_ERROR_WANT_READ && stop != SSL_ERROR_ZERO_RETURN)
        err = SslCallError(env_, l->ssl, stop, sys, "reading from the link");
      else if (!Flush(*l))
        return;
      if (got > 0) {
        l->handedUp += got;
        Emit(id, kData, TakePlain(*l, got), static_cast<double>(got));
        l = Find(id);
        if (l == nullptr) return;
      }
      if (!err.IsEmpty()) return Fail(id, err);
      if (stop == SSL_ERROR_ZERO_RETURN) return PeerEnded(id);
      if (stop == SSL_ERROR_WANT_READ) return;
      // The buffer filled (or our own output did): more may be waiting in OpenSSL's buffer.
    }
    Link* l = Find(id);
    if (l != nullptr && l->reading && !l->ended && !OwnOutputFull(*l) && Buffered(*l)) StartIdle(*l);
  }

  /** The plaintext as a JavaScript buffer: small ones copied, large ones handed over. */
  Napi::Buffer<uint8_t> TakePlain(Link& l, size_t got) {
    if (got < kReadBuffer / 8) return Napi::Buffer<uint8_t>::Copy(env_, l.plain, got);
    auto* p = static_cast<uint8_t*>(std::realloc(l.plain, got));  // shrinks in place
    if (p == nullptr) p = l.plain;
    l.plain = nullptr;
    return Napi::Buffer<uint8_t>::New(env_, p, got, [](Napi::Env, uint8_t* d) { std::free(d); });
  }

  void PeerEnded(uint32_t id) {
    Link* l = Find(id);
    l->ended = true;
    UpdatePoll(*l);
    Emit(id, kEnd, env_.Undefined());
  }

  // ------------------------------------------------------------ plumbing

  void Emit(uint32_t id, int kind, Napi::Value arg, double extra = 0) {
    Link* l = Find(id);
    if (l != nullptr) Call(l->callback, kind, arg, extra);
  }

  /**
   * Report once and close: the link is gone (Find() is null) before JavaScript hears of it. What
   * is queued (the alert OpenSSL wrote for the failure) gets one try at the kernel first.
   */
  void Fail(uint32_t id, Napi::Error err) {
    Link* l = Find(id);
    if (l == nullptr) return;
    if (!l->out.empty()) {
      (void)!::send(l->fd, l->out.buf.data() + l->out.off, l->out.queued(), MSG_NOSIGNAL | MSG_DONTWAIT);
      ::shutdown(l->fd, SHUT_WR);
    }
    Napi::FunctionReference cb = std::move(l->callback);
    Close(id);
    Call(cb, kError, err.Value(), 0);
  }

  /** An exception from a callback is an uncaught exception, as in any Node event callback. */
  void Call(Napi::FunctionReference& cb, int kind, Napi::Value arg, double extra) {
    Napi::HandleScope scope(env_);
    cb.Value().MakeCallback(env_.Global(), {Napi::Number::New(env_, kind), arg, Napi::Number::New(env_, extra)},
                            context());
    ReportUncaught(env_);
  }

  napi_async_context context() {
    if (context_ == nullptr) context_ = std::make_unique<Napi::AsyncContext>(env_, "ipdeadgate:tls");
    return *context_;
  }

  void Teardown() {
    tornDown_ = true;
    for (auto& entry : links_) Release(std::move(entry.second));
    links_.clear();
    contexts_.clear();
    context_.reset();
  }

  Napi::Env env_;
  bool tornDown_ = false;
  uint32_t nextId_ = 1;
  std::unordered_map<uint32_t, std::unique_ptr<Link>> links_;
  std::unordered_map<uint32_t, std::shared_ptr<Context>> contexts_;
  std::unique_ptr<Napi::AsyncContext> context_;
};

}  // namespace

TlsLinks& TlsLinksOf(Napi::Env env) { return EnvData::Get<TlsRegistry>(env); }

}  // namespace idg
