/**
 * Every fd kind criu-ts can dump and restore, in the order the orchestrator asks them whether
 * they handle an fd (the more specific first). Adding a kind: a module in this directory and one
 * line here.
 */

import { eventfdFile } from './eventfd.js';
import { eventpollFile } from './eventpoll.js';
import { fifoFile } from './fifo.js';
import { inetSocketFile } from './inet-socket.js';
import { inotifyFile } from './inotify.js';
import { memfdFile } from './memfd.js';
import { netlinkSocketFile } from './netlink-socket.js';
import { packetSocketFile } from './packet-socket.js';
import { pipeFile } from './pipe.js';
import { regFile } from './reg.js';
import { signalfdFile } from './signalfd.js';
import { timerfdFile } from './timerfd.js';
import { unixSocketFile } from './unix-socket.js';
import { ttyFile } from './tty.js';
import type { FdKindModule } from './types.js';

export const FD_KINDS: readonly FdKindModule[] = [
  memfdFile,
  pipeFile,
  fifoFile,
  eventfdFile,
  eventpollFile,
  signalfdFile,
  timerfdFile,
  inotifyFile,
  inetSocketFile,
  unixSocketFile,
  netlinkSocketFile,
  packetSocketFile,
  ttyFile,
  regFile,
];
