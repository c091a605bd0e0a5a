/**
 * JSON text in the exact layout of Python's `json.dump(obj, indent=4)` (what `crit decode --pretty`
 * prints), and a JSON parser that keeps integers beyond 2^53 exact (as bigint).
 *
 * Layout facts (Python's json module, ensure_ascii=True): 4-space indent, "key": value, items
 * separated by ",\n", empty containers as {} and [], non-ASCII characters as \uXXXX escapes
 * (surrogate pairs above U+FFFF), control characters as \n \r \t \b \f or \u00XX. No trailing
 * newline (crit adds one only when writing to stdout).
 *
 * Touches no kernel interface.
 */

export type JsonValue = null | boolean | number | bigint | string | readonly JsonValue[] | JsonObject;
export interface JsonObject {
  readonly [key: string]: JsonValue;
}

const ESCAPES: Record<string, string> = {
  '"': '\\"',
  '\\': '\\\\',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t',
  '\b': '\\b',
  '\f': '\\f',
};

/** A string as Python's json.dumps(ensure_ascii=True) writes it. */
export function pyJsonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i] as string;
    const code = s.charCodeAt(i);
    const esc = ESCAPES[ch];
    if (esc !== undefined) out += esc;
    else if (code < 0x20 || code > 0x7e) {
      // 0x7f is printed as is by Python; everything above is escaped (UTF-16 units, like Python).
      out += code === 0x7f ? ch : '\\u' + code.toString(16).padStart(4, '0');
    } else out += ch;
  }
  return out + '"';
}

function scalar(v: null | boolean | number | bigint | string): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return pyJsonString(v);
  if (typeof v === 'number' && !Number.isFinite(v)) return Number.isNaN(v) ? 'NaN' : v > 0 ? 'Infinity' : '-Infinity';
  return String(v);
}

/** Python `json.dumps(value, indent=4)`. */
export function formatPyJson(value: JsonValue, indent = 4): string {
  const parts: string[] = [];
  const emit = (v: JsonValue, level: number): void => {
    if (Array.isArray(v)) {
      const arr = v as readonly JsonValue[];
      if (arr.length === 0) return void parts.push('[]');
      const pad = ' '.repeat(indent * (level + 1));
      parts.push('[');
      arr.forEach((x, i) => {
        parts.push(i === 0 ? '\n' + pad : ',\n' + pad);
        emit(x, level + 1);
      });
      parts.push('\n' + ' '.repeat(indent * level) + ']');
    } else if (v !== null && typeof v === 'object') {
      const keys = Object.keys(v);
      if (keys.length === 0) return void parts.push('{}');
      const pad = ' '.repeat(indent * (level + 1));
      parts.push('{');
      keys.forEach((k, i) => {
        parts.push((i === 0 ? '\n' : ',\n') + pad + pyJsonString(k) + ': ');
        emit((v as JsonObject)[k] as JsonValue, level + 1);
      });
      parts.push('\n' + ' '.repeat(indent * level) + '}');
    } else {
      parts.push(scalar(v as null | boolean | number | bigint | string));
    }
  };
  emit(value, 0);
  return parts.join('');
}

/** Thrown by parseJson; `offset` is the character offset of the problem. */
export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(`${message} at character ${offset}`);
  }
}

/**
 * Parse JSON text. Integers that do not fit a double exactly become bigint; everything else is as
 * JSON.parse gives it. Objects keep their key order.
 */
export function parseJson(text: string): JsonValue {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && ' \t\n\r'.includes(text[i] as string)) i++;
  };
  const fail = (what: string): never => {
    throw new JsonSyntaxError(what, i);
  };
  const value = (): JsonValue => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const obj: Record<string, JsonValue> = {};
      ws();
      if (text[i] === '}') return (i++, obj);
      for (;;) {
        ws();
        if (text[i] !== '"') fail('Expected a key');
        const k = str();
        ws();
        if (text[i] !== ':') fail('Expected ":"');
        i++;
        Object.defineProperty(obj, k, { value: value(), enumerable: true, writable: true, configurable: true });
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') return (i++, obj);
        else fail('Expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const arr: JsonValue[] = [];
      ws();
      if (text[i] === ']') return (i++, arr);
      for (;;) {
        arr.push(value());
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === ']') return (i++, arr);
        else fail('Expected "," or "]"');
      }
    }
    if (c === '"') return str();
    for (const [word, v] of [
      ['true', true],
      ['false', false],
      ['null', null],
      ['NaN', NaN],
      ['Infinity', Infinity],
      ['-Infinity', -Infinity],
    ] as const) {
      if (text.startsWith(word, i)) return ((i += word.length), v);
    }
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (m === null) return fail('Unexpected character');
    i += m[0].length;
    if (m[2] === undefined && m[3] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return Number(m[0]);
  };
  const str = (): string => {
    const start = i;
    i++;
    let out = '';
    for (;;) {
      const c = text[i];
      if (c === undefined) return fail('Unterminated string');
      if (c === '"') {
        i++;
        return out;
      }
      if (c === '\\') {
        const e = text[i + 1];
        const simple: Record<string, string> = {
          '"': '"',
          '\\': '\\',
          '/': '/',
          b: '\b',
          f: '\f',
          n: '\n',
          r: '\r',
          t: '\t',
        };
        if (e !== undefined && simple[e] !== undefined) {
          out += simple[e];
          i += 2;
        } else if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
          out += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16));
          i += 6;
        } else {
          i = start;
          return fail('Bad escape in string');
        }
      } else {
        out += c;
        i++;
      }
    }
  };
  const v = value();
  ws();
  if (i !== text.length) fail('Unexpected text after the JSON value');
  return v;
}
