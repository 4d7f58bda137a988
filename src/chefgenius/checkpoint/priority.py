"""The background writer's CPU priority: idle while training runs, normal once someone waits for it.

At training's priority on a machine whose cores training fills (the 2-core CPU machine), every time
the writer took a core the whole intra-op team of a training op waited for its preempted member, and
asynchronous saves cost more than synchronous ones (every 4 steps of a 153M GPT-2: 1.36-1.47x the
end-only run against 1.14-1.23x). Under ``SCHED_IDLE`` (Linux) the writer only gets a core training
leaves free. But idle can mean never, on a machine that something else keeps busy too (17 MB took
11 s beside an evaluation), so whoever waits for the save (the next save, a stop, the end)
first gives every writer thread normal priority back: a wait is never longer than the write.
Where the policy does not exist (not Linux) or is refused, the writer runs as before.
"""

from __future__ import annotations

import os
import threading

_IDLE = getattr(os, "SCHED_IDLE", None)
_threads: set[int] = set()
_lock = threading.Lock()


def _set(tid: int, policy: int) -> str | None:
    """None when done, else why not."""
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
        return None
    except (OSError, AttributeError) as err:  # gone, refused by a sandbox, or not Linux
        return str(err)


def run_idle() -> str | None:
    """Put the calling thread (and the threads it starts, which inherit its policy) at idle priority;
    returns why it could not (the writer then runs at training's priority, as before), else None."""
    if _IDLE is None:
        return None  # not Linux: nothing to say each save
    refused = _set(threading.get_native_id(), _IDLE)
    if refused is None:
        with _lock:
            _threads.add(threading.get_native_id())
    return refused


def adopt() -> None:
    """Pool initializer for threads a writer starts: remembered, so that :func:`hurry` reaches them."""
    if _IDLE is not None and os.sched_getscheduler(0) == _IDLE:
        with _lock:
            _threads.add(threading.get_native_id())


def hurry() -> None:
    """Someone waits for the background save: every idle writer thread back to normal priority."""
    with _lock:
        tids = list(_threads)
        _threads.clear()
    for tid in tids:
        _set(tid, os.SCHED_OTHER)
