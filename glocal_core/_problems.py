"""Bilevel problems behind one small interface.

A problem fixes the inner state x = (θ, optimizer state), the inner step Θ(x, φ) of Eq. (4),
the validation loss ℓ̃(θ) of Eq. (3) and a test metric. Everything the outer loop and the
hypergradient trackers need is a pure function of these, so any model, data set and optimizer
that fits the interface gets all four strategies for free.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Scalar

from ._data import sample_batch
from ._hyperparams import HyperOptimizer, HyperSpace


class InnerState(NamedTuple):
    """The inner state x = (θ, optimizer state) that Θ advances."""

    params: PyTree
    opt_state: Any


# eq=False: problems hash by identity, so they can be static arguments of `jax.jit`.
@dataclasses.dataclass(frozen=True, eq=False)
class BilevelProblem:
    """A bilevel problem, Eq. (3)–(4).

    **Fields:**

    - `space`: names and bounds of φ.
    - `phi0`: raw initial φ, shape `(q,)`.
    - `init`: `(key) -> InnerState`.
    - `step`: Θ, `(state, phi, key) -> (state, train_loss)`; `key` draws the minibatch.
    - `val_loss`: ℓ̃, `(params) -> scalar`.
    - `evaluate`: `(params) -> {"test_accuracy": ..., ...}`, jittable.
    """

    space: HyperSpace
    phi0: Float[Array, " q"]
    init: Callable[[PRNGKeyArray], InnerState]
    step: Callable[[InnerState, Float[Array, " q"], PRNGKeyArray], tuple[InnerState, Scalar]]
    val_loss: Callable[[PyTree], Scalar]
    evaluate: Callable[[PyTree], dict[str, Scalar]]


def _optimizer_step(loss_fn, optimizer: HyperOptimizer):
    """Θ for `optimizer` on `loss_fn(params, key)`."""

    def step(state: InnerState, phi, key):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, phi)
        return InnerState(optax.apply_updates(state.params, updates), opt_state), loss

    return step


def quadratic_problem(
    train_target: Float[Array, " p"],
    val_target: Float[Array, " p"],
    optimizer: HyperOptimizer,
    *,
    params0: Float[Array, " p"] | None = None,
    noise: float = 0.0,
) -> BilevelProblem:
    """ℓ(θ) = ½‖θ − a‖² (+ gradient noise), ℓ̃(θ) = ½‖θ − b‖²: best φ known in closed form.

    With weight decay λ learned, gradient descent converges to θ∞ = a / (1 + λ), so the
    validation loss after long training is smallest where 1/(1 + λ) = ⟨a, b⟩/‖a‖², i.e. at
    λ* = ‖a‖²/⟨a, b⟩ − 1 (which must lie in the bounds of the learned λ, (0, 1)). The test
    metric is the validation loss itself.

    **Arguments:**

    - `train_target`, `val_target`: a and b.
    - `optimizer`: the inner optimizer with its learned hyperparameters.
    - `params0`: θ_0 (zeros if omitted).
    - `noise`: standard deviation of Gaussian noise added to each gradient (a noisy
      quadratic in the spirit of Wu et al. 2018).
    """
    a = jnp.asarray(train_target)
    b = jnp.asarray(val_target)
    theta0 = jnp.zeros_like(a) if params0 is None else jnp.asarray(params0, a.dtype)

    def train_loss(theta, key):
        jitter = noise * jax.random.normal(key, theta.shape, theta.dtype)
        # the noise enters the gradient only: d/dθ [½‖θ−a‖² + ⟨ε, θ⟩] = θ − a + ε
        return 0.5 * jnp.sum((theta - a) ** 2) + jnp.vdot(jax.lax.stop_gradient(jitter), theta)

    def val_loss(theta):
        return 0.5 * jnp.sum((theta - b) ** 2)

    return BilevelProblem(
        space=optimizer.space,
        phi0=optimizer.phi0,
        init=lambda key: InnerState(theta0, optimizer.init(theta0)),
        step=_optimizer_step(train_loss, optimizer),
        val_loss=val_loss,
        evaluate=lambda theta: {"val_loss": val_loss(theta)},
    )


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _chunked_sum(fn, x, y, chunk: int, *, remat: bool = False):
    """`Σ_c fn(x_c, y_c)` over chunks of at most `chunk` examples: one `lax.map` over the
    full chunks, then the rest. With `remat`, a gradient recomputes each chunk's activations
    in its backward pass (`jax.checkpoint`), so it holds one chunk's instead of all of them."""
    chunk = min(chunk, len(y))
    n = len(y) - len(y) % chunk
    body = jax.checkpoint(fn) if remat else fn
    sums = jax.lax.map(lambda xy: body(*xy), (x[:n].reshape(-1, chunk, *x.shape[1:]),
                                              y[:n].reshape(-1, chunk)))
    return jnp.sum(sums) + (fn(x[n:], y[n:]) if n < len(y) else 0)


class _Classifier(NamedTuple):
    """What every classification problem shares: θ_0, the loss on a minibatch, ℓ̃, metrics."""

    params0: PyTree
    batch_losses: Callable  # (params, key) -> per-example cross-entropy of a minibatch
    val_loss: Callable
    evaluate: Callable


def _classifier(model, train, val, test, batch_size: int, eval_chunk: int,
                val_chunk: int | None) -> _Classifier:
    params0, static = eqx.partition(model, eqx.is_inexact_array)
    x_train, y_train = train
    x_val, y_val = val
    x_test, y_test = test
    if batch_size < 1 or batch_size > len(y_train):
        raise ValueError(
            f"batch_size={batch_size}: must be in [1, {len(y_train)}] (the training set size)."
        )

    def logits(params, x):
        return jax.vmap(eqx.combine(params, static))(x)

    def batch_losses(params, key):
        x, y = sample_batch(x_train, y_train, key, batch_size)
        return _cross_entropy(logits(params, x), y)

    def val_loss(params):
        if val_chunk is None or len(y_val) <= val_chunk:
            return jnp.mean(_cross_entropy(logits(params, x_val), y_val))
        return _chunked_sum(lambda x, y: jnp.sum(_cross_entropy(logits(params, x), y)),
                            x_val, y_val, val_chunk, remat=True) / len(y_val)

    def evaluate(params):
        hits = _chunked_sum(lambda x, y: jnp.sum(jnp.argmax(logits(params, x), -1) == y),
                            x_test, y_test, eval_chunk)
        return {"test_accuracy": hits / len(y_test), "val_loss": val_loss(params)}

    return _Classifier(params0, batch_losses, val_loss, evaluate)


def classification_problem(
    model: eqx.Module,
    train: tuple[Float[Array, "n ..."], Int[Array, " n"]],
    val: tuple[Float[Array, "nv ..."], Int[Array, " nv"]],
    test: tuple[Float[Array, "nt ..."], Int[Array, " nt"]],
    optimizer: HyperOptimizer,
    *,
    batch_size: int = 128,
    eval_chunk: int = 1000,
    val_chunk: int | None = None,
) -> BilevelProblem:
    """Hyperparameter optimisation of `optimizer` for a per-example `model` (Sec. 4.1).

    The training minibatch is drawn on the device from the step's key; the validation loss is
    full-batch over `val` (the paper's choice, to keep ℓ̃ deterministic).

    **Arguments:**

    - `model`: an equinox module mapping one example to logits; its inexact arrays are θ.
    - `train`, `val`, `test`: `(images, labels)` arrays, already on the device.
    - `optimizer`: the inner optimizer with its learned hyperparameters.
    - `batch_size`: training minibatch size (the paper: 128).
    - `eval_chunk`: test examples per forward pass when evaluating.
    - `val_chunk`: validation examples per forward pass of ℓ̃ (`None`: all in one). ℓ̃ is
      the same full-batch mean either way (up to float rounding); with chunks, its gradient
      holds one chunk's activations and recomputes them in the backward pass.
    """
    c = _classifier(model, train, val, test, batch_size, eval_chunk, val_chunk)
    return BilevelProblem(
        space=optimizer.space,
        phi0=optimizer.phi0,
        init=lambda key: InnerState(c.params0, optimizer.init(c.params0)),
        step=_optimizer_step(lambda params, key: jnp.mean(c.batch_losses(params, key)),
                             optimizer),
        val_loss=c.val_loss,
        evaluate=c.evaluate,
    )


def meta_network(meta: eqx.Module) -> tuple[Float[Array, " q"], Callable[[Array], eqx.Module]]:
    """φ of a meta network and the map back, φ ↦ μ_φ: its inexact arrays, flattened with
    `ravel_pytree`, are φ (as `reweighting_problem` learns them); the rest stays fixed."""
    params, static = eqx.partition(meta, eqx.is_inexact_array)
    phi, unravel = ravel_pytree(params)
    return phi, lambda phi: eqx.combine(unravel(phi), static)


def reweighting_problem(
    model: eqx.Module,
    meta: eqx.Module,
    train: tuple[Float[Array, "n ..."], Int[Array, " n"]],
    val: tuple[Float[Array, "nv ..."], Int[Array, " nv"]],
    test: tuple[Float[Array, "nt ..."], Int[Array, " nt"]],
    *,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    eval_chunk: int = 1000,
    val_chunk: int | None = None,
) -> BilevelProblem:
    """Data reweighting (Sec. 4.2): φ are the parameters of a meta network μ_φ.

    The inner loss is the minibatch mean of L(x, y; θ) · μ_φ(L(x, y; θ)) with L the
    cross-entropy; the weight is computed from the loss *value* (no gradient through μ's
    input), as in Meta-Weight-Net. The inner optimizer is SGD with fixed hyperparameters
    (Appendix B.2: lr 0.01, momentum 0.9, weight decay 0). ℓ̃ is the unweighted
    cross-entropy on the (balanced) validation set.

    **Arguments:**

    - `model`: per-example classifier; its inexact arrays are θ.
    - `meta`: the meta network (e.g. `MetaMLP`, q = 385); its inexact arrays, flattened, are
      φ, unbounded, with its current values as φ_0.
    - `train`, `val`, `test`: `(images, labels)` arrays on the device.
    - `learning_rate`, `momentum`, `weight_decay`, `batch_size`: the inner SGD.
    - `eval_chunk`, `val_chunk`: as in `classification_problem`.
    """
    c = _classifier(model, train, val, test, batch_size, eval_chunk, val_chunk)
    phi0, network = meta_network(meta)
    optimizer = optax.chain(optax.add_decayed_weights(weight_decay),
                            optax.sgd(learning_rate, momentum=momentum))

    def weighted_loss(params, phi, key):
        losses = c.batch_losses(params, key)
        weights = network(phi)(jax.lax.stop_gradient(losses))
        return jnp.mean(losses * weights)

    def step(state: InnerState, phi, key):
        loss, grads = jax.value_and_grad(weighted_loss)(state.params, phi, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return InnerState(optax.apply_updates(state.params, updates), opt_state), loss

    return BilevelProblem(
        space=HyperSpace(tuple(f"meta_{i}" for i in range(phi0.size)), None, None),
        phi0=phi0,
        init=lambda key: InnerState(c.params0, optimizer.init(c.params0)),
        step=step,
        val_loss=c.val_loss,
        evaluate=c.evaluate,
    )
