// The native relay of a bridged tunnel session: the bytes between a local TCP socket and its yamux
// stream move here, on the environment's libuv loop, with no JavaScript per chunk. JavaScript
// (src/tunnel/nativebridge.ts) keeps every decision: it hands a session over once it is bridged,
// hears what happens (EOF each way, errors, resets, window stalls) and says what to do (half-close,
// close, reset). The session's state and bounds stay in src/tunnel/sessionlife.ts.
//
//   socket -> peer: the relay reads its socket (a uv_poll on its own dup() of the descriptor) into
//     one scratch buffer as yamux Data frames (12-byte header, then up to the frame size of
//     payload, within the stream's send window), and hands them to the link's TLS write path,
//     behind whatever the link sealed before (RelayLinkPort::SendFrames).
//   peer -> socket: the link's read path splits the plaintext into frames (Demux); a relayed
//     stream's Data is written to its socket directly (what the socket does not take waits in the
//     relay's queue, bounded by the stream's receive window), its window updates, FIN and RST are
//     handled here; every other frame goes up to JavaScript unchanged and in order.
//
// Fairness: a wake-up reads at most kBudget bytes from one socket, then the loop turns (libuv's
// poll is level-triggered, so every readable socket of the link gets its turn). Backpressure: a
// relay stops reading while its link has kLinkHigh bytes sealed and unsent, and reads again once
// the link's buffer is empty (Drained); a socket that does not read holds only its own stream's
// receive window (the peer cannot send more), never the link.
#include "relay.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "env_data.h"
#include "errors.h"
#include "tls_buffer.h"
#include "uv_close.h"

namespace idg {
namespace {

constexpr size_t kHeader = 12;
constexpr size_t kBudget = 256 * 1024;     // socket bytes one relay frames per wake-up
constexpr size_t kLinkHigh = 1024 * 1024;  // relays pause while this much waits on their link
constexpr uint16_t kSyn = 0x1, kFin = 0x4, kRst = 0x8;


void PutHeader(uint8_t* h, uint8_t type, uint16_t flags, uint32_t stream, uint32_t len) {
  h[0] = 0;
  h[1] = type;
  h[2] = static_cast<uint8_t>(flags >> 8);
  h[3] = static_cast<uint8_t>(flags);
  for (int i = 0; i < 4; i++) {
    h[4 + i] = static_cast<uint8_t>(stream >> (24 - 8 * i));
    h[8 + i] = static_cast<uint8_t>(len >> (24 - 8 * i));
  }
}

uint32_t Be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

class RelayRegistry;

struct Relay {
  uint32_t id = 0, link = 0, stream = 0;
  int fd = -1;
  RelayRegistry* registry = nullptr;
  uv_poll_t* poll = nullptr;
  int pollEvents = 0;
  // peer -> socket
  ByteBuf q;  // bytes for the socket: q[qOff, size)
  size_t qOff = 0;
  int64_t recvWindow = 0, recvTarget = 0, maxWindow = 0;
  double rttMs = -1, lastUpdate = 0;
  bool peerFin = false, halfClose = false, finSent = false, stalled = false;
  // socket -> peer
  int64_t sendWindow = 0;
  size_t frameSize = 64 * 1024;
  // Socket bytes Node read before the handover, framed before anything read here (exactly sized:
  // an idle session keeps no buffer).
  std::vector<uint8_t> early;
  size_t earlyOff = 0;
  bool localEof = false, waitingLink = false;
  bool broken = false;  // an error was reported: nothing moves any more
  uint64_t bytesIn = 0, bytesOut = 0;
  size_t queued() const { return q.size() - qOff; }
};

struct LinkState {
  RelayLinkPort* port = nullptr;
  uint8_t held[kHeader];
  size_t heldN = 0;
  uint64_t remaining = 0;  // payload bytes of the current Data frame still to come
  uint32_t curStream = 0;
  uint32_t curRelay = 0;  // 0: the current frame goes to JavaScript
  uint16_t curFlags = 0;
  std::unordered_map<uint32_t, uint32_t> streams;  // stream id -> relay id
  std::vector<uint32_t> waiting;                   // relays paused until the link drains
};

class RelayRegistry final : public RelayTable {
 public:
  explicit RelayRegistry(Napi::Env env) : env_(env) {
    env.AddCleanupHook([this] { Teardown(); });
  }

  // ------------------------------------------------------------ the link's hooks

  void Track(uint32_t link, RelayLinkPort* port) override {
    if (tornDown_) return;
    links_[link].port = port;
  }

  size_t Prefix(uint32_t link, uint8_t* plain) override {
    LinkState* s = FindLink(link);
    if (s == nullptr || s->heldN == 0) return 0;
    std::memcpy(plain, s->held, s->heldN);
    const size_t n = s->heldN;
    s->heldN = 0;
    return n;
  }

  size_t Demux(uint32_t link, uint8_t* p, size_t n, ByteBuf& ctrl) override {
    LinkState* s = FindLink(link);
    if (s == nullptr) return n;
    size_t r = 0, w = 0;
    auto keep = [&](size_t len) {
      if (w != r) std::memmove(p + w, p + r, len);
      w += len;
      r += len;
    };
    while (r < n) {
      if (s->remaining > 0) {
        const size_t k = static_cast<size_t>(std::min<uint64_t>(s->remaining, n - r));
        s->remaining -= k;
        Relay* rl = s->curRelay ? Find(s->curRelay) : nullptr;
        if (s->curRelay == 0) {
          keep(k);
          continue;
        }
        if (rl != nullptr) PeerData(*rl, p + r, k, ctrl);
        r += k;
        if (s->remaining == 0 && rl != nullptr) FrameFlags(*rl, s->curFlags);
        continue;
      }
      if (n - r < kHeader) {  // never split a header between two callbacks
        s->heldN = n - r;
        std::memcpy(s->held, p + r, s->heldN);
        break;
      }
      const uint8_t* h = p + r;
      const uint8_t type = h[1];
      const uint16_t flags = static_cast<uint16_t>((h[2] << 8) | h[3]);
      const uint32_t stream = Be32(h + 4), len = Be32(h + 8);
      uint32_t rid = 0;
      // A SYN for a live stream is JavaScript's to refuse (it resets the stream and its session).
      if (h[0] == 0 && type <= 1 && stream != 0 && !(flags & kSyn)) {
        auto it = s->streams.find(stream);
        if (it != s->streams.end()) rid = it->second;
      }
      Relay* rl = rid ? Find(rid) : nullptr;
      if (rl == nullptr) {  // JavaScript's frame (JavaScript checks its header)
        keep(kHeader);
        if (type == 0) {
          s->remaining = len;
          s->curRelay = 0;
          s->curStream = stream;
        }
        continue;
      }
      r += kHeader;
      if (type == 1) {
        WindowUpdate(*rl, len);
        FrameFlags(*rl, flags);
        continue;
      }
      s->remaining = len;
      s->curRelay = rid;
      s->curStream = stream;
      s->curFlags = flags;
      if (len == 0) FrameFlags(*rl, flags);
    }
    if (!pending_.empty()) StartDelivery();
    return w;
  }

  void Drained(uint32_t link) override {
    LinkState* s = FindLink(link);
    if (s == nullptr || s->waiting.empty()) return;
    std::vector<uint32_t> waiting;
    waiting.swap(s->waiting);
    for (uint32_t id : waiting) {
      Relay* r = Find(id);
      if (r == nullptr) continue;
      r->waitingLink = false;
      UpdatePoll(*r);
    }
  }

  void LinkGone(uint32_t link) override {
    auto it = links_.find(link);
    if (it == links_.end()) return;
    std::unordered_map<uint32_t, uint32_t> streams;
    streams.swap(it->second.streams);
    links_.erase(it);
    for (auto& e : streams) Close(e.second, false);
  }

  // ------------------------------------------------------------ JavaScript's calls

  /**
   * Whether `stream` of `link` can be relayed now: the link tracks frames, and no frame of the
   * stream is half-way up to JavaScript (its rest would go up too: the caller keeps its own path).
   */
  bool CanOpen(uint32_t link, uint32_t stream) override {
    LinkState* s = FindLink(link);
    if (s == nullptr || tornDown_ || s->streams.count(stream)) return false;
    return !(s->remaining > 0 && s->curRelay == 0 && s->curStream == stream);
  }

  /** A relay for `stream` of `link` on a dup() of `fd`; 0 when the link cannot take it now. */
  Napi::Value Open(const Napi::CallbackInfo& info) override {
    const uint32_t link = IdArg(info, 0);
    const uint32_t stream = IdArg(info, 1);
    const int fdIn = info[2].As<Napi::Number>().Int32Value();
    Napi::Object o = info[3].As<Napi::Object>();
    if (!CanOpen(link, stream)) return Napi::Number::New(env_, 0);
    LinkState* s = FindLink(link);
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env_, &loop) != napi_ok || loop == nullptr) return ThrowError(env_, "no libuv loop");
    const int fd = ::fcntl(fdIn, F_DUPFD_CLOEXEC, 3);
    if (fd < 0) return ThrowSystemError(env_, errno, "fcntl", "duplicating a bridged socket");
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    auto poll = std::make_unique<uv_poll_t>();
    const int rc = uv_poll_init(loop, poll.get(), fd);
    if (rc != 0) {
      ::close(fd);
      return ThrowError(env_, std::string("uv_poll_init: ") + uv_strerror(rc));
    }
    auto r = std::make_unique<Relay>();
    r->id = nextId_++;
    r->link = link;
    r->stream = stream;
    r->fd = fd;
    r->registry = this;
    r->poll = poll.release();
    r->poll->data = r.get();
    auto num = [&](const char* k, double d) {
      Napi::Value v = o.Get(k);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : d;
    };
    r->recvWindow = static_cast<int64_t>(num("recvWindow", 256 * 1024));
    r->recvTarget = static_cast<int64_t>(num("recvTarget", 256 * 1024));
    r->maxWindow = std::max(r->recvTarget, static_cast<int64_t>(num("maxWindow", 16 * 1024 * 1024)));
    r->sendWindow = static_cast<int64_t>(num("sendWindow", 256 * 1024));
    r->frameSize = static_cast<size_t>(std::max(1.0, num("frameSize", 64 * 1024)));
    r->rttMs = num("rttMs", -1);
    r->lastUpdate = static_cast<double>(uv_now(loop));
    Napi::Value toPeer = o.Get("toPeer");
    if (toPeer.IsBuffer()) {
      auto b = toPeer.As<Napi::Buffer<uint8_t>>();
      r->early.assign(b.Data(), b.Data() + b.Length());
    }
    // What the stream held for the reader goes to the (fresh) socket at once; only what it does
    // not take is queued.
    Napi::Value toSocket = o.Get("toSocket");
    if (toSocket.IsBuffer()) {
      auto b = toSocket.As<Napi::Buffer<uint8_t>>();
      const ssize_t x = WriteSome(*r, b.Data(), b.Length());
      if (x >= 0 && static_cast<size_t>(x) < b.Length()) r->q.append(b.Data() + x, b.Length() - static_cast<size_t>(x));
    }
    const uint32_t id = r->id;
    Relay* raw = r.get();
    relays_[id] = std::move(r);
    s->streams[stream] = id;
    UpdatePoll(*raw);
    // A session handed over mid-stream may owe the peer credit: bytes the JavaScript path took
    // without crediting yet (it credits a quarter of the window at a time). With the window spent
    // the peer sends nothing more, so no later frame would bring the credit: it goes now.
    if (raw->queued() == 0) SendCredit(*raw);
    // Bytes Node had read give the socket no readable edge: they go in the check phase.
    if (raw->early.size() > 0) kicks_.push_back(id);
    StartDelivery();  // the kick, or an error writing what the stream held
    return Napi::Number::New(env_, id);
  }

  /** The stream's peer ended: once the queue is written, FIN to the socket's peer (kFinSent). */
  void HalfClose(uint32_t id) override {
    Relay* r = Find(id);
    if (r == nullptr || r->halfClose) return;
    r->halfClose = true;
    if (r->queued() == 0) ShutdownWrite(*r);
    UpdatePoll(*r);
    if (!pending_.empty()) StartDelivery();
  }

  /** Stop relaying and close our descriptor; `reset`: the socket's peer gets an RST. */
  void Close(uint32_t id, bool reset) override {
    auto it = relays_.find(id);
    if (it == relays_.end()) return;
    std::unique_ptr<Relay> r = std::move(it->second);
    relays_.erase(it);
    if (LinkState* s = FindLink(r->link)) {
      auto st = s->streams.find(r->stream);
      if (st != s->streams.end() && st->second == id) s->streams.erase(st);
      if (s->curRelay == id) s->curRelay = UINT32_MAX;  // the rest of its frame is dropped
    }
    if (reset) {
      struct linger lg = {1, 0};
      ::setsockopt(r->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    // The descriptor and the relay go once libuv has let go of the poll (never under a caller).
    Relay* raw = r.release();
    CloseHandles(
        [raw] {
          ::close(raw->fd);
          delete raw;
        },
        raw->poll);
  }

  Napi::Value Stats(uint32_t id) override {
    Relay* r = Find(id);
    if (r == nullptr) return env_.Undefined();
    Napi::Object o = Napi::Object::New(env_);
    o.Set("bytesIn", Napi::Number::New(env_, static_cast<double>(r->bytesIn)));
    o.Set("bytesOut", Napi::Number::New(env_, static_cast<double>(r->bytesOut)));
    o.Set("queued", Napi::Number::New(env_, static_cast<double>(r->queued())));
    o.Set("recvWindow", Napi::Number::New(env_, static_cast<double>(r->recvWindow)));
    o.Set("recvTarget", Napi::Number::New(env_, static_cast<double>(r->recvTarget)));
    o.Set("sendWindow", Napi::Number::New(env_, static_cast<double>(r->sendWindow)));
    return o;
  }

  /** Bytes moved both ways (the session's idle measure), cheaper than Stats. */
  double Bytes(uint32_t id) override {
    Relay* r = Find(id);
    return r == nullptr ? -1 : static_cast<double>(r->bytesIn + r->bytesOut);
  }

  size_t Count() const override { return relays_.size(); }

  /** One function gets every relay's events (no reference per relay: idle sessions cost less). */
  void SetDispatch(Napi::Function fn) override { dispatch_ = Napi::Persistent(fn); }

 private:
  Relay* Find(uint32_t id) {
    auto it = relays_.find(id);
    return it == relays_.end() ? nullptr : it->second.get();
  }

  LinkState* FindLink(uint32_t link) {
    auto it = links_.find(link);
    return it == links_.end() ? nullptr : &it->second;
  }

  void Report(Relay& r, int kind, int err = 0) {
    pending_.push_back({r.id, kind, err});
  }

  void Broken(Relay& r, int kind, int err = 0) {
    if (r.broken) return;
    r.broken = true;
    Report(r, kind, err);
    UpdatePoll(r);
  }

  // ------------------------------------------------------------ peer -> socket

  void PeerData(Relay& r, const uint8_t* p, size_t k, ByteBuf& ctrl) {
    if (r.broken) return;
    if (r.peerFin) return Broken(r, kDataAfterFin);
    if (static_cast<int64_t>(k) > r.recvWindow) return Broken(r, kWindowError);
    r.recvWindow -= static_cast<int64_t>(k);
    if (r.queued() == 0) {
      const ssize_t x = WriteSome(r, p, k);
      if (x < 0) return;
      p += x;
      k -= static_cast<size_t>(x);
    }
    if (k > 0) {
      if (r.queued() == 0) {
        r.q.clear();
        r.qOff = 0;
      }
      r.q.append(p, k);
      if (r.recvWindow == 0 && !r.stalled) {
        r.stalled = true;
        Report(r, kStall);
      }
      UpdatePoll(r);
    }
    Credit(r, ctrl);
  }

  /** write(2) what the socket takes: the count, or -1 after reporting an error. */
  ssize_t WriteSome(Relay& r, const uint8_t* p, size_t k) {
    size_t done = 0;
    while (done < k) {
      const ssize_t x = ::write(r.fd, p + done, k - done);
      if (x < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        Broken(r, kLocalError, errno);
        return -1;
      }
      done += static_cast<size_t>(x);
    }
    r.bytesIn += done;
    return static_cast<ssize_t>(done);
  }

  void WindowUpdate(Relay& r, uint32_t delta) {
    if (delta == 0 || r.broken) return;
    const bool wasShut = r.sendWindow <= 0;
    r.sendWindow = std::min<int64_t>(r.sendWindow + delta, 0xffffffffLL);
    if (wasShut) UpdatePoll(r);
  }

  void FrameFlags(Relay& r, uint16_t flags) {
    if (r.broken) return;
    if (flags & kRst) return Broken(r, kPeerReset);
    if ((flags & kFin) && !r.peerFin) {
      r.peerFin = true;
      Report(r, kPeerFin);
    }
  }

  /**
   * Credit the peer with what the socket took, once that is a quarter of the window, doubling the
   * window when the socket drains it within two round trips (as MuxStream does in JavaScript).
   */
  void Credit(Relay& r, ByteBuf& out) {
    if (r.peerFin || r.broken) return;
    const int64_t credit = r.recvTarget - r.recvWindow - static_cast<int64_t>(r.queued());
    if (credit <= 0 || credit < r.recvTarget / 4) return;
    uv_loop_t* loop = r.poll->loop;
    const double now = static_cast<double>(uv_now(loop));
    int64_t grow = 0;
    if (r.recvTarget < r.maxWindow && (r.rttMs < 0 || now - r.lastUpdate < 2 * std::max(r.rttMs, 1.0))) {
      const int64_t next = std::min(r.recvTarget * 2, r.maxWindow);
      grow = next - r.recvTarget;
      r.recvTarget = next;
    }
    r.lastUpdate = now;
    r.recvWindow += credit + grow;
    r.stalled = false;
    uint8_t h[kHeader];
    PutHeader(h, 1, 0, r.stream, static_cast<uint32_t>(credit + grow));
    out.append(h, kHeader);
  }

  void ShutdownWrite(Relay& r) {
    if (r.finSent) return;
    r.finSent = true;
    ::shutdown(r.fd, SHUT_WR);
    Report(r, kFinSent);
  }

  /** The socket is writable: the queue, then our FIN if asked, then the peer's credit. */
  void WriteQueue(uint32_t id) {
    Relay* r = Find(id);
    if (r == nullptr || r->broken) return;
    if (r->queued() > 0) {
      const ssize_t x = WriteSome(*r, r->q.data() + r->qOff, r->queued());
      if (x < 0) return;
      r->qOff += static_cast<size_t>(x);
      if (r->queued() == 0) {
        r->q.clear();
        r->qOff = 0;
        r->q.release();  // an idle session keeps no buffer
      }
    }
    if (r->halfClose && r->queued() == 0) ShutdownWrite(*r);
    SendCredit(*r);
  }

  /** The peer's credit for what the socket took, if it is due, straight to the link. */
  void SendCredit(Relay& r) {
    ByteBuf& wu = scratch_;
    wu.clear();
    Credit(r, wu);
    if (wu.size() == 0) return;
    RelayLinkPort* port = PortOf(r);
    if (port != nullptr) port->SendFrames(r.link, wu.data(), wu.size());
  }

  // ------------------------------------------------------------ socket -> peer

  RelayLinkPort* PortOf(const Relay& r) {
    LinkState* s = FindLink(r.link);
    return s == nullptr ? nullptr : s->port;
  }

  /** Frame what the socket has (within the send window and this wake-up's budget) and send it. */
  void ReadSocket(uint32_t id) {
    Relay* r = Find(id);
    if (r == nullptr || r->broken || r->localEof || r->sendWindow <= 0) return;
    RelayLinkPort* port = PortOf(*r);
    if (port == nullptr) return;
    if (port->Unsent(r->link) >= kLinkHigh) {
      r->waitingLink = true;
      FindLink(r->link)->waiting.push_back(r->id);
      return UpdatePoll(*r);
    }
    ByteBuf& out = scratch_;
    out.clear();
    size_t budget = kBudget;
    int readErr = 0;
    while (r->earlyOff < r->early.size() && r->sendWindow > 0) {
      const size_t k = std::min<size_t>({r->early.size() - r->earlyOff, static_cast<size_t>(r->sendWindow), r->frameSize});
      uint8_t h[kHeader];
      PutHeader(h, 0, 0, r->stream, static_cast<uint32_t>(k));
      out.append(h, kHeader);
      out.append(r->early.data() + r->earlyOff, k);
      r->earlyOff += k;
      r->sendWindow -= static_cast<int64_t>(k);
      r->bytesOut += k;
      if (r->earlyOff == r->early.size()) {
        std::vector<uint8_t>().swap(r->early);
        r->earlyOff = 0;
      }
    }
    while (budget > 0 && r->sendWindow > 0 && r->earlyOff >= r->early.size()) {
      const size_t want = std::min<size_t>({budget, static_cast<size_t>(r->sendWindow), r->frameSize});
      out.reserve(out.size() + kHeader + want);
      uint8_t* at = out.data() + out.size();
      const ssize_t x = ::read(r->fd, at + kHeader, want);
      if (x > 0) {
        PutHeader(at, 0, 0, r->stream, static_cast<uint32_t>(x));
        out.resize_to(out.size() + kHeader + static_cast<size_t>(x));
        r->sendWindow -= x;
        r->bytesOut += static_cast<size_t>(x);
        budget -= static_cast<size_t>(x);
        if (static_cast<size_t>(x) < want) break;  // drained for now
        continue;
      }
      if (x == 0) {
        r->localEof = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) readErr = errno;
      break;
    }
    if (out.size() > 0 && !port->SendFrames(r->link, out.data(), out.size())) return;  // the link failed
    r = Find(id);
    if (r == nullptr) return;
    if (r->localEof) Report(*r, kLocalEof);
    if (readErr != 0) Broken(*r, kLocalError, readErr);
    UpdatePoll(*r);
  }

  // ------------------------------------------------------------ plumbing

  void UpdatePoll(Relay& r) {
    int ev = 0;
    if (!r.broken) {
      if (!r.localEof && r.sendWindow > 0 && !r.waitingLink) ev |= UV_READABLE;
      if (r.queued() > 0) ev |= UV_WRITABLE;
    }
    if (ev == r.pollEvents) return;
    r.pollEvents = ev;
    if (ev == 0) {
      uv_poll_stop(r.poll);
      return;
    }
    uv_poll_start(r.poll, ev, [](uv_poll_t* h, int status, int events) {
      auto* rl = static_cast<Relay*>(h->data);
      rl->registry->OnPoll(rl->id, status, events);
    });
  }

  void OnPoll(uint32_t id, int status, int events) {
    Relay* r = Find(id);
    if (r == nullptr) return;
    Napi::HandleScope scope(env_);  // a send that fails the link reports it from here
    if (status < 0) {
      int soErr = 0;
      socklen_t len = sizeof soErr;
      if (::getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &soErr, &len) != 0 || soErr == 0) soErr = -status;
      Broken(*r, kLocalError, soErr);
    } else {
      if (events & UV_WRITABLE) WriteQueue(id);
      if (events & UV_READABLE) ReadSocket(id);
      r = Find(id);
      if (r != nullptr) UpdatePoll(*r);
    }
    if (!pending_.empty()) StartDelivery();
  }

  /** Events go to JavaScript in the loop's check phase: never inside a link's read pass. */
  void StartDelivery() {
    if (check_ == nullptr) {
      uv_loop_t* loop = nullptr;
      if (napi_get_uv_event_loop(env_, &loop) != napi_ok || loop == nullptr) return;
      check_ = new uv_check_t;
      uv_check_init(loop, check_);
      check_->data = this;
      uv_unref(reinterpret_cast<uv_handle_t*>(check_));
      // An active idle handle keeps the loop from blocking in poll before the check phase (when
      // this is asked outside the poll phase: JavaScript's relayOpen from a timer).
      awake_ = new uv_idle_t;
      uv_idle_init(loop, awake_);
      uv_unref(reinterpret_cast<uv_handle_t*>(awake_));
    }
    if (checkOn_) return;
    if (pending_.empty() && kicks_.empty()) return;
    checkOn_ = true;
    uv_check_start(check_, [](uv_check_t* h) { static_cast<RelayRegistry*>(h->data)->Deliver(); });
    uv_idle_start(awake_, [](uv_idle_t*) {});
  }

  void Deliver() {
    checkOn_ = false;
    uv_check_stop(check_);
    uv_idle_stop(awake_);
    Napi::HandleScope scope(env_);
    std::vector<uint32_t> kicks;
    kicks.swap(kicks_);
    for (uint32_t id : kicks) ReadSocket(id);
    std::vector<PendingEvent> events;
    events.swap(pending_);
    for (const PendingEvent& e : events) {
      Relay* r = Find(e.relay);
      if (r == nullptr || dispatch_.IsEmpty()) continue;
      dispatch_.Value().MakeCallback(env_.Global(),
                                     {Napi::Number::New(env_, e.relay), Napi::Number::New(env_, e.kind),
                                      Napi::Number::New(env_, e.err)},
                                     context());
      ReportUncaught(env_);
    }
  }

  napi_async_context context() {
    if (context_ == nullptr) context_ = std::make_unique<Napi::AsyncContext>(env_, "ipdeadgate:relay");
    return *context_;
  }

  void Teardown() {
    tornDown_ = true;
    std::vector<uint32_t> ids;
    for (auto& e : relays_) ids.push_back(e.first);
    for (uint32_t id : ids) Close(id, false);
    links_.clear();
    pending_.clear();
    if (check_ != nullptr) {
      CloseHandles(nullptr, std::exchange(check_, nullptr), std::exchange(awake_, nullptr));
    }
    context_.reset();
    dispatch_.Reset();
  }

  struct PendingEvent {
    uint32_t relay;
    int kind;
    int err;
  };

  Napi::Env env_;
  bool tornDown_ = false;
  uint32_t nextId_ = 1;
  std::unordered_map<uint32_t, std::unique_ptr<Relay>> relays_;
  std::unordered_map<uint32_t, LinkState> links_;
  std::vector<PendingEvent> pending_;
  std::vector<uint32_t> kicks_;  // relays with bytes to frame that no poll will announce
  uv_check_t* check_ = nullptr;
  uv_idle_t* awake_ = nullptr;
  bool checkOn_ = false;
  ByteBuf scratch_;  // one wake-up's frames (used and emptied within one call)
  std::unique_ptr<Napi::AsyncContext> context_;
  Napi::FunctionReference dispatch_;  // (relay, kind, errno)
};

}  // namespace

RelayHooks& RelayHooksOf(Napi::Env env) { return EnvData::Get<RelayRegistry>(env); }

RelayTable& RelaysOf(Napi::Env env) { return EnvData::Get<RelayRegistry>(env); }

}  // namespace idg
