// Letting go of libuv handles: libuv may touch a handle until its close callback has run, so the
// handle is freed only there, and what it watches (a descriptor, a pcap_t) is closed only after
// that: closed earlier, the kernel could hand the number to a new socket under a handle libuv
// still polls.
#pragma once

#include <uv.h>

#include <functional>
#include <initializer_list>

namespace idg {

/**
 * uv_close() every handle that is not null (which stops it), delete each once libuv is done with
 * it, then run `after` (may be empty), at once if there is no handle. Each handle must have been
 * made with `new` as its own type (uv_poll_t, uv_idle_t, uv_check_t); its `data` is taken over.
 */
void CloseHandles(std::initializer_list<uv_handle_t*> handles, std::function<void()> after);

template <typename... Handles>
void CloseHandles(std::function<void()> after, Handles*... handles) {
  CloseHandles({reinterpret_cast<uv_handle_t*>(handles)...}, std::move(after));
}

}  // namespace idg
