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

from ._crossval import held_out_rows
from ._estimators import ESTIMATOR_DEFAULTS, EstimatorSettings
from ._io import load_pickle, save_pickle
from ._outer_step import Diverged, WindowRecord, compile_step, init, step
from ._problems import BilevelProblem

STRATEGIES = ("none", "local", "global", "glocal")


@dataclasses.dataclass(frozen=True)
class OuterConfig:
    """How to run the outer loop. Defaults are the paper's (Sec. 4 "Setup").

    **Fields:**

    - `strategy`: one of `none`, `local`, `global`, `glocal`.
    - `total_steps`: T, inner steps in all.
    - `tau`: τ, inner steps per outer step (window).
    - `sigma`: σ, hypergradients of each window given to the DMD (the last σ).
    - `m`: delays of the Hankel DMD.
    - `outer_lr`: learning rate of the outer Adam on raw φ.
    - `eval_every`: evaluate the test metric every this many windows (and after the last).
    - `mode`: `forward` (Z tracking, Eq. 12) or `reverse` (for many hyperparameters).
    - `reset_tangents`: start every window from Z = 0 (Eq. 12). With `False`, forward-mode Z
      carries over windows, as if φ had always had its current value (Algorithm 1 of the
      paper). Reset is the default because it measured better: in the fidelity benchmark
      at smoke, every estimator's median error to h_T was below that of carried Z (window
      mean 0.81 against 1.25; local 1.07 against 1.64), and with Z carried none beat
      predicting zero (error 1).
    - `estimator`: the steady-state estimator of `glocal` (and recorded by `global`) with
      its settings, an `EstimatorSettings` (default `ESTIMATOR_DEFAULTS`, method `cv`);
      `EstimatorSettings(method="paper")` is the paper's Eq. 14.
    - `eq14_diagnostics`: also fit Eq. 14 in every window whose estimator is not a DMD
      method, to record its spectral radius and modes kept (one more fit per window; the
      analysis of chapter 7 asks for it). The DMD methods record their own fit anyway. Not
      part of a run's cache key when `False`.
    - `keep_trajectories`: keep the σ hypergradients of every window (`glocal`, `global`) in
      `OuterResult.trajectories`, to re-fit the DMD afterwards with other settings.
    - `cotangent_chunk`: cotangents pulled back at once in reverse mode (`None`: all σ). The
      hypergradients are the same; a pull-back holds one chunk's activations instead of σ's
      (table2's WideResNet at `full`: see `_configs`). Not part of a run's cache key when
      `None`.
    """

    strategy: str = "glocal"
    total_steps: int = 10_000
    tau: int = 100
    sigma: int = 80
    m: int = 10
    outer_lr: float = 0.1
    eval_every: int = 10
    mode: str = "forward"
    reset_tangents: bool = True
    estimator: EstimatorSettings = ESTIMATOR_DEFAULTS
    eq14_diagnostics: bool = False
    keep_trajectories: bool = False
    cotangent_chunk: int | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}: choose one of {STRATEGIES}.")
        if self.tau < 1 or self.total_steps < self.tau:
            raise ValueError(
                f"tau={self.tau}, total_steps={self.total_steps}: need 1 <= tau <= total_steps."
            )
        if self.total_steps % self.tau:
            raise ValueError(
                f"total_steps={self.total_steps} is not a multiple of tau={self.tau}: "
                f"use e.g. total_steps={self.total_steps - self.total_steps % self.tau}."
            )
        if self.strategy in ("glocal", "global") and not 1 <= self.m < self.sigma <= self.tau:
            raise ValueError(
                f"sigma={self.sigma}, m={self.m}, tau={self.tau}: {self.strategy} needs "
                "1 <= m < sigma <= tau (sigma of the tau hypergradients, m delays, and at "
                "least two Hankel columns)."
            )
        if self.mode not in ("forward", "reverse"):
            raise ValueError(f"mode={self.mode!r}: choose 'forward' or 'reverse'.")
        if self.mode == "reverse" and self.strategy == "global":
            raise ValueError("mode='reverse' with strategy='global': playouts are forward mode.")
        if self.mode == "reverse" and not self.reset_tangents:
            raise ValueError("reset_tangents=False needs mode='forward' (reverse mode has no Z).")
        if not isinstance(self.estimator, EstimatorSettings):
            raise ValueError(f"estimator={self.estimator!r}: pass an EstimatorSettings, e.g. "
                             "EstimatorSettings(method='paper').")
        try:
            self.estimator.checked()
            if self.strategy in ("glocal", "global") and self.estimator.method == "cv":
                held_out_rows(self.m, self.estimator.holdout, self.sigma)
        except ValueError as err:
            raise ValueError(f"estimator: {err} Or choose another estimator, e.g. "
                             "estimator=EstimatorSettings(method='mean').") from None
        if self.eval_every < 1:
            raise ValueError(f"eval_every={self.eval_every}: must be >= 1.")
        chunk = self.cotangent_chunk
        if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool)
                                  or chunk < 1):
            raise ValueError(f"cotangent_chunk={chunk!r}: a positive int (cotangents pulled "
                             "back at once in reverse mode), or None for all sigma.")

    @property
    def num_windows(self) -> int:
        return self.total_steps // self.tau

    @property
    def num_recorded(self) -> int:
        """Hypergradients per window the strategy reads: σ for the DMD (`glocal`, `global`),
        the last one for `local`."""
        return {"none": 0, "local": 1}.get(self.strategy, self.sigma)


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
    - `eval_step`, `test_accuracy`: the test metric every `eval_every` windows.
    - `spectral_radius`, `num_kept`: of Eq. 14's fit of the window, where there was one (a
      DMD method, or `config.eq14_diagnostics`); NaN and -1 otherwise; `fallback`, `fallback_reason`: whether the estimator fell back and why, one
      of `FALLBACK_KINDS` (`glocal`, `global`).
    - `trajectories`: the σ hypergradients of each window, `(S, σ, q)`, if
      `config.keep_trajectories`; else `None`.
    - `seconds_window`, `seconds_playout`, `seconds_estimate`: wall time per window, `(S,)`;
      the window time includes forward-mode tracking, which is fused with training.
    - `seconds_compile`: compilation, excluded from the per-window times.
    - `stopped`: `""` if all S windows ran, else why the run stopped early.
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
    test_accuracy: np.ndarray
    spectral_radius: np.ndarray
    num_kept: np.ndarray
    fallback: np.ndarray
    fallback_reason: tuple[str, ...]
    seconds_window: np.ndarray
    seconds_playout: np.ndarray
    seconds_estimate: np.ndarray
    seconds_compile: float
    stopped: str
    trajectories: np.ndarray | None = None


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


_VECTORS = ("phi", "hyperparameters", "hypergradient", "local_hypergradient", "estimate")
_COLUMNS = tuple(f for f in WindowRecord._fields
                 if f in OuterResult._fields and f not in ("test_accuracy", "fallback_reason"))


def _history(problem: BilevelProblem, config: OuterConfig, records: list[WindowRecord],
             seconds_compile: float, stopped: str) -> OuterResult:
    """The records stacked into an `OuterResult` (empty columns if no window finished)."""
    q = problem.space.size
    columns = {f: np.array([getattr(r, f) for r in records]) if records else
               np.zeros((0, q) if f in _VECTORS else 0) for f in _COLUMNS}
    evaluated = [r for r in records if r.evaluated]
    keep = records and records[0].trajectory is not None
    return OuterResult(
        config=config, names=problem.space.names, **columns,
        fallback_reason=tuple(r.fallback_reason for r in records),
        eval_step=np.array([r.step for r in evaluated]),
        test_accuracy=np.array([r.test_accuracy for r in evaluated]),
        trajectories=np.stack([r.trajectory for r in records]) if keep else None,
        seconds_compile=seconds_compile, stopped=stopped,
    )


def _fingerprint(problem: BilevelProblem, config: OuterConfig, key: PRNGKeyArray) -> dict:
    # cotangent_chunk=None is left out, so that checkpoints written before it existed resume.
    fields = {k: v for k, v in dataclasses.asdict(config).items()
              if not (k == "cotangent_chunk" and v is None)}
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
                callback(s, _history(problem, config, records, seconds_compile, ""))
    return _history(problem, config, records, seconds_compile, stopped)
