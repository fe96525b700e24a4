"""Periodic training state for resumable runs, through orbax's ``CheckpointManager``.

A saved state is everything the training loop (:func:`growth.tasks.train.fit`) needs to go on
exactly as if it had never stopped: the raw params and the optimizer state (the leaves of the
pytree ``(params, opt_state)``, whose structure the resumed run rebuilds itself), the number of
steps done, the data position (the batch stream's permutation and offset in it), the RNG (the
stream's bit-generator state; the loop draws no other randomness), the evaluation history and
the training losses since the last evaluation. Each leaf's SHA-256 is recorded beside it and
checked on restore. The manager writes every state atomically (temporary directory, then
rename) and keeps the last two, so a kill at any moment leaves at least one complete state.

``fingerprint`` (the run's settings, JSON) is saved too; resuming with other settings is
refused, since the continuation would then not be the run that was interrupted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from growth.errors import CheckpointError, GrowthError


@dataclass
class Saved:
    """A restored training state (numpy leaves in ``(params, opt_state)`` tree order)."""

    step: int
    leaves: list[np.ndarray]
    data: dict  # the batch stream's state (see growth.tasks.data.BatchStream.state)
    history: dict
    running: np.ndarray  # training losses since the last evaluation, float32 [n]


def _digest(x: np.ndarray) -> str:
    a = np.ascontiguousarray(x)
    return hashlib.sha256(a.reshape(-1).view(np.uint8) if a.size else b"").hexdigest()


class TrainingState:
    """The saved states of one run in ``directory`` (``every``: steps between saves)."""

    def __init__(self, directory: str | Path, every: int, fingerprint: dict):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GrowthError(f"checkpoint_every={every!r}: expected an integer >= 1")
        self.directory, self.every = Path(directory), every
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, tree: Any, data: dict, history: dict, running: list) -> None:
        """Save the state after ``step`` updates (``tree``: ``(params, opt_state)``)."""
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
        arrays = {"leaves": {f"{i:05d}": x for i, x in enumerate(leaves)},
                  "perm": np.asarray(data["perm"])}  # fmt: skip
        meta = {"fingerprint": self.fingerprint, "step": step, "history": history,
                "data": {k: v for k, v in data.items() if k != "perm"},
                "running": [float(np.float32(r)) for r in running],  # float32 -> float: exact
                "digests": [_digest(x) for x in leaves]}  # fmt: skip
        args = ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                  meta=ocp.args.JsonSave(meta))  # fmt: skip
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, tree: Any, data: dict) -> Saved:
        """The latest saved state; ``tree`` and ``data`` are templates of this run (fresh
        ``(params, opt_state)`` and stream state) giving the expected structure and shapes."""
        step = self._manager.latest_step()
        if step is None:
            raise GrowthError(f"--resume: no saved training state in {self.directory}")
        leaves = jax.tree_util.tree_leaves(tree)
        template = {"leaves": {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)},
                    "perm": np.asarray(data["perm"])}  # fmt: skip
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]  # fmt: skip
            self._check(meta)
            arrays = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(template)))["state"]  # fmt: skip
        except (GrowthError, CheckpointError):
            raise
        except Exception as e:
            raise CheckpointError(
                f"training state {self.directory / str(step)}: cannot restore: "
                f"{type(e).__name__}: {e}"
            ) from e
        leaves = [np.asarray(arrays["leaves"][k]) for k in sorted(arrays["leaves"])]
        for i, (x, want) in enumerate(zip(leaves, meta["digests"], strict=True)):
            if _digest(x) != want:
                raise CheckpointError(
                    f"training state {self.directory / str(step)}: leaf {i} is corrupt (its "
                    "SHA-256 checksum does not match the one recorded at save)"
                )
        history = meta["history"]
        return Saved(meta["step"], leaves, meta["data"] | {"perm": arrays["perm"]}, history,
                     np.asarray(meta["running"], np.float32))  # fmt: skip

    def _check(self, meta: dict) -> None:
        saved = meta.get("fingerprint")
        if saved != self.fingerprint:
            diff = sorted(k for k in set(saved or {}) | set(self.fingerprint)
                          if (saved or {}).get(k) != self.fingerprint.get(k))  # fmt: skip
            raise GrowthError(
                f"--resume: the run saved in {self.directory} had other settings ({diff}); "
                "resume it with the same ones, or start over with --overwrite"
            )

    def close(self) -> None:
        self._manager.close()
