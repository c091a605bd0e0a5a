/**
 * The "none" tracker: no kernel help, every collect returns all the ranges whole, so each
 * pre-dump copies every present page. Still keeps the dumper's state bytes between invocations.
 * Kernel interfaces: none.
 */

import { rangesFromRuns, runsFromRanges, type AddrRange } from './ranges.js';
import type { HolderRecord } from './state.js';
import { BaseTracker, type KeptInput, type TrackContext } from './types.js';

export class NoneTracker extends BaseTracker {
  readonly kind = 'none' as const;
  readonly collectsRunning = true;

  constructor(ctx: TrackContext, kept: KeptInput | null) {
    super(ctx, kept);
  }

  collect(ranges: readonly AddrRange[]): Promise<AddrRange[]> {
    this.assertOpen();
    this.hasBaseline = true;
    return Promise.resolve(rangesFromRuns(runsFromRanges(ranges)));
  }

  protected keepBackend(): Promise<HolderRecord | null> {
    return Promise.resolve(null);
  }

  protected endBackend(): Promise<void> {
    return Promise.resolve();
  }

  protected closeBackend(): void {}
}
