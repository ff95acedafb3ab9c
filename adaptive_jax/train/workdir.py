"""A training run's directory: one run at a time, and a metrics history that matches its checkpoint.

`WorkdirLock`: an exclusive `flock` on `<workdir>/lock` for the life of a run; a second run on the
same directory (another process, or another call in this one) is refused with the holder's pid.
The kernel drops the lock when its holder dies, so a killed run never leaves a stale lock behind.

`reconcile_metrics`: a resumed run restarts at its checkpoint's step, so metric records written
after that step by the interrupted run would be written twice. They are moved (not deleted) to
`metrics.dropped.jsonl`, and the move is reported. A run with no checkpoint to resume from finds
metrics either from itself, killed before its first checkpoint (the workdir's `recipe.json`, written
at every start, holds the same recipe: the records are moved aside and it starts over), or from
another run (another recipe, or none recorded): refused, naming what differs.

`claim_run_dir`: a run whose identity is not in its config (a baseline trained for a plan that a
search chose) ties its directory to what defines it, in `run_key.json`, so that a later run with
another plan, backbone or recipe is refused instead of resuming the wrong checkpoint.
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


RUN_KEY_FILE = "run_key.json"


def claim_run_dir(run_dir: str, key: dict) -> str:
    """Ties `run_dir` to `key` (JSON-able: what makes the run the run it is) and returns it.

    A new or empty directory gets `run_key.json` (written atomically before any training); one
    that holds the same key is the same run, to resume or re-evaluate. A different key, or a
    directory with files but no key, is refused (WorkdirError naming the differing entries).
    """
    path = os.path.join(run_dir, RUN_KEY_FILE)
    key = _as_stored(key)
    if os.path.exists(path):
        with open(path) as f:
            held = json.load(f)
        if held != key:
            differ = _differing_entries(held, key)
            raise WorkdirError(
                f"{run_dir} holds another run ({path}: {'; '.join(differ)}); remove that "
                "directory to train this one there, or point this run at another directory")
        return run_dir
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise WorkdirError(
            f"{run_dir} holds files but no {RUN_KEY_FILE}, so what it trained is unknown (a run "
            "from before run keys were written); remove it, or point this run at another directory")
    os.makedirs(run_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(key, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return run_dir


def _differing_entries(held, wanted, prefix: str = "") -> list[str]:
    if isinstance(held, dict) and isinstance(wanted, dict):
        out = []
        for k in sorted(set(held) | set(wanted)):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in held or k not in wanted:
                out.append(f"{name} {'only held' if k in held else 'only wanted'}")
            else:
                out += _differing_entries(held[k], wanted[k], name)
        return out
    if held == wanted:
        return []
    return [f"{prefix or 'key'}: held {_short(held)}, wanted {_short(wanted)}"]


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            holder = json.loads(f.read() or "{}")
        return f"pid {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


RECIPE_FILE = "recipe.json"


def record_recipe(workdir: str, recipe: dict) -> None:
    """Writes `recipe` (what the run's weights depend on) to `<workdir>/recipe.json`, atomically."""
    path = os.path.join(workdir, RECIPE_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(_as_stored(recipe), f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def reconcile_metrics(path: str, restored_step: int | None, recipe: dict | None = None) -> int:
    """Makes `path` (metrics.jsonl) the history of a run at `restored_step` (None: a fresh run).

    Returns how many records were moved to `metrics.dropped.jsonl`. A fresh run (no checkpoint)
    with an existing non-empty history starts over if `recipe` equals the recipe recorded beside it
    (the same run, killed before its first checkpoint), and is refused otherwise (WorkdirError
    naming the file, what differs, and the ways out).
    """
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        return 0
    if restored_step is None:
        held = _held_recipe(os.path.dirname(path))
        if held is None or recipe is None or held != _as_stored(recipe):
            last = json.loads(lines[-1]).get("step")
            why = ("no recipe recorded beside it, so it is another run's history" if held is None
                   or recipe is None else "a run of another recipe (" + "; ".join(
                       _differing_entries(held, _as_stored(recipe))) + ")")
            raise WorkdirError(
                f"{path} holds {len(lines)} metric records (up to step {last}) but there is no "
                f"checkpoint to resume from: {why}. Delete that file (or the whole workdir) to "
                "start over here, or pass a new --workdir")
    start_over = restored_step is None  # the same run, killed before its first checkpoint
    keep, drop = [], []
    for line in lines:
        (keep if not start_over and json.loads(line)["step"] <= restored_step else drop).append(line)
    if drop:
        dropped_path = os.path.join(os.path.dirname(path), "metrics.dropped.jsonl")
        with open(dropped_path, "a") as f:
            f.writelines(drop)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        print(f"starting over (this recipe's run was stopped before its first checkpoint): moved "
              f"{len(drop)} metric records to {dropped_path}" if start_over else
              f"resuming at step {restored_step}: moved {len(drop)} metric records written after "
              f"it by the interrupted run to {dropped_path}", flush=True)
    return len(drop)


def _as_stored(value):
    """`value` as JSON gives it back (tuples as lists), for comparison with a stored copy."""
    return json.loads(json.dumps(value, default=str))


def _held_recipe(workdir: str) -> dict | None:
    try:
        with open(os.path.join(workdir, RECIPE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
