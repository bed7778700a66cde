"""One window of the outer loop, as optax writes a transformation: `init` gives the carry
(`OuterState`) before window 0; `step` runs window s from the carry after s windows and
returns the next carry with the window's `WindowRecord` (Algorithm 1 of the paper, with the
strategy's update of φ). Every random draw is a function of the key and the window index,
so stepping from a carry restored from a checkpoint gives what an uninterrupted run gives.
"""

import time
import dataclasses
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._crossval import held_out_rows
from ._estimators import ESTIMATOR_DEFAULTS, EstimatorSettings, ModeFit, steady_state
from ._hypergrad import (
    _val_loss,
    Window,
    playout,
    track_forward,
    track_reverse,
    train_window,
    zero_tangents,
)
from ._problems import BilevelProblem, InnerState
from ._warmup import warm_up

STRATEGIES = ("none", "local", "global", "glocal")


@dataclasses.dataclass(frozen=True)
class OuterConfig:
    """How to run the outer loop. Defaults are the paper's (Sec. 4 "Setup").

    **Fields:**

    - `strategy`: one of `STRATEGIES`: `none`, `local`, `global`, `glocal`.
    - `total_steps`: T, inner steps in all.
    - `tau`: τ, inner steps per outer step (window).
    - `sigma`: σ, hypergradients of each window given to the DMD (the last σ).
    - `m`: delays of the Hankel DMD.
    - `outer_lr`: learning rate of the outer Adam on raw φ.
    - `outer_optimizer`: any optax transformation to update φ with instead of
      `optax.adam(outer_lr)`; `None` for that default. A checkpoint does not record it:
      resume with the same one. Not part of a run's cache key when `None`.
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
      (table2's WideResNet at `full`: see `glocal_core.repro.configs`). Not part of a run's cache key when
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
    outer_optimizer: Any = None

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
        outer = self.outer_optimizer
        if outer is not None and not (callable(getattr(outer, "init", None))
                                      and callable(getattr(outer, "update", None))):
            raise ValueError(f"outer_optimizer={outer!r}: an optax transformation, e.g. "
                             "optax.adam(0.1), or None for Adam with outer_lr.")
        if self.eval_every < 1:
            raise ValueError(f"eval_every={self.eval_every}: must be >= 1.")
        chunk = self.cotangent_chunk
        if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool)
                                  or chunk < 1):
            raise ValueError(f"cotangent_chunk={chunk!r}: a positive int (cotangents pulled "
                             "back at once in reverse mode), or None for all sigma.")

    def outer(self) -> optax.GradientTransformation:
        """The transformation that updates φ: `outer_optimizer`, or Adam with `outer_lr`."""
        return self.outer_optimizer or optax.adam(self.outer_lr)

    @property
    def num_windows(self) -> int:
        return self.total_steps // self.tau

    @property
    def num_recorded(self) -> int:
        """Hypergradients per window the strategy reads: σ for the DMD (`glocal`, `global`),
        the last one for `local`."""
        return {"none": 0, "local": 1}.get(self.strategy, self.sigma)




class OuterState(NamedTuple):
    """The carry of the outer loop: what window s starts from, and all that a window changes.

    **Fields:**

    - `window`: s, the windows finished so far.
    - `inner`: the inner state x = (θ, optimizer state).
    - `tangents`: Z (forward mode; set to 0 at each window start unless
      `config.reset_tangents` is `False`), else `None`.
    - `phi`: raw φ_s; `outer_state`: the outer Adam's state.
    - `data_key`, `playout_key`: window s draws its minibatches from `fold_in(data_key, s)`
      and its playout from `fold_in(playout_key, s)`.
    """

    window: int
    inner: InnerState
    tangents: PyTree | None
    phi: Float[Array, " q"]
    outer_state: optax.OptState
    data_key: PRNGKeyArray
    playout_key: PRNGKeyArray


class WindowRecord(NamedTuple):
    """What window s did: one row of `OuterResult`, whose columns have these names.

    Two fields are not columns: `evaluated`, whether the test metric was measured after the
    window (`test_accuracy` is NaN if not; the result keeps only measured ones), and
    `trajectory`, the window's σ hypergradients `(σ, q)` if `config.keep_trajectories`.
    """

    step: int
    phi: np.ndarray
    hyperparameters: np.ndarray
    hypergradient: np.ndarray
    local_hypergradient: np.ndarray
    estimate: np.ndarray
    train_loss: float
    val_loss: float
    evaluated: bool
    test_metric: float
    spectral_radius: float
    num_kept: int
    fallback: bool
    fallback_reason: str
    used: tuple
    reasons: tuple
    seconds_window: float
    seconds_playout: float
    seconds_estimate: float
    trajectory: np.ndarray | None


class Diverged(ArithmeticError):
    """Raised by `step` when the window's training or a hypergradient is not finite."""


_evaluate = eqx.filter_jit(lambda problem, params: problem.evaluate(params))


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _zero_tangents(config: OuterConfig, inner: InnerState, q: int) -> PyTree | None:
    tracked = config.mode == "forward" and config.strategy != "none"
    return zero_tangents(inner, q) if tracked else None


def init(problem: BilevelProblem, config: OuterConfig, *, key: PRNGKeyArray) -> OuterState:
    """The carry before window 0: x_0 from `problem.init`, Z = 0, φ_0 and a fresh outer Adam.

    **Arguments:**

    - `problem`: the bilevel problem; `config`: the outer loop's settings.
    - `key`: the only source of randomness (initial state, minibatches, playouts).

    **Returns:** an `OuterState` with `window = 0`.
    """
    init_key, data_key, playout_key = jax.random.split(key, 3)
    inner = problem.init(init_key)
    check_metric(problem, inner.params)
    phi = jnp.asarray(problem.phi0)
    return OuterState(0, inner, _zero_tangents(config, inner, phi.shape[0]), phi,
                      config.outer().init(phi), data_key, playout_key)


def _window(problem, config: OuterConfig, carry: OuterState, tangents) -> Window:
    """τ inner steps with φ_s fixed, tracking the hypergradients the strategy reads."""
    args = problem, carry.inner
    key = jax.random.fold_in(carry.data_key, carry.window)
    if config.strategy == "none":
        return train_window(*args, carry.phi, key, num_steps=config.tau)
    if config.mode == "reverse":
        return track_reverse(*args, carry.phi, key, num_steps=config.tau,
                             num_recorded=config.num_recorded,
                             cotangent_chunk=config.cotangent_chunk)
    return track_forward(*args, tangents, carry.phi, key, num_steps=config.tau,
                         num_recorded=config.num_recorded)


def _steady_state(config: OuterConfig, hs: np.ndarray) -> tuple[np.ndarray, tuple, float]:
    """ĥ∞ by `config.estimator`; the diagnostics (spectral radius and modes kept of Eq. 14's
    fit, where there is one; whether and why it fell back; what each coordinate used and why);
    the seconds the estimate took,
    without the diagnostics' extra fit. NaN unless `glocal` or `global`."""
    if config.strategy not in ("glocal", "global"):
        blank = ("",) * hs.shape[1]
        return np.full(hs.shape[1], np.nan), (np.nan, -1, False, "", blank, blank), 0.0
    start = time.perf_counter()
    estimate = steady_state(hs, sigma=config.sigma, m=config.m, settings=config.estimator)
    seconds = time.perf_counter() - start
    fit = estimate.fit
    if not isinstance(fit, ModeFit) and config.eq14_diagnostics:
        fit = steady_state(hs, sigma=config.sigma, m=config.m, settings=config.estimator,
                           method="paper").fit
    radius, kept = (fit.spectral_radius, int(np.sum(fit.kept))) if isinstance(
        fit, ModeFit) else (np.nan, -1)
    return estimate.value, (radius, kept, bool(estimate.fallback), estimate.fallback,
                            estimate.used, estimate.reasons), seconds


def step(problem: BilevelProblem, config: OuterConfig,
         carry: OuterState) -> tuple[OuterState, WindowRecord]:
    """Window s = `carry.window`: τ inner steps with φ_s, then φ_{s+1} by the strategy.

    Deterministic given the carry (wall times aside), which it does not change. Training and
    tracking run jitted; the steady state and the outer Adam step run on the host.

    **Arguments:**

    - `problem`: the bilevel problem; `config`: the outer loop's settings.
    - `carry`: the `OuterState` after s windows (from `init` or the previous `step`).

    **Returns:** `(carry, record)`: the `OuterState` after window s and its `WindowRecord`.

    **Raises:** `Diverged` where the training loss, a local hypergradient or (`global`) h_T
    is not finite; the run stops before window s. `FloatingPointError` where the first
    window's hypergradient is not finite while its training is (a setup error: the message
    names the likely causes).
    """
    s, phi, q = carry.window, carry.phi, carry.phi.shape[0]
    tangents = _zero_tangents(config, carry.inner, q) if config.reset_tangents else carry.tangents
    window, seconds_window = _timed(_window, problem, config, carry, tangents)
    steps_done = (s + 1) * config.tau
    hs = np.asarray(window.hypergradients, np.float64)
    local = hs[-1] if len(hs) else np.full(q, np.nan)
    train_loss = float(np.mean(window.train_losses))
    if not np.isfinite(train_loss):
        raise Diverged(f"training diverged in window {s} (non-finite training loss)")
    if not np.all(np.isfinite(hs)):
        if s == 0 and config.mode == "forward":
            raise FloatingPointError(
                "the hypergradient is not finite in the first window although training is. "
                "Likely causes: an Adam-family optimizer with eps_root = 0 (forward-mode "
                "tangents through sqrt(nu) are NaN where a gradient entry is 0: use "
                "glocal_core.learnable, which sets eps_root=1e-16, or pass eps_root > 0), or "
                "a loss with a non-differentiable point (sqrt or abs at 0, a hard max).")
        raise Diverged(f"hypergradient diverged in window {s} (non-finite h_t)")

    estimate, diagnostics, seconds_estimate = _steady_state(config, hs)
    update, seconds_playout = np.zeros(q), 0.0
    if config.strategy == "local":
        update = local
    elif config.strategy == "glocal":
        update = estimate
    elif config.strategy == "global":
        (h_T, _), seconds_playout = _timed(
            playout, problem, window.state, window.tangents, phi,
            jax.random.fold_in(carry.playout_key, s), jnp.int32(config.total_steps - steps_done),
        )
        update = np.asarray(h_T, np.float64)
        if not np.all(np.isfinite(update)):
            raise Diverged(f"global hypergradient diverged in window {s} (playout to T)")

    params = window.state.params
    evaluated = (s + 1) % config.eval_every == 0 or s + 1 == config.num_windows
    test_metric = np.nan
    if evaluated:
        test_metric = float(jax.device_get(_evaluate(problem, params))[problem.metric_name])
    record = WindowRecord(
        steps_done, np.asarray(phi), np.asarray(problem.space.bounded(phi)), update, local,
        estimate, train_loss, float(_val_loss(problem, params)), evaluated, test_metric,
        *diagnostics, seconds_window, seconds_playout, seconds_estimate,
        hs if config.keep_trajectories else None,
    )
    outer_state = carry.outer_state
    if config.strategy != "none":
        updates, outer_state = config.outer().update(
            jnp.asarray(update, phi.dtype), outer_state, phi)
        phi = optax.apply_updates(phi, updates)
    return carry._replace(window=s + 1, inner=window.state, tangents=window.tangents, phi=phi,
                          outer_state=outer_state), record


def compile_step(problem: BilevelProblem, config: OuterConfig, carry: OuterState) -> float:
    """Compile what `step` will run from `carry`, so that window times exclude compilation.

    **Returns:** the seconds it took.
    """
    start = time.perf_counter()
    warm_up(problem, carry.inner, carry.phi, carry.data_key, num_steps=config.tau,
            num_recorded=config.num_recorded,
            mode=None if config.strategy == "none" else config.mode,
            playouts=config.strategy == "global", cotangent_chunk=config.cotangent_chunk)
    params = carry.inner.params
    jax.block_until_ready((_evaluate(problem, params), _val_loss(problem, params)))
    return time.perf_counter() - start


def check_metric(problem: BilevelProblem, params) -> None:
    """Raise a `ValueError` unless `problem.evaluate(params)` is a dict that reports
    `problem.metric_name` (traced only: nothing is computed)."""
    name = getattr(problem, "metric_name", None)
    reported = jax.eval_shape(problem.evaluate, params)
    if not isinstance(reported, dict):
        raise ValueError("problem.evaluate must return a dict of named scalars, e.g. "
                         "{'val_loss': ..., 'test_accuracy': ...}.")
    if name not in reported:
        raise ValueError(f"metric_name={name!r} is not among what the problem's evaluate "
                         f"reports, {sorted(reported)}: set metric_name to one of them.")
