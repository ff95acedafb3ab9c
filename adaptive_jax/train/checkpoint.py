"""Orbax checkpoints of the train state together with the data-iterator position.

Orbax writes each step into a temporary directory and renames it when complete, so a crash never
leaves a half-written checkpoint that looks finished; `max_to_keep` bounds disk use. The train
state (params, batch statistics, optimiser state, step, RNG key) and the iterator state
(epoch, batch) are saved together, which is what makes a resumed run take exactly the steps an
uninterrupted one would.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model being restored."""


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for (train state, iterator state) pairs."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, data_state: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

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
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - orbax raises many types; name the checkpoint
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt or does not match the "
                f"model being restored: {type(e).__name__}: {e}") from e
        _check_shapes(abstract, restored.state, self.directory, step)
        return restored.state, restored.data

    def close(self) -> None:
        self._manager.close()


def _check_shapes(abstract, restored, directory: str, step: int) -> None:
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(abstract),
                                 jax.tree.leaves(restored)):
        if tuple(want.shape) != tuple(got.shape) or want.dtype != got.dtype:
            raise CheckpointError(
                f"checkpoint step {step} in {directory}: {jax.tree_util.keystr(path)} has "
                f"{got.dtype}{tuple(got.shape)}, the model expects {want.dtype}{tuple(want.shape)}")
