"""A training run's directory: one run at a time, and a metrics history that matches its checkpoint.

`WorkdirLock`: an exclusive `flock` on `<workdir>/lock` for the life of a run; a second run on the
same directory (another process, or another call in this one) is refused with the holder's pid.
The kernel drops the lock when its holder dies, so a killed run never leaves a stale lock behind.

`reconcile_metrics`: a resumed run restarts at its checkpoint's step, so metric records written
after that step by the interrupted run would be written twice. They are moved (not deleted) to
`metrics.dropped.jsonl`, and the move is reported. A run with no checkpoint to resume from refuses
a workdir that already holds metrics: that history belongs to another run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket


class WorkdirError(RuntimeError):
    """The workdir is in use by another run, or holds another run's history."""


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for one run (see the module docstring)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), "lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirError(
                f"workdir {os.path.dirname(self.path)} is in use by another run ({_holder(self.path)}); "
                "wait for it to finish, stop it, or pass another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            holder = json.loads(f.read() or "{}")
        return f"pid {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def reconcile_metrics(path: str, restored_step: int | None) -> int:
    """Makes `path` (metrics.jsonl) the history of a run at `restored_step` (None: a fresh run).

    Returns how many records were moved to `metrics.dropped.jsonl`. A fresh run refuses an
    existing non-empty history (WorkdirError naming the file and the two ways out).
    """
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        return 0
    if restored_step is None:
        last = json.loads(lines[-1]).get("step")
        raise WorkdirError(
            f"{path} holds {len(lines)} metric records (up to step {last}) but there is no checkpoint "
            "to resume from: it is another run's history, or a run killed before its first "
            "checkpoint. Delete that file (or the whole workdir) to start over here, or pass a new "
            "--workdir")
    keep, drop = [], []
    for line in lines:
        (keep if json.loads(line)["step"] <= restored_step else drop).append(line)
    if drop:
        dropped_path = os.path.join(os.path.dirname(path), "metrics.dropped.jsonl")
        with open(dropped_path, "a") as f:
            f.writelines(drop)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        print(f"resuming at step {restored_step}: moved {len(drop)} metric records written after "
              f"it by the interrupted run to {dropped_path}", flush=True)
    return len(drop)
