// The page server inside TLS (src/pageserver/tls.ts), client and server of criu-ts, with
// certificates made by openssl: pages of a live process arrive whole (records larger than the
// receive buffer included); each end checks the other's certificate (chain, revocation, the name
// of --address) and a refusal is one clear error on both sides with nothing stored; a plain peer
// meeting a TLS one is told so; the token step works inside TLS; unusable certificate files are
// one usage error. The real CRIU as the other end: test/integration/cr/criu-interop.test.ts.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { ProtocolError, UsageError } from '../../../src/errors.js';
import { PE_PARENT, PE_PRESENT, readPagemap } from '../../../src/images/index.js';
import { PageServerClient } from '../../../src/pageserver/client.js';
import { Connection } from '../../../src/pageserver/socket.js';
import { type PageServerOptions, type PageServerSummary } from '../../../src/pageserver/server.js';
import { loadTlsCredentials, type TlsCredentials, type TlsOptions } from '../../../src/pageserver/tls.js';
import { criuAsync } from '../../helpers/criu.js';
import { files, pages, startServer } from '../../helpers/page-server.js';
import { memTouchRange, memoryOf, startFixture } from '../../helpers/fixture.js';
import { makePki, type Pki } from '../../helpers/pki.js';

const PAGE = 4096;
const LOCAL = ['IP:127.0.0.1', 'DNS:localhost'];

/**
 * Directories of one test: t.testdir() empties its one directory at each call, so a test that
 * needs several (certificates, images) takes them under it.
 */
function dirs(t: Test): (name: string) => string {
  const base = t.testdir();
  let n = 0;
  return (name) => {
    const d = join(base, `${name}-${n++}`);
    mkdirSync(d);
    return d;
  };
}

/** Credentials of a certificate `pki` issues for `name` (SANs `sans`), trusting `ca`. */
async function creds(
  pki: Pki,
  name: string,
  sans: string[],
  extra: TlsOptions = {},
  ca = pki.ca,
): Promise<TlsCredentials> {
  return loadTlsCredentials({ cacert: ca, ...pki.issue(name, sans), ...extra });
}

/** One short session (a page, CLOSE) of `client` options against a server of `server` options. */
async function session(
  serverOpts: Omit<PageServerOptions, 'port' | 'imagesDir'>,
  clientOpts: { tls?: TlsCredentials; token?: string },
  dir: string,
): Promise<{ client: Error | null; server: PageServerSummary | Error }> {
  const { server, outcome } = await startServer({ imagesDir: dir, idleTimeoutMs: 10_000, ...serverOpts });
  const client = await (async () => {
    const c = await PageServerClient.connect({ port: server.port, timeoutMs: 10_000, ...clientOpts });
    await c.open({ type: 'task', id: 1 });
    await c.addPresentBytes(0x1000n, pages(1, 7));
    await c.close();
  })().then(
    () => null,
    (err: unknown) => err as Error,
  );
  return { client, server: await outcome };
}

t.test('pages of a live process inside TLS, records larger than the receive buffer', async (t) => {
  const sub = dirs(t);
  const pki = makePki(sub('pki'));
  const dir = sub('images');
  const fx = await startFixture('mem_touch', ['12', '1']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');
  const { start, nrPages } = memTouchRange(fx);

  const { server, outcome } = await startServer({
    imagesDir: dir,
    address: '127.0.0.1',
    tls: await creds(pki, 'server', LOCAL),
  });
  const client = await PageServerClient.connect({ port: server.port, tls: await creds(pki, 'client', LOCAL) });
  t.same(await client.open({ type: 'task', id: fx.pid }), { hasParent: false });
  // 12 MiB in one record (3 times the server's receive buffer), after a gap a small one.
  await client.sendPagemap(fx.pid, [
    { vaddr: start, nrPages: 8, flags: PE_PRESENT },
    { vaddr: start + BigInt(16 * PAGE), nrPages: nrPages - 16, flags: PE_PRESENT },
  ]);
  await client.close();
  const summary = await outcome;
  if (summary instanceof Error) throw summary;
  t.equal(summary.nrPagesReceived, nrPages - 8);
  t.equal(summary.bytesSpliced, 0, 'inside TLS nothing is spliced');
  t.same(files(dir), [`pagemap-${fx.pid}.img`, 'pages-1.img'], 'the two images, no temporary file');
  const pm = await readPagemap(join(dir, `pagemap-${fx.pid}.img`));
  t.same(pm.runs, [
    { vaddr: start, nrPages: 8, flags: PE_PRESENT },
    { vaddr: start + BigInt(16 * PAGE), nrPages: nrPages - 16, flags: PE_PRESENT },
  ]);
  t.ok(
    readFileSync(join(dir, 'pages-1.img')).equals(memoryOf(fx.pid, pm.runs)),
    'pages-1.img holds the process memory',
  );
  fx.write('\n');
  t.equal((await fx.exited()).code, 0, 'the process is untouched');
});

t.test('scattered records and a parent inside TLS; the token step inside TLS', async (t) => {
  const sub = dirs(t);
  const pki = makePki(sub('pki'));
  const serverTls = await creds(pki, 'server', LOCAL);
  const clientTls = await creds(pki, 'client', LOCAL);
  const parent = sub('images');
  {
    const { client, server } = await session(
      { tls: serverTls, token: 'tok' },
      { tls: clientTls, token: 'tok' },
      parent,
    );
    t.equal(client, null, 'token and TLS: the client succeeds');
    t.notOk(server instanceof Error, 'token and TLS: the server stores');
  }
  const dir = join(parent, 'child');
  mkdirSync(dir);
  const { server, outcome } = await startServer({ imagesDir: dir, prevImagesDir: '..', tls: serverTls });
  const c = await PageServerClient.connect({ port: server.port, tls: clientTls });
  t.same(await c.open({ type: 'task', id: 1 }), { hasParent: true });
  await c.addParent(0x1000n, 1);
  await c.addPresentBytes(0x2000n, pages(1, 3));
  await c.addLazy(0x3000n, 2);
  await c.addPresentBytes(0x5000n, pages(2, 9));
  await c.close();
  const summary = await outcome;
  if (summary instanceof Error) throw summary;
  const pm = await readPagemap(join(dir, 'pagemap-1.img'));
  t.same(pm.runs, [
    { vaddr: 0x1000n, nrPages: 1, flags: PE_PARENT },
    { vaddr: 0x2000n, nrPages: 1, flags: PE_PRESENT },
    { vaddr: 0x3000n, nrPages: 2, flags: 2 },
    { vaddr: 0x5000n, nrPages: 2, flags: PE_PRESENT },
  ]);
  t.ok(readFileSync(join(dir, `pages-${pm.pagesId}.img`)).equals(Buffer.concat([pages(1, 3), pages(2, 9)])));
});

t.test('certificates are checked on both ends; a refusal stores nothing', async (t) => {
  const sub = dirs(t);
  const pki = makePki(sub('pki'));
  const other = makePki(sub('other'), 'other-ca');
  const serverTls = await creds(pki, 'server', LOCAL);
  const clientTls = await creds(pki, 'client', LOCAL);

  const cases: [string, Omit<PageServerOptions, 'port' | 'imagesDir'>, TlsCredentials, RegExp, RegExp][] = [
    [
      'a server certificate of another CA',
      { tls: await creds(other, 'server2', LOCAL, {}, pki.ca) },
      clientTls,
      /during the TLS handshake: the server's certificate was refused: unable to verify the first certificate \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/,
      /closed before CLOSE: nothing was stored \(inside TLS: the client may have refused this server's certificate/,
    ],
    [
      'a client certificate of another CA',
      { tls: serverTls },
      await creds(other, 'client2', LOCAL, {}, pki.ca),
      /during the TLS handshake: the server closed the connection \(does the server use --tls\? does it accept this end's certificate\?\)/,
      /the client's certificate was refused: unable to verify the first certificate \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/,
    ],
    [
      'a server certificate that does not name the address',
      { tls: await creds(pki, 'elsewhere', ['IP:10.9.8.7', 'DNS:elsewhere.example']) },
      clientTls,
      /the server's certificate does not name 127\.0\.0\.1: .*10\.9\.8\.7 \(--tls-no-cn-verify skips this check\)/,
      /may have refused this server's certificate/,
    ],
    [
      "a client certificate that does not name the server's --address (as CRIU checks)",
      { tls: serverTls, address: '127.0.0.1' },
      await creds(pki, 'roaming', ['DNS:roaming.example']),
      /the server closed the connection/,
      /the client's certificate was refused: it does not name 127\.0\.0\.1 \(the page server's --address, as CRIU checks it; --tls-no-cn-verify skips this\)/,
    ],
  ];
  for (const [name, serverOpts, clientCreds, clientErr, serverErr] of cases) {
    const dir = sub('images');
    const r = await session(serverOpts, { tls: clientCreds }, dir);
    t.type(r.client, ProtocolError, `${name}: the client fails`);
    t.match(r.client?.message, clientErr, `${name}: the client says why`);
    t.type(r.server, ProtocolError, `${name}: the server fails`);
    t.match((r.server as Error).message, serverErr, `${name}: the server says why`);
    t.notMatch((r.server as Error).message, /\n/, `${name}: in one line`);
    t.same(files(dir), [], `${name}: nothing stored`);
  }

  // --tls-no-cn-verify lets the names differ (the chain is still checked).
  {
    const dir = sub('images');
    const r = await session(
      { tls: await creds(pki, 'server3', ['DNS:elsewhere.example'], { isNoCnVerify: true }), address: '127.0.0.1' },
      { tls: await creds(pki, 'client3', ['DNS:roaming.example'], { isNoCnVerify: true }) },
      dir,
    );
    t.equal(r.client, null, '--tls-no-cn-verify: names are not checked');
    t.notOk(r.server instanceof Error);
  }

  // A revoked client certificate (--tls-cacrl).
  {
    const revoked = pki.issue('revoked', LOCAL);
    const run = (args: string[]): void => {
      execFileSync('openssl', args, { cwd: pki.dir, stdio: ['ignore', 'ignore', 'pipe'] });
    };
    writeFileSync(join(pki.dir, 'index.txt'), '');
    writeFileSync(
      join(pki.dir, 'ca.cnf'),
      '[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\ndefault_md=sha256\ndefault_crl_days=2\n' +
        'certificate=ca.pem\nprivate_key=ca.key\n',
    );
    run(['ca', '-config', 'ca.cnf', '-revoke', revoked.cert]);
    run(['ca', '-config', 'ca.cnf', '-gencrl', '-out', 'crl.pem']);
    const dir = sub('images');
    const r = await session(
      { tls: await creds(pki, 'server4', LOCAL, { cacrl: join(pki.dir, 'crl.pem') }) },
      { tls: await loadTlsCredentials({ cacert: pki.ca, ...revoked }) },
      dir,
    );
    t.type(r.server, ProtocolError, 'a revoked client certificate: the server fails');
    t.match((r.server as Error).message, /the client's certificate was refused: certificate revoked \(CERT_REVOKED\)/);
    t.same(files(dir), [], 'a revoked client certificate: nothing stored');
  }
});

t.test('a plain peer meeting a TLS one is told so', async (t) => {
  const sub = dirs(t);
  const pki = makePki(sub('pki'));
  {
    const dir = sub('images');
    const r = await session({ tls: await creds(pki, 'server', LOCAL) }, {}, dir);
    t.type(r.client, ProtocolError, 'plain client, TLS server: the client fails');
    t.type(r.server, ProtocolError, 'plain client, TLS server: the server fails');
    t.match(
      (r.server as Error).message,
      /during the TLS handshake: what the client sent is not TLS \(does the client use --tls\?\)/,
    );
    t.same(files(dir), []);
  }
  {
    const dir = sub('images');
    const r = await session({}, { tls: await creds(pki, 'client', LOCAL) }, dir);
    t.type(r.server, ProtocolError, 'TLS client, plain server: the server fails');
    t.match((r.server as Error).message, /the client speaks TLS: start the page server with --tls/);
    t.type(r.client, ProtocolError, 'TLS client, plain server: the client fails');
    t.match(
      r.client?.message,
      /during the TLS handshake: the server closed the connection \(does the server use --tls\?/,
    );
    t.same(files(dir), []);
  }
});

t.test('unusable certificate files: one usage error naming the file', async (t) => {
  const sub = dirs(t);
  const pki = makePki(sub('pki'));
  const ok = pki.issue('server', LOCAL);
  const other = pki.issue('other', LOCAL);
  const empty = join(pki.dir, 'empty.pem');
  writeFileSync(empty, 'not a certificate\n');
  const missing = join(pki.dir, 'missing.pem');
  const cases: [string, TlsOptions, RegExp][] = [
    [
      'a missing CA file',
      { cacert: missing, ...ok },
      /Cannot read the TLS CA certificate ".*missing\.pem" \(--tls-cacert\): ENOENT/,
    ],
    ['a CA file without a certificate', { cacert: empty, ...ok }, /no certificate in it/],
    [
      'a missing certificate',
      { cacert: pki.ca, cert: missing, key: ok.key },
      /Cannot read the TLS certificate .*\(--tls-cert\): ENOENT/,
    ],
    [
      'a missing key',
      { cacert: pki.ca, cert: ok.cert, key: missing },
      /Cannot read the TLS private key .*\(--tls-key\): ENOENT/,
    ],
    [
      'a key of another certificate',
      { cacert: pki.ca, cert: ok.cert, key: other.key },
      /Cannot use the TLS certificate .*key/,
    ],
    ['a missing revocation list', { cacert: pki.ca, ...ok, cacrl: missing }, /\(--tls-cacrl\): ENOENT/],
  ];
  for (const [name, opts, re] of cases) {
    const err = await loadTlsCredentials(opts).then(
      () => null,
      (e: unknown) => e as Error,
    );
    t.type(err, UsageError, `${name}: a usage error`);
    t.match(err?.message, re, `${name}: says which file and why`);
    t.notMatch(err?.message, /\n/, `${name}: in one line`);
  }
});

t.test('criu: a refused or unusable TLS setup is one line, exit 1, and the task runs on', async (t) => {
  const sub = dirs(t);
  const pki = makePki(sub('pki'));
  const other = makePki(sub('other'), 'other-ca');
  const server = pki.issue('server', LOCAL);
  const stranger = other.issue('stranger', LOCAL);
  const fx = await startFixture('mem_touch', ['4', '1']);
  t.teardown(() => fx.kill());
  await fx.waitFor('READY');

  // A certificate file that is not there: refused before anything is done to the task.
  const missing = await criuAsync([
    'dump',
    '-t',
    String(fx.pid),
    '-D',
    sub('images'),
    '--page-server',
    '--port',
    '1',
    '--tls',
    '--tls-cacert',
    pki.ca,
    '--tls-cert',
    join(pki.dir, 'nope.pem'),
    '--tls-key',
    server.key,
  ]);
  t.equal(missing.status, 1);
  t.match(missing.stderr, /^Error \(criu\): Cannot read the TLS certificate ".*nope\.pem" \(--tls-cert\): ENOENT\n$/);

  // A client whose certificate the page server refuses: the dump fails, the task runs on.
  const srv = sub('srv');
  const { server: ps, outcome } = await startServer({
    imagesDir: srv,
    tls: await loadTlsCredentials({ cacert: pki.ca, ...server }),
  });
  const refused = await criuAsync([
    'pre-dump',
    '-t',
    String(fx.pid),
    '-D',
    sub('images'),
    '--page-server',
    '--address',
    '127.0.0.1',
    '--port',
    String(ps.port),
    '--tls',
    '--tls-cacert',
    pki.ca,
    '--tls-cert',
    stranger.cert,
    '--tls-key',
    stranger.key,
  ]);
  t.equal(refused.status, 1);
  t.match(refused.stderr, /^Error \(criu\): Protocol error with 127\.0\.0\.1:\d+ during the TLS handshake: .*\n$/);
  t.match((await outcome) as Error, { message: /the client's certificate was refused/ });
  t.same(files(srv), [], 'nothing stored');
  fx.write('\n');
  t.equal((await fx.exited()).code, 0, 'the task ran on, untouched');
});

t.test('inside TLS a silent peer meets the idle timeout', async (t) => {
  const sub = dirs(t);
  const pki = makePki(sub('pki'));
  const serverTls = await creds(pki, 'server', LOCAL);
  {
    // Connected, never a byte: the handshake times out.
    const dir = sub('images');
    const { server, outcome } = await startServer({ imagesDir: dir, tls: serverTls, idleTimeoutMs: 300 });
    const conn = await Connection.connect('127.0.0.1', server.port);
    t.teardown(() => conn.close());
    const err = await outcome;
    t.type(err, ProtocolError, 'no handshake: the server fails');
    t.match((err as Error).message, /during the TLS handshake: .*timeout/i);
    t.same(files(dir), []);
  }
  {
    // Handshake done, then silence: the session's idle timeout.
    const dir = sub('images');
    const { server, outcome } = await startServer({ imagesDir: dir, tls: serverTls, idleTimeoutMs: 300 });
    const client = await PageServerClient.connect({ port: server.port, tls: await creds(pki, 'client', LOCAL) });
    t.teardown(() => client.abort());
    const err = await outcome;
    t.type(err, ProtocolError, 'silence after the handshake: the server fails');
    t.match((err as Error).message, /the peer sent nothing within the timeout/);
    t.same(files(dir), []);
  }
});
