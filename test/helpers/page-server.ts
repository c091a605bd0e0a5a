// A page server of criu-ts for the page-server tests: listening on a free port, its one session's
// outcome (a summary or the error) as a value, never an unhandled rejection.
import { readdirSync } from 'node:fs';
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
