"""Bilevel problems as equinox modules.

A problem fixes the inner state x = (θ, optimizer state), the inner step Θ(x, φ) of Eq. (4),
the validation loss ℓ̃(θ) of Eq. (3) and a test metric. Everything the outer loop and the
hypergradient trackers need is a method of the problem, so any model, data set and optimizer
that fits the interface gets all four strategies for free.

A problem is an `eqx.Module`: its data, initial parameters and φ_0 are leaves, its
functions and settings static. Every jitted function takes the problem as an argument, so
two problems with the same functions, settings (fixed hyperparameters included) and shapes
share one compilation, and no compiled function keeps a problem's data alive.

`loss_problem` builds one for any `loss(params, batch)`; `classification_problem` is a thin
use of it. `reweighting_problem` (φ: a meta network, `_reweighting`) and `quadratic_problem`
(a closed-form check, `_quadratic`) are problems of their own.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Scalar

from ._hyperparams import HyperOptimizer, HyperSpace


class InnerState(NamedTuple):
    """The inner state x = (θ, optimizer state) that Θ advances."""

    params: PyTree
    opt_state: Any


class BilevelProblem(eqx.Module):
    """A bilevel problem, Eq. (3)–(4). Subclasses define:

    - `space` (`HyperSpace`) and `phi0`, raw initial φ of shape `(q,)`;
    - `init(key) -> InnerState`;
    - `step(state, phi, key) -> (state, train_loss)`, Θ; `key` draws the minibatch;
    - `val_loss(params) -> scalar`, ℓ̃;
    - `evaluate(params) -> dict[str, scalar]`, jittable;
    - `metric_name`, the key of `evaluate`'s dict the outer loop records as its test metric
      (checked before a run starts).

    To jit a method yourself, use `eqx.filter_jit(problem.step)`: a bound method of a module
    that holds arrays is not hashable, so `jax.jit(problem.step)` raises a `TypeError`.
    """

    def init(self, key: PRNGKeyArray) -> InnerState:
        raise NotImplementedError

    def step(self, state: InnerState, phi: Float[Array, " q"],
             key: PRNGKeyArray) -> tuple[InnerState, Scalar]:
        raise NotImplementedError

    def val_loss(self, params: PyTree) -> Scalar:
        raise NotImplementedError

    def evaluate(self, params: PyTree) -> dict[str, Scalar]:
        raise NotImplementedError


def _num_examples(data: PyTree, what: str) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
        raise ValueError(f"{what}: a pytree of arrays with a leading example axis, e.g. (x, y).")
    sizes = {int(x.shape[0]) for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"{what}: every array needs the same number of examples on axis 0, "
                         f"got {sorted(sizes)}.")
    return sizes.pop()


def sample_examples(data: PyTree, key: PRNGKeyArray, batch_size: int) -> PyTree:
    """`batch_size` examples of `data` (arrays with a leading example axis), drawn
    independently and uniformly with replacement as a pure function of `key` (see
    `glocal_core._data.sample_batch`, which it generalises)."""
    n = jax.tree.leaves(data)[0].shape[0]
    index = jax.random.randint(key, (batch_size,), 0, n)
    return jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)


def chunked_mean(fn: Callable[[PyTree], Scalar], data: PyTree, chunk: int | None, *,
                 remat: bool = False) -> Scalar:
    """The mean over all examples of `data` of `fn`, itself a mean over a batch, computed in
    chunks of at most `chunk` examples (`None`: in one). With `remat`, a gradient recomputes
    each chunk's activations in its backward pass, holding one chunk's instead of all."""
    n = jax.tree.leaves(data)[0].shape[0]
    if chunk is None or n <= chunk:
        return fn(data)
    full = n - n % chunk
    body = jax.checkpoint(fn) if remat else fn
    head = jax.tree.map(lambda x: x[:full].reshape(-1, chunk, *x.shape[1:]), data)
    total = jnp.sum(jax.lax.map(body, head)) * chunk
    if full < n:
        total = total + fn(jax.tree.map(lambda x: x[full:], data)) * (n - full)
    return total / n


def _optimizer_step(optimizer: HyperOptimizer, loss_fn, state: InnerState, phi):
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, phi=phi)
    return InnerState(optax.apply_updates(state.params, updates), opt_state), loss


class OptimizerProblem(BilevelProblem):
    """A problem whose φ are the learned hyperparameters of its inner `optimizer`."""

    optimizer: HyperOptimizer

    @property
    def space(self) -> HyperSpace:
        return self.optimizer.space

    @property
    def phi0(self) -> Float[Array, " q"]:
        return self.optimizer.phi0


class LossProblem(OptimizerProblem):
    """Tune `optimizer`'s hyperparameters for `loss(params, batch)`: built by `loss_problem`.

    `params0` holds the trainable arrays; `structure` the rest of the model (static), so
    that `loss` and `metric` see the whole model (`eqx.combine(params, structure)`).
    """

    params0: PyTree
    train: PyTree
    val: PyTree
    test: PyTree | None
    structure: PyTree
    loss: Callable = eqx.field(static=True)
    metric: Callable | None = eqx.field(static=True)
    metric_name: str = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    val_chunk: int | None = eqx.field(static=True)
    eval_chunk: int | None = eqx.field(static=True)

    def model(self, params: PyTree) -> PyTree:
        """The whole model (or parameter pytree) with trainable arrays `params`."""
        return eqx.combine(params, self.structure)

    def init(self, key):
        return InnerState(self.params0, self.optimizer.init(self.params0))

    def step(self, state, phi, key):
        batch = sample_examples(self.train, key, self.batch_size)
        return _optimizer_step(self.optimizer, lambda p: self.loss(self.model(p), batch),
                               state, phi)

    def val_loss(self, params):
        model = self.model(params)
        return chunked_mean(lambda d: self.loss(model, d), self.val, self.val_chunk, remat=True)

    def evaluate(self, params):
        out = {"val_loss": self.val_loss(params)}
        if self.metric is not None:
            model = self.model(params)
            out[self.metric_name] = chunked_mean(lambda d: self.metric(model, d), self.test,
                                                 self.eval_chunk)
        return out


def loss_problem(
    loss: Callable[[PyTree, PyTree], Scalar],
    params: PyTree,
    train: PyTree,
    val: PyTree,
    optimizer: HyperOptimizer,
    *,
    test: PyTree | None = None,
    metric: Callable[[PyTree, PyTree], Scalar] | None = None,
    metric_name: str | None = None,
    batch_size: int = 128,
    val_chunk: int | None = None,
    eval_chunk: int | None = None,
) -> LossProblem:
    """Tune the hyperparameters of `optimizer` for any differentiable loss.

    The inner step draws a minibatch of `train` and takes one `optimizer` step on `loss`;
    ℓ̃ is `loss` on all of `val` (deterministic, as in the paper).

    **Arguments:**

    - `loss`: `loss(params, batch) -> scalar`, the mean over the batch's examples.
    - `params`: initial parameters: a pytree of float arrays, or an equinox module (its
      floating-point arrays are trained, the rest kept).
    - `train`, `val`: pytrees of arrays with a leading example axis, e.g. `(x, y)`.
    - `optimizer`: a `HyperOptimizer` (`learnable`, `sgd`, `adam`).
    - `test`, `metric`: a test set and `metric(params, batch) -> scalar` (a mean over the
      batch), recorded under `metric_name` (default: the function's name) at every
      evaluation of the outer loop. Give both or neither; without them the outer loop
      records ℓ̃ as `val_loss`.
    - `batch_size`: training minibatch size.
    - `val_chunk`, `eval_chunk`: examples per pass of ℓ̃ and of `metric` (`None`: all).

    **Returns:** a `LossProblem`.

    **Raises:** `ValueError` for parameters with no float array, data without a common
    leading axis, a bad `batch_size`, a `loss` that does not return a scalar on a batch of
    `train`, or `test` without `metric` (or the reverse).
    """
    if not isinstance(optimizer, HyperOptimizer):
        raise ValueError(f"optimizer={optimizer!r}: a HyperOptimizer, e.g. "
                         "glocal_core.learnable(optax.sgd, learning_rate=0.1, learn=...).")
    if not isinstance(params, eqx.Module):  # a Python float in a pytree is a parameter too
        params = jax.tree.map(
            lambda v: jnp.asarray(v, float) if isinstance(v, float) else v, params)
    params0, structure = eqx.partition(params, eqx.is_inexact_array)
    if not jax.tree.leaves(params0):
        raise ValueError("params has no floating-point array to train: pass the model's "
                         "parameters (a pytree of float arrays, or an equinox module).")
    train, val, test = (None if d is None else jax.tree.map(jnp.asarray, d)
                        for d in (train, val, test))
    n = _num_examples(train, "train")
    _num_examples(val, "val")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size}: must be in [1, {n}] (the training set size).")
    for name, chunk in (("val_chunk", val_chunk), ("eval_chunk", eval_chunk)):
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"{name}={chunk!r}: a positive number of examples, or None.")
    if metric is None and metric_name is not None:
        raise ValueError(f"metric_name={metric_name!r} without a metric: pass metric= too.")
    if metric_name == "val_loss" and metric is not None:
        raise ValueError("metric_name='val_loss' would hide the validation loss: choose "
                         "another name for the test metric.")
    if (test is None) != (metric is None):
        raise ValueError("test and metric go together: pass both (the metric is recorded on "
                         "test at every evaluation) or neither.")
    if test is not None:
        _num_examples(test, "test")
    if metric is None:
        metric_name = "val_loss"  # what evaluate reports without a test metric
    elif metric_name is None:
        name = getattr(metric, "__name__", "")
        metric_name = name if name.isidentifier() else "test_metric"
    batch = sample_examples(train, jax.random.key(0), min(batch_size, 2))
    try:
        shape = jax.eval_shape(lambda p: loss(eqx.combine(p, structure), batch), params0)
    except Exception as err:
        raise ValueError(f"loss(params, batch) failed on a batch of train: {err}") from err
    if getattr(shape, "shape", None) != ():
        raise ValueError(f"loss(params, batch) must return a scalar (the batch mean), got "
                         f"{shape}.")
    return LossProblem(optimizer, params0, train, val, test, structure, loss, metric,
                       metric_name, batch_size, val_chunk, eval_chunk)


def _logits(model, x):
    return jax.vmap(model)(x)


def cross_entropy(model, batch) -> Scalar:
    """Mean cross-entropy of a per-example classifier `model` on `batch = (x, labels)`."""
    x, y = batch
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_logits(model, x), y))


def accuracy(model, batch) -> Scalar:
    """The share of `batch = (x, labels)` that `model`'s largest logit classifies right."""
    x, y = batch
    return jnp.mean((jnp.argmax(_logits(model, x), -1) == y).astype(jnp.result_type(float)))


def _check_labels(sets: dict[str, tuple]) -> None:
    for name, data in sets.items():
        if not (isinstance(data, tuple) and len(data) == 2):
            raise ValueError(f"{name}: an (images, labels) pair.")
        if not jnp.issubdtype(jnp.asarray(data[1]).dtype, jnp.integer):
            raise ValueError(f"{name}: labels must be integer class indices, got "
                             f"{jnp.asarray(data[1]).dtype}; convert with labels.astype(int).")


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
) -> LossProblem:
    """Hyperparameter optimisation of `optimizer` for a per-example classifier (Sec. 4.1):
    `loss_problem` with the cross-entropy and `test_accuracy`.

    **Arguments:**

    - `model`: an equinox module mapping one example to logits; its float arrays are θ.
    - `train`, `val`, `test`: `(images, labels)` arrays, labels integer, on the device.
    - `optimizer`: the inner optimizer with its learned hyperparameters.
    - `batch_size`: training minibatch size (the paper: 128).
    - `eval_chunk`, `val_chunk`: examples per forward pass of the test metric and of ℓ̃
      (`None`: all in one). ℓ̃ is the same full-batch mean either way (up to rounding).

    **Returns:** a `LossProblem` whose metric is `test_accuracy`.
    """
    _check_labels(dict(train=train, val=val, test=test))
    return loss_problem(cross_entropy, model, train, val, optimizer, test=test,
                        metric=accuracy, metric_name="test_accuracy", batch_size=batch_size, val_chunk=val_chunk,
                        eval_chunk=eval_chunk)
