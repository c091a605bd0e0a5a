// Entry point of the criu_native addon: registers every function of native/index.d.ts.

#include <napi.h>

#include "common.h"

namespace criu {

void InitNet(Napi::Env env, Napi::Object exports);    // net.cc
void InitChain(Napi::Env env, Napi::Object exports);  // chain.cc
void InitIpc(Napi::Env env, Napi::Object exports);    // ipc.cc

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitErrors(env, exports);
  InitPtrace(env, exports);
  InitWait(env, exports);
  InitChain(env, exports);
  InitMemory(env, exports);
  InitFileIo(env, exports);
  InitIoctl(env, exports);
  InitPipes(env, exports);
  InitTask(env, exports);
  InitSockets(env, exports);
  InitCpuid(env, exports);
  InitNet(env, exports);
  InitIpc(env, exports);
  return exports;
}

}  // namespace criu

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  return criu::Init(env, exports);
}

NODE_API_MODULE(criu_native, InitAddon)
