// System V IPC: shmget(2), shmctl(2), shmat(2) and shmdt(2), for the shared memory segments of a
// dumped tree (src/dump/sysv-shm.ts, src/restore/sysv-shm.ts); semget(2), semctl(2), msgget(2),
// msgctl(2), msgsnd(2) and msgrcv(2), for the semaphores and message queues of an IPC namespace
// (src/dump/sysv-ipc.ts, src/restore/sysv-ipc.ts). The structs of IPC_STAT / IPC_SET, the value
// arrays of GETALL / SETALL and the messages (a long mtype, then the text) are Buffers the caller
// lays out; nothing here reads or fills their fields.

#include <errno.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
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

// shmat(id, NULL, flags) in this process: the address (a BigInt), for process_vm_readv/writev of
// a segment no task attaches.
Napi::Value Shmat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t id = ArgInt32(info, 0, "id");
  int32_t flags = ArgInt32(info, 1, "flags");
  void* addr = shmat(id, nullptr, flags);
  if (addr == reinterpret_cast<void*>(-1)) ThrowSyscall(env, "shmat", errno, {id, flags});
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(addr)));
}

Napi::Value Shmdt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t addr = ArgBigUint64(info, 0, "addr");
  if (shmdt(reinterpret_cast<const void*>(static_cast<uintptr_t>(addr))) < 0)
    ThrowSyscall(env, "shmdt", errno, {static_cast<long>(addr)});
  return env.Undefined();
}

Napi::Value Semget(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t key = ArgInt32(info, 0, "key");
  int32_t nsems = ArgInt32(info, 1, "nsems");
  int32_t flags = ArgInt32(info, 2, "flags");
  int id = semget(static_cast<key_t>(key), nsems, flags);
  if (id < 0) ThrowSyscall(env, "semget", errno, {key, nsems, flags});
  return Napi::Number::New(env, id);
}

// semctl(id, semnum, cmd, buf): buf is null, or the Buffer the union semun points to (a struct
// semid_ds for IPC_STAT / IPC_SET, an unsigned short per semaphore for GETALL / SETALL).
Napi::Value Semctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t id = ArgInt32(info, 0, "id");
  int32_t semnum = ArgInt32(info, 1, "semnum");
  int32_t cmd = ArgInt32(info, 2, "cmd");
  void* arg = nullptr;
  if (!(info[3].IsNull() || info[3].IsUndefined())) {
    Napi::Buffer<uint8_t> buf = ArgBuffer(info, 3, "buf");
    // The kernel writes or reads as much as the set holds: the Buffer must hold it.
    size_t need = 0;
    if (cmd == IPC_STAT || cmd == IPC_SET) {
      need = sizeof(struct semid_ds);
    } else if (cmd == GETALL || cmd == SETALL) {
      struct semid_ds ds = {};
      if (semctl(id, 0, IPC_STAT, &ds) < 0) ThrowSyscall(env, "semctl", errno, {id, 0, IPC_STAT});
      need = ds.sem_nsems * sizeof(unsigned short);
    }
    CheckRange(env, buf.Length(), 0, need, "buf");
    arg = buf.Data();
  }
  int r = semctl(id, semnum, cmd, arg);
  if (r < 0) ThrowSyscall(env, "semctl", errno, {id, semnum, cmd});
  return Napi::Number::New(env, r);
}

Napi::Value Msgget(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t key = ArgInt32(info, 0, "key");
  int32_t flags = ArgInt32(info, 1, "flags");
  int id = msgget(static_cast<key_t>(key), flags);
  if (id < 0) ThrowSyscall(env, "msgget", errno, {key, flags});
  return Napi::Number::New(env, id);
}

// msgctl(id, cmd, buf): buf is null or a Buffer of at least sizeof(struct msqid_ds).
Napi::Value Msgctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t id = ArgInt32(info, 0, "id");
  int32_t cmd = ArgInt32(info, 1, "cmd");
  struct msqid_ds* ds = nullptr;
  if (!(info[2].IsNull() || info[2].IsUndefined())) {
    Napi::Buffer<uint8_t> buf = ArgBuffer(info, 2, "buf");
    CheckRange(env, buf.Length(), 0, sizeof(struct msqid_ds), "buf");
    ds = reinterpret_cast<struct msqid_ds*>(buf.Data());
  }
  int r = msgctl(id, cmd, ds);
  if (r < 0) ThrowSyscall(env, "msgctl", errno, {id, cmd});
  return Napi::Number::New(env, r);
}

// msgsnd(id, msg, size, flags): msg holds the long mtype, then `size` bytes of text.
Napi::Value Msgsnd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t id = ArgInt32(info, 0, "id");
  Napi::Buffer<uint8_t> msg = ArgBuffer(info, 1, "msg");
  int64_t size = ArgInt64Number(info, 2, "size");
  int32_t flags = ArgInt32(info, 3, "flags");
  CheckRange(env, msg.Length(), 0, sizeof(long) + static_cast<size_t>(size), "msg");
  if (msgsnd(id, msg.Data(), static_cast<size_t>(size), flags) < 0)
    ThrowSyscall(env, "msgsnd", errno, {id, static_cast<long>(size), flags});
  return env.Undefined();
}

// msgrcv(id, msg, size, msgtyp, flags): the text's length; msg gets the long mtype, then the text.
Napi::Value Msgrcv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int32_t id = ArgInt32(info, 0, "id");
  Napi::Buffer<uint8_t> msg = ArgBuffer(info, 1, "msg");
  int64_t size = ArgInt64Number(info, 2, "size");
  int64_t msgtyp = ArgInt64Number(info, 3, "msgtyp");
  int32_t flags = ArgInt32(info, 4, "flags");
  CheckRange(env, msg.Length(), 0, sizeof(long) + static_cast<size_t>(size), "msg");
  ssize_t n = msgrcv(id, msg.Data(), static_cast<size_t>(size), static_cast<long>(msgtyp), flags);
  if (n < 0)
    ThrowSyscall(env, "msgrcv", errno,
                 {id, static_cast<long>(size), static_cast<long>(msgtyp), flags});
  return Napi::Number::New(env, static_cast<double>(n));
}

}  // namespace

void InitIpc(Napi::Env env, Napi::Object exports) {
  exports.Set("shmget", Napi::Function::New(env, Shmget, "shmget"));
  exports.Set("shmctl", Napi::Function::New(env, Shmctl, "shmctl"));
  exports.Set("shmat", Napi::Function::New(env, Shmat, "shmat"));
  exports.Set("shmdt", Napi::Function::New(env, Shmdt, "shmdt"));
  exports.Set("semget", Napi::Function::New(env, Semget, "semget"));
  exports.Set("semctl", Napi::Function::New(env, Semctl, "semctl"));
  exports.Set("msgget", Napi::Function::New(env, Msgget, "msgget"));
  exports.Set("msgctl", Napi::Function::New(env, Msgctl, "msgctl"));
  exports.Set("msgsnd", Napi::Function::New(env, Msgsnd, "msgsnd"));
  exports.Set("msgrcv", Napi::Function::New(env, Msgrcv, "msgrcv"));
}

}  // namespace criu
