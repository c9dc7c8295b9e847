{
  "targets": [
    {
      "target_name": "ipdeadgate_native",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/sockdiag.cc",
        "native/tcpinfo.cc",
        "native/watcher.cc",
        "native/peercred.cc",
        "native/pcap.cc",
        "native/sdnotify.cc",
        "native/tlslink.cc",
        "native/tls_buffer.cc",
        "native/tls_errors.cc",
        "native/tls_context.cc",
        "native/tls_handshake.cc",
        "native/tls_bindings.cc",
        "native/relay.cc",
        "native/relay_bindings.cc",
        "native/filelock.cc",
        "native/uv_close.cc"
      ],
      "libraries": ["-lpcap"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror=return-type"],
      "cflags": ["-Wall", "-Wextra"]
    }
  ]
}
