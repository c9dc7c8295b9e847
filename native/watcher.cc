// Socket-state watcher: tells JavaScript when the peer of a socket sent FIN (EPOLLRDHUP), when the
// socket hung up (EPOLLHUP) or got an error such as an RST (EPOLLERR) — without reading from it, so
// no data is consumed and it works while the Node stream is paused (Node stops polling for input
// then; we do not need input events at all).
//
// Design. libuv refuses a second uv_poll_t/io watcher for an fd its loop already polls, and Node's
// net.Socket polls that fd. Instead of polling a dup() of each fd (a dup keeps the socket open after
// Node closes its fd: a forgotten watcher would hold a connection in CLOSE_WAIT, the very leak the
// watcher exists to catch), each environment owns one private epoll instance:
//   - every watched socket fd is added to it with EPOLLRDHUP | EPOLLET. An epoll registration holds
//     no reference on the socket (the kernel drops it when the socket's last fd closes), and
//     edge-triggering reports a condition once instead of on every loop turn, so a half-closed
//     socket that nobody reads never busy-loops the process;
//   - the epoll fd itself is polled by one uv_poll_t on the environment's loop
//     (napi_get_uv_event_loop, never uv_default_loop), unref'd: the watched socket keeps the loop
//     alive, the watcher does not;
//   - each condition (rdhup, hup, err) is reported at most once; after hup or err the socket is
//     removed from the epoll set, as nothing more can happen to it.
// close() is idempotent and safe from inside the callback. Before EPOLL_CTL_DEL the fd is checked to
// still be the same socket (device + inode): if Node closed it and the number was reused, the kernel
// already dropped our registration and the new file must not be touched. An environment cleanup hook
// closes every watcher, then the uv handle, then (in its close callback) the epoll fd.
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>

#include "env_data.h"
#include "errors.h"
#include "exports.h"
#include "unique_fd.h"
#include "uv_close.h"

namespace idg {
namespace {

constexpr uint32_t kRdhup = 1;
constexpr uint32_t kHup = 2;
constexpr uint32_t kErr = 4;
// Events handled per loop wakeup; more stay ready and are picked up on the next turn, so a burst of
// closing sockets never starves the loop.
constexpr int kMaxEventsPerWakeup = 64;

struct Watcher {
  int fd;
  dev_t dev;
  ino_t ino;
  bool registered;
  uint32_t reported;
  Napi::FunctionReference callback;
};

class WatcherRegistry {
 public:
  explicit WatcherRegistry(Napi::Env env) : env_(env) { env.AddCleanupHook([this] { Teardown(); }); }
  ~WatcherRegistry() = default;

  Napi::Value Open(int fd, Napi::Function callback) {
    if (!EnsurePoller()) return env_.Undefined();
    struct stat st;
    if (::fstat(fd, &st) != 0) return ThrowSystemError(env_, errno, "fstat", "watching fd " + std::to_string(fd));
    if (!S_ISSOCK(st.st_mode)) return ThrowSystemError(env_, ENOTSOCK, "fstat", "watching fd " + std::to_string(fd) + " (not a socket)");
    const uint32_t id = nextId_++;
    struct epoll_event ev = {};
    ev.events = EPOLLRDHUP | EPOLLET;  // EPOLLHUP and EPOLLERR are always reported
    ev.data.u64 = id;
    if (::epoll_ctl(epoll_.Get(), EPOLL_CTL_ADD, fd, &ev) != 0)
      return ThrowSystemError(env_, errno, "epoll_ctl",
                   errno == EEXIST ? "watching fd " + std::to_string(fd) + " (it already has a watcher)"
                                   : "watching fd " + std::to_string(fd));
    Watcher& w = watchers_[id];
    w.fd = fd;
    w.dev = st.st_dev;
    w.ino = st.st_ino;
    w.registered = true;
    w.reported = 0;
    w.callback = Napi::Persistent(callback);
    return Napi::Number::New(env_, id);
  }

  void Close(uint32_t id) {
    auto it = watchers_.find(id);
    if (it == watchers_.end()) return;
    Unregister(it->second);
    watchers_.erase(it);
  }

  size_t Count() const { return watchers_.size(); }

 private:
  bool EnsurePoller() {
    if (poll_ != nullptr) return true;
    if (tornDown_) {
      ThrowError(env_, "the socket watcher is shut down (environment teardown)");
      return false;
    }
    UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll.Valid()) {
      ThrowSystemError(env_, errno, "epoll_create1", "creating the socket watcher's epoll instance");
      return false;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env_, &loop) != napi_ok || loop == nullptr) {
      ThrowError(env_, "no libuv loop for this environment");
      return false;
    }
    auto* poll = new uv_poll_t;
    int rc = uv_poll_init(loop, poll, epoll.Get());
    if (rc != 0) {
      delete poll;
      ThrowSystemError(env_, -rc, "uv_poll_init", "polling the socket watcher's epoll instance");
      return false;
    }
    poll->data = this;
    rc = uv_poll_start(poll, UV_READABLE, [](uv_poll_t* handle, int status, int) {
      static_cast<WatcherRegistry*>(handle->data)->Dispatch(status);
    });
    if (rc != 0) {
      CloseHandles(nullptr, poll);  // initialised: it goes through uv_close before it is freed
      ThrowSystemError(env_, -rc, "uv_poll_start", "polling the socket watcher's epoll instance");
      return false;
    }
    uv_unref(reinterpret_cast<uv_handle_t*>(poll));
    poll_ = poll;
    epoll_ = std::move(epoll);
    return true;
  }

  /** Remove the socket from the epoll set if the fd is still that socket; idempotent. */
  void Unregister(Watcher& w) {
    if (!w.registered) return;
    w.registered = false;
    struct stat st;
    if (::fstat(w.fd, &st) == 0 && st.st_dev == w.dev && st.st_ino == w.ino)
      ::epoll_ctl(epoll_.Get(), EPOLL_CTL_DEL, w.fd, nullptr);
    // Otherwise the socket's fd was closed: the kernel removed the registration with the socket.
  }

  void Dispatch(int status) {
    if (status < 0 || !epoll_.Valid()) return;
    struct epoll_event events[kMaxEventsPerWakeup];
    int n;
    do n = ::epoll_wait(epoll_.Get(), events, kMaxEventsPerWakeup, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0) return;
    Napi::HandleScope scope(env_);
    for (int i = 0; i < n; i++) {
      const auto id = static_cast<uint32_t>(events[i].data.u64);
      auto it = watchers_.find(id);
      if (it == watchers_.end() || !it->second.registered) continue;  // closed meanwhile
      Watcher& w = it->second;
      uint32_t now = 0;
      if (events[i].events & EPOLLRDHUP) now |= kRdhup;
      if (events[i].events & EPOLLHUP) now |= kHup;
      if (events[i].events & EPOLLERR) now |= kErr;
      if ((now & ~w.reported) == 0) continue;  // an edge for something already reported
      w.reported |= now;
      if (w.reported & (kHup | kErr)) Unregister(w);  // nothing more can happen to this socket
      // The callback may close this or any watcher, or open new ones (rehashing the map): hold only
      // local handles across the call, look the watcher up again by id afterwards.
      Napi::Function callback = w.callback.Value();
      const uint32_t bits = w.reported;
      callback.MakeCallback(env_.Global(), {Napi::Number::New(env_, bits)}, context());
      ReportUncaught(env_);
    }
  }

  napi_async_context context() {
    if (context_ == nullptr) context_ = std::make_unique<Napi::AsyncContext>(env_, "ipdeadgate:watcher");
    return *context_;
  }

  void Teardown() {
    tornDown_ = true;
    for (auto& entry : watchers_) Unregister(entry.second);
    watchers_.clear();
    context_.reset();
    if (poll_ != nullptr) {
      // The uv handle is closed first; the epoll fd only once libuv is done with it.
      const int epoll = epoll_.Release();
      CloseHandles([epoll] { ::close(epoll); }, std::exchange(poll_, nullptr));
    }
  }

  Napi::Env env_;
  UniqueFd epoll_;
  uv_poll_t* poll_ = nullptr;
  bool tornDown_ = false;
  uint32_t nextId_ = 1;
  std::unordered_map<uint32_t, Watcher> watchers_;
  std::unique_ptr<Napi::AsyncContext> context_;
};

WatcherRegistry& Registry(Napi::Env env) { return EnvData::Get<WatcherRegistry>(env); }

// watchOpen(fd, callback(bits)): id
Napi::Value WatchOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1) || !info[1].IsFunction())
    return ThrowTypeError(env, "watchOpen(fd, callback): bad arguments");
  return Registry(env).Open(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Function>());
}

// watchClose(id): idempotent
Napi::Value WatchClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!NumberArgs(info, 1)) return ThrowTypeError(env, "watchClose(id): bad arguments");
  Registry(env).Close(IdArg(info));
  return env.Undefined();
}

// watchCount(): open watchers in this environment (for tests and metrics)
Napi::Value WatchCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Registry(info.Env()).Count()));
}

}  // namespace

void RegisterWatcher(Napi::Env env, Napi::Object exports) {
  exports.Set("watchOpen", Napi::Function::New(env, WatchOpen, "watchOpen"));
  exports.Set("watchClose", Napi::Function::New(env, WatchClose, "watchClose"));
  exports.Set("watchCount", Napi::Function::New(env, WatchCount, "watchCount"));
  exports.Set("watchBits", [&] {
    Napi::Object bits = Napi::Object::New(env);
    bits.Set("rdhup", kRdhup);
    bits.Set("hup", kHup);
    bits.Set("err", kErr);
    return bits;
  }());
}

}  // namespace idg
