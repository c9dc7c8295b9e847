// Per-environment state of the addon's concerns (the watcher's epoll set, the libpcap handles).
//
// N-API gives an addon ONE instance-data slot per environment (napi_set_instance_data); two
// concerns that each put their own object there overwrite each other, and the next
// GetInstanceData<T>() returns the other concern's object as a T. That crashed a process that
// used both the socket watcher (tunnel) and libpcap (detection) with SIGSEGV at exit. So the slot
// holds this one table, and each concern keeps its object under its own key here.
#pragma once

#include <napi.h>

#include <unordered_map>

namespace idg {

class EnvData {
 public:
  /** The object of type T for this environment, made with T(env) on first use. */
  template <typename T>
  static T& Get(Napi::Env env) {
    EnvData& data = Of(env);
    static const char key = 0;  // one address per T: the key of T's entry
    auto it = data.slots_.find(&key);
    if (it == data.slots_.end())
      it = data.slots_.emplace(&key, Slot{new T(env), [](void* p) { delete static_cast<T*>(p); }}).first;
    return *static_cast<T*>(it->second.object);
  }

  EnvData() = default;
  EnvData(const EnvData&) = delete;
  EnvData& operator=(const EnvData&) = delete;
  /** Runs when the environment goes away (node-addon-api's finalizer of the instance data). */
  ~EnvData() {
    for (auto& entry : slots_) entry.second.destroy(entry.second.object);
  }

 private:
  struct Slot {
    void* object;
    void (*destroy)(void*);
  };

  static EnvData& Of(Napi::Env env) {
    auto* data = env.GetInstanceData<EnvData>();
    if (data == nullptr) {
      data = new EnvData();
      env.SetInstanceData(data);  // deleted by node-addon-api when the environment goes away
    }
    return *data;
  }

  std::unordered_map<const void*, Slot> slots_;
};

}  // namespace idg
