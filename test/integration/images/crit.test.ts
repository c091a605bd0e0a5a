// Round trips against Debian's crit (CRIU 3.17): images written by criu-ts must decode in crit with
// the same values our `show` prints (minus the CRIU 4.x fields 3.17 does not know), and crit's
// encoding of our JSON must give back our bytes. Skips when /usr/bin/crit is absent.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import {
  IMAGE_KINDS,
  encodeEntry,
  encodeJson,
  formatShow,
  messageType,
  parseCritJson,
  parseJson,
  showImage,
  writeImage,
  type CritImage,
  type EntryValue,
  type ImageEntry,
  type JsonObject,
} from '../../../src/images/index.js';
import { entryType } from '../../../src/images/image-reader.js';
import { imageKind } from '../../../src/images/kinds.js';
import { FIELDS_42, SAMPLES } from '../../fixtures/images/samples.js';

const CRIT = '/usr/bin/crit';
if (!existsSync(CRIT)) {
  t.plan(0, 'crit (CRIU 3.17, Debian package criu) is not installed at /usr/bin/crit');
} else {
  const crit = (...args: string[]): string =>
    execFileSync(CRIT, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

  /** The entry without the fields CRIU 3.17 does not know (recursively). */
  const strip42 = (typeName: string, entry: ImageEntry): ImageEntry => {
    const type = messageType(typeName);
    const drop = FIELDS_42[type.name] ?? [];
    const out: ImageEntry = {};
    for (const [k, v] of Object.entries(entry)) {
      if (drop.includes(k) || v === undefined) continue;
      const field = type.fields[k];
      const rt = field?.resolvedType;
      if (rt && 'fieldsArray' in rt) {
        const sub = (x: EntryValue): ImageEntry => strip42(rt.name, x as ImageEntry);
        out[k] = Array.isArray(v) ? (v as EntryValue[]).map(sub) : sub(v);
      } else out[k] = v;
    }
    return out;
  };

  /** Our JSON in 3.17's names: pagemap_entry field 2 is "nr_pages" there. */
  const names317 = (doc: CritImage): CritImage =>
    doc.magic !== 'PAGEMAP'
      ? doc
      : {
          ...doc,
          entries: doc.entries.map((e, i) =>
            i === 0
              ? e
              : Object.fromEntries(Object.entries(e).map(([k, v]) => [k === 'compat_nr_pages' ? 'nr_pages' : k, v])),
          ),
        };

  for (const sample of SAMPLES) {
    t.test(`${sample.kind} (${sample.file})`, async (t) => {
      const dir = t.testdir({});
      const kind = imageKind(sample.kind);
      const full = join(dir, sample.file);
      await writeImage(full, kind, sample.records);

      // Our own reader gives back what was written.
      const ours = await showImage(full);
      t.equal(ours.magic, sample.kind);
      t.same(parseCritJson(formatShow(ours)), ours, 'our JSON text parses back to itself');
      t.ok(
        encodeJson(formatShow(ours)).equals(readFileSync(full)),
        'our encodeJson of our show output gives our bytes',
      );

      // crit 3.17 decodes our (4.2-format) image: same values for the fields it knows.
      const stripped = sample.records.map((r, i) => ({ ...r, entry: strip42(entryType(kind, i).name, r.entry) }));
      const old = join(dir, 'old-' + sample.file);
      await writeImage(old, kind, stripped);
      const expected = names317(await showImage(old));
      const decoded = parseJson(crit('decode', '-i', full, '--pretty')) as unknown as CritImage;
      t.equal(decoded.magic, sample.kind, 'crit names the kind by its magic');
      t.same(decoded, parseJson(formatShow(expected)), 'crit 3.17 decodes the same values');
      const plain = parseJson(crit('decode', '-i', full)) as JsonObject;
      t.equal((plain['entries'] as unknown[]).length, sample.records.length, 'crit decode without --pretty too');

      // crit 3.17 encodes our JSON back into our bytes.
      const json = join(dir, 'ours.json');
      writeFileSync(json, formatShow(expected));
      const back = join(dir, 'back.img');
      crit('encode', '-i', json, '-o', back);
      t.ok(readFileSync(back).equals(readFileSync(old)), 'crit encode of our JSON gives our bytes');
    });
  }

  t.test('every magic of the kinds table is the one crit names', async (t) => {
    const dir = t.testdir({});
    for (const kind of IMAGE_KINDS) {
      if (kind.header === 'raw') continue;
      const path = join(dir, kind.name + '.img');
      // crit's ghost-file handler needs its head entry; the others decode an empty image.
      await writeImage(
        path,
        kind,
        kind.name === 'GHOST_FILE' ? [{ entry: { uid: 0, gid: 0, mode: 0o100600 }, extra: Buffer.alloc(0) }] : [],
      );
      try {
        t.equal((JSON.parse(crit('decode', '-i', path)) as { magic: string }).magic, kind.name, kind.name);
      } catch (err) {
        // 3.17 knows these magics but has no entry handler for them: its error names the magic.
        t.match(
          String((err as { stderr?: unknown }).stderr),
          `No handler found for image with magic ${kind.name}`,
          kind.name,
        );
      }
    }
  });

  t.test('rpc.proto criu_req/criu_resp are wire-compatible with pycriu', async (t) => {
    const req = {
      type: 1,
      opts: {
        images_dir_fd: 3,
        leave_running: true,
        log_level: 4,
        log_file: 'dump.log',
        ps: { address: '10.0.0.1', port: 1234 },
        track_mem: true,
        parent_img: '../1',
      },
      notify_success: false,
      pid: 26497,
    };
    const ours = encodeEntry(messageType('criu_req'), req);
    const py = [
      'import sys, pycriu.rpc_pb2 as r',
      'q = r.criu_req(); q.ParseFromString(bytes.fromhex(sys.argv[1]))',
      'assert q.type == r.DUMP and q.opts.images_dir_fd == 3 and q.opts.ps.port == 1234 and q.opts.parent_img == "../1" and q.pid == 26497',
      'p = r.criu_resp(type=r.DUMP, success=True); p.dump.restored = False; p.cr_errno = 0',
      'sys.stdout.write(q.SerializeToString().hex() + " " + p.SerializeToString().hex())',
    ].join('\n');
    const [reser, resp] = execFileSync('/usr/bin/python3', ['-c', py, ours.toString('hex')], {
      encoding: 'utf8',
    }).split(' ');
    t.equal(reser, ours.toString('hex'), 'pycriu re-serializes our criu_req to the same bytes');
    const back = encodeEntry(messageType('criu_resp'), {
      type: 1,
      success: true,
      dump: { restored: false },
      cr_errno: 0,
    });
    t.equal(back.toString('hex'), resp, "our criu_resp bytes equal pycriu's");
  });
}
