/**
 * Page server throughput: 1 GiB (128 MiB with --quick) of a live process's memory
 * (test/fixtures/mem_touch) sent by PageServerClient to a PageServer on 127.0.0.1, images on tmpfs
 * (/dev/shm), timed from OPEN2 to CLOSE's answer (every image in place). Next to it, measured in
 * the same run on the same machine, interleaved round by round:
 *   - raw TCP loopback: the same volume written from one 4 MiB Buffer and read into another, by the
 *     same native calls (writev / recv MSG_WAITALL on the thread pool), no files;
 *   - node:net loopback: the same volume through Node's own sockets (what a plain JS page server
 *     would get at best);
 *   - fresh-file writes: the same volume pwritten into a new file on the same tmpfs, no network
 *     (storing is part of the job and is often the bound).
 * Inside TLS (--tls, certificates made by openssl): the same transfer twice after the rounds.
 * Also: the busy CPU time of the whole machine during each (both ends share these CPUs here, so
 * the work the page server does on top of raw TCP, reading the task's pages and storing them, sets
 * how close to raw TCP it can get); each round's transfer against that round's baselines (the
 * VM's speed wanders between rounds); bytes that passed through criu-ts's user-space memory on
 * each side; and the peak RSS of this process (client and server both run in it).
 *
 * Scattered: what live migration sends once the task is frozen: 1 page in every SCATTER_STRIDE
 * dirty (PE_PRESENT, 1-page records), the pages between them PE_PARENT records against the full
 * transfer just made (the parent image): thousands of small records in one stream. Reported as
 * records/s (both kinds) and MB/s of page data.
 */

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type AddressInfo } from 'node:net';
import { availableParallelism } from 'node:os';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { join } from 'node:path';
import { PE_PARENT, PE_PRESENT, type PagemapRun } from '../src/images/index.js';
import { O_CLOEXEC, O_CREAT, O_EXCL, O_WRONLY } from '../src/kernel/constants.js';
import { PageServerClient } from '../src/pageserver/client.js';
import { PageServer } from '../src/pageserver/server.js';
import { Connection, Listener } from '../src/pageserver/socket.js';
import * as sys from '../src/sys/native.js';
import { loadTlsCredentials, type TlsCredentials } from '../src/pageserver/tls.js';
import { memTouchRange, startFixture } from '../test/helpers/fixture.js';
import { makePki } from '../test/helpers/pki.js';
import type { BenchOptions, BenchResult } from './run.js';
import { machineBusySeconds, median } from './stats.js';

const CHUNK = 4 << 20;
const TMP = '/dev/shm';

/** Seconds to move `total` bytes over loopback TCP between two native Buffers. */
async function rawTcpSeconds(total: number): Promise<number> {
  const listener = Listener.open('127.0.0.1', 0);
  const accepted = listener.accept();
  const tx = await Connection.connect('127.0.0.1', listener.port);
  const rx = await accepted;
  listener.close();
  const src = Buffer.allocUnsafeSlow(CHUNK).fill(0x5a);
  const dst = Buffer.allocUnsafeSlow(CHUNK);
  const t0 = process.hrtime.bigint();
  const sending = (async () => {
    for (let done = 0; done < total; done += CHUNK) await tx.writeAll([src]);
  })();
  for (let got = 0; got < total;) {
    const n = await rx.readFully(dst, 0, CHUNK);
    if (n === 0) throw new Error('raw TCP: early end of stream');
    got += n;
  }
  await sending;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  tx.close();
  rx.close();
  return s;
}

/** Seconds to move `total` bytes over loopback with node:net (libuv, JS 'data' events), no files. */
async function nodeNetSeconds(total: number): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const done = new Promise<number>((resolve, reject) => {
    server.once('connection', (sock) => {
      let got = 0;
      sock.on('data', (b: Buffer) => {
        got += b.length;
        if (got >= total) resolve(got);
      });
      sock.on('error', reject);
    });
  });
  const src = Buffer.alloc(CHUNK, 0x5a);
  const tx = connect(port, '127.0.0.1');
  await new Promise<void>((r) => tx.once('connect', r));
  const t0 = process.hrtime.bigint();
  for (let sent = 0; sent < total; sent += CHUNK)
    if (!tx.write(src)) await new Promise<void>((r) => tx.once('drain', r));
  await done;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  tx.destroy();
  server.close();
  return s;
}

/**
 * Seconds to send `total` bytes through Node's own TLS over loopback (tls.createServer and
 * tls.connect with the page server's credentials, 4 MiB writes, the receiver only counting): the
 * most a page server inside Node's TLS can reach here, storing nothing.
 */
async function nodeTlsSeconds(
  total: number,
  creds: { server: TlsCredentials; client: TlsCredentials },
): Promise<number> {
  const { ca, cert, key } = creds.server;
  const server = createTlsServer({ ca, cert, key, requestCert: true, maxVersion: 'TLSv1.2' });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const done = new Promise<void>((resolve, reject) => {
    server.once('secureConnection', (sock) => {
      let got = 0;
      sock.on('data', (b: Buffer) => {
        got += b.length;
        if (got >= total) resolve();
      });
      sock.on('error', reject);
    });
  });
  const tx = tlsConnect({ port, host: '127.0.0.1', secureContext: creds.client.context });
  await new Promise<void>((r) => tx.once('secureConnect', r));
  const src = Buffer.alloc(CHUNK, 0x5a);
  const t0 = process.hrtime.bigint();
  for (let sent = 0; sent < total; sent += CHUNK) await new Promise<void>((r) => tx.write(src, () => r()));
  await done;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  tx.destroy();
  server.close();
  return s;
}

/** Seconds to pwrite `total` bytes into a new file in `dir`. */
async function freshWriteSeconds(dir: string, total: number): Promise<number> {
  const path = join(dir, 'fresh-write');
  const fd = sys.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600);
  const buf = Buffer.allocUnsafeSlow(CHUNK).fill(0x5a);
  const t0 = process.hrtime.bigint();
  for (let off = 0; off < total; off += CHUNK) await sys.pwriteAsync(fd, buf, 0, CHUNK, BigInt(off));
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  sys.close(fd);
  rmSync(path);
  return s;
}

/** One page in this many is sent with data in the scattered case (1% dirty). */
const SCATTER_STRIDE = 100;

/** 1 present page, then SCATTER_STRIDE - 1 parent pages, over [start, start + nrPages pages). */
function scatteredRecords(start: bigint, nrPages: number, stride: number): PagemapRun[] {
  const runs: PagemapRun[] = [];
  for (let i = 0; i < nrPages; i += stride) {
    runs.push({ vaddr: start + BigInt(i * 4096), nrPages: 1, flags: PE_PRESENT });
    const rest = Math.min(stride - 1, nrPages - i - 1);
    if (rest > 0) runs.push({ vaddr: start + BigInt((i + 1) * 4096), nrPages: rest, flags: PE_PARENT });
  }
  return runs;
}

interface Scattered {
  seconds: number;
  nrRecords: number;
  dataBytes: number;
}

/** Seconds to send the scattered records into `parentDir`/incr, parent `parentDir` (a full transfer). */
async function scatteredSeconds(
  pid: number,
  start: bigint,
  nrPages: number,
  parentDir: string,
  k: number,
): Promise<Scattered> {
  const dir = join(parentDir, `incr-${k}`);
  mkdirSync(dir);
  const runs = scatteredRecords(start, nrPages, SCATTER_STRIDE);
  const server = await PageServer.listen({ imagesDir: dir, port: 0, prevImagesDir: '..' });
  const served = server.serve();
  served.catch(() => undefined);
  const client = await PageServerClient.connect({ port: server.port });
  const t0 = process.hrtime.bigint();
  const { hasParent } = await client.open({ type: 'task', id: pid });
  if (!hasParent) throw new Error('page-server bench: the scattered transfer found no parent image');
  const sent = await client.sendPagemap(pid, runs);
  await client.close();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await served;
  return { seconds, nrRecords: runs.length, dataBytes: sent.nrPagesSent * 4096 };
}

interface Transfer {
  seconds: number;
  clientUserBytes: number;
  serverUserBytes: number;
}

/** Seconds to send the fixture's `nrPages` pages through a page server into `dir`. */
async function pageServerSeconds(
  pid: number,
  start: bigint,
  nrPages: number,
  dir: string,
  tls?: { server: TlsCredentials; client: TlsCredentials },
): Promise<Transfer> {
  const server = await PageServer.listen({
    imagesDir: dir,
    port: 0,
    ...(tls === undefined ? {} : { tls: tls.server }),
  });
  const served = server.serve();
  served.catch(() => undefined);
  const client = await PageServerClient.connect({
    port: server.port,
    ...(tls === undefined ? {} : { tls: tls.client }),
  });
  const t0 = process.hrtime.bigint();
  await client.open({ type: 'task', id: pid });
  const sent = await client.sendPagemap(pid, [{ vaddr: start, nrPages, flags: PE_PRESENT }]);
  await client.close();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const summary = await served;
  const dataBytes = sent.nrPagesSent * 4096;
  return {
    seconds,
    // process_vm_readv copies every page into the client's pooled buffers; writev then hands
    // them to the kernel (a kernel-side copy). The server splices what its first receive chunk
    // did not hold: only headers and that first chunk reach user space.
    clientUserBytes: dataBytes,
    serverUserBytes: summary.bytesReceived - summary.bytesSpliced,
  };
}

export async function pageServerBench(opts: BenchOptions): Promise<BenchResult> {
  const mib = opts.isQuick ? 128 : 1024;
  const rounds = opts.isQuick ? 2 : 5;
  const total = mib << 20;
  const fx = await startFixture('mem_touch', [String(mib)]);
  try {
    await fx.waitFor('READY', 120_000);
    const { start, nrPages } = memTouchRange(fx);
    const raw: number[] = [];
    const rawCpu: number[] = [];
    const freshCpu: number[] = [];
    const oursCpu: number[] = [];
    const nodeNet: number[] = [];
    const fresh: number[] = [];
    const ours: Transfer[] = [];
    const scattered: Scattered[] = [];
    const rssBefore = process.resourceUsage().maxRSS;
    // The first transfer stores into memory this VM has not used lately (the guest hands free
    // memory back to the host, and taking it again costs a host fault per page) and runs code not
    // yet compiled: reported on its own, not in the rounds.
    const firstDir = mkdtempSync(join(TMP, 'criu-ts-ps-bench-'));
    let first: Transfer;
    try {
      first = await pageServerSeconds(fx.pid, start, nrPages, firstDir);
    } finally {
      rmSync(firstDir, { recursive: true, force: true });
    }
    for (let i = 0; i < rounds; i++) {
      const dir = mkdtempSync(join(TMP, 'criu-ts-ps-bench-'));
      try {
        let c0 = machineBusySeconds();
        raw.push(await rawTcpSeconds(total));
        rawCpu.push(machineBusySeconds() - c0);
        nodeNet.push(await nodeNetSeconds(total));
        c0 = machineBusySeconds();
        fresh.push(await freshWriteSeconds(dir, total));
        freshCpu.push(machineBusySeconds() - c0);
        // Right after the fresh-file write: its store mostly reuses the memory that write has just
        // freed, so that both are measured on memory this VM is using (see the first transfer).
        c0 = machineBusySeconds();
        ours.push(await pageServerSeconds(fx.pid, start, nrPages, dir));
        oursCpu.push(machineBusySeconds() - c0);
        // Short: several per round (the first of a process also pays for compiling the code).
        for (let k = 0; k < 3; k++) scattered.push(await scatteredSeconds(fx.pid, start, nrPages, dir, k));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    const rssPeakMiB = process.resourceUsage().maxRSS / 1024;
    // Inside TLS (--tls): the same transfer, twice, after the rounds.
    const pkiDir = mkdtempSync(join(TMP, 'criu-ts-ps-bench-pki-'));
    const tlsRuns: Transfer[] = [];
    let nodeTls = 0;
    try {
      const pki = makePki(pkiDir);
      const credsOf = async (name: string): Promise<TlsCredentials> =>
        loadTlsCredentials({ cacert: pki.ca, ...pki.issue(name, ['IP:127.0.0.1']) });
      const tls = { server: await credsOf('server'), client: await credsOf('client') };
      nodeTls = await nodeTlsSeconds(total, tls);
      for (let i = 0; i < 2; i++) {
        const dir = mkdtempSync(join(TMP, 'criu-ts-ps-bench-'));
        try {
          tlsRuns.push(await pageServerSeconds(fx.pid, start, nrPages, dir, tls));
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }
    } finally {
      rmSync(pkiDir, { recursive: true, force: true });
    }
    const tlsBest = Math.min(...tlsRuns.map((r) => r.seconds));
    const rssTlsMiB = process.resourceUsage().maxRSS / 1024;
    const gib = total / 2 ** 30;
    const best = (xs: number[]): number => Math.min(...xs);
    const rate = (s: number): string => `${(gib / s).toFixed(2)} GiB/s`;
    const oursS = ours.map((o) => o.seconds);
    const last = ours[ours.length - 1] as Transfer;
    // Rounds are minutes apart and this VM's speed wanders: each round's transfer against the
    // baselines measured just before it, in the same round.
    const ofRaw = oursS.map((o, i) => (100 * (raw[i] as number)) / o);
    const perRound = oursS.map((o, i) => ({
      ofRaw: (ofRaw[i] as number).toFixed(0),
      ofBound: ((100 * Math.max(raw[i] as number, fresh[i] as number)) / o).toFixed(0),
    }));
    const sc = scattered.map((x) => x.seconds);
    const sc0 = scattered[0] as Scattered;
    const scRate = (s: number): string =>
      `${(s * 1000).toFixed(1)} ms = ${(sc0.nrRecords / s).toFixed(0)} records/s, ${(sc0.dataBytes / 1e6 / s).toFixed(1)} MB/s`;
    const cpuLine = (cpu: number[], secs: number[]): string =>
      `${(median(cpu) / gib).toFixed(2)} s/GiB (${median(cpu.map((c, i) => c / (secs[i] as number))).toFixed(2)} CPUs)`;
    const contRate = (s: number): string => `${(total / 1e6 / s).toFixed(0)} MB/s`;
    return {
      name: `page server (${mib} MiB from a live process to ${TMP}, best/median of ${rounds})`,
      lines: [
        `raw TCP loopback:     ${rate(best(raw))} / ${rate(median(raw))}`,
        `node:net loopback:    ${rate(best(nodeNet))} / ${rate(median(nodeNet))}`,
        `fresh-file write:     ${rate(best(fresh))} / ${rate(median(fresh))}`,
        `page server:          ${rate(best(oursS))} / ${rate(median(oursS))}` +
          ` = ${((100 * best(raw)) / best(oursS)).toFixed(0)}% of raw TCP (best), ` +
          `${((100 * median(raw)) / median(oursS)).toFixed(0)}% (median); ` +
          `${((100 * best(fresh)) / best(oursS)).toFixed(0)}% of the fresh-file write, its storage alone (best)`,
        `  round by round:     ${perRound.map((r) => `${r.ofRaw}%`).join(', ')} of that round's raw TCP ` +
          `(median ${median(ofRaw).toFixed(0)}%, ${ofRaw.filter((x) => x >= 80).length} of ${rounds} at 80% or more); ` +
          `${perRound.map((r) => `${r.ofBound}%`).join(', ')} of the slower of that round's raw TCP and fresh-file write ` +
          `(what storing while receiving can reach at most)`,
        `  first transfer:     ${rate(first.seconds)} (before the rounds: code not yet compiled, and pages stored ` +
          `into memory this VM has not used lately, which the host must fault in again)`,
        `  contiguous:         1 record of ${nrPages} pages, ${contRate(best(oursS))} / ${contRate(median(oursS))}`,
        `  scattered 1%:       ${sc0.nrRecords} records (${sc0.dataBytes / 4096} 1-page PE_PRESENT, the rest PE_PARENT), ` +
          `best ${scRate(best(sc))}; median of ${sc.length} ${scRate(median(sc))}`,
        `CPU, whole machine:   raw TCP ${cpuLine(rawCpu, raw)}; fresh-file write ${cpuLine(freshCpu, fresh)}; ` +
          `page server ${cpuLine(oursCpu, oursS)} (median busy CPU-seconds per GiB, and how many of the ` +
          `${availableParallelism()} CPUs that keeps busy on average)`,
        `user-space bytes:     client ${(last.clientUserBytes / 2 ** 20).toFixed(0)} MiB (process_vm_readv into pooled buffers), ` +
          `server ${(last.serverUserBytes / 2 ** 20).toFixed(2)} MiB (headers and the first receive chunk; the rest is spliced socket -> pipe -> file)`,
        `inside TLS:           ${rate(tlsBest)} (best of 2, after the rounds) = ` +
          `${((100 * nodeTls) / tlsBest).toFixed(0)}% of Node's own TLS over loopback (${rate(nodeTls)}, storing nothing), ` +
          `${((100 * median(oursS)) / tlsBest).toFixed(0)}% of the plain page server's median; OpenSSL encrypts and decrypts every byte, ` +
          `and the server copies the decrypted records (${((tlsRuns[0] as Transfer).serverUserBytes / 2 ** 20).toFixed(0)} MiB ` +
          `in user space, nothing spliced); peak RSS then ${rssTlsMiB.toFixed(0)} MiB`,
        `peak RSS:             ${rssPeakMiB.toFixed(0)} MiB (was ${(rssBefore / 1024).toFixed(0)} MiB before; client buffers 2 x ${CHUNK >> 20} MiB)`,
      ],
    };
  } finally {
    fx.write('\n');
    await fx.exited().catch(() => fx.kill());
  }
}
