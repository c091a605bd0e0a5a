// System V IPC: shmget(2) and shmctl(2), for the shared memory segments a dumped tree attached
// (src/dump/sysv-shm.ts, src/restore/sysv-shm.ts). The struct shmid_ds of IPC_STAT / IPC_SET is
// a Buffer the caller lays out; nothing here reads or fills its fields.

#include <errno.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#include "common.h"

namespace criu {

namespace {

Napi::Value Shmget(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t key = ArgInt32(info, 0, "key");
  int64_t size = ArgInt64Number(info, 1, "size");
  int32_t flags = ArgInt32(info, 2, "flags");
  int id = shmget(static_cast<key_t>(key), static_cast<size_t>(size), flags);
  if (id < 0) ThrowSyscall(env, "shmget", errno, {key, static_cast<long>(size), flags});
  return Napi::Number::New(env, id);
}

// shmctl(id, cmd, buf): buf is null or a Buffer of at least sizeof(struct shmid_ds).
Napi::Value Shmctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t id = ArgInt32(info, 0, "id");
  int32_t cmd = ArgInt32(info, 1, "cmd");
  struct shmid_ds* ds = nullptr;
  if (!(info[2].IsNull() || info[2].IsUndefined())) {
    Napi::Buffer<uint8_t> buf = ArgBuffer(info, 2, "buf");
    CheckRange(env, buf.Length(), 0, sizeof(struct shmid_ds), "buf");
    ds = reinterpret_cast<struct shmid_ds*>(buf.Data());
  }
  int r = shmctl(id, cmd, ds);
  if (r < 0) ThrowSyscall(env, "shmctl", errno, {id, cmd});
  return Napi::Number::New(env, r);
}

}  // namespace

void InitIpc(Napi::Env env, Napi::Object exports) {
  exports.Set("shmget", Napi::Function::New(env, Shmget, "shmget"));
  exports.Set("shmctl", Napi::Function::New(env, Shmctl, "shmctl"));
}

}  // namespace criu
