/**
 * Page server throughput: 1 GiB (128 MiB with --quick) of a live process's memory
 * (test/fixtures/mem_touch) sent by PageServerClient to a PageServer on 127.0.0.1, timed from
 * OPEN2 to CLOSE's answer (every image in place), into two stores: /dev/shm (tmpfs, 4 KiB pages),
 * and a tmpfs with huge pages that the bench mounts (root), where storing stops being the bound.
 * Next to it, measured in the same run on the same machine, interleaved round by round:
 *   - raw TCP loopback: the same volume written from one 4 MiB Buffer and read into another, by the
 *     same native calls (writev / recv MSG_WAITALL on the thread pool), no files;
 *   - fresh-file writes: the same volume pwritten into a new file on the same store, no network
 *     (storing is part of the job and is often the bound).
 * After the rounds: node:net loopback, the same volume through Node's own sockets (what a plain JS
 * page server would get at best; the gigabyte of Buffers it leaves to the collector made the guest
 * hand memory back to the host during the next transfer, so it no longer runs in the rounds).
 * Inside TLS (--tls, certificates made by openssl): the same transfer twice after the rounds.
 * Also: the busy CPU time of the whole machine during each (both ends share these CPUs here, so
 * the work the page server does on top of raw TCP, reading the task's pages and storing them, sets
 * how close to raw TCP it can get); each round's transfer against that round's baselines (the
 * VM's speed wanders between rounds); the memory the guest handed back to its host meanwhile,
 * where the kernel counts it (free page reporting: storing into such memory costs a host fault per
 * page, and such rounds are marked); bytes that passed through criu-ts's user-space memory on
 * each side; and the peak RSS of this process (client and server both run in it).
 *
 * Scattered: what live migration sends once the task is frozen: 1 page in every SCATTER_STRIDE
 * dirty (PE_PRESENT, 1-page records), the pages between them PE_PARENT records against the full
 * transfer just made (the parent image): thousands of small records in one stream. Reported as
 * records/s (both kinds) and MB/s of page data.
 */

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type AddressInfo } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
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
import { machineBusySeconds, median, vmReportedKiB } from './stats.js';

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
    // Reading /proc/PID/mem copies every page into the client's pooled buffers; writev then hands
    // them to the kernel (a kernel-side copy). The server splices what its first receive chunk
    // did not hold: only headers and that first chunk reach user space.
    clientUserBytes: dataBytes,
    serverUserBytes: summary.bytesReceived - summary.bytesSpliced,
  };
}

/** Where a round's images go: a tmpfs, and how it stores. */
interface Store {
  label: string;
  base: string;
  fresh: number[];
  freshCpu: number[];
  ours: Transfer[];
  oursCpu: number[];
  /** MiB the guest handed back to its host from each round's fresh-file write to the transfer's end. */
  reportedMiB: (number | null)[];
}

/**
 * A tmpfs with huge pages (huge=always) mounted for the bench on a new directory: storing into it
 * takes a 2 MiB page per allocation instead of 512 of 4 KiB, so that storage stops being what
 * bounds the transfer. Needs CAP_SYS_ADMIN; without it, why not.
 */
function mountHugeTmpfs(sizeBytes: number): { dir: string; unmount: () => void } | { why: string } {
  const dir = mkdtempSync(join(tmpdir(), 'criu-ts-ps-bench-huge-'));
  try {
    execFileSync(
      'mount',
      ['-t', 'tmpfs', '-o', `huge=always,size=${Math.ceil(sizeBytes / 2 ** 20)}m,mode=0700`, 'criu-ts-bench', dir],
      {
        stdio: 'pipe',
      },
    );
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    return { why: stderr !== undefined && stderr !== '' ? stderr : String(err) };
  }
  return {
    dir,
    unmount: () => {
      execFileSync('umount', [dir], { stdio: 'pipe' });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function pageServerBench(opts: BenchOptions): Promise<BenchResult> {
  const mib = opts.isQuick ? 128 : 1024;
  const rounds = opts.isQuick ? 2 : 5;
  const total = mib << 20;
  const fx = await startFixture('mem_touch', [String(mib)]);
  const huge = mountHugeTmpfs(2 * total + (64 << 20));
  try {
    await fx.waitFor('READY', 120_000);
    const { start, nrPages } = memTouchRange(fx);
    const raw: number[] = [];
    const rawCpu: number[] = [];
    const nodeNet: number[] = [];
    const newStore = (label: string, base: string): Store => ({
      label,
      base,
      fresh: [],
      freshCpu: [],
      ours: [],
      oursCpu: [],
      reportedMiB: [],
    });
    const stores = [newStore(`${TMP} (tmpfs, 4 KiB pages)`, TMP)];
    if ('dir' in huge) stores.push(newStore('a tmpfs with huge pages (huge=always, mounted for the bench)', huge.dir));
    const shm = stores[0] as Store;
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
      let c0 = machineBusySeconds();
      raw.push(await rawTcpSeconds(total));
      rawCpu.push(machineBusySeconds() - c0);
      for (const store of stores) {
        const dir = mkdtempSync(join(store.base, 'criu-ts-ps-bench-'));
        try {
          const reported0 = vmReportedKiB();
          c0 = machineBusySeconds();
          store.fresh.push(await freshWriteSeconds(dir, total));
          store.freshCpu.push(machineBusySeconds() - c0);
          // Right after the fresh-file write: its store mostly reuses the memory that write has
          // just freed, so that both are measured on memory this VM is using (see the first transfer).
          c0 = machineBusySeconds();
          store.ours.push(await pageServerSeconds(fx.pid, start, nrPages, dir));
          store.oursCpu.push(machineBusySeconds() - c0);
          const reported1 = vmReportedKiB();
          store.reportedMiB.push(reported0 === null || reported1 === null ? null : (reported1 - reported0) / 1024);
          // Short: several per round (the first of a process also pays for compiling the code).
          if (store === shm)
            for (let k = 0; k < 3; k++) scattered.push(await scatteredSeconds(fx.pid, start, nrPages, dir, k));
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }
    }
    // After the rounds: the gigabyte of JS Buffers it receives, once collected, makes the guest
    // hand memory back to the host during whatever runs next.
    for (let i = 0; i < 2; i++) nodeNet.push(await nodeNetSeconds(total));
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
    const pct = (x: number): string => `${x.toFixed(0)}%`;
    const cpuLine = (cpu: number[], secs: number[]): string =>
      `${(median(cpu) / gib).toFixed(2)} s/GiB (${median(cpu.map((c, i) => c / (secs[i] as number))).toFixed(2)} CPUs)`;
    const isCounted = vmReportedKiB() !== null;
    const storeLines = (store: Store): string[] => {
      const oursS = store.ours.map((o) => o.seconds);
      // Rounds are minutes apart and this VM's speed wanders: each round's transfer against the
      // raw TCP measured at the start of the same round.
      const ofRaw = oursS.map((o, i) => (100 * (raw[i] as number)) / o);
      const ofBound = oursS.map((o, i) => (100 * Math.max(raw[i] as number, store.fresh[i] as number)) / o);
      const isDisturbed = store.reportedMiB.map((r) => (r ?? 0) > 0);
      const calm = ofRaw.filter((_, i) => !(isDisturbed[i] as boolean));
      const marked = ofRaw.map((x, i) => `${pct(x)}${isDisturbed[i] === true ? '*' : ''}`);
      return [
        `into ${store.label}:`,
        `  fresh-file write:   ${rate(best(store.fresh))} / ${rate(median(store.fresh))} (storing alone, no network)`,
        `  page server:        ${rate(best(oursS))} / ${rate(median(oursS))}` +
          ` = ${pct((100 * best(raw)) / best(oursS))} of raw TCP (best), ${pct((100 * median(raw)) / median(oursS))} (median)`,
        `    round by round:   ${marked.join(', ')} of that round's raw TCP (median ${pct(median(ofRaw))}, ` +
          `${ofRaw.filter((x) => x >= 80).length} of ${rounds} at 80% or more)` +
          (isCounted
            ? `; * = the guest handed memory back to the host after the fresh-file write began ` +
              `(${store.reportedMiB.map((r) => (r ?? 0).toFixed(0)).join(', ')} MiB): the transfer may have stored into ` +
              `memory the host had to fault in again; ` +
              `unmarked rounds: ${calm.length === 0 ? 'none' : `median ${pct(median(calm))}`} (memory handed back earlier can still be met)`
            : '; this kernel does not count the memory the guest hands back to the host'),
        `    against storage:  ${ofBound.map(pct).join(', ')} of the slower of that round's raw TCP and fresh-file write ` +
          `(what storing while receiving can reach at most)`,
        `    CPU:              fresh-file write ${cpuLine(store.freshCpu, store.fresh)}; page server ${cpuLine(store.oursCpu, oursS)}`,
      ];
    };
    const sc = scattered.map((x) => x.seconds);
    const sc0 = scattered[0] as Scattered;
    const scRate = (s: number): string =>
      `${(s * 1000).toFixed(1)} ms = ${(sc0.nrRecords / s).toFixed(0)} records/s, ${(sc0.dataBytes / 1e6 / s).toFixed(1)} MB/s`;
    const shmS = shm.ours.map((o) => o.seconds);
    const last = shm.ours[shm.ours.length - 1] as Transfer;
    const contRate = (s: number): string => `${(total / 1e6 / s).toFixed(0)} MB/s`;
    return {
      name: `page server (${mib} MiB from a live process, best/median of ${rounds})`,
      lines: [
        `raw TCP loopback:     ${rate(best(raw))} / ${rate(median(raw))}; CPU ${cpuLine(rawCpu, raw)}`,
        `node:net loopback:    ${rate(best(nodeNet))} / ${rate(median(nodeNet))} (after the rounds)`,
        ...stores.flatMap(storeLines),
        ...('why' in huge ? [`into a tmpfs with huge pages: not measured (mount: ${huge.why})`] : []),
        `first transfer:       ${rate(first.seconds)} into ${TMP} (before the rounds: code not yet compiled, and pages stored ` +
          `into memory this VM has not used lately, which the host must fault in again)`,
        `contiguous:           1 record of ${nrPages} pages, ${contRate(best(shmS))} / ${contRate(median(shmS))} into ${TMP}`,
        `scattered 1%:         ${sc0.nrRecords} records (${sc0.dataBytes / 4096} 1-page PE_PRESENT, the rest PE_PARENT), ` +
          `best ${scRate(best(sc))}; median of ${sc.length} ${scRate(median(sc))}`,
        `CPU figures:          median busy CPU-seconds of the whole machine per GiB, and how many of its ` +
          `${availableParallelism()} CPUs that keeps busy on average (both ends run on them)`,
        `user-space bytes:     client ${(last.clientUserBytes / 2 ** 20).toFixed(0)} MiB (read from /proc/PID/mem into pooled buffers), ` +
          `server ${(last.serverUserBytes / 2 ** 20).toFixed(2)} MiB (headers and the first receive chunk; the rest is spliced socket -> pipe -> file)`,
        `inside TLS:           ${rate(tlsBest)} (best of 2, after the rounds) = ` +
          `${pct((100 * nodeTls) / tlsBest)} of Node's own TLS over loopback (${rate(nodeTls)}, storing nothing), ` +
          `${pct((100 * median(shmS)) / tlsBest)} of the plain page server's median; OpenSSL encrypts and decrypts every byte, ` +
          `and the server copies the decrypted records (${((tlsRuns[0] as Transfer).serverUserBytes / 2 ** 20).toFixed(0)} MiB ` +
          `in user space, nothing spliced); peak RSS then ${rssTlsMiB.toFixed(0)} MiB`,
        `peak RSS:             ${rssPeakMiB.toFixed(0)} MiB (was ${(rssBefore / 1024).toFixed(0)} MiB before; client buffers 2 x ${CHUNK >> 20} MiB)`,
      ],
    };
  } finally {
    fx.write('\n');
    await fx.exited().catch(() => fx.kill());
    if ('dir' in huge) huge.unmount();
  }
}
