/**
 * The --tls options as the command lines take them (criu's, page-server's, criu-migrate's): the
 * flags commander collects, mapped to the TlsOptions of src/pageserver/tls.ts, and back to the
 * arguments of a criu command that criu-ts starts (a daemon page server, an agent's).
 */

import { resolve } from 'node:path';
import type { TlsOptions } from '../pageserver/tls.js';

/** --tls, --tls-cacert, --tls-cacrl, --tls-cert, --tls-key, --tls-no-cn-verify, as parsed. */
export interface TlsFlags {
  tls?: boolean;
  tlsCacert?: string;
  tlsCacrl?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsNoCnVerify?: boolean;
}

/**
 * The TLS options of the flags, paths made absolute against `baseDir`; undefined without --tls
 * (as in CRIU, the other options alone do nothing).
 */
export function tlsOptionsOf(flags: TlsFlags, baseDir = process.cwd()): TlsOptions | undefined {
  if (flags.tls !== true) return undefined;
  const tls: TlsOptions = {};
  if (flags.tlsCacert !== undefined) tls.cacert = resolve(baseDir, flags.tlsCacert);
  if (flags.tlsCacrl !== undefined) tls.cacrl = resolve(baseDir, flags.tlsCacrl);
  if (flags.tlsCert !== undefined) tls.cert = resolve(baseDir, flags.tlsCert);
  if (flags.tlsKey !== undefined) tls.key = resolve(baseDir, flags.tlsKey);
  if (flags.tlsNoCnVerify === true) tls.isNoCnVerify = true;
  return tls;
}

/** The --tls arguments that give `tls` to a `criu` or `page-server` command. */
export function tlsArgs(tls: TlsOptions): string[] {
  const args = ['--tls'];
  if (tls.isNoCnVerify === true) args.push('--tls-no-cn-verify');
  if (tls.cacert !== undefined) args.push('--tls-cacert', tls.cacert);
  if (tls.cacrl !== undefined) args.push('--tls-cacrl', tls.cacrl);
  if (tls.cert !== undefined) args.push('--tls-cert', tls.cert);
  if (tls.key !== undefined) args.push('--tls-key', tls.key);
  return args;
}
