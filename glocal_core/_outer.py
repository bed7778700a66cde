"""The outer loop: one loop, four strategies (`none`, `local`, `global`, `glocal`).

Training runs in S = T/τ windows of τ inner steps with φ_s fixed. After window s:

- `none`:   φ is never updated (plain training, the cost baseline);
- `local`:  φ ← Adam step with h_{(s+1)τ}, the hypergradient at the window's end (Eq. 6);
- `global`: φ ← Adam step with h_T, from a playout of φ_s to step T (Eq. 5; ≈ S·T/2 extra steps);
- `glocal`: φ ← Adam step with ĥ∞, the steady state of the window's last σ hypergradients
  by `config.estimator.method` (default `DEFAULT_METHOD`; `"paper"` is the λ ≈ 1 part of a Hankel
  DMD, Eq. 11–14); where the estimator has no steady state, the local one, recorded.

The `global` run also fits the DMD to its window (at the price of σ − 1 more validation
gradients per window), so that one run holds, per outer step, the local hypergradient, the
glocal estimate and the true global hypergradient they both try to predict.

The loop is written as optax writes a transformation: `init` gives the carry before window
0 and `step` runs one window from a carry (module `_outer_step`); `run_outer` is a short
driver over them (progress, callbacks, the stop when training diverges), and `OuterResult`
is the windows' records stacked. A long run can checkpoint every few windows (and when
interrupted) and resume from the checkpoint to exactly the result an uninterrupted run
gives: a checkpoint is the carry and the records, and every random draw is a function of the
key and the window index, never of how the run got there.

The loop keeps everything a reader wants to plot afterwards in an `OuterResult`, stops cleanly
when training diverges (the global baseline often does, as the paper reports) and is
deterministic for a given key.
"""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Self

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from ._io import load_pickle, save_pickle
from ._outer_step import STRATEGIES as STRATEGIES
from ._outer_step import Diverged, OuterConfig, WindowRecord, compile_step, init, step
from ._problems import BilevelProblem

class OuterResult(NamedTuple):
    """The history of one run, one row per finished window s (step (s+1)·τ).

    **Fields:**

    - `config`: the `OuterConfig`; `names`: hyperparameter names.
    - `step`: inner steps done after each window, `(S,)`.
    - `phi`, `hyperparameters`: raw φ_s and bounded values used in window s, `(S, q)`.
    - `hypergradient`: what updated φ after window s, `(S, q)` (zeros for `none`).
    - `local_hypergradient`: h at the window's end, `(S, q)` (NaN for `none`).
    - `estimate`: the steady state ĥ∞ by `config.estimator.method` (h_τ where it fell back), `(S, q)`
      (`glocal` and `global`; NaN otherwise).
    - `train_loss`: mean minibatch loss over the window; `val_loss`: ℓ̃ at its end, `(S,)`.
    - `eval_step`, `test_metric`: the problem's test metric (named `metric_name`) after
      every `eval_every` windows; `test_accuracy` reads it under that name.
    - `spectral_radius`, `num_kept`: of Eq. 14's fit of the window, where there was one (a
      DMD method, or `config.eq14_diagnostics`); NaN and -1 otherwise; `fallback`,
      `fallback_reason`: whether the whole estimate fell back to h_τ and why, one of
      `FALLBACK_KINDS` (`glocal`, `global`).
    - `used`, `reasons`: per window and coordinate, `(S, q)` strings: what the estimate took
      (`"extrapolated"`, `"mean"` or `"local"`, see `glocal_core.estimators.USES`) and, where
      it did not extrapolate, why (`""` for `none` and `local`, which estimate nothing).
    - `trajectories`: the σ hypergradients of each window, `(S, σ, q)`, if
      `config.keep_trajectories`; else `None`.
    - `seconds_window`, `seconds_playout`, `seconds_estimate`: wall time per window, `(S,)`;
      the window time includes forward-mode tracking, which is fused with training.
    - `seconds_compile`: compilation, excluded from the per-window times.
    - `stopped`: `""` if all S windows ran, else why the run stopped early.
    - `metric_name`: the name of the problem's test metric.
    - `final_phi`, `final_hyperparameters`: raw φ and its values after the last finished
      window's update (no window trained with them yet): constants to retrain with,
      `HyperOptimizer.export(final_hyperparameters)`; `export(hyperparameters, tau=...)`
      replays the schedule. For a run that stopped, these are the values the diverging
      window used.
    """

    config: OuterConfig
    names: tuple[str, ...]
    step: np.ndarray
    phi: np.ndarray
    hyperparameters: np.ndarray
    hypergradient: np.ndarray
    local_hypergradient: np.ndarray
    estimate: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray
    eval_step: np.ndarray
    test_metric: np.ndarray
    spectral_radius: np.ndarray
    num_kept: np.ndarray
    fallback: np.ndarray
    fallback_reason: tuple[str, ...]
    used: np.ndarray
    reasons: np.ndarray
    seconds_window: np.ndarray
    seconds_playout: np.ndarray
    seconds_estimate: np.ndarray
    seconds_compile: float
    stopped: str
    trajectories: np.ndarray | None = None
    metric_name: str = "test_accuracy"
    final_phi: np.ndarray | None = None
    final_hyperparameters: np.ndarray | None = None

    @property
    def test_accuracy(self) -> np.ndarray:
        """`test_metric`, where the problem's metric is the test accuracy."""
        if self.metric_name != "test_accuracy":
            raise AttributeError(f"this run recorded {self.metric_name!r}, not test_accuracy: "
                                 "read result.test_metric.")
        return self.test_metric


_SCALARS = (bool, int, float)


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_host(tree: PyTree) -> list[np.ndarray | None]:
    """The leaves of `tree` as numpy arrays; `None` for a leaf that is not data (a function),
    which a fresh carry supplies again."""

    def host(leaf):
        if _is_key(leaf):
            return np.asarray(jax.random.key_data(leaf))
        return np.asarray(leaf) if isinstance(leaf, (jax.Array, np.ndarray, *_SCALARS)) else None

    return [host(leaf) for leaf in jax.tree.leaves(tree)]


def _from_host(like: PyTree, leaves: list[np.ndarray | None]) -> PyTree:
    """`leaves` poured into the structure of `like`, each as the kind of leaf it replaces."""

    def restore(fresh, saved):
        if saved is None:
            return fresh
        if _is_key(fresh):
            return jax.random.wrap_key_data(jnp.asarray(saved), impl=jax.random.key_impl(fresh))
        if isinstance(fresh, _SCALARS):
            return type(fresh)(saved)
        return jnp.asarray(saved, getattr(fresh, "dtype", None))

    fresh = jax.tree.leaves(like)
    return jax.tree.unflatten(jax.tree.structure(like), list(map(restore, fresh, leaves)))


class Checkpoint:
    """Where a loop keeps `(carry, records)`: saved every `every` finished steps and, used as
    `with checkpoint:` around the loop, when the loop is interrupted (any exception, Ctrl-C
    included); reloaded by `resume`. With `path=None` nothing is saved or loaded.

    The file holds host copies of the carry's leaves (PRNG keys as their key data), not the
    pytree, so it pickles without the problem's closures and models; `resume` pours them into
    a fresh carry of the same structure.

    **Arguments:**

    - `path`: the checkpoint file.
    - `fingerprint`: what identifies the run (config, names, key); a checkpoint with another
      fingerprint is refused.
    - `every`: finished steps between saves.
    """

    def __init__(self, path: str | os.PathLike | None, fingerprint: dict[str, Any], *,
                 every: int):
        self.path = None if path is None else Path(path)
        self.fingerprint = fingerprint
        self.every = every
        self._last = None

    def _load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            saved = load_pickle(self.path)
            matches = saved["fingerprint"] == self.fingerprint
        except Exception as error:
            raise ValueError(
                f"Checkpoint {self.path} cannot be read ({error!r}); it may come from an older "
                "version of glocal_core. Delete it to start this run afresh."
            ) from error
        if not matches:
            raise ValueError(
                f"Checkpoint {self.path} belongs to another run (different problem, config or "
                "key). Delete it to start this run afresh, or pass another checkpoint path."
            )
        return saved

    def resume(self, carry: PyTree) -> tuple[PyTree, list]:
        """**Arguments:** `carry`, the loop's initial carry.

        **Returns:** `(carry, records)` from the checkpoint if there is one, else `(carry, [])`.
        """
        records = []
        saved = self._load()
        if saved is not None:
            if len(saved["carry"]) != len(jax.tree.leaves(carry)):
                raise ValueError(f"Checkpoint {self.path} does not fit this run's carry. "
                                 "Delete it to start this run afresh.")
            carry, records = _from_host(carry, saved["carry"]), list(saved["records"])
        self._last = (carry, records, len(records))
        return carry, records

    def finished(self, carry: PyTree, records: list) -> None:
        """Note that `records` (all of them so far) lead to `carry`; save every `every`."""
        self._last = (carry, records, len(records))
        if records and len(records) % self.every == 0:
            self.save()

    def save(self) -> None:
        """Write the last noted carry and records, atomically."""
        if self.path is None or self._last is None:
            return
        carry, records, n = self._last
        save_pickle(self.path, {"fingerprint": self.fingerprint, "carry": _to_host(carry),
                                "records": records[:n]})

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.save()


_VECTORS = ("phi", "hyperparameters", "hypergradient", "local_hypergradient", "estimate",
            "used", "reasons")
_STRINGS = ("used", "reasons")
_COLUMNS = tuple(f for f in WindowRecord._fields
                 if f in OuterResult._fields and f not in ("test_metric", "fallback_reason"))


def _history(problem: BilevelProblem, config: OuterConfig, records: list[WindowRecord],
             seconds_compile: float, stopped: str, phi) -> OuterResult:
    """The records stacked into an `OuterResult` (empty columns if no window finished)."""
    q = problem.space.size
    columns = {f: np.array([getattr(r, f) for r in records]) if records else
               np.zeros((0, q) if f in _VECTORS else 0, dtype=str if f in _STRINGS else float)
               for f in _COLUMNS}
    evaluated = [r for r in records if r.evaluated]
    keep = records and records[0].trajectory is not None
    return OuterResult(
        config=config, names=problem.space.names, **columns,
        fallback_reason=tuple(r.fallback_reason for r in records),
        eval_step=np.array([r.step for r in evaluated]),
        test_metric=np.array([r.test_metric for r in evaluated]),
        trajectories=np.stack([r.trajectory for r in records]) if keep else None,
        seconds_compile=seconds_compile, stopped=stopped,
        metric_name=getattr(problem, "metric_name", "test_accuracy"), final_phi=np.asarray(phi),
        final_hyperparameters=np.asarray(problem.space.bounded(jnp.asarray(phi))),
    )


def _fingerprint(problem: BilevelProblem, config: OuterConfig, key: PRNGKeyArray) -> dict:
    # cotangent_chunk=None is left out, so that checkpoints written before it existed resume.
    # outer_optimizer=None likewise; a custom one (functions) is recorded as such.
    custom = config.outer_optimizer is not None
    fields = {k: v for k, v in dataclasses.asdict(
        dataclasses.replace(config, outer_optimizer=None)).items()
        if not (k in ("cotangent_chunk", "outer_optimizer") and v is None)}
    if custom:
        fields["outer_optimizer"] = "custom"

    return {"config": fields, "names": problem.space.names,
            "key": np.asarray(jax.random.key_data(key)).tolist()}


def run_outer(
    problem: BilevelProblem,
    config: OuterConfig,
    *,
    key: PRNGKeyArray,
    progress: bool = True,
    desc: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    callback: Callable[[int, OuterResult], None] | None = None,
) -> OuterResult:
    """Optimise φ of `problem` with `config.strategy`; return the whole history.

    `init`, then `step` once per window, stopping early (with the reason in
    `OuterResult.stopped`) where `step` raises `Diverged`.

    **Arguments:**

    - `problem`: the bilevel problem.
    - `config`: strategy, T, τ, σ, m and the rest.
    - `key`: the only source of randomness (initial state, minibatches, playouts).
    - `progress`: show a tqdm bar over windows (`leave=False`, for nesting).
    - `desc`: the bar's label.
    - `checkpoint`: a file to save progress to every `checkpoint_every` windows and when the
      run is interrupted (any exception, Ctrl-C included). If it exists, the run resumes from
      it and ends exactly as an uninterrupted run would; a checkpoint of another run (other
      problem names, config or key) is refused. The caller deletes it once the result is safe.
    - `checkpoint_every`: windows between checkpoints.
    - `callback`: called as `callback(s, partial_result)` after each finished window `s`
      (e.g. live plots); an exception it raises interrupts the run like Ctrl-C would.

    **Returns:** an `OuterResult`.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every}: must be >= 1.")
    saver = Checkpoint(checkpoint, _fingerprint(problem, config, key), every=checkpoint_every)
    carry, records = saver.resume(init(problem, config, key=key))
    seconds_compile = compile_step(problem, config, carry)
    stopped = ""
    bar = tqdm(range(carry.window, config.num_windows), desc=desc or config.strategy,
               leave=False, disable=not progress, initial=carry.window, total=config.num_windows)
    with saver, bar:
        for s in bar:
            try:
                next_carry, record = step(problem, config, carry)
            except Diverged as why:
                stopped = str(why)
                break
            records.append(record)
            carry = next_carry
            saver.finished(carry, records)
            bar.set_postfix(val_loss=f"{record.val_loss:.3g}")
            if callback is not None:
                callback(s, _history(problem, config, records, seconds_compile, "", carry.phi))
    return _history(problem, config, records, seconds_compile, stopped, carry.phi)
