/**
 * The agent's side of --move-address: addresses that move with a migrated process, on the wire as
 * "ADDR/PREFIX@DEV" (protocol.ts AddressesParams). SRC says where it holds each one before the
 * pre-copy and DST whether it could take them, so that a migration that cannot move them fails
 * before anything is frozen; SRC releases them once the process is frozen, and takes them back
 * when the migration fails after that; DST takes them in its restore (engine-ops.ts restoreFinal)
 * and drops them when the migration fails after its restore was asked for.
 */

import { isIP } from 'node:net';
import { UsageError } from '../src/errors.js';
import { addAddress, cannotTake, heldAddress, parseAddress, removeAddress, type HostAddress } from '../src/index.js';

export function addressToWire(a: HostAddress): string {
  return `${a.address}/${a.prefix}@${a.dev}`;
}

export function addressFromWire(text: string): HostAddress {
  const m = /^([^/@]+)\/(\d{1,3})@(.+)$/.exec(text);
  if (m === null) throw new UsageError(`Invalid address "${text}": ADDR/PREFIX@DEV`);
  const address = parseAddress(m[1] as string);
  const prefix = Number(m[2]);
  if (prefix > (isIP(address) === 6 ? 128 : 32)) throw new UsageError(`Invalid address "${text}": prefix ${prefix}`);
  return { address, prefix, dev: m[3] as string };
}

/** Operation `addresses` (see AddressesParams): the addresses as "ADDR/PREFIX@DEV". */
export function moveAddresses(action: string, list: readonly string[]): string[] {
  switch (action) {
    case 'held':
      return list.map((text) => {
        const held = heldAddress(parseAddress(text));
        if (held === undefined) throw new UsageError(`This host does not hold ${text}`);
        return addressToWire(held);
      });
    case 'check-free':
      for (const text of list) {
        const why = cannotTake(addressFromWire(text));
        if (why !== undefined) throw new UsageError(`This host cannot take the address: ${why}`);
      }
      return [...list];
    case 'release':
      for (const text of list) removeAddress(addressFromWire(text));
      return [...list];
    case 'drop':
      // DST after a failed migration: those it took go (it may not have taken them all).
      for (const a of list.map(addressFromWire)) if (heldAddress(a.address) !== undefined) removeAddress(a);
      return [...list];
    case 'take':
      // Those a failed release left in place are taken already.
      for (const a of list.map(addressFromWire)) if (heldAddress(a.address) === undefined) addAddress(a);
      return [...list];
    default:
      throw new UsageError(`addresses: action must be held, check-free, release, take or drop, not "${action}"`);
  }
}
