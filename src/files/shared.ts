/**
 * The table a dump or a restore shares between its files (FileDumpContext.shared,
 * FileRestoreContext.shared): a module keeps what it learned of one file for the next ones, a
 * process's for the tree's other processes, under a key of its own.
 */

/** The value under `key`, made by `make` on first use. */
export function sharedEntry<T>(shared: Map<string, unknown>, key: string, make: () => T): T {
  if (shared.has(key)) return shared.get(key) as T;
  const value = make();
  shared.set(key, value);
  return value;
}

/** The map under `key`, empty on first use. */
export function sharedMap<K, V>(shared: Map<string, unknown>, key: string): Map<K, V> {
  return sharedEntry(shared, key, () => new Map<K, V>());
}
