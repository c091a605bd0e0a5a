{
  "targets": [
    {
      "target_name": "criu_native",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/tracer.cc",
        "native/ptrace.cc",
        "native/wait.cc",
        "native/chain.cc",
        "native/memory.cc",
        "native/fileio.cc",
        "native/ioctl.cc",
        "native/pipes.cc",
        "native/task.cc",
        "native/sockets.cc",
        "native/cpuid.cc",
        "native/net.cc",
        "native/ipc.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "cflags": ["-O2"]
    }
  ]
}
