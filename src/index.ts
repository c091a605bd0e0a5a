/**
 * The public entry of criu-ts as a library: what migrate/ (and any other program) may use. The
 * rest of src/ is internal and may change.
 */

export { dump, type DumpOptions, type DumpStats } from './dump/index.js';
export { preDump, type PreDumpOptions, type PreDumpStats, type ProcessLayout } from './dump/pre-dump.js';
export {
  killProcess,
  killTree,
  resumeProcess,
  resumeTree,
  stopProcess,
  stopTree,
  type FrozenProcess,
} from './dump/freeze.js';
export { removeSysvShm } from './dump/sysv-shm.js';
export { connectPageServerSink, type PageServerTarget } from './dump/page-server-sink.js';
export type { PageSink } from './dump/page-sink.js';
export { reapWhenDone, restore, type RestoreOptions, type RestoreResult } from './restore/index.js';
export { Skeleton } from './restore/skeleton.js';
export { namespaceCloneFlags } from './restore/namespaces.js';
export { PageServer, type PageServerSummary } from './pageserver/server.js';
export { loadTlsCredentials, tlsServerOptions, type TlsCredentials, type TlsOptions } from './pageserver/tls.js';
export { tlsArgs } from './cli/tls-options.js';
export { dedupChain } from './mem/dedup.js';
export { endTracking } from './mem/track/index.js';
export { CriuError, describeError } from './errors.js';
export { IMAGE_KINDS } from './images/index.js';
export {
  addAddress,
  announceAddress,
  cannotTake,
  heldAddress,
  parseAddress,
  removeAddress,
  type HostAddress,
} from './net/addresses.js';
export { prepareImageKinds } from './images/image-writer.js';
