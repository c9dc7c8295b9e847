// Live libpcap handles (pcap(3PCAP)) polled on the environment's libuv loop: what ARP/NDP
// verification (src/sys/packet/neighlink.ts), `ipdeadgate capture` and the flight recorder read
// and send frames through.
//
// Why our own and not the `cap` package: cap's uv_poll callback asserts `status == 0`, and libuv
// calls it with UV_EBADF when the packet socket reports POLLERR — which the kernel raises with
// ENETDOWN on every AF_PACKET socket bound to an interface that goes down or is deleted
// (net/packet/af_packet.c, packet_notifier). So `ip link set DEV down` aborted the daemon. cap also
// never uv_close()s its poll handle (it only stops it, then closes the fd under it), polls on
// uv_default_loop(), and leaves a half-open handle behind a failed open. Here:
//   - a poll error or a libpcap read error is reported to JavaScript once, as an error carrying the
//     socket's own errno (SO_ERROR: ENETDOWN when the interface went down or away), and the handle
//     stops reading; JavaScript closes it and opens a new one when the interface is back (a packet
//     socket bound to a deleted interface never receives again, so a new handle is needed anyway);
//   - close() stops the poll, uv_close()s the handle, and pcap_close()s (closing the fd) only in
//     the close callback, once libuv is done with the fd; close is idempotent and safe from inside
//     the packet callback, and an environment cleanup hook closes every handle left open;
//   - a failed open releases everything it made before throwing;
//   - packets are read at most kMaxPacketsPerWakeup per loop turn and handed to JavaScript after
//     libpcap's dispatch returned, so a callback that closes the handle never runs inside libpcap.
#include <pcap/pcap.h>
#include <sys/socket.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "env_data.h"
#include "errors.h"
#include "exports.h"
#include "uv_close.h"

namespace idg {
namespace {

constexpr int kMaxPacketsPerWakeup = 64;

struct Packet {
  std::vector<uint8_t> data;
  uint32_t wireLength;
  double tsMs;
};

class PcapRegistry;

struct Handle {
  uint32_t id;
  std::string ifname;
  pcap_t* pcap = nullptr;
  uv_poll_t* poll = nullptr;
  Napi::FunctionReference callback;
  bool failed = false;
};

class PcapRegistry {
 public:
  explicit PcapRegistry(Napi::Env env) : env_(env) { env.AddCleanupHook([this] { Teardown(); }); }

  Napi::Value Open(const std::string& ifname, const std::string& filter, int snaplen, int bufferBytes,
                   pcap_direction_t direction, Napi::Function callback) {
    if (tornDown_) return ThrowError(env_, "libpcap handles are shut down (environment teardown)");
    char errbuf[PCAP_ERRBUF_SIZE] = {0};
    pcap_t* p = pcap_create(ifname.c_str(), errbuf);
    if (p == nullptr) return ThrowPcap(EIO, "pcap_create", ifname, errbuf);
    // Released on every failure path below.
    std::unique_ptr<pcap_t, void (*)(pcap_t*)> owned(p, pcap_close);
    pcap_set_snaplen(p, snaplen);
    // Never promiscuous: a daemon that decides from frames must see no more than the kernel takes.
    // (On a veth or behind a bridge a packet socket still receives frames for other MACs, marked
    // PACKET_OTHERHOST; readers check each frame's destination themselves.)
    pcap_set_promisc(p, 0);
    pcap_set_immediate_mode(p, 1);
    pcap_set_buffer_size(p, bufferBytes);
    const int st = pcap_activate(p);
    if (st < 0) {
      int err = EIO;
      if (st == PCAP_ERROR_NO_SUCH_DEVICE) err = ENODEV;
      else if (st == PCAP_ERROR_PERM_DENIED) err = EPERM;
      else if (st == PCAP_ERROR_IFACE_NOT_UP) err = ENETDOWN;
      const char* text = st == PCAP_ERROR ? pcap_geterr(p) : pcap_statustostr(st);
      return ThrowPcap(err, "pcap_activate", ifname, text);
    }
    if (direction != PCAP_D_INOUT && pcap_setdirection(p, direction) != 0)
      return ThrowPcap(EINVAL, "pcap_setdirection", ifname, pcap_geterr(p));
    if (!filter.empty()) {
      struct bpf_program prog;
      if (pcap_compile(p, &prog, filter.c_str(), 1, PCAP_NETMASK_UNKNOWN) != 0)
        return ThrowPcap(EINVAL, "pcap_compile", ifname, pcap_geterr(p));
      const int rc = pcap_setfilter(p, &prog);
      pcap_freecode(&prog);
      if (rc != 0) return ThrowPcap(EINVAL, "pcap_setfilter", ifname, pcap_geterr(p));
    }
    if (pcap_setnonblock(p, 1, errbuf) != 0) return ThrowPcap(EIO, "pcap_setnonblock", ifname, errbuf);
    const int fd = pcap_get_selectable_fd(p);
    if (fd < 0) return ThrowPcap(EIO, "pcap_get_selectable_fd", ifname, "no selectable descriptor");
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env_, &loop) != napi_ok || loop == nullptr)
      return ThrowError(env_, "no libuv loop for this environment");
    auto* poll = new uv_poll_t;
    int rc = uv_poll_init(loop, poll, fd);
    if (rc != 0) {
      delete poll;
      return ThrowPcap(-rc, "uv_poll_init", ifname, uv_strerror(rc));
    }
    const uint32_t id = nextId_++;
    poll->data = this;
    rc = uv_poll_start(poll, UV_READABLE, [](uv_poll_t* h, int status, int) {
      auto* self = static_cast<PcapRegistry*>(h->data);
      self->OnReadable(h, status);
    });
    if (rc != 0) {
      CloseHandles(nullptr, poll);
      return ThrowPcap(-rc, "uv_poll_start", ifname, uv_strerror(rc));
    }
    Handle& handle = handles_[id];
    handle.id = id;
    handle.ifname = ifname;
    handle.pcap = owned.release();
    handle.poll = poll;
    handle.callback = Napi::Persistent(callback);
    byPoll_[poll] = id;
    Napi::Object out = Napi::Object::New(env_);
    out.Set("id", Napi::Number::New(env_, id));
    out.Set("linkType", Napi::Number::New(env_, pcap_datalink(handle.pcap)));
    out.Set("fd", Napi::Number::New(env_, fd));
    return out;
  }

  Napi::Value Send(uint32_t id, const uint8_t* data, size_t length) {
    auto it = handles_.find(id);
    if (it == handles_.end()) {
      return ThrowSystemError(env_, EBADF, "pcap_inject", "sending on a closed libpcap handle");
    }
    Handle& h = it->second;
    if (pcap_inject(h.pcap, data, length) < 0) {
      // libpcap keeps errno from send(2); its text has the detail.
      const int err = errno != 0 ? errno : EIO;
      return ThrowPcap(err, "pcap_inject", h.ifname, pcap_geterr(h.pcap));
    }
    return env_.Undefined();
  }

  /** Replace the kernel filter of an open handle; packets queued under the old one stay queued. */
  Napi::Value SetFilter(uint32_t id, const std::string& filter) {
    auto it = handles_.find(id);
    if (it == handles_.end() || it->second.pcap == nullptr) {
      return ThrowSystemError(env_, EBADF, "pcap_setfilter", "filtering on a closed libpcap handle");
    }
    Handle& h = it->second;
    struct bpf_program prog;
    if (pcap_compile(h.pcap, &prog, filter.c_str(), 1, PCAP_NETMASK_UNKNOWN) != 0)
      return ThrowPcap(EINVAL, "pcap_compile", h.ifname, pcap_geterr(h.pcap));
    const int rc = pcap_setfilter(h.pcap, &prog);
    pcap_freecode(&prog);
    if (rc != 0) return ThrowPcap(EINVAL, "pcap_setfilter", h.ifname, pcap_geterr(h.pcap));
    return env_.Undefined();
  }

  /** The kernel's counts since the handle opened (libpcap keeps running totals): passed the filter, dropped. */
  Napi::Value Stats(uint32_t id) {
    auto it = handles_.find(id);
    if (it == handles_.end() || it->second.pcap == nullptr) return env_.Null();
    struct pcap_stat st = {};
    if (pcap_stats(it->second.pcap, &st) != 0) return env_.Null();
    Napi::Object out = Napi::Object::New(env_);
    out.Set("received", Napi::Number::New(env_, st.ps_recv));
    out.Set("dropped", Napi::Number::New(env_, st.ps_drop));
    return out;
  }

  /** Idempotent; safe from inside the handle's own callback. */
  void Close(uint32_t id) {
    auto it = handles_.find(id);
    if (it == handles_.end()) return;
    Release(it->second);
    handles_.erase(it);
  }

  size_t Count() const { return handles_.size(); }

 private:
  /** A system error with libpcap's own text as `pcapMessage` (its errbuf or pcap_geterr: the detail). */
  Napi::Error PcapError(int err, const char* syscall, const std::string& what, const char* text) {
    Napi::Error e = MakeSystemError(env_, err, syscall, what);
    e.Set("pcapMessage", Napi::String::New(env_, text ? text : ""));
    return e;
  }

  /** A libpcap call on `ifname` failed. */
  Napi::Value ThrowPcap(int err, const char* syscall, const std::string& ifname, const char* text) {
    return Throw(PcapError(err, syscall, "libpcap on " + ifname, text));
  }

  /** The uv handle goes through uv_close; the pcap handle (and its fd) only once libuv is done with it. */
  void Release(Handle& h) {
    if (h.poll == nullptr) return;
    byPoll_.erase(h.poll);
    pcap_t* p = std::exchange(h.pcap, nullptr);
    CloseHandles([p] { if (p != nullptr) pcap_close(p); }, std::exchange(h.poll, nullptr));
    h.callback.Reset();
  }

  static void Collect(u_char* user, const struct pcap_pkthdr* hdr, const u_char* bytes) {
    auto* out = reinterpret_cast<std::vector<Packet>*>(user);
    Packet p;
    p.data.assign(bytes, bytes + hdr->caplen);
    p.wireLength = hdr->len;
    p.tsMs = static_cast<double>(hdr->ts.tv_sec) * 1000.0 + static_cast<double>(hdr->ts.tv_usec) / 1000.0;
    out->push_back(std::move(p));
  }

  void OnReadable(uv_poll_t* poll, int status) {
    auto found = byPoll_.find(poll);
    if (found == byPoll_.end()) return;
    const uint32_t id = found->second;
    Handle& h = handles_[id];
    if (h.failed) return;
    std::vector<Packet> packets;
    int err = 0;
    std::string text;
    const char* syscall = "poll";
    if (status < 0) {
      // POLLERR (libuv reports UV_EBADF and has stopped the handle): the socket's pending error
      // says what happened, ENETDOWN for an interface that went down or away.
      int soErr = 0;
      socklen_t len = sizeof soErr;
      const int fd = pcap_get_selectable_fd(h.pcap);
      if (fd >= 0 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soErr, &len) == 0 && soErr != 0) err = soErr;
      else err = -status;
      syscall = "getsockopt";
      text = "the packet socket reported an error";
    } else {
      const int n = pcap_dispatch(h.pcap, kMaxPacketsPerWakeup, Collect, reinterpret_cast<u_char*>(&packets));
      if (n == PCAP_ERROR) {
        err = errno != 0 ? errno : EIO;
        // libpcap turns the socket's ENETDOWN into text; keep its errno meaning for JavaScript.
        text = pcap_geterr(h.pcap);
        if (text.find("went down") != std::string::npos || text.find("disappeared") != std::string::npos)
          err = ENETDOWN;
        syscall = "pcap_dispatch";
      }
    }
    Napi::HandleScope scope(env_);
    Napi::Function callback = h.callback.Value();
    if (!packets.empty()) {
      Napi::Array arr = Napi::Array::New(env_, packets.size());
      for (size_t i = 0; i < packets.size(); i++) {
        Napi::Object o = Napi::Object::New(env_);
        o.Set("data", Napi::Buffer<uint8_t>::Copy(env_, packets[i].data.data(), packets[i].data.size()));
        o.Set("wireLength", Napi::Number::New(env_, packets[i].wireLength));
        o.Set("tsMs", Napi::Number::New(env_, packets[i].tsMs));
        arr.Set(static_cast<uint32_t>(i), o);
      }
      callback.MakeCallback(env_.Global(), {env_.Null(), arr}, context());
      if (!ReportUncaught(env_)) return;
    }
    if (err != 0) {
      // The handle is useless from here on: stop reading and report once.
      auto again = handles_.find(id);
      if (again == handles_.end() || again->second.poll == nullptr) return;  // closed by the callback
      again->second.failed = true;
      uv_poll_stop(again->second.poll);
      Napi::Error e = PcapError(err, syscall, "reading packets on " + again->second.ifname, text.c_str());
      Napi::Function cb = again->second.callback.Value();
      cb.MakeCallback(env_.Global(), {e.Value()}, context());
      ReportUncaught(env_);
    }
  }

  napi_async_context context() {
    if (context_ == nullptr) context_ = std::make_unique<Napi::AsyncContext>(env_, "ipdeadgate:pcap");
    return *context_;
  }

  void Teardown() {
    tornDown_ = true;
    for (auto& entry : handles_) Release(entry.second);
    handles_.clear();
    context_.reset();
  }

  Napi::Env env_;
  bool tornDown_ = false;
  uint32_t nextId_ = 1;
  std::unordered_map<uint32_t, Handle> handles_;
  std::unordered_map<uv_poll_t*, uint32_t> byPoll_;
  std::unique_ptr<Napi::AsyncContext> context_;
};

PcapRegistry& Registry(Napi::Env env) { return EnvData::Get<PcapRegistry>(env); }

// pcapOpen(ifname, filter, snaplen, bufferBytes, direction, callback(err, packets)): { id, linkType, fd }
// direction: "inout" (both), "in" (received frames only) or "out" (sent frames only).
Napi::Value PcapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[0].IsString() || !info[1].IsString() || !info[2].IsNumber() ||
      !info[3].IsNumber() || !info[4].IsString() || !info[5].IsFunction())
    return ThrowTypeError(env, "pcapOpen(ifname, filter, snaplen, bufferBytes, direction, callback): bad arguments");
  const std::string dir = info[4].As<Napi::String>().Utf8Value();
  pcap_direction_t direction;
  if (dir == "inout") direction = PCAP_D_INOUT;
  else if (dir == "in") direction = PCAP_D_IN;
  else if (dir == "out") direction = PCAP_D_OUT;
  else return ThrowTypeError(env, "pcapOpen: direction must be \"inout\", \"in\" or \"out\"");
  return Registry(env).Open(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value(),
                            info[2].As<Napi::Number>().Int32Value(), info[3].As<Napi::Number>().Int32Value(),
                            direction, info[5].As<Napi::Function>());
}

// pcapSend(id, buffer)
Napi::Value PcapSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1) || !info[1].IsBuffer())
    return ThrowTypeError(env, "pcapSend(id, buffer): bad arguments");
  auto buf = info[1].As<Napi::Buffer<uint8_t>>();
  return Registry(env).Send(IdArg(info), buf.Data(), buf.Length());
}

// pcapClose(id): idempotent
Napi::Value PcapClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1)) return ThrowTypeError(env, "pcapClose(id): bad arguments");
  Registry(env).Close(IdArg(info));
  return env.Undefined();
}

// pcapSetFilter(id, filter)
Napi::Value PcapSetFilter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1) || !info[1].IsString())
    return ThrowTypeError(env, "pcapSetFilter(id, filter): bad arguments");
  return Registry(env).SetFilter(IdArg(info), info[1].As<Napi::String>().Utf8Value());
}

// pcapStats(id): { received, dropped } or null for a closed handle
Napi::Value PcapStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1)) return ThrowTypeError(env, "pcapStats(id): bad arguments");
  return Registry(env).Stats(IdArg(info));
}

// pcapCount(): open handles in this environment (tests, leak checks)
Napi::Value PcapCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Registry(info.Env()).Count()));
}

}  // namespace

void RegisterPcap(Napi::Env env, Napi::Object exports) {
  exports.Set("pcapOpen", Napi::Function::New(env, PcapOpen, "pcapOpen"));
  exports.Set("pcapSend", Napi::Function::New(env, PcapSend, "pcapSend"));
  exports.Set("pcapClose", Napi::Function::New(env, PcapClose, "pcapClose"));
  exports.Set("pcapCount", Napi::Function::New(env, PcapCount, "pcapCount"));
  exports.Set("pcapSetFilter", Napi::Function::New(env, PcapSetFilter, "pcapSetFilter"));
  exports.Set("pcapStats", Napi::Function::New(env, PcapStats, "pcapStats"));
  exports.Set("pcapLinkTypeEthernet", Napi::Number::New(env, DLT_EN10MB));
}

}  // namespace idg
