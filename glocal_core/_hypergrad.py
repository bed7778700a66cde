"""Hypergradient tracking through a window of inner steps (Eq. 12, Algorithm 1).

Forward mode carries Z_t = dx_t/dφ for the whole inner state x = (θ, optimizer state), so
momentum buffers and Adam moments carry tangents too:

    Z_t = ∂Θ/∂x · Z_{t−1} + ∂Θ/∂φ,        h_t = ∇_θ ℓ̃(θ_t) · Z_t^θ.

One step is a `vmap` over the q hyperparameters of a `jvp` of Θ; the primal is not batched,
so it is computed once. Cost per step ≈ (1 + q) steps, memory O(p·q) — the paper's choice.

Reverse mode differentiates the σ recorded validation losses of a window with respect to φ
(one `jax.vjp` through a checkpointed scan, its σ basis cotangents pulled back): cost ≈ σ
backward passes, independent of q, so it wins for many hyperparameters (the 385 of data
reweighting). `cotangent_chunk` pulls them back that many at a time (`_chunked_vmap`), so a
pull-back holds one chunk's activations, not σ's; the host loop runs each step's forward once
for all chunks, the scan recomputes its checkpointed steps once per chunk.

Both start from Z = 0 at the window start (Eq. 12: "Z_1 is zero"): φ_s acts only from there.

On accelerators a window is one jitted `lax.scan`. On the CPU it is a host loop over one
jitted step: XLA:CPU runs convolution gradients inside a while loop about ten times slower
than at the top level of a program (measured here for LeNet; jax-ml/jax#12868), while the
dispatch cost of a host loop is negligible next to a CPU step. Both give the same numbers.
Reverse mode on the CPU likewise runs the window forward in a host loop, keeping the states,
then pulls the σ cotangents back step by step, re-running each step inside its `vjp`: the
same arithmetic as the checkpointed scan, without the while loop (ten times faster for the
WideResNet of data reweighting, measured here).
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._problems import BilevelProblem, InnerState


class Window(NamedTuple):
    """What one window of inner steps returns.

    **Fields:**

    - `state`: the inner state after the window.
    - `tangents`: Z after the window (forward mode), or `None`.
    - `hypergradients`: h_t for the last σ steps, shape `(σ, q)` (`(0, q)` when untracked).
    - `train_losses`: the minibatch loss of every step, shape `(τ,)`.
    """

    state: InnerState
    tangents: PyTree | None
    hypergradients: Float[Array, "sigma q"]
    train_losses: Float[Array, " tau"]


def zero_tangents(state: InnerState, q: int) -> PyTree:
    """Z = 0 for every inexact leaf of the inner state, with a leading axis of size q."""
    diff, _ = eqx.partition(state, eqx.is_inexact_array)
    return jax.tree.map(lambda a: jnp.zeros((q, *a.shape), a.dtype), diff)


def _tangent_step(problem: BilevelProblem, state, tangents, phi, key):
    """One inner step and the Z recursion of Eq. (12), for all q tangents at once."""
    diff, static = eqx.partition(state, eqx.is_inexact_array)

    def step(diff, phi):
        new, loss = problem.step(eqx.combine(diff, static), phi, key)
        new_diff, new_static = eqx.partition(new, eqx.is_inexact_array)
        return new_diff, (new_static, loss)

    def push(z, e):
        return jax.jvp(step, (diff, phi), (z, e), has_aux=True)

    basis = jnp.eye(phi.shape[0], dtype=phi.dtype)
    new_diff, tangents, (new_static, loss) = jax.vmap(push, out_axes=(None, 0, None))(
        tangents, basis
    )
    return eqx.combine(new_diff, new_static), tangents, loss


def _hypergradient(problem: BilevelProblem, params, tangents) -> Float[Array, " q"]:
    """h_t = ∇_θ ℓ̃(θ_t) · Z_t^θ (one reverse pass, then q inner products)."""
    grad = jax.grad(lambda p: problem.val_loss(p))(params)
    contract = jax.tree.map(
        lambda z, g: jnp.tensordot(z, g, axes=g.ndim), tangents.params, grad
    )
    return sum(jax.tree_util.tree_leaves(contract))


def host_loop() -> bool:
    """Whether windows run as host loops over a jitted step (the CPU) or as `lax.scan`."""
    return jax.default_backend() == "cpu"


_step = eqx.filter_jit(_tangent_step)
_record = eqx.filter_jit(_hypergradient)
_plain_step = eqx.filter_jit(lambda problem, state, phi, key: problem.step(state, phi, key))
_val_loss = eqx.filter_jit(lambda problem, params: problem.val_loss(params))


def _check_window(num_steps: int, num_recorded: int) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: a window needs at least one inner step.")
    if not 0 <= num_recorded <= num_steps:
        raise ValueError(
            f"num_recorded={num_recorded}: must be in [0, num_steps={num_steps}]."
        )


def track_forward(
    problem: BilevelProblem,
    state: InnerState,
    tangents: PyTree,
    phi: Float[Array, " q"],
    key: PRNGKeyArray,
    *,
    num_steps: int,
    num_recorded: int,
) -> Window:
    """τ = `num_steps` inner steps with forward-mode tangents; h_t on the last σ = `num_recorded`.

    The first τ − σ steps advance Z but skip the validation gradient: DMD never reads them.
    Pass `zero_tangents(state, q)` to start a window as Eq. (12) does.
    """
    _check_window(num_steps, num_recorded)
    if not host_loop():
        return _track_forward_scan(problem, state, tangents, phi, key, num_steps=num_steps,
                                   num_recorded=num_recorded)
    losses, hs = [], []
    for i, k in enumerate(jax.random.split(key, num_steps)):
        state, tangents, loss = _step(problem, state, tangents, phi, k)
        losses.append(loss)
        if i >= num_steps - num_recorded:
            hs.append(_record(problem, state.params, tangents))
    hs = jnp.stack(hs) if hs else jnp.zeros((0, phi.shape[0]), phi.dtype)
    return Window(state, tangents, hs, jnp.stack(losses))


@eqx.filter_jit
def _track_forward_scan(problem, state, tangents, phi, key, *, num_steps, num_recorded):
    keys = jax.random.split(key, num_steps)

    def advance(carry, k):
        state, tangents = carry
        state, tangents, loss = _tangent_step(problem, state, tangents, phi, k)
        return (state, tangents), loss

    def advance_and_record(carry, k):
        (state, tangents), loss = advance(carry, k)
        return (state, tangents), (loss, _hypergradient(problem, state.params, tangents))

    skip = num_steps - num_recorded
    carry, losses_a = jax.lax.scan(advance, (state, tangents), keys[:skip])
    (state, tangents), (losses_b, hs) = jax.lax.scan(advance_and_record, carry, keys[skip:])
    hs = hs.reshape(num_recorded, phi.shape[0])
    return Window(state, tangents, hs, jnp.concatenate([losses_a, losses_b]))


def track_reverse(
    problem: BilevelProblem,
    state: InnerState,
    phi: Float[Array, " q"],
    key: PRNGKeyArray,
    *,
    num_steps: int,
    num_recorded: int,
    cotangent_chunk: int | None = None,
) -> Window:
    """The same window and hypergradients as `track_forward` from Z = 0, by reverse mode.

    `cotangent_chunk`: cotangents pulled back at once (`None`: all σ), which bounds the
    pull-back's memory by one chunk's activations; the numbers are the same.
    """
    _check_window(num_steps, num_recorded)
    if not host_loop():
        return _track_reverse_scan(problem, state, phi, key, num_steps=num_steps,
                                   num_recorded=num_recorded, cotangent_chunk=cotangent_chunk)
    keys = jax.random.split(key, num_steps)
    states, losses = [state], []
    for k in keys:
        state, loss = _plain_step(problem, state, phi, k)
        states.append(state)
        losses.append(loss)
    skip = num_steps - num_recorded
    cotangents = jax.tree.map(lambda a: jnp.zeros((num_recorded, *a.shape), a.dtype),
                              _differentiable(state))
    hs = jnp.zeros((num_recorded, phi.shape[0]), phi.dtype)
    for t in range(num_steps, 0, -1):  # pull back through step t: x_{t−1} → x_t
        if t > skip:
            cotangents = _add_row(cotangents, _val_cotangent(problem, states[t]), t - skip - 1)
        cotangents, d_phi = _pull_back(problem, states[t - 1], phi, keys[t - 1], cotangents,
                                       chunk=cotangent_chunk)
        hs = hs + d_phi
    return Window(states[-1], None, hs, jnp.stack(losses))


def _differentiable(state: InnerState) -> PyTree:
    return eqx.partition(state, eqx.is_inexact_array)[0]


@eqx.filter_jit
def _val_cotangent(problem, state):
    """∂ℓ̃(θ_t)/∂x_t: the validation gradient in θ, zero in the optimizer state."""
    diff, static = eqx.partition(state, eqx.is_inexact_array)
    return jax.grad(lambda d: problem.val_loss(eqx.combine(d, static).params))(diff)


@jax.jit
def _add_row(batch, row, index):
    return jax.tree.map(lambda b, r: b.at[index].add(r), batch, row)


def _chunked_vmap(fn, xs, chunk: int | None):
    """`vmap(fn)(xs)` computed `chunk` rows at a time (`None`: all at once): one `lax.map`
    over the full chunks, then a `vmap` of the rest (what `lax.map`'s `batch_size` does,
    written out so that no jax release newer than the lower bound is needed)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if chunk is None or chunk >= n:
        return jax.vmap(fn)(xs)
    full = n - n % chunk
    head = jax.tree.map(lambda a: a[:full].reshape(full // chunk, chunk, *a.shape[1:]), xs)
    out = jax.tree.map(lambda a: a.reshape(full, *a.shape[2:]),
                       jax.lax.map(jax.vmap(fn), head))
    if full == n:
        return out
    rest = jax.vmap(fn)(jax.tree.map(lambda a: a[full:], xs))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, rest)


@eqx.filter_jit
def _pull_back(problem, state, phi, key, cotangents, chunk=None):
    """Cotangents of x_t (a batch of σ) → those of x_{t−1} and of φ, through step t; `chunk`
    of them at a time (`None`: all), through one forward of the step."""
    diff, static = eqx.partition(state, eqx.is_inexact_array)

    def step(diff, phi):
        return _differentiable(problem.step(eqx.combine(diff, static), phi, key)[0])

    _, pull = jax.vjp(step, diff, phi)
    return _chunked_vmap(pull, cotangents, chunk)


@eqx.filter_jit
def _track_reverse_scan(problem, state, phi, key, *, num_steps, num_recorded,
                        cotangent_chunk=None):
    keys = jax.random.split(key, num_steps)
    skip = num_steps - num_recorded

    def recorded_val_losses(phi):
        @jax.checkpoint
        def advance(state, k):
            return problem.step(state, phi, k)

        # ℓ̃ is rematerialised too: otherwise the scan keeps its activations over the whole
        # validation set for each of the σ recorded steps until the backward pass.
        val_loss = jax.checkpoint(lambda params: problem.val_loss(params))

        def advance_and_record(state, k):
            state, loss = advance(state, k)
            return state, (loss, val_loss(state.params))

        mid, losses_a = jax.lax.scan(advance, state, keys[:skip])
        end, (losses_b, vals) = jax.lax.scan(advance_and_record, mid, keys[skip:])
        return vals, (end, jnp.concatenate([losses_a, losses_b]))

    vals, pull, (end, losses) = jax.vjp(recorded_val_losses, phi, has_aux=True)
    basis = jnp.eye(num_recorded, dtype=vals.dtype).reshape(num_recorded, *vals.shape)
    (hs,) = _chunked_vmap(pull, basis, cotangent_chunk)
    return Window(end, None, hs.reshape(num_recorded, phi.shape[0]), losses)


def train_window(
    problem: BilevelProblem,
    state: InnerState,
    phi: Float[Array, " q"],
    key: PRNGKeyArray,
    *,
    num_steps: int,
) -> Window:
    """τ plain inner steps, no hypergradient: the `none` strategy and the cost baseline."""
    _check_window(num_steps, 0)
    if not host_loop():
        return _train_scan(problem, state, phi, key, num_steps=num_steps)
    losses = []
    for k in jax.random.split(key, num_steps):
        state, loss = _plain_step(problem, state, phi, k)
        losses.append(loss)
    return Window(state, None, jnp.zeros((0, phi.shape[0]), phi.dtype), jnp.stack(losses))


@eqx.filter_jit
def _train_scan(problem, state, phi, key, *, num_steps):
    def advance(state, k):
        return problem.step(state, phi, k)

    state, losses = jax.lax.scan(advance, state, jax.random.split(key, num_steps))
    return Window(state, None, jnp.zeros((0, phi.shape[0]), phi.dtype), losses)


def playout(
    problem: BilevelProblem,
    state: InnerState,
    tangents: PyTree,
    phi: Float[Array, " q"],
    key: PRNGKeyArray,
    num_steps: Int[Array, ""] | int,
) -> tuple[Float[Array, " q"], Float[Array, ""]]:
    """Continue training with φ fixed for `num_steps` more steps; return (h_T, ℓ̃(θ_T)).

    The global hypergradient of Eq. (5). `num_steps` is a traced loop bound, so playouts of
    every length share one compilation. The caller's state is not changed.
    """
    if not host_loop():
        return _playout_loop(problem, state, tangents, phi, key, jnp.int32(num_steps))
    for i in range(int(num_steps)):
        state, tangents, _ = _step(problem, state, tangents, phi, jax.random.fold_in(key, i))
    return _record(problem, state.params, tangents), _val_loss(problem, state.params)


@eqx.filter_jit
def _playout_loop(problem, state, tangents, phi, key, num_steps):
    def body(i, carry):
        state, tangents = carry
        state, tangents, _ = _tangent_step(
            problem, state, tangents, phi, jax.random.fold_in(key, i)
        )
        return state, tangents

    state, tangents = jax.lax.fori_loop(0, num_steps, body, (state, tangents))
    return _hypergradient(problem, state.params, tangents), problem.val_loss(state.params)


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
            _train_scan.lower(problem, state, phi, key, num_steps=num_steps).compile()
        else:
            _track_forward_scan.lower(problem, state, tangents, phi, key, num_steps=num_steps,
                                      num_recorded=num_recorded).compile()
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
