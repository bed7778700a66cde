"""The outer loop: one loop, four strategies (`none`, `local`, `global`, `glocal`).

Training runs in S = T/τ windows of τ inner steps with φ_s fixed. After window s:

- `none`:   φ is never updated (plain training, the cost baseline);
- `local`:  φ ← Adam step with h_{(s+1)τ}, the hypergradient at the window's end (Eq. 6);
- `global`: φ ← Adam step with h_T, from a playout of φ_s to step T (Eq. 5; ≈ S·T/2 extra steps);
- `glocal`: φ ← Adam step with ĥ∞, the steady state of the window's last σ hypergradients
  by `config.estimator` (default `DEFAULT_METHOD`; `"paper"` is the λ ≈ 1 part of a Hankel
  DMD, Eq. 11–14); where the estimator has no steady state, the local one, recorded.

The `global` run also fits the DMD to its window (at the price of σ − 1 more validation
gradients per window), so that one run holds, per outer step, the local hypergradient, the
glocal estimate and the true global hypergradient they both try to predict.

A long run can checkpoint every few windows (and when interrupted) and resume from the
checkpoint to exactly the result an uninterrupted run gives: every random draw is a function
of the key and the window index, never of how the run got there.

The loop keeps everything a reader wants to plot afterwards in an `OuterResult`, stops cleanly
when training diverges (the global baseline often does, as the paper reports) and is
deterministic for a given key.
"""

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray
from tqdm.auto import tqdm

from ._dmd import estimate_steady_state
from ._estimators import DEFAULT_METHOD, METHODS, steady_state
from ._io import load_pickle, save_pickle
from ._hypergrad import (
    playout,
    track_forward,
    track_reverse,
    train_window,
    warm_up,
    zero_tangents,
)
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
    - `estimator`: the steady-state estimator of `glocal` (and recorded by `global`), one of
      `METHODS`; `"paper"` is Eq. 14.
    - `delta`, `rtol`: the DMD's |λ − 1| tolerance and relative rank cut-off (`None`: defaults
      of `estimate_steady_state`).
    - `keep_trajectories`: keep the σ hypergradients of every window (`glocal`, `global`) in
      `OuterResult.trajectories`, to re-fit the DMD afterwards with other settings.
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
    estimator: str = DEFAULT_METHOD
    delta: float | None = None
    rtol: float | None = None
    keep_trajectories: bool = False

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
        if self.estimator not in METHODS:
            raise ValueError(f"estimator={self.estimator!r}: choose one of {METHODS}.")
        if self.eval_every < 1:
            raise ValueError(f"eval_every={self.eval_every}: must be >= 1.")

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
    - `estimate`: the steady state ĥ∞ by `config.estimator` (h_τ where it fell back), `(S, q)`
      (`glocal` and `global`; NaN otherwise).
    - `train_loss`: mean minibatch loss over the window; `val_loss`: ℓ̃ at its end, `(S,)`.
    - `eval_step`, `test_accuracy`: the test metric every `eval_every` windows.
    - `spectral_radius`, `num_kept`: of the window's Hankel DMD (Eq. 14's fit, whatever the
      estimator); `fallback`, `fallback_reason`: whether the estimator fell back and why, one
      of `FALLBACK_KINDS` (`glocal`, `global`).
    - `trajectories`: the σ hypergradients of each window, `(S, σ, q)`, if
      `config.keep_trajectories`; else `None`.
    - `seconds_window`, `seconds_playout`, `seconds_dmd`: wall time per window, `(S,)`;
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
    seconds_dmd: np.ndarray
    seconds_compile: float
    stopped: str
    trajectories: np.ndarray | None = None


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


class _Record(NamedTuple):
    """One window's row of the history (see `OuterResult`)."""

    step: int
    phi: np.ndarray
    hyperparameters: np.ndarray
    hypergradient: np.ndarray
    local_hypergradient: np.ndarray
    estimate: np.ndarray
    train_loss: float
    val_loss: float
    spectral_radius: float
    num_kept: int
    fallback: bool
    fallback_reason: str
    seconds_window: float
    seconds_playout: float
    seconds_dmd: float
    trajectory: np.ndarray | None


def _stack(records: list[_Record], q: int) -> dict:
    vector = {"phi", "hyperparameters", "hypergradient", "local_hypergradient", "estimate"}
    if not records:
        columns = {f: (np.zeros((0, q)) if f in vector else
                       () if f == "fallback_reason" else np.zeros(0)) for f in _Record._fields}
        columns["trajectory"] = None
    else:
        columns = dict(zip(_Record._fields, zip(*records)))
        columns = {f: tuple(v) if f == "fallback_reason" else v for f, v in columns.items()}
        for f in columns:
            if f not in ("fallback_reason", "trajectory"):
                columns[f] = np.array(columns[f])
        keep = columns["trajectory"][0] is not None
        columns["trajectory"] = np.stack(columns["trajectory"]) if keep else None
    columns["trajectories"] = columns.pop("trajectory")
    return columns


class _Progress(NamedTuple):
    """Everything the loop carries from one window to the next: a checkpoint."""

    next_window: int
    state: list[np.ndarray]
    tangents: list[np.ndarray] | None
    phi: np.ndarray
    outer_state: list[np.ndarray]
    records: list[_Record]
    evals: list[tuple[int, float]]


def _fingerprint(problem: BilevelProblem, config: OuterConfig, key: PRNGKeyArray) -> dict:
    return {"config": dataclasses.asdict(config), "names": problem.space.names,
            "key": np.asarray(jax.random.key_data(key)).tolist()}


def _leaves(tree) -> list[np.ndarray] | None:
    return None if tree is None else [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _unflatten(like, leaves):
    if like is None:
        return None
    return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(x) for x in leaves])


def _load_checkpoint(path: Path, fingerprint: dict) -> _Progress | None:
    if not path.exists():
        return None
    saved = load_pickle(path)
    if saved["fingerprint"] != fingerprint:
        raise ValueError(
            f"Checkpoint {path} belongs to another run (different problem, config or key). "
            "Delete it to start this run afresh, or pass another checkpoint path."
        )
    return saved["progress"]


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
    init_key, data_key, playout_key = jax.random.split(key, 3)
    state = problem.init(init_key)
    phi = jnp.asarray(problem.phi0)
    q = phi.shape[0]
    outer = optax.adam(config.outer_lr)
    outer_state = outer.init(phi)
    fresh = zero_tangents(state, q) if config.mode == "forward" else None
    tangents = fresh
    evaluate = jax.jit(problem.evaluate)
    val_loss_fn = jax.jit(problem.val_loss)
    dmd_kwargs = {k: v for k, v in (("delta", config.delta), ("rtol", config.rtol))
                  if v is not None}

    records: list[_Record] = []
    evals: list[tuple[int, float]] = []
    first = 0
    fingerprint = _fingerprint(problem, config, key)
    path = None if checkpoint is None else Path(checkpoint)
    resumed = None if path is None else _load_checkpoint(path, fingerprint)
    if resumed is not None:
        first, records, evals = resumed.next_window, list(resumed.records), list(resumed.evals)
        state = _unflatten(state, resumed.state)
        tangents = _unflatten(fresh, resumed.tangents)
        phi = jnp.asarray(resumed.phi)
        outer_state = _unflatten(outer_state, resumed.outer_state)

    tau, recorded = config.tau, config.num_recorded
    if config.strategy == "none":
        def window_fn(state, tangents, phi, key):
            return train_window(problem, state, phi, key, num_steps=tau)
    elif config.mode == "reverse":
        def window_fn(state, tangents, phi, key):
            return track_reverse(problem, state, phi, key, num_steps=tau, num_recorded=recorded)
    else:
        def window_fn(state, tangents, phi, key):
            return track_forward(problem, state, tangents, phi, key, num_steps=tau,
                                 num_recorded=recorded)

    start = time.perf_counter()
    warm_up(problem, state, phi, data_key, num_steps=tau, num_recorded=recorded,
            mode=None if config.strategy == "none" else config.mode,
            playouts=config.strategy == "global")
    jax.block_until_ready((evaluate(state.params), val_loss_fn(state.params)))
    seconds_compile = time.perf_counter() - start

    def result(stopped: str) -> OuterResult:
        eval_step, test_accuracy = (np.array([e[i] for e in evals]) for i in (0, 1))
        return OuterResult(
            config=config, names=problem.space.names, eval_step=eval_step,
            test_accuracy=test_accuracy, seconds_compile=seconds_compile, stopped=stopped,
            **_stack(records, q),
        )

    # The last finished window's carry, as references: jax arrays are immutable, and host
    # copies are made only when a checkpoint is written.
    def snapshot(next_window: int):
        return next_window, state, tangents, phi, outer_state, len(records), len(evals)

    def save(done) -> None:
        if path is None:
            return
        next_window, state_, tangents_, phi_, outer_state_, n_records, n_evals = done
        progress = _Progress(next_window, _leaves(state_), _leaves(tangents_),
                             np.asarray(phi_), _leaves(outer_state_), records[:n_records],
                             evals[:n_evals])
        save_pickle(path, {"fingerprint": fingerprint, "progress": progress})

    stopped = ""
    done = snapshot(first)
    bar = tqdm(range(first, config.num_windows), desc=desc or config.strategy, leave=False,
               disable=not progress, initial=first, total=config.num_windows)
    try:
        for s in bar:
            if config.reset_tangents:
                tangents = fresh
            window, seconds_window = _timed(
                window_fn, state, tangents, phi, jax.random.fold_in(data_key, s)
            )
            step = (s + 1) * config.tau
            hs = np.asarray(window.hypergradients, np.float64)
            local = hs[-1] if len(hs) else np.full(q, np.nan)
            train_loss = float(np.mean(window.train_losses))
            if not np.isfinite(train_loss):
                stopped = f"training diverged in window {s} (non-finite training loss)"
                break
            if not np.all(np.isfinite(hs)):
                stopped = f"hypergradient diverged in window {s} (non-finite h_t)"
                break

            update, seconds_playout, seconds_dmd = np.zeros(q), 0.0, 0.0
            dmd, estimate = (np.nan, 0, False, ""), np.full(q, np.nan)
            if config.strategy in ("glocal", "global"):
                start = time.perf_counter()
                steady = steady_state(hs, sigma=config.sigma, m=config.m,
                                      method=config.estimator, **dmd_kwargs)
                seconds_dmd = time.perf_counter() - start
                estimate = steady.value
                # Eq. 14's fit for the diagnostics: the estimator's own where it is Eq. 14.
                fit = steady.dmd if config.estimator == "paper" else estimate_steady_state(
                    hs, sigma=config.sigma, m=config.m, **dmd_kwargs)
                dmd = (fit.spectral_radius, int(np.sum(fit.kept)), bool(steady.fallback),
                       steady.fallback)
            if config.strategy == "local":
                update = local
            elif config.strategy == "glocal":
                update = estimate
            elif config.strategy == "global":
                (h_T, _), seconds_playout = _timed(
                    playout, problem, window.state, window.tangents, phi,
                    jax.random.fold_in(playout_key, s), jnp.int32(config.total_steps - step),
                )
                update = np.asarray(h_T, np.float64)
                if not np.all(np.isfinite(update)):
                    stopped = f"global hypergradient diverged in window {s} (playout to T)"
                    break

            state, tangents = window.state, window.tangents
            val_loss = float(val_loss_fn(state.params))
            records.append(_Record(
                step, np.asarray(phi), np.asarray(problem.space.bounded(phi)), update, local,
                estimate, train_loss, val_loss, *dmd, seconds_window, seconds_playout,
                seconds_dmd, hs if config.keep_trajectories else None,
            ))
            if (s + 1) % config.eval_every == 0 or s + 1 == config.num_windows:
                metrics = jax.device_get(evaluate(state.params))
                evals.append((step, float(metrics.get("test_accuracy", np.nan))))
            bar.set_postfix(val_loss=f"{val_loss:.3g}")

            if config.strategy != "none":
                updates, outer_state = outer.update(jnp.asarray(update, phi.dtype), outer_state,
                                                    phi)
                phi = optax.apply_updates(phi, updates)
            done = snapshot(s + 1)
            if (s + 1) % checkpoint_every == 0:
                save(done)
            if callback is not None:
                callback(s, result(""))
    except BaseException:
        save(done)
        raise
    finally:
        bar.close()
    return result(stopped)
