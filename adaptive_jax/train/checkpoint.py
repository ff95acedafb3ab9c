"""Orbax checkpoints of the train state together with the data-iterator position.

Orbax writes each step into a temporary directory and renames it when complete, so a crash never
leaves a half-written checkpoint that looks finished; `max_to_keep` bounds disk use. The train
state (params, batch statistics, optimiser state, step, RNG key) and the iterator state
(epoch, batch) are saved together, which is what makes a resumed run take exactly the steps an
uninterrupted one would.

Orbax's atomic rename does not protect against what happens to a file afterwards (a bad disk, a
partial copy, a stray write). So every step also carries `integrity`: a sha256 over every array of
the train state (its path, dtype, shape and bytes), computed from the arrays that were saved and
checked against the arrays that were restored. `restore_latest_intact` walks back from the newest
step past any that fail, moving them aside (never deleting) so the run can save those steps again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

_INTEGRITY = "integrity"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model being restored."""


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for (train state, iterator state) pairs."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep
        self._manager = self._open()

    def _open(self):
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, data_state: dict) -> None:
        integrity = {"algorithm": "sha256", "state": state_digest(state)}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            **{_INTEGRITY: ocp.args.JsonSave(integrity)}))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def restore(self, state_template, step: int | None = None):
        """Restores (state, data_state) at `step` (default: latest) into the template's structure.

        Raises CheckpointError naming the directory when there is no checkpoint, when it is
        unreadable or corrupt, or when its arrays do not fit the template (another model).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        if step not in self.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                                  f"available steps: {self.all_steps()}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        # checkpoints written before the integrity item existed restore unverified
        verified = os.path.isdir(os.path.join(self.directory, str(step), _INTEGRITY))
        items = dict(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
        if verified:
            items[_INTEGRITY] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - orbax raises many types; name the checkpoint
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt or does not match the "
                f"model being restored: {type(e).__name__}: {e}") from e
        _check_shapes(abstract, restored.state, self.directory, step)
        if verified and state_digest(restored.state) != restored[_INTEGRITY]["state"]:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt: its arrays do not match "
                "the sha256 recorded when it was saved (the files changed after the save)")
        return restored.state, restored.data

    def restore_latest_intact(self, state_template):
        """Restores the newest step that restores and verifies: (state, data_state, step, skipped).

        `skipped` lists (step, error message) for each newer step that failed; those are moved to
        `<directory>.corrupt/` so that the resumed run can write those step numbers again. When no
        step is intact, nothing is moved (every step failing usually means another model) and the
        newest step's CheckpointError is raised, listing the others.
        """
        skipped = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data = self.restore(state_template, step)
            except CheckpointError as e:
                skipped.append((step, str(e)))
                continue
            if skipped:
                self._move_aside([s for s, _ in skipped])
            return state, data, step, skipped
        if not skipped:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        newest, message = skipped[0]
        raise CheckpointError(message + (f" (and every older step failed too: "
                                         f"{[s for s, _ in skipped[1:]]})" if len(skipped) > 1 else ""))

    def _move_aside(self, steps: list[int]) -> None:
        self._manager.close()
        aside = self.directory + ".corrupt"
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            shutil.move(os.path.join(self.directory, str(step)),
                        os.path.join(aside, f"{step}.{time.strftime('%Y%m%dT%H%M%S')}"))
        self._manager = self._open()

    def close(self) -> None:
        self._manager.close()


def state_digest(tree) -> str:
    """sha256 over every array of `tree` with its path, dtype and shape (host copies)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _check_shapes(abstract, restored, directory: str, step: int) -> None:
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(abstract),
                                 jax.tree.leaves(restored)):
        if tuple(want.shape) != tuple(got.shape) or want.dtype != got.dtype:
            raise CheckpointError(
                f"checkpoint step {step} in {directory}: {jax.tree_util.keystr(path)} has "
                f"{got.dtype}{tuple(got.shape)}, the model expects {want.dtype}{tuple(want.shape)}")
