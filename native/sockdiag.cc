// sock_diag dump of TCP sockets (NETLINK_SOCK_DIAG, inet_diag_req_v2; include/uapi/linux/inet_diag.h,
// include/uapi/linux/sock_diag.h). The whole dump runs on a libuv threadpool thread
// (Napi::AsyncWorker): socket, sendmsg, the recvmsg loop and parsing into flat rows. The main thread
// only wraps the finished buffers into ArrayBuffers (no copy), so a dump of 100 000 sockets costs the
// event loop almost nothing here; src/sys/sockdiag.ts turns rows into objects in time-bounded chunks.
//
// Result handed to JS:
//   rows:   Uint32Array, row-major, `columns` values per socket (names in sockDiagColumns)
//   addrs:  Uint8Array, every distinct address once, as text, back to back
//   addrOffsets: Uint32Array, address i is addrs[addrOffsets[i] .. addrOffsets[i+1])
// Addresses are deduplicated on the worker (a host has few local addresses and usually few peers),
// so the main thread decodes each distinct address once instead of once per socket.
//
// sockDiagCount runs the same dump (without tcp_info) but only counts sockets per family and state
// on the worker: the main thread gets one small Uint32Array, however many sockets the host has, so
// a count for `status` creates no per-socket objects and no garbage; its kernel walk runs at nice
// 19 on a thread of its own (DumpWorker::Execute).
#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "errors.h"
#include "exports.h"
#include "tcp_info_row.h"
#include "unique_fd.h"

namespace idg {
namespace {

#define IDG_SOCK_COLUMNS(X)                                                                            \
  X(family) X(srcAddr) X(srcPort) X(dstAddr) X(dstPort) X(state) X(inode) X(uid) X(ifindex) X(timer) \
  X(timerRetransmits) X(timerExpiresMs) X(mark) X(markKnown)

constexpr size_t kBaseColumns = 0 IDG_SOCK_COLUMNS(IDG_COUNT_COLUMN);

// The kernel fills at most 32 KiB per recvmsg of a dump (netlink_dump caps its skb there).
constexpr size_t kRecvBufferSize = 64 * 1024;
// A dump never hangs a threadpool thread: the kernel answers at once or something is badly wrong.
constexpr time_t kRecvTimeoutSeconds = 10;
// Kernel TCP states are 1..12 (include/net/tcp_states.h, TCP_NEW_SYN_RECV = 12); counts are indexed
// [family (0 = IPv4, 1 = IPv6)][state], 16 slots per family.
constexpr size_t kCountStates = 16;

struct AddressKey {
  uint64_t hi;
  uint64_t lo;
  int family;
  bool operator==(const AddressKey& o) const { return hi == o.hi && lo == o.lo && family == o.family; }
};
struct AddressKeyHash {
  size_t operator()(const AddressKey& k) const {
    return std::hash<uint64_t>()((k.hi * 0x9E3779B97F4A7C15ull) ^ k.lo ^ static_cast<uint64_t>(k.family));
  }
};

/** Distinct addresses as text; `Index` returns the position of an address, adding it when new. */
class AddressTable {
 public:
  uint32_t Index(int family, const uint8_t* bytes) {
    AddressKey key{0, 0, family};
    if (family == AF_INET) {
      uint32_t v4;
      std::memcpy(&v4, bytes, 4);
      key.lo = v4;
    } else {
      std::memcpy(&key.hi, bytes, 8);
      std::memcpy(&key.lo, bytes + 8, 8);
    }
    auto it = index_.find(key);
    if (it != index_.end()) return it->second;
    char text[INET6_ADDRSTRLEN];
    inet_ntop(family, bytes, text, sizeof text);
    const uint32_t position = static_cast<uint32_t>(offsets_->size() - 1);
    text_->insert(text_->end(), text, text + std::strlen(text));
    offsets_->push_back(static_cast<uint32_t>(text_->size()));
    index_.emplace(key, position);
    return position;
  }

  std::unique_ptr<std::vector<uint8_t>> text_ = std::make_unique<std::vector<uint8_t>>();
  std::unique_ptr<std::vector<uint32_t>> offsets_ = std::make_unique<std::vector<uint32_t>>(1, 0);

 private:
  std::unordered_map<AddressKey, uint32_t, AddressKeyHash> index_;
};

bool IsV4Mapped(const uint8_t* a) {
  static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(a, prefix, 12) == 0;
}
bool IsUnspecified6(const uint8_t* a) {
  static const uint8_t zero[16] = {};
  return std::memcmp(a, zero, 16) == 0;
}

template <typename T>
Napi::ArrayBuffer TakeAsArrayBuffer(Napi::Env env, std::unique_ptr<std::vector<T>> data) {
  const size_t bytes = data->size() * sizeof(T);
  if (bytes == 0) return Napi::ArrayBuffer::New(env, 0);
  std::vector<T>* raw = data.release();
  return Napi::ArrayBuffer::New(env, raw->data(), bytes, [](Napi::Env, void*, std::vector<T>* owned) { delete owned; }, raw);
}

// Whether the kernel takes the one-walk request (DumpWorker::Dump); cleared at its first refusal.
std::atomic<bool> compatWorks{true};

class DumpWorker : public Napi::AsyncWorker {
 public:
  DumpWorker(Napi::Function callback, int reportedFamily, uint32_t states, bool withInfo,
             uint32_t minRetransmits, bool countOnly, std::shared_ptr<std::atomic<bool>> cancelled)
      : Napi::AsyncWorker(callback, "ipdeadgate:sock_diag"),
        reportedFamily_(reportedFamily),
        states_(states),
        withInfo_(withInfo && !countOnly),
        minRetransmits_(minRetransmits),
        countOnly_(countOnly),
        columns_(kBaseColumns + (withInfo_ ? kTcpInfoColumns : 0)),
        cancelled_(std::move(cancelled)) {}

  void Execute() override {
    if (!countOnly_) return Dump();
    // A count only feeds `status`, so the kernel's walk of every socket (a few hundred ms of CPU at
    // 100 000 sockets, spent in recvmsg on this thread) runs on a thread of its own at nice 19
    // (setpriority(2) on its thread id): the event loop's thread always runs before it. Detection's
    // scans keep normal priority: at nice 19 in the lab they came 100-200 ms late under load
    // (docs/BENCHMARKS.md), and their timing is what the failover figures are made of. A threadpool
    // thread is never reniced: it would stay so for whatever runs on it next.
    pthread_t thread;
    const int err = ::pthread_create(&thread, nullptr, &DumpWorker::LowPriorityDump, this);
    if (err != 0) return Dump();  // no thread to spare: count at normal priority
    ::pthread_join(thread, nullptr);
  }

  static void* LowPriorityDump(void* self) {
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19);
    static_cast<DumpWorker*>(self)->Dump();
    return nullptr;
  }

  void Dump() {
    UniqueFd fd(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
    if (!fd.Valid()) return Fail(errno, "socket", "opening a NETLINK_SOCK_DIAG socket");
    struct timeval timeout = {kRecvTimeoutSeconds, 0};
    if (::setsockopt(fd.Get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0)
      return Fail(errno, "setsockopt", "setting SO_RCVTIMEO on the sock_diag socket");
    std::vector<uint8_t> buffer(kRecvBufferSize);
    uint32_t seq = 1;
    // The kernel's cost of a dump is its walk of the TCP hash tables: every bucket of the
    // established table (shared by all network namespaces unless tcp_child_ehash_entries is set,
    // and sized by RAM: hundreds of thousands of buckets), most of them empty, whatever the states
    // or filter asked for. AF_INET and AF_INET6 sockets share that table, and the inet_diag_req
    // request (TCPDIAG_GETSOCK, the one older ss used) dumps both families in one walk
    // (inet_diag_dump_compat asks with AF_UNSPEC). A profile of the frequent scan had that walk at
    // 40 % of the daemon's CPU with two SOCK_DIAG_BY_FAMILY dumps; one walk halves it. A kernel
    // without the compat request (it answers with an error before any socket) gets the two dumps.
    if (compatWorks.load(std::memory_order_relaxed)) {
      if (DumpBothFamilies(fd.Get(), seq++, buffer)) return;
      if (!compatRefused_) return;  // a failure mid-dump, or cancelled: reported as such
      // Refused before any socket came (an error answers the request itself): never asked again.
      compatWorks.store(false, std::memory_order_relaxed);
      errno_ = 0;
    }
    // IPv4 sockets live in two kernel families: AF_INET, and AF_INET6 with IPv4-mapped addresses.
    // So IPv4 needs both dumps; IPv6 only AF_INET6 (its mapped sockets are dropped in AppendSocket).
    if (reportedFamily_ != 6 && !DumpFamily(fd.Get(), AF_INET, seq++, buffer)) return;
    if (!DumpFamily(fd.Get(), AF_INET6, seq++, buffer)) return;
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (cancelled_->load()) {
      Callback().Call({MakeSystemError(env, ECANCELED, "recvmsg", "the sock_diag dump (cancelled)").Value()});
      return;
    }
    if (errno_ != 0) {
      Callback().Call({MakeSystemError(env, errno_, syscall_, what_).Value()});
      return;
    }
    if (countOnly_) {
      auto counts = std::make_unique<std::vector<uint32_t>>(counts_, counts_ + 2 * kCountStates);
      Napi::ArrayBuffer buffer = TakeAsArrayBuffer(env, std::move(counts));
      Callback().Call({env.Null(), Napi::Uint32Array::New(env, 2 * kCountStates, buffer, 0)});
      return;
    }
    Napi::Object result = Napi::Object::New(env);
    const size_t count = rows_->size() / columns_;
    result.Set("count", Napi::Number::New(env, static_cast<double>(count)));
    result.Set("columns", Napi::Number::New(env, static_cast<double>(columns_)));
    result.Set("requests", Napi::Number::New(env, static_cast<double>(requests_)));
    const size_t addrCount = addresses_.offsets_->size() - 1;
    Napi::ArrayBuffer rows = TakeAsArrayBuffer(env, std::move(rows_));
    result.Set("rows", Napi::Uint32Array::New(env, count * columns_, rows, 0));
    const size_t textBytes = addresses_.text_->size();
    Napi::ArrayBuffer text = TakeAsArrayBuffer(env, std::move(addresses_.text_));
    result.Set("addrs", Napi::Uint8Array::New(env, textBytes, text, 0));
    Napi::ArrayBuffer offsets = TakeAsArrayBuffer(env, std::move(addresses_.offsets_));
    result.Set("addrOffsets", Napi::Uint32Array::New(env, addrCount + 1, offsets, 0));
    Callback().Call({env.Null(), result});
  }

 private:
  void Fail(int err, const char* syscall, std::string what) {
    errno_ = err;
    syscall_ = syscall;
    what_ = std::move(what);
  }

  /** One walk for AF_INET and AF_INET6 (inet_diag_req, TCPDIAG_GETSOCK: the kernel asks with AF_UNSPEC). */
  bool DumpBothFamilies(int fd, uint32_t seq, std::vector<uint8_t>& buffer) {
    struct {
      struct nlmsghdr nlh;
      struct inet_diag_req req;
    } request;
    std::memset(&request, 0, sizeof request);
    request.nlh.nlmsg_len = sizeof request;
    request.nlh.nlmsg_type = TCPDIAG_GETSOCK;
    request.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.nlh.nlmsg_seq = seq;
    request.req.idiag_family = AF_INET;  // ignored for a dump (inet_diag_dump_compat uses AF_UNSPEC)
    request.req.idiag_states = states_;
    request.req.idiag_ext = withInfo_ ? static_cast<uint8_t>(1u << (INET_DIAG_INFO - 1)) : 0;
    request.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
    request.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    return SendAndRead(fd, &request, sizeof request, AF_UNSPEC, TCPDIAG_GETSOCK, seq, buffer);
  }

  bool DumpFamily(int fd, int family, uint32_t seq, std::vector<uint8_t>& buffer) {
    struct {
      struct nlmsghdr nlh;
      struct inet_diag_req_v2 req;
    } request;
    std::memset(&request, 0, sizeof request);
    request.nlh.nlmsg_len = sizeof request;
    request.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    request.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.nlh.nlmsg_seq = seq;
    request.req.sdiag_family = static_cast<uint8_t>(family);
    request.req.sdiag_protocol = IPPROTO_TCP;
    request.req.idiag_states = states_;
    request.req.idiag_ext = withInfo_ ? static_cast<uint8_t>(1u << (INET_DIAG_INFO - 1)) : 0;
    // No bytecode filter and a wildcard socket id: every socket of the family in the states asked for.
    request.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
    request.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    return SendAndRead(fd, &request, sizeof request, family, SOCK_DIAG_BY_FAMILY, seq, buffer);
  }

  /** Send one dump request and read its answer to NLMSG_DONE, appending each socket. */
  bool SendAndRead(int fd, void* request, size_t length, int family, uint16_t type, uint32_t seq,
                   std::vector<uint8_t>& buffer) {
    requests_++;
    struct sockaddr_nl kernel;
    std::memset(&kernel, 0, sizeof kernel);
    kernel.nl_family = AF_NETLINK;
    struct iovec iov = {request, length};
    struct msghdr msg;
    std::memset(&msg, 0, sizeof msg);
    msg.msg_name = &kernel;
    msg.msg_namelen = sizeof kernel;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    ssize_t sent;
    do sent = ::sendmsg(fd, &msg, 0);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) {
      Fail(errno, "sendmsg", "sending the sock_diag dump request");
      return false;
    }

    for (;;) {
      if (cancelled_->load()) return false;
      ssize_t n;
      do n = ::recv(fd, buffer.data(), buffer.size(), 0);
      while (n < 0 && errno == EINTR);
      if (n < 0) {
        Fail(errno, "recvmsg", "reading the sock_diag dump");
        return false;
      }
      if (n == 0) {
        Fail(EPIPE, "recvmsg", "reading the sock_diag dump (the socket closed mid-dump)");
        return false;
      }
      size_t left = static_cast<size_t>(n);
      for (auto* h = reinterpret_cast<struct nlmsghdr*>(buffer.data()); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
        if (h->nlmsg_seq != seq) continue;
        if (h->nlmsg_type == NLMSG_DONE) {
          // A dump may end with an error in NLMSG_DONE's payload (netlink_dump_done).
          if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
            int status;
            std::memcpy(&status, NLMSG_DATA(h), sizeof status);
            if (status < 0) {
              Fail(-status, "recvmsg", "reading the sock_diag dump (the kernel ended it with an error)");
              return false;
            }
          }
          return true;
        }
        if (h->nlmsg_type == NLMSG_ERROR) {
          const auto* e = static_cast<const struct nlmsgerr*>(NLMSG_DATA(h));
          if (e->error == 0) continue;
          if (family == AF_UNSPEC) compatRefused_ = true;
          Fail(-e->error, "sendmsg",
               family == AF_INET6   ? "the sock_diag request for IPv6 TCP sockets"
               : family == AF_INET  ? "the sock_diag request for IPv4 TCP sockets"
                                    : "the sock_diag request for TCP sockets");
          return false;
        }
        if (h->nlmsg_type != type || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) continue;
        AppendSocket(static_cast<const struct inet_diag_msg*>(NLMSG_DATA(h)), h);
      }
    }
  }

  void AppendSocket(const struct inet_diag_msg* m, const struct nlmsghdr* h) {
    // Detection's frequent scan only wants sockets retransmitting now (idiag_timer 1).
    if (minRetransmits_ > 0 && (m->idiag_timer != 1 || m->idiag_retrans < minRetransmits_)) return;
    const auto* src = reinterpret_cast<const uint8_t*>(m->id.idiag_src);
    const auto* dst = reinterpret_cast<const uint8_t*>(m->id.idiag_dst);
    int family = m->idiag_family;
    // An AF_INET6 socket talking to an IPv4 peer (a dual-stack listener's accepted socket, or a
    // connect to ::ffff:a.b.c.d) carries IPv4-mapped addresses. Detection routes such a socket as
    // IPv4, so it is reported as family 4 with dotted addresses (an unspecified :: side becomes
    // 0.0.0.0). An IPv6 listener on :: has no mapped address and stays family 6.
    if (family == AF_INET6 && (IsV4Mapped(src) || IsV4Mapped(dst)) && (IsV4Mapped(src) || IsUnspecified6(src)) &&
        (IsV4Mapped(dst) || IsUnspecified6(dst))) {
      family = AF_INET;
      src += 12;
      dst += 12;
    }
    if (reportedFamily_ != 0 && reportedFamily_ != (family == AF_INET6 ? 6 : 4)) return;
    if (countOnly_) {
      counts_[(family == AF_INET6 ? kCountStates : 0) + (m->idiag_state & (kCountStates - 1))]++;
      return;
    }
    const size_t start = rows_->size();
    rows_->resize(start + columns_);
    uint32_t* row = rows_->data() + start;
    size_t i = 0;
    row[i++] = family == AF_INET6 ? 6 : 4;
    row[i++] = addresses_.Index(family, src);
    row[i++] = ntohs(m->id.idiag_sport);
    row[i++] = addresses_.Index(family, dst);
    row[i++] = ntohs(m->id.idiag_dport);
    row[i++] = m->idiag_state;
    row[i++] = m->idiag_inode;
    row[i++] = m->idiag_uid;
    row[i++] = m->id.idiag_if;
    row[i++] = m->idiag_timer;
    row[i++] = m->idiag_retrans;
    row[i++] = m->idiag_expires;
    // sk_mark comes as INET_DIAG_MARK without being asked for (no idiag_ext bit), but only to a
    // requester with CAP_NET_ADMIN (inet_diag_msg_attrs_fill, net/ipv4/inet_diag.c); without it the
    // mark is unknown, which is not the same as 0.
    uint32_t& mark = row[i++];
    uint32_t& markKnown = row[i++];
    mark = 0;
    markKnown = 0;
    uint32_t* info = withInfo_ ? row + kBaseColumns : nullptr;
    if (info != nullptr) FillEmptyTcpInfoRow(info);
    // Attributes follow the aligned inet_diag_msg (inet_sk_diag_fill).
    const size_t headerLen = NLMSG_LENGTH(NLMSG_ALIGN(sizeof(struct inet_diag_msg)));
    if (h->nlmsg_len <= headerLen) return;
    auto attrLen = static_cast<unsigned int>(h->nlmsg_len - headerLen);
    const auto* base = reinterpret_cast<const uint8_t*>(h) + headerLen;
    for (auto* a = reinterpret_cast<const struct rtattr*>(base); RTA_OK(a, attrLen); a = RTA_NEXT(a, attrLen)) {
      if (a->rta_type == INET_DIAG_INFO && info != nullptr) {
        FillTcpInfoRow(info, RTA_DATA(a), RTA_PAYLOAD(a));
      } else if (a->rta_type == INET_DIAG_MARK && RTA_PAYLOAD(a) >= sizeof(uint32_t)) {
        std::memcpy(&mark, RTA_DATA(a), sizeof mark);
        markKnown = 1;
      }
    }
  }

  const int reportedFamily_;  // 0 (both), 4 or 6, as reported (after IPv4-mapped are made 4)
  const uint32_t states_;
  const bool withInfo_;
  const uint32_t minRetransmits_;  // 0: every socket
  const bool countOnly_;           // count per family and state; no rows, no addresses
  const size_t columns_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  std::unique_ptr<std::vector<uint32_t>> rows_ = std::make_unique<std::vector<uint32_t>>();
  AddressTable addresses_;
  uint32_t counts_[2 * kCountStates] = {};
  uint32_t requests_ = 0;       // dump requests the kernel answered (each one walk of its tables)
  bool compatRefused_ = false;  // the one-walk request was answered with an error
  int errno_ = 0;
  const char* syscall_ = "";
  std::string what_;
};

Napi::Function CancelFunction(Napi::Env env, std::shared_ptr<std::atomic<bool>> cancelled) {
  return Napi::Function::New(
      env, [cancelled](const Napi::CallbackInfo& ci) -> Napi::Value {
        cancelled->store(true);
        return ci.Env().Undefined();
      },
      "cancel");
}

// sockDiagDump(family: 0|4|6, states, withInfo, minRetransmits, callback(err, result)): cancel()
Napi::Value SockDiagDump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 2) || !info[2].IsBoolean() || !info[3].IsNumber() || !info[4].IsFunction())
    return ThrowTypeError(env, "sockDiagDump(family, states, withInfo, minRetransmits, callback): bad arguments");
  const int family = info[0].As<Napi::Number>().Int32Value();
  if (family != 0 && family != 4 && family != 6) return ThrowTypeError(env, "sockDiagDump: family must be 0, 4 or 6");
  const uint32_t states = info[1].As<Napi::Number>().Uint32Value();
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  auto* worker = new DumpWorker(info[4].As<Napi::Function>(), family, states, info[2].As<Napi::Boolean>().Value(),
                                info[3].As<Napi::Number>().Uint32Value(), false, cancelled);
  worker->Queue();
  return CancelFunction(env, cancelled);
}

// sockDiagCount(family: 0|4|6, states, callback(err, counts: Uint32Array(32))): cancel()
// counts[f * 16 + state]: f 0 = IPv4 (IPv4-mapped included), 1 = IPv6; state = kernel TCP state number.
Napi::Value SockDiagCount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 2) || !info[2].IsFunction())
    return ThrowTypeError(env, "sockDiagCount(family, states, callback): bad arguments");
  const int family = info[0].As<Napi::Number>().Int32Value();
  if (family != 0 && family != 4 && family != 6) return ThrowTypeError(env, "sockDiagCount: family must be 0, 4 or 6");
  const uint32_t states = info[1].As<Napi::Number>().Uint32Value();
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  auto* worker = new DumpWorker(info[2].As<Napi::Function>(), family, states, false, 0, true, cancelled);
  worker->Queue();
  return CancelFunction(env, cancelled);
}

// sockDiagOneWalk(enabled?: boolean): boolean. Whether dumps ask for both families in one walk;
// false makes them take the two-request path a kernel without the compat request gets (tests).
Napi::Value SockDiagOneWalk(const Napi::CallbackInfo& info) {
  if (info.Length() >= 1 && info[0].IsBoolean()) compatWorks.store(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), compatWorks.load());
}

Napi::Array ColumnNames(Napi::Env env, bool withInfo) {
  static const char* const base[] = {IDG_SOCK_COLUMNS(IDG_NAME_STRING)};
  static const char* const tcpInfo[] = {IDG_TCP_INFO_COLUMNS(IDG_NAME_STRING)};
  Napi::Array names = Napi::Array::New(env);
  uint32_t i = 0;
  for (const char* n : base) names.Set(i++, Napi::String::New(env, n));
  if (withInfo)
    for (const char* n : tcpInfo) names.Set(i++, Napi::String::New(env, n));
  return names;
}

}  // namespace

void RegisterSockDiag(Napi::Env env, Napi::Object exports) {
  exports.Set("sockDiagDump", Napi::Function::New(env, SockDiagDump, "sockDiagDump"));
  exports.Set("sockDiagCount", Napi::Function::New(env, SockDiagCount, "sockDiagCount"));
  exports.Set("sockDiagOneWalk", Napi::Function::New(env, SockDiagOneWalk, "sockDiagOneWalk"));
  exports.Set("sockDiagColumns", ColumnNames(env, true));
}

}  // namespace idg
