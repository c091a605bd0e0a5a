/**
 * Which process trees restore can make again (src/restore/tree.ts): each process in its parent's
 * session or its own, and in its parent's process group, its own, or one another process of the
 * tree leads in the same session. clone, setsid and setpgid make nothing else. The dump checks a
 * live tree with it before freezing (src/dump/tree.ts), the restore the pstree.img it reads.
 */

export interface PstreeShape {
  pid: number;
  ppid: number;
  sid: number;
  pgid: number;
}

/** Why restore could not make tree `list` (root first, parents before children), or undefined. */
export function pstreeShapeProblem(list: readonly PstreeShape[]): string | undefined {
  const byPid = new Map(list.map((e) => [e.pid, e]));
  for (const e of list.slice(1)) {
    const parent = byPid.get(e.ppid);
    if (parent === undefined) continue;
    if (e.sid !== e.pid && e.sid !== parent.sid)
      return `process ${e.pid} is in session ${e.sid}, neither its own nor its parent's`;
    const leader = byPid.get(e.pgid);
    const isJoinable = leader !== undefined && leader.sid === e.sid;
    if (e.pgid !== e.pid && e.pgid !== parent.pgid && !isJoinable)
      return `process ${e.pid} is in process group ${e.pgid}, whose leader is not in the tree`;
  }
  return undefined;
}
