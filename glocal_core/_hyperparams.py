"""Bounded hyperparameters and inner optimizers that read them.

The outer loop optimises raw reals φ ∈ R^q; the inner optimizer sees bounded values
`lower + (upper - lower) · sigmoid(φ)` (the paper applies the logistic sigmoid to keep
learning rate, momentum, weight decay and Adam's betas in (0, 1), Sec. 4.1).

Optimizers are built with `optax.inject_hyperparams`, so their hyperparameters are leaves of
the optimizer state. Each inner step writes the current bounded values into that state, which
makes Θ(x, φ) an ordinary differentiable function of φ: forward-mode tangents flow into the
learning rate, momentum buffers and Adam moments without re-implementing any optimizer.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree


class HyperSpace(NamedTuple):
    """Names and bounds of the learned hyperparameters, in the order of φ.

    **Fields:**

    - `names`: one name per entry of φ.
    - `lower`, `upper`: the open interval each bounded value lives in; `None` for both
      means φ is used as it is (e.g. the weights of a meta network).
    """

    names: tuple[str, ...]
    lower: tuple[float, ...] | None
    upper: tuple[float, ...] | None

    @property
    def size(self) -> int:
        return len(self.names)

    def bounded(self, phi: Float[Array, " q"]) -> Float[Array, " q"]:
        """Map raw φ to the hyperparameter values the inner optimizer uses."""
        if self.lower is None:
            return phi
        lower = jnp.asarray(self.lower, phi.dtype)
        upper = jnp.asarray(self.upper, phi.dtype)
        return lower + (upper - lower) * jax.nn.sigmoid(phi)

    def raw(self, values) -> Float[Array, " q"]:
        """Inverse of `bounded`: the φ that yields `values` (each strictly inside its bounds)."""
        values = jnp.asarray(values, dtype=float)
        if self.lower is None:
            return values
        lower = jnp.asarray(self.lower, values.dtype)
        upper = jnp.asarray(self.upper, values.dtype)
        if not bool(jnp.all((values > lower) & (values < upper))):
            raise ValueError(
                f"hyperparameter values {values.tolist()} must lie strictly inside their bounds "
                f"{list(zip(self.lower, self.upper))} for {self.names}."
            )
        u = (values - lower) / (upper - lower)
        return jnp.log(u) - jnp.log1p(-u)


class HyperOptimizer(NamedTuple):
    """An optax optimizer whose learned hyperparameters come from φ at every step.

    **Fields:**

    - `space`: the learned hyperparameters.
    - `phi0`: raw initial φ, shape `(q,)`.
    - `fixed`: the hyperparameters held constant, by name.
    - `factory`: `(**hyperparameters) -> optax.GradientTransformation`.
    """

    space: HyperSpace
    phi0: Float[Array, " q"]
    fixed: dict[str, float]
    factory: Callable[..., optax.GradientTransformation]

    def _transform(self) -> optax.GradientTransformation:
        return optax.inject_hyperparams(self.factory)(
            **self.fixed, **dict(zip(self.space.names, self.space.bounded(self.phi0)))
        )

    def init(self, params: PyTree) -> Any:
        """Optimizer state for `params`; hyperparameter leaves take the dtype of `params`."""
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        state = self._transform().init(params)
        hyper = {k: jnp.asarray(v, dtype) for k, v in state.hyperparams.items()}
        return state._replace(hyperparams=hyper)

    def update(self, grads: PyTree, state: Any, params: PyTree, phi: Float[Array, " q"]):
        """One optimizer update with the hyperparameters given by raw `phi`."""
        values = self.space.bounded(phi)
        hyper = dict(state.hyperparams)
        for name, value in zip(self.space.names, values):
            hyper[name] = value.astype(hyper[name].dtype)
        return self._transform().update(grads, state._replace(hyperparams=hyper), params)


def _check_learn(learn: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    unknown = [name for name in learn if name not in allowed]
    if unknown or not learn:
        raise ValueError(
            f"learn={learn!r}: choose a non-empty subset of {allowed} (unknown: {unknown})."
        )


def _sgd_factory(learning_rate, momentum, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum)
    )


def sgd(
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    *,
    learn: tuple[str, ...] = ("learning_rate", "momentum", "weight_decay"),
) -> HyperOptimizer:
    """SGD with momentum and decoupled-from-loss weight decay, some hyperparameters learned.

    Learned values must lie in (0, 1) (sigmoid-bounded, as in the paper); the others are fixed.

    **Arguments:**

    - `learning_rate`, `momentum`, `weight_decay`: initial (learned) or fixed values.
    - `learn`: which of the three are hyperparameters φ.
    """
    allowed = ("learning_rate", "momentum", "weight_decay")
    _check_learn(learn, allowed)
    values = dict(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)
    return _make(values, learn, _sgd_factory)


def _adam_factory(learning_rate, b1, b2, eps_root):
    return optax.adam(learning_rate, b1=b1, b2=b2, eps_root=eps_root)


def adam(
    learning_rate: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    *,
    eps_root: float = 1e-16,
    learn: tuple[str, ...] = ("learning_rate", "b1", "b2"),
) -> HyperOptimizer:
    """Adam with learned learning rate and betas.

    `eps_root > 0` is required for forward mode: d√ν/dν is infinite at ν = 0, so a gradient
    entry that is exactly zero would turn the tangents into NaN. `eps_root = eps²` keeps the
    regularisation at the scale of Adam's own `eps = 1e-8`.
    """
    if not eps_root > 0:
        raise ValueError(f"eps_root={eps_root}: must be > 0, or forward-mode tangents turn NaN.")
    allowed = ("learning_rate", "b1", "b2")
    _check_learn(learn, allowed)
    values = dict(learning_rate=learning_rate, b1=b1, b2=b2)
    opt = _make(values, learn, _adam_factory)
    return opt._replace(fixed={**opt.fixed, "eps_root": eps_root})


def _make(values: dict[str, float], learn: tuple[str, ...], factory) -> HyperOptimizer:
    space = HyperSpace(names=tuple(learn), lower=(0.0,) * len(learn), upper=(1.0,) * len(learn))
    phi0 = space.raw([values[name] for name in learn])
    fixed = {name: value for name, value in values.items() if name not in learn}
    return HyperOptimizer(space=space, phi0=phi0, fixed=fixed, factory=factory)
