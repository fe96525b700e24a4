"""The optax training loop: jitted steps on pure params, periodic evaluation, a progress bar.

Models are Flax NNX modules; the loop splits them into ``(graphdef, params)`` once and trains the
pure params, so the same step function serves any family. Learning rates may carry per-leaf
multipliers (``theory.parametrization``) so that a grown model and a same-size model from
scratch are trained under the same width-aware rule.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from growth.engine import check_seed
from growth.errors import GrowthError
from growth.tasks.data import Dataset, iterate_batches
from growth.tasks.resume import TrainingState


@dataclass(frozen=True)
class TrainConfig:
    """steps: optimizer steps; lr: peak Adam learning rate (warm-up then cosine decay to 10%)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.0
    eval_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise GrowthError(f"train {name}={getattr(self, name)}: must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GrowthError(f"train lr={self.lr}: must be a positive number")
        if self.warmup < 0 or not 0 <= self.weight_decay < math.inf:
            raise GrowthError("train warmup and weight_decay must be finite and >= 0")
        check_seed(self.seed, "train seed")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    """Test metrics at evaluation steps (step 0 = before any update) and the final train loss."""

    steps: list[int] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy; logits [B, C], labels int [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def scale_by_leaf(multipliers: Sequence[float]) -> optax.GradientTransformation:
    """Multiply each leaf's update by a constant (leaves in tree order)."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        if len(leaves) != len(multipliers):
            raise GrowthError(f"{len(multipliers)} LR multipliers for {len(leaves)} leaves")
        scaled = [u * m for u, m in zip(leaves, multipliers, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, scaled), state

    return optax.GradientTransformation(init, update)


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Peak ``cfg.lr``: linear warm-up from 0 over ``min(cfg.warmup, cfg.steps - 1)`` updates,
    then cosine decay to ``0.1 cfg.lr`` at update ``cfg.steps``."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, min(cfg.warmup, cfg.steps - 1), cfg.steps, end_value=cfg.lr * 0.1
    )


def make_optimizer(
    cfg: TrainConfig, lr_multipliers: Sequence[float] | None = None
) -> optax.GradientTransformation:
    """AdamW (decoupled decay) with warm-up + cosine schedule and optional per-leaf multipliers."""
    return _adamw(lr_schedule(cfg), lr_multipliers, cfg.weight_decay)


def _adamw(
    learning_rate: optax.Schedule,
    lr_multipliers: Sequence[float] | None,
    weight_decay: float,
) -> optax.GradientTransformation:
    parts = [optax.scale_by_adam()]
    if lr_multipliers is not None:
        parts.append(scale_by_leaf(lr_multipliers))
    if weight_decay:  # decoupled and after the width multipliers: decay is not rescaled
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def evaluate(model: nnx.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> tuple:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y), averaged over every target.

    Classifiers: x [B, ...], y int [B], logits [B, C]. Sequence models: x [B, T], y int [B, T],
    logits [B, T, V] (the mean is per token).
    """
    graphdef, params = nnx.split(model)
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        lb, cb = _eval_batch(graphdef, params, x[i : i + batch], y[i : i + batch])
        loss += float(lb)
        correct += int(cb)
    return loss / np.size(y), correct / np.size(y)


@jax.jit
def _eval_batch(graphdef, params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return losses.sum(), (logits.argmax(-1) == y).sum()


def fit(
    model: nnx.Module,
    batches: Iterator[tuple],
    loss_fn: Callable[..., jax.Array],
    evaluate_fn: Callable[[nnx.Module], tuple[float, float]],
    cfg: TrainConfig,
    *,
    lr_multipliers: Sequence[float] | None = None,
    desc: str = "train",
    progress: bool = True,
    transform: Callable[[Any, jax.Array], Any] | None = None,
    state: TrainingState | None = None,
    resume: bool = False,
) -> History:
    """Train ``model`` in place with AdamW; the task-independent loop.

    batches: yields tuples of arrays; ``loss_fn(model, *batch)`` is the (traced) mean loss;
    ``evaluate_fn(model) -> (test loss, test accuracy)`` runs at step 0 and every
    ``cfg.eval_every`` steps. Raises GrowthError if the training loss becomes non-finite.

    transform: optional ``(raw params, t) -> effective params`` (t: int32 scalar, the number of
    updates done so far) applied inside the jitted step before the forward pass -- gradients
    flow through it to the raw params the optimizer updates -- and before every evaluation; the
    model ends holding the effective params at ``t = cfg.steps`` (e.g. MSG's growth mask,
    ``growth.recipes.msg.msg_transform``). Without it the loop is unchanged.

    state: where to save the training state every ``state.every`` steps
    (:mod:`growth.tasks.resume`; ``batches`` must then be a :class:`BatchStream`); with
    ``resume`` the loop starts from the latest saved state and ends bit-identical to a run that
    was never interrupted. Ctrl-C (SIGINT) stops the loop between two steps, saves the state
    (if ``state``) and raises :class:`TrainingInterrupted`.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = make_optimizer(cfg, lr_multipliers).init(params)
    if state is not None and not hasattr(batches, "state"):
        raise GrowthError(f"{desc}: resumable training needs a BatchStream of batches")
    lrs = np.asarray(jax.jit(lr_schedule(cfg))(jnp.arange(cfg.steps)))  # lrs[t]: update t + 1's
    static = {
        "graphdef": graphdef,
        "loss_fn": loss_fn,
        "transform": transform,
        "lr_multipliers": None if lr_multipliers is None else tuple(map(float, lr_multipliers)),
        "weight_decay": cfg.weight_decay,
    }

    def step(params, opt_state, t, *batch):
        return _train_step(params, opt_state, rest, jnp.int32(t), jnp.float32(lrs[t]), batch,
                           **static)  # fmt: skip

    def effective(p, t):
        return p if transform is None else transform(p, t)

    hist, running, start = History(), [], 0
    if resume:
        if state is None:
            raise GrowthError(f"{desc}: resume needs a training state directory")
        saved = state.restore((params, opt_state), batches.state())
        treedef = jax.tree_util.tree_structure((params, opt_state))
        params, opt_state = jax.tree_util.tree_unflatten(treedef, map(jnp.asarray, saved.leaves))
        batches.set_state(saved.data)
        hist, start = History(**saved.history), saved.step
        running = [jnp.asarray(r) for r in saved.running]
    held = effective if transform is None else jax.jit(transform)  # what the model holds

    def record(k: int) -> None:
        nnx.update(model, held(params, jnp.int32(k)))
        loss, acc = evaluate_fn(model)
        hist.steps.append(k)
        hist.test_loss.append(float(loss))
        hist.test_acc.append(float(acc))

    def save(k: int) -> None:
        if state is not None:
            state.save(k, (params, opt_state), batches.state(), hist.to_dict(), running)

    if not resume:
        record(0)
    bar = tqdm(range(start + 1, cfg.steps + 1), desc=desc, disable=not progress, leave=False)
    with _sigint_flag() as interrupted:
        for k in bar:
            if interrupted():
                save(k - 1)
                kept = f"; the state is saved in {state.directory}" if state else ""
                raise TrainingInterrupted(f"{desc}: stopped after step {k - 1}{kept}")
            batch = tuple(jnp.asarray(b) for b in next(batches))
            params, opt_state, loss = step(params, opt_state, k - 1, *batch)
            running.append(loss)
            if k % cfg.eval_every == 0 or k == cfg.steps:
                train_loss = float(jnp.mean(jnp.stack(running)))
                running = []
                if not math.isfinite(train_loss):
                    raise GrowthError(f"{desc}: training diverged at step {k} (loss {train_loss})")
                hist.train_loss.append(train_loss)
                record(k)
                bar.set_postfix(train=f"{train_loss:.3f}", test=f"{hist.test_loss[-1]:.3f}")
            if state is not None and k % state.every == 0 and k < cfg.steps:
                save(k)
            if _after_step is not None:
                _after_step(k)
    nnx.update(model, held(params, jnp.int32(cfg.steps)))
    return hist


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "loss_fn", "transform", "lr_multipliers", "weight_decay"),
)
def _train_step(params, opt_state, rest, t, lr, batch, *, graphdef, loss_fn, transform,
                lr_multipliers, weight_decay):  # fmt: skip
    """One AdamW update of ``params`` at learning rate ``lr`` (the schedule's value at update
    ``t``, a traced scalar: runs that differ only in their schedule or length share one compiled
    step); returns (params, opt_state, the loss before the update)."""

    def objective(p):
        held = p if transform is None else transform(p, t)
        return loss_fn(nnx.merge(graphdef, held, rest), *batch)

    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = _adamw(lambda _: lr, lr_multipliers, weight_decay).update(
        grads, opt_state, params
    )
    return optax.apply_updates(params, updates), opt_state, loss


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training loop between two steps; the message says what was saved."""


_after_step: Callable[[int], None] | None = None  # test hook: runs after each step


@contextlib.contextmanager
def _sigint_flag() -> Iterator[Callable[[], bool]]:
    """While active (main thread only), SIGINT sets a flag instead of raising at once, so the
    loop stops between two steps with a consistent state; yields the flag's reader."""
    hits: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hits.append(signum))
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _classifier_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return cross_entropy(model(x), y)


def train(
    model: nnx.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    lr_multipliers: Sequence[float] | None = None,
    desc: str = "train",
    progress: bool = True,
    transform: Callable[[Any, jax.Array], Any] | None = None,
    state: TrainingState | None = None,
    resume: bool = False,
) -> History:
    """Train a classifier in place on ``data`` (cross-entropy) and return its history
    (``transform``, ``state``, ``resume``: see :func:`fit`)."""
    return fit(
        model,
        iterate_batches(data.x_train, data.y_train, cfg.batch_size, cfg.seed),
        _classifier_loss,
        lambda m: evaluate(m, data.x_test, data.y_test),
        cfg,
        lr_multipliers=lr_multipliers,
        desc=desc,
        progress=progress,
        transform=transform,
        state=state,
        resume=resume,
    )


def steps_to_target(hist: History, target: float) -> int | None:
    """First evaluated step whose test loss is <= target (None if never reached)."""
    for k, loss in zip(hist.steps, hist.test_loss, strict=True):
        if loss <= target:
            return k
    return None


def speedup_curve(grown: History, scratch: History) -> list[dict]:
    """Speed-up at every target the scratch run passes: for each scratch evaluation step t > 0
    with test loss L(t), the first step at which ``grown`` reaches L(t) (None if never) and the
    ratio ``t / t_grown`` (with t_grown floored at the first evaluation step, so a grown model
    that starts below the target gives a lower bound)."""
    first = next((k for k in grown.steps if k > 0), 1)
    rows = []
    for t, loss in zip(scratch.steps[1:], scratch.test_loss[1:], strict=True):
        tg = steps_to_target(grown, loss)
        rows.append(
            {
                "target": loss,
                "steps_scratch": t,
                "steps_grown": tg,
                "speedup": None if tg is None else t / max(tg, first),
            }
        )
    return rows
