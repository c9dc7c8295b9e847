#include "uv_close.h"

#include <cstdlib>

namespace idg {
namespace {

struct Closing {
  int left;
  std::function<void()> after;
};

void Finish(Closing* c) {
  if (c->after) c->after();
  delete c;
}

void Free(uv_handle_t* h) {
  switch (h->type) {
    case UV_POLL: delete reinterpret_cast<uv_poll_t*>(h); return;
    case UV_IDLE: delete reinterpret_cast<uv_idle_t*>(h); return;
    case UV_CHECK: delete reinterpret_cast<uv_check_t*>(h); return;
    default: std::abort();  // the addon makes no other kind: freed as one of these, it would corrupt the heap
  }
}

}  // namespace

void CloseHandles(std::initializer_list<uv_handle_t*> handles, std::function<void()> after) {
  auto* c = new Closing{0, std::move(after)};
  for (uv_handle_t* h : handles) {
    if (h == nullptr) continue;
    c->left++;
    h->data = c;
    // The callback never runs inside uv_close(): `left` counts every handle before the first.
    uv_close(h, [](uv_handle_t* handle) {
      auto* closing = static_cast<Closing*>(handle->data);
      Free(handle);
      if (--closing->left == 0) Finish(closing);
    });
  }
  if (c->left == 0) Finish(c);
}

}  // namespace idg
