"""Data reweighting (Sec. 4.2): φ are the weights of a meta network that weighs each
training example by its loss, as in Meta-Weight-Net."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PyTree

from ._hyperparams import HyperSpace, sgd
from ._problems import (
    BilevelProblem,
    InnerState,
    LossProblem,
    _logits,
    classification_problem,
    sample_examples,
)


def meta_network(meta: eqx.Module) -> tuple[Float[Array, " q"], Callable[[Array], eqx.Module]]:
    """φ of a meta network and the map back, φ ↦ μ_φ: its inexact arrays, flattened with
    `ravel_pytree`, are φ (as `reweighting_problem` learns them); the rest stays fixed."""
    params, static = eqx.partition(meta, eqx.is_inexact_array)
    phi, unravel = ravel_pytree(params)
    return phi, lambda phi: eqx.combine(unravel(phi), static)


class ReweightingProblem(BilevelProblem):
    """Data reweighting (Sec. 4.2), φ the parameters of a meta network: built by
    `reweighting_problem`."""

    classifier: LossProblem
    phi0: Float[Array, " q"]
    meta_params: PyTree
    meta_structure: PyTree
    sgd: tuple[float, float, float] = eqx.field(static=True)
    metric_name = "test_accuracy"

    @property
    def space(self) -> HyperSpace:
        return HyperSpace(tuple(f"meta_{i}" for i in range(self.phi0.size)), None, None)

    def _optimizer(self) -> optax.GradientTransformation:
        learning_rate, momentum, weight_decay = self.sgd
        return optax.chain(optax.add_decayed_weights(weight_decay),
                           optax.sgd(learning_rate, momentum=momentum))

    def init(self, key):
        params0 = self.classifier.params0
        return InnerState(params0, self._optimizer().init(params0))

    def step(self, state, phi, key):
        c = self.classifier
        x, y = sample_examples(c.train, key, c.batch_size)
        meta = eqx.combine(ravel_pytree(self.meta_params)[1](phi), self.meta_structure)

        def weighted_loss(params):
            losses = optax.softmax_cross_entropy_with_integer_labels(
                _logits(c.model(params), x), y)
            return jnp.mean(losses * meta(jax.lax.stop_gradient(losses)))

        loss, grads = jax.value_and_grad(weighted_loss)(state.params)
        updates, opt_state = self._optimizer().update(grads, state.opt_state, state.params)
        return InnerState(optax.apply_updates(state.params, updates), opt_state), loss

    def val_loss(self, params):
        return self.classifier.val_loss(params)

    def evaluate(self, params):
        return self.classifier.evaluate(params)


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
) -> ReweightingProblem:
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
    - `train`, `val`, `test`: `(images, labels)` arrays on the device, labels integer.
    - `learning_rate`, `momentum`, `weight_decay`, `batch_size`: the inner SGD.
    - `eval_chunk`, `val_chunk`: as in `classification_problem`.

    **Returns:** a `ReweightingProblem`.
    """
    # the classifier's own optimizer is never used: a placeholder
    classifier = classification_problem(model, train, val, test, sgd(learn=("learning_rate",)),
                                        batch_size=batch_size, eval_chunk=eval_chunk,
                                        val_chunk=val_chunk)
    meta_params, meta_structure = eqx.partition(meta, eqx.is_inexact_array)
    phi0 = ravel_pytree(meta_params)[0]
    return ReweightingProblem(classifier, phi0, meta_params, meta_structure,
                              (float(learning_rate), float(momentum), float(weight_decay)))
