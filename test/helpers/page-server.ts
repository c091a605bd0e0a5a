// A page server of criu-ts for the page-server tests: listening on a free port, its one session's
// outcome (a summary or the error) as a value, never an unhandled rejection.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { criuAsync } from './criu.js';
import { signalTask } from './cr.js';
import { PageServer, type PageServerOptions, type PageServerSummary } from '../../src/pageserver/server.js';
import { Connection, Listener } from '../../src/pageserver/socket.js';

export async function startServer(
  opts: Omit<PageServerOptions, 'port'>,
): Promise<{ server: PageServer; outcome: Promise<PageServerSummary | Error> }> {
  const server = await PageServer.listen({ ...opts, port: 0 });
  const outcome = server.serve().catch((err: unknown) => err as Error);
  return { server, outcome };
}

/** Files of dir, hidden (temporary) ones included, sorted. */
export const files = (dir: string): string[] => readdirSync(dir).sort();

/** `n` pages of bytes: page i filled with (seed + i) & 0xff. */
export function pages(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n * 4096);
  for (let i = 0; i < n; i++) b.fill((seed + i) & 0xff, i * 4096, (i + 1) * 4096);
  return b;
}

/**
 * Both ends of a TCP connection over 127.0.0.1 (blocking fds): the connection a tool carries
 * through its own channel and hands to criu with --ps-socket.
 */
export async function connectedPair(): Promise<{ client: Connection; accepted: Connection }> {
  const listener = Listener.open('127.0.0.1', 0);
  try {
    const [client, accepted] = await Promise.all([Connection.connect('127.0.0.1', listener.port), listener.accept()]);
    return { client, accepted };
  } finally {
    listener.close();
  }
}

/**
 * `criu page-server -D srv --address 127.0.0.1 --port PORT -d` (and `args`), its pidfile in
 * `dir`: criu's result once the server is up. It ends after one session; if that never came, the
 * teardown kills it (when its pid is still that server's).
 */
export async function startCriuPageServer(
  t: Test,
  dir: string,
  srv: string,
  port: number,
  args: readonly string[] = [],
): Promise<{ status: number | null; stderr: string }> {
  const pidfile = path.join(dir, 'ps.pid');
  const ps = await criuAsync([
    ...['page-server', '-D', srv, '--address', '127.0.0.1', '--port', String(port)],
    ...['-d', '--pidfile', pidfile],
    ...args,
  ]);
  t.teardown(() => {
    const psPid = existsSync(pidfile) ? Number(readFileSync(pidfile, 'utf8')) : 0;
    const cmdline =
      psPid > 0 && existsSync(`/proc/${psPid}/cmdline`) ? readFileSync(`/proc/${psPid}/cmdline`, 'utf8') : '';
    if (cmdline.includes(srv)) signalTask(psPid, 'SIGKILL');
  });
  return ps;
}
