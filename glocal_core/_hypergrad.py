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


def _forward(problem: BilevelProblem, carry, phi, key):
    """One tracked step of a window: carry (x, Z) → (x', Z'), and the minibatch loss."""
    state, tangents, loss = _tangent_step(problem, *carry, phi, key)
    return (state, tangents), loss


def _forward_row(problem: BilevelProblem, carry) -> Float[Array, " q"]:
    return _hypergradient(problem, carry[0].params, carry[1])


def _plain(problem: BilevelProblem, state, phi, key):
    return problem.step(state, phi, key)


# The units of a window, jitted one by one (the dry run measures these).
_forward_step = eqx.filter_jit(_forward)
_record = eqx.filter_jit(_forward_row)
_plain_step = eqx.filter_jit(_plain)
_val_loss = eqx.filter_jit(lambda problem, params: problem.val_loss(params))


def _playout_end(problem: BilevelProblem, carry):
    """h_T and ℓ̃(θ_T) at the end of a playout."""
    return _forward_row(problem, carry), problem.val_loss(carry[0].params)


class _Static:
    """The non-array part of a problem (functions, settings, shapes of nothing), hashable by
    value: what `_host` keys its compilations on, so that problems alike in all but their
    arrays share them."""

    def __init__(self, tree):
        self.tree = tree
        leaves, treedef = jax.tree.flatten(tree)
        self._key = (treedef, tuple(leaves))
        self._hash = hash(self._key)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key


def _split(problem: BilevelProblem):
    dynamic, static = eqx.partition(problem, eqx.is_array)
    return _Static(static), dynamic


# The host loop's call of a unit `fn(problem, *args)`. A problem is split once per loop,
# not once per step as `eqx.filter_jit` would: that halved a small MLP's step time on the CPU.
_host = jax.jit(lambda fn, static, dynamic, *args: fn(eqx.combine(dynamic, static.tree), *args),
                static_argnums=(0, 1))


def _steps(advance, record, problem, carry, phi, key, *, num_steps: int, num_recorded: int):
    """The one window loop: `num_steps` steps `advance(problem, carry, phi, k) -> (carry,
    loss)` on the window's keys, with `record(problem, carry) -> (q,)` after each of the last
    `num_recorded`. A host loop over the jitted units on the CPU, one `lax.scan` elsewhere
    (the module's docstring says why); both give the same numbers.

    **Returns:** `(carry, rows (num_recorded, q), losses (num_steps,))`.
    """
    if not host_loop():
        return _scan_steps(advance, record, problem, carry, phi, key, num_steps=num_steps,
                           num_recorded=num_recorded)
    losses, rows = [], []
    static, dynamic = _split(problem)
    for i, k in enumerate(jax.random.split(key, num_steps)):
        carry, loss = _host(advance, static, dynamic, carry, phi, k)
        losses.append(loss)
        if i >= num_steps - num_recorded:
            rows.append(_host(record, static, dynamic, carry))
    rows = jnp.stack(rows) if rows else jnp.zeros((0, phi.shape[0]), phi.dtype)
    return carry, rows, jnp.stack(losses)


@eqx.filter_jit
def _scan_steps(advance, record, problem, carry, phi, key, *, num_steps, num_recorded):
    keys = jax.random.split(key, num_steps)
    skip = num_steps - num_recorded

    def plain(carry, k):
        return advance(problem, carry, phi, k)

    def recorded(carry, k):
        carry, loss = plain(carry, k)
        return carry, (loss, record(problem, carry))

    carry, losses = jax.lax.scan(plain, carry, keys[:skip])
    if not num_recorded:
        return carry, jnp.zeros((0, phi.shape[0]), phi.dtype), losses
    carry, (tail, rows) = jax.lax.scan(recorded, carry, keys[skip:])
    return carry, rows.reshape(num_recorded, phi.shape[0]), jnp.concatenate([losses, tail])


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
    (state, tangents), hs, losses = _steps(_forward, _forward_row, problem, (state, tangents),
                                           phi, key, num_steps=num_steps,
                                           num_recorded=num_recorded)
    return Window(state, tangents, hs, losses)


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
    state, hs, losses = _steps(_plain, None, problem, state, phi, key, num_steps=num_steps,
                               num_recorded=0)
    return Window(state, None, hs, losses)


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
    carry, (static, dynamic) = (state, tangents), _split(problem)
    for i in range(int(num_steps)):
        carry, _ = _host(_forward, static, dynamic, carry, phi, jax.random.fold_in(key, i))
    return _host(_playout_end, static, dynamic, carry)


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
