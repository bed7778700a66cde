"""Compiling a window ahead of time, so that the outer loop's window times exclude
compilation (`OuterResult.seconds_compile` holds it apart)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._hypergrad import (
    _add_row,
    _forward,
    _forward_row,
    _plain,
    _plain_step,
    _pull_back,
    _scan_steps,
    _track_reverse_scan,
    _val_cotangent,
    _playout_loop,
    host_loop,
    playout,
    track_forward,
    train_window,
    zero_tangents,
)
from ._problems import BilevelProblem, InnerState


def warm_up(
    problem: BilevelProblem,
    state: InnerState,
    phi: Float[Array, " q"],
    key: PRNGKeyArray,
    *,
    num_steps: int,
    num_recorded: int,
    mode: str | None,
    playouts: bool = False,
    cotangent_chunk: int | None = None,
) -> None:
    """Compile what a window (and a playout) will run, so that timings exclude compilation.

    `mode` is `"forward"`, `"reverse"` or `None` (untracked). Scans are compiled ahead of
    time; on the host-loop path one step of each jitted function runs and is discarded, and
    so do the small operations around the steps at the window's shapes (`_warm_host_loop`).
    `cotangent_chunk` is reverse mode's, as for `track_reverse`.
    """
    if mode == "reverse":
        if not host_loop():
            _track_reverse_scan.lower(problem, state, phi, key, num_steps=num_steps,
                                      num_recorded=num_recorded,
                                      cotangent_chunk=cotangent_chunk).compile()
            return
        stepped, loss = jax.block_until_ready(_plain_step(problem, state, phi, key))
        row = _val_cotangent(problem, stepped)
        batch = jax.tree.map(lambda a: jnp.zeros((num_recorded, *a.shape), a.dtype), row)
        jax.block_until_ready(_pull_back(problem, state, phi, key, _add_row(batch, row, 0),
                                         chunk=cotangent_chunk))
        _warm_host_loop(key, loss, jnp.zeros_like(phi), num_steps, num_recorded)
        return
    tangents = zero_tangents(state, phi.shape[0])
    if not host_loop():
        if mode is None:
            _scan_steps.lower(_plain, None, problem, state, phi, key, num_steps=num_steps,
                              num_recorded=0).compile()
        else:
            _scan_steps.lower(_forward, _forward_row, problem, (state, tangents), phi, key,
                              num_steps=num_steps, num_recorded=num_recorded).compile()
        if playouts:
            _playout_loop.lower(problem, state, tangents, phi, key, jnp.int32(0)).compile()
    elif mode is None:
        window = jax.block_until_ready(train_window(problem, state, phi, key, num_steps=1))
        _warm_host_loop(key, window.train_losses[0], jnp.zeros_like(phi), num_steps, 0)
    else:
        window = jax.block_until_ready(track_forward(problem, state, tangents, phi, key,
                                                     num_steps=1,
                                                     num_recorded=min(num_recorded, 1)))
        row = window.hypergradients[0] if num_recorded else jnp.zeros_like(phi)
        _warm_host_loop(key, window.train_losses[0], row, num_steps, num_recorded)
        if playouts:
            jax.block_until_ready(playout(problem, state, tangents, phi, key, 0))


def _warm_host_loop(key, loss, row, num_steps: int, num_recorded: int) -> None:
    """The operations a host-loop window runs around its steps, at its shapes: each compiles
    once per shape, which would otherwise land in the first window's time (measured: 0.75 s
    of a 1.1 s `none` benchmark on the CPU). They are the τ keys (split, iterated, indexed),
    the stacks of τ losses and of σ rows, and reverse mode's sum of σ rows."""
    keys = jax.random.split(key, num_steps)
    jax.block_until_ready((list(keys), keys[num_steps - 1], jnp.stack([loss] * num_steps)))
    if num_recorded:
        rows = jnp.stack([row] * num_recorded)
        jax.block_until_ready(rows + rows)
