import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';

import {
  createLogger,
  defaultLogName,
  log,
  parseLogLevel,
  resolveLogFile,
  setLogger,
  type LogLevel,
} from '../../src/log.js';

function logAll(level: LogLevel, file: string, isPerPid = false): string[] {
  const stderr: string[] = [];
  const logger = createLogger({ level, file, isPerPid, stderrWrite: (l) => void stderr.push(l) });
  logger.msg('m');
  logger.error('e');
  logger.warn('w');
  logger.info('i');
  logger.debug('d');
  logger.close();
  return stderr;
}

t.test('each level adds one kind of message; 3 and up add timestamps', async (t) => {
  const dir = t.testdir();
  const expected: Record<LogLevel, string[]> = {
    0: ['m'],
    1: ['m', 'Error (criu): e'],
    2: ['m', 'Error (criu): e', 'Warn (criu): w'],
    3: ['m', 'Error (criu): e', 'Warn (criu): w', 'i'],
    4: ['m', 'Error (criu): e', 'Warn (criu): w', 'i', 'd'],
  };
  for (const level of [0, 1, 2, 3, 4] as const) {
    const file = join(dir, `l${level}.log`);
    const stderr = logAll(level, file);
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
    const bodies = lines.map((l) => l.replace(/^\(\d\d\.\d{6}\) /, ''));
    t.same(bodies, expected[level], `level ${level}`);
    t.equal(
      lines.every((l) => /^\(\d\d\.\d{6}\) /.test(l)),
      level >= 3,
      `timestamps at level ${level}`,
    );
    // Errors and warnings also reach stderr, one line each.
    t.same(
      stderr,
      expected[level].filter((l) => /^(Error|Warn)/.test(l)).map((l) => `${l}\n`),
      `stderr at level ${level}`,
    );
  }
});

t.test('-o - writes the log to stderr, once', async (t) => {
  const stderr: string[] = [];
  const logger = createLogger({ level: 2, file: '-', isPerPid: false, stderrWrite: (l) => void stderr.push(l) });
  logger.error('boom');
  logger.info('hidden');
  t.same(stderr, ['Error (criu): boom\n']);
});

t.test('--log-pid: one file per pid; without it, the pid prefixes the line', async (t) => {
  const dir = t.testdir();
  const file = join(dir, 'restore.log');
  const perPid = createLogger({ level: 3, file, isPerPid: true, stderrWrite: () => undefined });
  perPid.forPid(42).info('hello');
  perPid.info('main');
  perPid.close();
  t.match(readFileSync(`${file}.42`, 'utf8'), /hello/);
  t.notMatch(readFileSync(file, 'utf8'), /hello/);
  const shared = createLogger({ level: 3, file: join(dir, 'one.log'), isPerPid: false, stderrWrite: () => undefined });
  shared.forPid(7).info('task');
  shared.close();
  t.match(readFileSync(join(dir, 'one.log'), 'utf8'), /7: task/);
});

t.test('stacks stay in the file; stderr gets the first line', async (t) => {
  const dir = t.testdir();
  const stderr: string[] = [];
  const logger = createLogger({
    level: 2,
    file: join(dir, 'x.log'),
    isPerPid: false,
    stderrWrite: (l) => void stderr.push(l),
  });
  logger.error('first\n    at somewhere');
  logger.close();
  t.same(stderr, ['Error (criu): first\n']);
  t.equal(readFileSync(join(dir, 'x.log'), 'utf8'), 'Error (criu): first\nError (criu):     at somewhere\n');
});

t.test('log file names and places', async (t) => {
  t.equal(defaultLogName('dump'), 'dump.log');
  t.equal(defaultLogName('pre-dump'), 'pre-dump.log');
  t.equal(defaultLogName('restore'), 'restore.log');
  t.equal(defaultLogName('page-server'), 'page-server.log');
  t.equal(defaultLogName('check'), null);
  t.equal(defaultLogName('show'), null);
  t.equal(resolveLogFile('dump', undefined, '/w'), '/w/dump.log');
  t.equal(resolveLogFile('check', undefined, '/w'), null);
  t.equal(resolveLogFile('check', 'c.log', '/w'), '/w/c.log');
  t.equal(resolveLogFile('dump', '/abs/d.log', '/w'), '/abs/d.log');
  t.equal(resolveLogFile('dump', '-', '/w'), '-');
});

t.test('parseLogLevel', async (t) => {
  t.equal(parseLogLevel('0'), 0);
  t.equal(parseLogLevel(4), 4);
  t.equal(parseLogLevel('5'), null);
  t.equal(parseLogLevel('x'), null);
});

t.test('log() is a stderr-only logger until setLogger installs one', async (t) => {
  const dir = t.testdir();
  const installed = createLogger({ level: 4, file: join(dir, 'i.log'), isPerPid: false, stderrWrite: () => undefined });
  t.not(log(), installed);
  setLogger(installed);
  t.equal(log(), installed);
  log().debug('through the module logger');
  setLogger(null);
  installed.close();
  t.match(readFileSync(join(dir, 'i.log'), 'utf8'), /through the module logger/);
});
