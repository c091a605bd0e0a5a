/**
 * task_core_entry.task_state: the values CRIU gives a dumped task's state (crit shows them by
 * name). A live task is Alive; a zombie is Dead (crit: "Zombie"), its core holding only its exit
 * status; a task in a group stop is Stopped, and restore leaves it stopped.
 */
export const TASK_STATE = { ALIVE: 1, DEAD: 3, STOPPED: 6 } as const;
