"""One window of the outer loop, as optax writes a transformation: `init` gives the carry
(`OuterState`) before window 0; `step` runs window s from the carry after s windows and
returns the next carry with the window's `WindowRecord` (Algorithm 1 of the paper, with the
strategy's update of φ). Every random draw is a function of the key and the window index,
so stepping from a carry restored from a checkpoint gives what an uninterrupted run gives.
"""

import time
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._estimators import ModeFit, steady_state
from ._hypergrad import (
    Window,
    playout,
    track_forward,
    track_reverse,
    train_window,
    warm_up,
    zero_tangents,
)
from ._problems import BilevelProblem, InnerState

if TYPE_CHECKING:  # `_outer` imports this module; configs are only read here
    from ._outer import OuterConfig


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
    test_accuracy: float
    spectral_radius: float
    num_kept: int
    fallback: bool
    fallback_reason: str
    seconds_window: float
    seconds_playout: float
    seconds_estimate: float
    trajectory: np.ndarray | None


class Diverged(ArithmeticError):
    """Raised by `step` when the window's training or a hypergradient is not finite."""


_evaluate = jax.jit(lambda problem, params: problem.evaluate(params), static_argnames="problem")
_val_loss = jax.jit(lambda problem, params: problem.val_loss(params), static_argnames="problem")


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _zero_tangents(config: "OuterConfig", inner: InnerState, q: int) -> PyTree | None:
    tracked = config.mode == "forward" and config.strategy != "none"
    return zero_tangents(inner, q) if tracked else None


def init(problem: BilevelProblem, config: "OuterConfig", *, key: PRNGKeyArray) -> OuterState:
    """The carry before window 0: x_0 from `problem.init`, Z = 0, φ_0 and a fresh outer Adam.

    **Arguments:**

    - `problem`: the bilevel problem; `config`: the outer loop's settings.
    - `key`: the only source of randomness (initial state, minibatches, playouts).

    **Returns:** an `OuterState` with `window = 0`.
    """
    init_key, data_key, playout_key = jax.random.split(key, 3)
    inner = problem.init(init_key)
    phi = jnp.asarray(problem.phi0)
    return OuterState(0, inner, _zero_tangents(config, inner, phi.shape[0]), phi,
                      optax.adam(config.outer_lr).init(phi), data_key, playout_key)


def _window(problem, config: "OuterConfig", carry: OuterState, tangents) -> Window:
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


def _steady_state(config: "OuterConfig", hs: np.ndarray) -> tuple[np.ndarray, tuple, float]:
    """ĥ∞ by `config.estimator`; the diagnostics (spectral radius and modes kept of Eq. 14's
    fit, where there is one; whether and why it fell back); the seconds the estimate took,
    without the diagnostics' extra fit. NaN unless `glocal` or `global`."""
    if config.strategy not in ("glocal", "global"):
        return np.full(hs.shape[1], np.nan), (np.nan, -1, False, ""), 0.0
    start = time.perf_counter()
    estimate = steady_state(hs, sigma=config.sigma, m=config.m, settings=config.estimator)
    seconds = time.perf_counter() - start
    fit = estimate.fit
    if not isinstance(fit, ModeFit) and config.eq14_diagnostics:
        fit = steady_state(hs, sigma=config.sigma, m=config.m, settings=config.estimator,
                           method="paper").fit
    radius, kept = (fit.spectral_radius, int(np.sum(fit.kept))) if isinstance(
        fit, ModeFit) else (np.nan, -1)
    return estimate.value, (radius, kept, bool(estimate.fallback), estimate.fallback), seconds


def step(problem: BilevelProblem, config: "OuterConfig",
         carry: OuterState) -> tuple[OuterState, WindowRecord]:
    """Window s = `carry.window`: τ inner steps with φ_s, then φ_{s+1} by the strategy.

    Deterministic given the carry (wall times aside), which it does not change. Training and
    tracking run jitted; the steady state and the outer Adam step run on the host.

    **Arguments:**

    - `problem`: the bilevel problem; `config`: the outer loop's settings.
    - `carry`: the `OuterState` after s windows (from `init` or the previous `step`).

    **Returns:** `(carry, record)`: the `OuterState` after window s and its `WindowRecord`.

    **Raises:** `Diverged` where the training loss, a local hypergradient or (`global`) h_T
    is not finite; the run stops before window s.
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
    test_accuracy = np.nan
    if evaluated:
        metrics = jax.device_get(_evaluate(problem, params))
        test_accuracy = float(metrics.get("test_accuracy", np.nan))
    record = WindowRecord(
        steps_done, np.asarray(phi), np.asarray(problem.space.bounded(phi)), update, local,
        estimate, train_loss, float(_val_loss(problem, params)), evaluated, test_accuracy,
        *diagnostics, seconds_window, seconds_playout, seconds_estimate,
        hs if config.keep_trajectories else None,
    )
    outer_state = carry.outer_state
    if config.strategy != "none":
        updates, outer_state = optax.adam(config.outer_lr).update(
            jnp.asarray(update, phi.dtype), outer_state, phi)
        phi = optax.apply_updates(phi, updates)
    return carry._replace(window=s + 1, inner=window.state, tangents=window.tangents, phi=phi,
                          outer_state=outer_state), record


def compile_step(problem: BilevelProblem, config: "OuterConfig", carry: OuterState) -> float:
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
