/**
 * `local` as SRC or DST: this machine, no agent process, no network. The same operations as a
 * remote agent (agent-ops.ts), called in-process, behind the same Agent interface.
 */

import { AgentBase, type AgentOp } from './agent-api.js';
import { AgentOps, DEFAULT_IMAGES_ROOT, type AgentOpsOptions } from './agent-ops.js';
import type { ParamsOf, ResultOf } from './protocol.js';

export class LocalAgent extends AgentBase {
  readonly name = 'local';
  private readonly ops: AgentOps;
  private ready: Promise<void> | undefined;

  /** Images under `imagesRoot` (default the agent's); page servers listen on 127.0.0.1 unless told. */
  constructor(opts: Partial<AgentOpsOptions> = {}) {
    super();
    this.ops = new AgentOps({
      pageServerAddress: '127.0.0.1',
      ...opts,
      imagesRoot: opts.imagesRoot ?? DEFAULT_IMAGES_ROOT,
    });
  }

  get imagesRoot(): string {
    return this.ops.imagesRoot;
  }

  async call<K extends AgentOp>(op: K, params: ParamsOf<K>): Promise<ResultOf<K>> {
    this.ready ??= this.ops.init();
    await this.ready;
    return this.ops.handle(op, params);
  }

  close(): Promise<void> {
    return this.ops.close();
  }
}
