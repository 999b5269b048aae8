"""Orbax checkpoints of the whole run: resumable at task ends and every K epochs."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run's config."""


class RunCheckpointer:
    """`state` (RunState pytree) + `meta` (JSON: position in the sequence, results so far, config).

    Saves are numbered 0, 1, 2, ...; `meta` says where the run stands (`task`, `epoch` = the next
    epoch to train, `task_done`).
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: Any, meta: dict) -> None:
        """Asynchronous: the arrays are copied off the devices before this returns (so the next
        step may reuse their buffers), the files are written in the background; `close()` and
        every restore wait for them."""
        latest = self.latest()
        step = 0 if latest is None else latest + 1
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def restore_meta(self, step: int | None = None) -> dict:
        self.manager.wait_until_finished()
        step = self.latest() if step is None else step
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for unreadable files
            raise CheckpointError(f"checkpoint {self.directory}/{step} is corrupt or unreadable: "
                                  f"{type(e).__name__}: {e}") from e
        return out["meta"]

    def restore_state(self, abstract_state: Any, step: int | None = None) -> Any:
        self.manager.wait_until_finished()
        step = self.latest() if step is None else step
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.directory}/{step} is corrupt or does not "
                                  f"match this model: {type(e).__name__}: {e}") from e
        return out["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of fields whose values differ between two config dicts."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{name}: checkpoint has {a!r}, config has {b!r}")
    return diffs
