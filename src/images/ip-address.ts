/**
 * IP addresses as CRIU's images hold them (the `(criu).ipadd` fields: inet_sk_entry's src_addr and
 * dst_addr): the address bytes in network order, read as little-endian u32 words, one for IPv4,
 * four for IPv6. crit shows them as text, compressed as Python's ipaddress does.
 */

/** An address (IPv4 or IPv6 text) as CRIU stores it. */
export function ipWords(text: string): number[] {
  const bytes = text.includes(':') ? ipv6Bytes(text) : ipv4Bytes(text);
  const words: number[] = [];
  for (let i = 0; i < bytes.length; i += 4) words.push(bytes.readUInt32LE(i));
  return words;
}

/** The address bytes (network order) of CRIU's words. */
export function ipBytes(words: readonly number[]): Buffer {
  const b = Buffer.alloc(words.length * 4);
  words.forEach((w, i) => b.writeUInt32LE(w >>> 0, i * 4));
  return b;
}

function ipv4Bytes(text: string): Buffer {
  const parts = text.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255))
    throw new RangeError(`Not an IPv4 address: "${text}"`);
  return Buffer.from(parts);
}

function ipv6Bytes(text: string): Buffer {
  let s = text.replace(/%.*$/, ''); // a zone (fe80::1%eth0)
  let tail: Buffer = Buffer.alloc(0);
  const v4 = /:(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4 !== null) {
    // The last 32 bits written as IPv4 (::ffff:1.2.3.4): keep "::" whole, drop a single ':'.
    tail = ipv4Bytes(v4[1] as string);
    s = s.slice(0, v4.index + 1);
    if (!s.endsWith('::')) s = s.slice(0, -1);
  }
  const halves = s.split('::');
  if (halves.length > 2) throw new RangeError(`Not an IPv6 address: "${text}"`);
  const groups = (h: string): number[] =>
    h === '' ? [] : h.split(':').map((g) => (/^[0-9a-f]{1,4}$/i.test(g) ? parseInt(g, 16) : NaN));
  const head = groups(halves[0] as string);
  const rest = halves.length === 2 ? groups(halves[1] as string) : [];
  const nrGroups = 8 - tail.length / 2;
  const gap = nrGroups - head.length - rest.length;
  const all = halves.length === 2 ? [...head, ...new Array<number>(Math.max(gap, 0)).fill(0), ...rest] : head;
  if (all.length !== nrGroups || (halves.length === 2 && gap < 1) || all.some((g) => Number.isNaN(g)))
    throw new RangeError(`Not an IPv6 address: "${text}"`);
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  tail.copy(out, 16 - tail.length);
  return out;
}

/** The text of CRIU's words: dotted IPv4, or IPv6 with its longest run (two or more) of zero groups as "::". */
export function ipText(words: readonly number[]): string {
  const b = ipBytes(words);
  if (words.length === 1) return [...b].join('.');
  // IPv6, compressed as Python's ipaddress does: longest run (≥2) of zero groups becomes "::".
  const groups = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLen < 2) return hex.join(':');
  return hex.slice(0, best).join(':') + '::' + hex.slice(best + bestLen).join(':');
}
