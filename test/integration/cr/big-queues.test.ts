/**
 * Queues bigger than the restore's scratch space in the task (512 KiB) come back whole: a pipe
 * grown to 1 MiB and filled, and a TCP connection (--tcp-established) whose sender filled its
 * autotuned buffer (about 4 MiB here) towards a reader that reads nothing. The restored socket
 * starts with a smaller buffer: the restore grows it to take the queue (its log says so). Each
 * program (python3) then reads everything back and checks every byte (PASS or FAIL).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { criuAsync, endExpectPass, startRestore, startWorkload, waitGone } from '../../helpers/cr.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ptrace, TCP repair, clone3 set_tid)';

/** Reads what was queued once SIGTERM comes, checks it byte by byte; OUTFILE is the last argument. */
const CHECK = `
done = []
signal.signal(signal.SIGTERM, lambda *a: done.append(1))
while not done: time.sleep(0.05)
close_writer()
got = bytearray()
while True:
    b = read(1 << 16)
    if not b: break
    got += b
bad = next((i for i in range(len(got)) if got[i] != i % 251), None)
out.write("PASS\\n" if len(got) == n and bad is None else f"FAIL: {len(got)} of {n} bytes, first bad at {bad}\\n")
`;

const FILL = `
chunk = bytes(i % 251 for i in range(251 * 64))
n = 0
def fill(write):
    global n
    while True:
        try:
            n += write(chunk[n % 251:] + chunk[:n % 251])
        except BlockingIOError:
            return
`;

const PIPE = `
import fcntl, os, signal, sys, time
out = open(sys.argv[-1], "a", buffering=1)
${FILL}
r, w = os.pipe()
fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
os.set_blocking(w, False)
fill(lambda b: os.write(w, b))
out.write(f"READY {os.getpid()} {n}\\n")
def close_writer(): os.close(w)
def read(size): return os.read(r, size)
${CHECK}`;

const TCP = `
import os, signal, socket, sys, time
out = open(sys.argv[-1], "a", buffering=1)
${FILL}
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
c.setblocking(False)
fill(c.send)
out.write(f"READY {os.getpid()} {n}\\n")
def close_writer(): c.setblocking(True); c.shutdown(socket.SHUT_WR)
def read(size): return s.recv(size)
${CHECK}`;

for (const { name, script, dumpArgs } of [
  { name: 'a full 1 MiB pipe', script: PIPE, dumpArgs: [] },
  { name: 'a TCP connection with MiBs queued', script: TCP, dumpArgs: ['--tcp-established'] },
]) {
  t.test(`${name} comes back whole`, { skip: needsRoot }, async (t) => {
    const dir = t.testdir({ 'queue.py': script });
    const w = await startWorkload('/usr/bin/python3', dir, [path.join(dir, 'queue.py')]);
    t.teardown(() => w.kill());
    const queued = Number(/READY \d+ (\d+)/.exec(w.report())?.[1]);
    t.ok(queued > 512 << 10, `${queued} bytes queued: more than the scratch space`);
    const images = path.join(dir, 'img');
    const dump = await criuAsync(['dump', '-t', String(w.pid), '-D', images, ...dumpArgs]);
    t.equal(dump.status, 0, dump.stderr);
    await waitGone(w.pid);
    const restored = await startRestore(['-D', images, '-v4', '-o', 'restore.log'], path.join(dir, 'restored.pid'));
    t.equal(restored.pid, w.pid);
    if (script === TCP)
      t.match(
        readFileSync(path.join(images, 'restore.log'), 'utf8'),
        /send buffer grown to \d+ bytes for its queue/,
        'the restored socket grew its buffer for the queue',
      );
    await endExpectPass(t, w);
    t.equal((await restored.done).status, 0);
  });
}
