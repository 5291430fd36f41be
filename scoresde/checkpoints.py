"""Checkpoints of a training run, on orbax-checkpoint.

A work directory holds two orbax `CheckpointManager`s, as the reference does:

    workdir/checkpoints/<step>/        periodic snapshots (every `snapshot_freq`), all kept
    workdir/checkpoints-meta/<step>/   preemption checkpoints (every
                                       `snapshot_freq_for_preemption`, and on SIGTERM /
                                       Ctrl-C): only the latest is kept

Each checkpoint has two items: "state", the whole `TrainState` pytree (step, params,
EMA params, optimizer state, PRNG key), and "data", the data iterator's position as
JSON. `restore_newest` resumes from the newest checkpoint of either kind that restores:
one whose files were truncated or garbled is passed over (and reported), never deleted.

Atomicity: orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp-*` and renames
it to `<step>` only once everything is on disk, so a process killed during a save
(even with SIGKILL) leaves the previous checkpoints intact; unfinished temporary
directories are ignored and removed when the manager is next opened.

In a multi-process run every process calls `save` and `restore` (orbax synchronizes
them); the directory must be shared between processes.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

PERIODIC_DIR = "checkpoints"
META_DIR = "checkpoints-meta"


class UnreadableCheckpoints(RuntimeError):
    """Every checkpoint of a workdir failed to restore."""


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines() or [""])[0][:200]


def _quiet_abandoned_reads():
    """After a failed restore, tensorstore's other reads of that checkpoint finish on an
    event loop orbax has closed, and each reports "Event loop is closed" as an unraisable
    exception. Those reports, and only those, are dropped (installed before the first try)."""
    previous = sys.unraisablehook
    if getattr(previous, "scoresde_quiet", False):
        return

    def hook(unraisable):
        if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.scoresde_quiet = True
    sys.unraisablehook = hook


def abstract_like(tree):
    """Shape/dtype/sharding stand-ins of a pytree of arrays (the restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _manager(directory: str, max_to_keep: int | None, async_save: bool, read_only: bool, name: str):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save,
        read_only=read_only,
        # Two managers run side by side: their cross-process barriers need distinct keys
        # (with shared keys, two processes could pair up different managers' barriers).
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f"scoresde_{name}"),
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "data"))


class CheckpointManager:
    """Periodic (all kept) and preemption (latest kept) checkpoints of a work directory.

    Args:
      workdir: the run's directory.
      max_to_keep: how many periodic checkpoints to keep (None: all, as the reference).
      async_save: write in a background thread (the blocking part only copies the
        arrays to host memory, so training can continue and donate its buffers).
      read_only: only restore (for evaluation next to a running training: it neither
        writes nor cleans up the trainer's unfinished temporary directories).
    """

    def __init__(self, workdir: str, max_to_keep: int | None = None, async_save: bool = True, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self.periodic = _manager(os.path.join(self.workdir, PERIODIC_DIR), max_to_keep, async_save, read_only, "periodic")
        self.meta = _manager(os.path.join(self.workdir, META_DIR), 1, async_save, read_only, "meta")

    def _get(self, kind: str) -> ocp.CheckpointManager:
        if kind not in ("periodic", "meta"):
            raise ValueError(f"kind must be 'periodic' or 'meta', got {kind!r}.")
        return self.periodic if kind == "periodic" else self.meta

    def save(self, step: int, state, data_state: dict | None = None, kind: str = "periodic") -> bool:
        """Save `state` and the data position at `step`; False if that step is already saved."""
        manager = self._get(kind)
        # One save in flight at a time: the other manager's background finalization is
        # done first, so every process runs the same sequence of orbax operations.
        self._get("meta" if kind == "periodic" else "periodic").wait_until_finished()
        latest = manager.latest_step()
        if latest is not None and latest >= step:
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(dict(data_state or {})),
        )
        return bool(manager.save(int(step), args=args, force=True))

    def all_steps(self, kind: str = "periodic") -> list[int]:
        return sorted(self._get(kind).all_steps())

    def latest(self) -> tuple[int, str] | None:
        """(step, kind) of the newest finalized checkpoint, or None. Ties go to periodic."""
        found = [(s, k) for k in ("periodic", "meta") if (s := self._get(k).latest_step()) is not None]
        if not found:
            return None
        return max(found, key=lambda sk: (sk[0], sk[1] == "periodic"))

    def restore(self, target, step: int | None = None, kind: str | None = None) -> tuple[Any, dict]:
        """Restore (state, data_state) at `step` (default: the latest of either kind).

        `target` is a state pytree (or its `abstract_like`): its structure, shapes,
        dtypes and shardings are those of the restored arrays.
        """
        if step is None:
            latest = self.latest()
            if latest is None:
                raise FileNotFoundError(f"No checkpoint in {self.workdir}.")
            step, kind = latest
        elif kind is None:
            kind = "periodic" if step in self.periodic.all_steps() else "meta"
        abstract = abstract_like(target)
        restored = self._get(kind).restore(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["data"] or {})

    def candidates(self) -> list[tuple[int, str]]:
        """Every finalized (step, kind), newest first (periodic first at a tie)."""
        found = [(s, k) for k in ("periodic", "meta") for s in self._get(k).all_steps()]
        return sorted(found, key=lambda sk: (sk[0], sk[1] == "periodic"), reverse=True)

    def restore_newest(self, target, on_unreadable=None) -> tuple[Any, dict, int, str] | None:
        """(state, data_state, step, kind) from the newest checkpoint that restores, or None
        when there is none. A checkpoint that fails to restore (truncated or garbled files) is
        passed over, with `on_unreadable(step, kind, error)`; nothing is deleted. Raises
        `UnreadableCheckpoints` if none restores."""
        errors = []
        _quiet_abandoned_reads()
        for step, kind in self.candidates():
            try:
                state, data_state = self.restore(target, step=step, kind=kind)
                return state, data_state, step, kind
            except Exception as err:  # orbax, tensorstore and json raise many kinds
                errors.append(f"step {step} ({kind}): {type(err).__name__}: {_first_line(err)}")
                if on_unreadable is not None:
                    on_unreadable(step, kind, err)
        if errors:
            raise UnreadableCheckpoints(f"No checkpoint in {self.workdir} restores; {'; '.join(errors)}")
        return None

    def step_path(self, step: int, kind: str) -> str:
        return os.path.join(self.workdir, PERIODIC_DIR if kind == "periodic" else META_DIR, str(step))

    def reload(self):
        """Read the directories again (after checkpoints were moved away)."""
        self.periodic.reload()
        self.meta.reload()

    def wait_until_finished(self):
        self.periodic.wait_until_finished()
        self.meta.wait_until_finished()

    def close(self):
        self.periodic.close()
        self.meta.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def restore_state(workdir: str, target, step: int | None = None, kind: str | None = None):
    """Convenience for evaluation and sampling: the state saved in `workdir` (read only)."""
    with CheckpointManager(workdir, async_save=False, read_only=True) as manager:
        return manager.restore(target, step=step, kind=kind)[0]
