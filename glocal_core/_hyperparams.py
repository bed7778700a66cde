"""Learnable hyperparameters of any optax optimizer, bounded on a linear or a log scale.

The outer loop optimises raw reals φ ∈ R^q; the inner optimizer sees bounded values. On a
linear scale a value is `lower + (upper − lower) · sigmoid(φ)` (the paper applies the logistic
sigmoid to keep learning rate, momentum, weight decay and Adam's betas in (0, 1), Sec. 4.1);
on a log scale it is `exp` of the same map between `log lower` and `log upper`, so that a
learning rate moves by factors rather than by steps.

`learnable(factory, learn=..., **values)` wraps any optax optimizer factory (`optax.sgd`,
`optax.adamw`, `optax.lion`, a function of your own returning a `GradientTransformation`)
with `optax.inject_hyperparams`: its hyperparameters are leaves of the optimizer state, and
each update writes the current bounded values into that state. That makes an inner step an
ordinary differentiable function of φ: forward-mode tangents flow into the learning rate,
momentum buffers and Adam moments without re-implementing any optimizer.
"""

import inspect
import numbers
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PyTree

SCALES = ("linear", "log")

# Forward mode differentiates √ν̂ in Adam's denominator; at ν̂ = 0 (an exactly zero gradient
# entry) its derivative is infinite and the tangents turn NaN. eps_root = eps² keeps the
# regularisation at the scale of Adam's own eps = 1e-8.
EPS_ROOT = 1e-16


class Bound(NamedTuple):
    """The open interval a learned hyperparameter lives in, and the scale φ moves it on.

    **Fields:** `lower`, `upper` (`lower < upper`; `lower > 0` on a log scale) and `scale`,
    `"linear"` or `"log"`.
    """

    lower: float
    upper: float
    scale: str = "linear"

    def checked(self, name: str) -> "Bound":
        """This bound, or a `ValueError` that names `name` and what is wrong."""
        if self.scale not in SCALES:
            raise ValueError(f"{name}: scale={self.scale!r}; choose one of {SCALES}.")
        if not float(self.lower) < float(self.upper):
            raise ValueError(f"{name}: bounds ({self.lower}, {self.upper}) need lower < upper.")
        if self.scale == "log" and not float(self.lower) > 0:
            raise ValueError(f"{name}: a log scale needs lower > 0, got {self.lower}.")
        return Bound(float(self.lower), float(self.upper), self.scale)


class HyperSpace(NamedTuple):
    """Names, bounds and scales of the learned hyperparameters, in the order of φ.

    **Fields:**

    - `names`: one name per entry of φ.
    - `lower`, `upper`: the open interval each bounded value lives in; `None` for both means
      φ is used as it is (e.g. the weights of a meta network).
    - `scales`: `"linear"` or `"log"` per entry; `None` means all linear.
    """

    names: tuple[str, ...]
    lower: tuple[float, ...] | None
    upper: tuple[float, ...] | None
    scales: tuple[str, ...] | None = None

    @property
    def size(self) -> int:
        """q, the number of hyperparameters."""
        return len(self.names)

    def _ends(self, dtype):
        lower = jnp.asarray(self.lower, dtype)
        upper = jnp.asarray(self.upper, dtype)
        log = jnp.asarray([s == "log" for s in self.scales or ("linear",) * self.size])
        return jnp.where(log, jnp.log(jnp.where(log, lower, 1)), lower), jnp.where(
            log, jnp.log(jnp.where(log, upper, 1)), upper), log

    def bounded(self, phi: Float[Array, " q"]) -> Float[Array, " q"]:
        """The hyperparameter values the inner optimizer uses for raw `phi`, shape `(q,)`."""
        if self.lower is None:
            return phi
        if self.scales is None or "log" not in self.scales:  # the paper's map, as it was
            lower = jnp.asarray(self.lower, phi.dtype)
            upper = jnp.asarray(self.upper, phi.dtype)
            return lower + (upper - lower) * jax.nn.sigmoid(phi)
        lo, hi, log = self._ends(phi.dtype)
        inside = lo + (hi - lo) * jax.nn.sigmoid(phi)
        return jnp.where(log, jnp.exp(inside), inside)

    def raw(self, values) -> Float[Array, " q"]:
        """Inverse of `bounded`: the φ that yields `values` (each strictly inside its bounds).

        **Raises:** `ValueError` naming the values outside their bounds.
        """
        if self.lower is None:
            return jnp.asarray(values, dtype=float)
        values = jnp.asarray(values, dtype=float)
        outside = [(n, float(v), (lo, hi)) for n, v, lo, hi in
                   zip(self.names, values, self.lower, self.upper) if not lo < v < hi]
        if outside:
            raise ValueError("initial values must lie strictly inside their bounds: "
                             + "; ".join(f"{n}={v} not in {b}" for n, v, b in outside) + ".")
        lo, hi, log = self._ends(values.dtype)
        u = (jnp.where(log, jnp.log(values), values) - lo) / (hi - lo)
        phi = jnp.log(u) - jnp.log1p(-u)
        back = self.bounded(phi)  # a value the sigmoid rounds onto its bound could not move
        lower, upper = jnp.asarray(self.lower, phi.dtype), jnp.asarray(self.upper, phi.dtype)
        if not bool(jnp.all(jnp.isfinite(phi) & (back > lower) & (back < upper))):
            raise ValueError(f"initial values {values.tolist()} of {self.names} lie too close "
                             "to their bounds: the sigmoid would stay there. Start further in.")
        return phi


class HyperOptimizer(eqx.Module):
    """An optax optimizer whose learned hyperparameters come from φ at every update.

    It behaves as an optax `GradientTransformationExtraArgs` whose `update` takes φ by
    keyword: `opt.init(params)`, then `opt.update(grads, state, params, phi=phi)`.
    `opt.as_optax()` is that transformation as an optax object, to chain with others or drop
    into a training loop of your own. Build one with `learnable` (or `sgd`, `adam`).

    **Fields:**

    - `space`: the learned hyperparameters (`HyperSpace`).
    - `phi0`: raw initial φ, shape `(q,)`.
    - `fixed`: the hyperparameters held constant, by name.
    - `factory`: `(**hyperparameters) -> optax.GradientTransformation`.
    """

    space: HyperSpace = eqx.field(static=True)
    phi0: Float[Array, " q"]
    fixed: dict[str, Any]
    factory: Callable[..., optax.GradientTransformation] = eqx.field(static=True)

    def _transform(self, values) -> optax.GradientTransformation:
        return optax.inject_hyperparams(self.factory)(
            **self.fixed, **dict(zip(self.space.names, values)))

    def init(self, params: PyTree) -> Any:
        """Optimizer state for `params`; hyperparameter leaves take the dtype of `params`.

        **Raises:** `ValueError` if `params` has no floating-point array to train.
        """
        leaves = [x for x in jax.tree_util.tree_leaves(params) if eqx.is_inexact_array(x)]
        if not leaves:
            raise ValueError("params has no floating-point array to train: pass the model's "
                             "parameters (a pytree of float arrays, or an equinox module).")
        state = self._transform(self.space.bounded(self.phi0)).init(params)
        dtype = jnp.result_type(*leaves)  # as optax does: the widest of the parameters
        hyper = {k: jnp.asarray(v, dtype) if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)
                 else v for k, v in state.hyperparams.items()}
        return state._replace(hyperparams=hyper)

    def update(self, grads: PyTree, state: Any, params: PyTree | None = None, *,
               phi: Float[Array, " q"], **extra_args):
        """One optimizer update with the hyperparameters given by raw `phi`.

        **Returns:** `(updates, state)`, as every optax transformation does.
        """
        del extra_args
        values = self.space.bounded(phi)
        hyper = dict(state.hyperparams)
        for name, value in zip(self.space.names, values):
            hyper[name] = value.astype(hyper[name].dtype)
        return self._transform(values).update(grads, state._replace(hyperparams=hyper), params)

    def as_optax(self) -> optax.GradientTransformationExtraArgs:
        """This optimizer as an optax transformation: `update(grads, state, params, phi=φ)`."""
        return optax.GradientTransformationExtraArgs(self.init, self.update)

    def export(self, values, *, tau: int | None = None) -> optax.GradientTransformation:
        """A plain optax optimizer with the learned hyperparameters fixed or scheduled, to
        retrain without tuning.

        **Arguments:**

        - `values`: learned values, `(q,)` for constants, or `(S, q)`, one row per window of
          `tau` steps (an `OuterResult`'s `hyperparameters`); past the last row the last holds.
        - `tau`: steps per row; needed with `(S, q)` values.

        **Returns:** `optax.inject_hyperparams(factory)` with each learned hyperparameter a
        constant or an optax schedule of the step count.
        """
        values = np.asarray(values, float)
        if values.shape[-1:] != (self.space.size,) or values.ndim not in (1, 2):
            raise ValueError(f"values of shape {values.shape}: need ({self.space.size},) or "
                             f"(S, {self.space.size}) for {self.space.names}.")
        if values.ndim == 1:
            return optax.inject_hyperparams(self.factory)(
                **self.fixed, **dict(zip(self.space.names, values.tolist())))
        try:
            tau = operator.index(tau)
        except TypeError:
            tau = 0
        if tau < 1:
            raise ValueError(f"tau={tau!r}: a schedule of {len(values)} windows needs their "
                             "length in steps, e.g. tau=result.config.tau.")
        return optax.inject_hyperparams(self.factory)(**self.fixed, **{
            name: _stepwise(values[:, i], tau) for i, name in enumerate(self.space.names)})


def _stepwise(values: np.ndarray, tau: int) -> optax.Schedule:
    table = jnp.asarray(values)

    def schedule(count):
        return table[jnp.minimum(count // tau, len(values) - 1)]

    return schedule


def _float_arguments(factory) -> dict[str, Any]:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _float_names(factory) -> list[str]:
    """The arguments of `factory` that take a float: a float default or a numeric annotation."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if isinstance(p.default, float) or (
        p.annotation is not bool and any(s in str(p.annotation) for s in ("float", "Array")))]


def learnable(
    factory: Callable[..., optax.GradientTransformation],
    *,
    learn: Mapping[str, Bound | tuple],
    **values: Any,
) -> HyperOptimizer:
    """Any optax optimizer factory with the named float hyperparameters learnable.

    ```python
    opt = learnable(optax.adamw, learning_rate=0.3, weight_decay=1e-4,
                    learn={"learning_rate": Bound(1e-4, 1.0, "log")})
    ```

    **Arguments:**

    - `factory`: e.g. `optax.sgd`, `optax.adamw`, `optax.lion`, or your own function of
      keyword hyperparameters returning a `GradientTransformation`.
    - `learn`: name → `Bound(lower, upper, scale)` (or a tuple of the same) for each learned
      hyperparameter, in the order of φ.
    - `values`: initial values of the learned ones and fixed values of the others; a learned
      one left out starts at the factory's default.

    A factory whose `eps_root` argument defaults to 0 (optax's Adam family) gets
    `eps_root=1e-16` unless you give one: forward-mode tangents through `sqrt(ν)` are NaN
    where a gradient entry is exactly 0.

    **Returns:** a `HyperOptimizer`.

    **Raises:** `ValueError` for an empty `learn`, a name the factory does not take, a factory
    whose arguments cannot be read, a bound that is not an interval, an initial value outside
    its bound or `eps_root <= 0`.
    """
    if not isinstance(learn, Mapping):
        raise ValueError(f"learn={learn!r}: a dict of name -> Bound, e.g. "
                         "learn={'learning_rate': Bound(1e-4, 1.0, 'log')}.")
    if not learn:
        raise ValueError("learn={}: name at least one hyperparameter, e.g. "
                         "learn={'learning_rate': Bound(1e-4, 1.0, 'log')}.")
    arguments = _float_arguments(factory)
    if not arguments:
        raise ValueError(f"{factory!r}: its keyword arguments cannot be read; wrap it in a "
                         "def with keyword hyperparameters, e.g. def opt(learning_rate): ...")
    floats = _float_names(factory)
    unknown = [n for n in [*learn, *values] if arguments and n not in arguments]
    if unknown:
        raise ValueError(f"{getattr(factory, '__name__', factory)} takes no {unknown}; its "
                         f"float hyperparameters are {floats}.")
    if "eps_root" in arguments:
        if not arguments["eps_root"]:  # 0, None or no default: forward mode needs one > 0
            values.setdefault("eps_root", EPS_ROOT)
        values.setdefault("eps_root", arguments["eps_root"])
        if not float(values["eps_root"]) > 0:
            raise ValueError(f"eps_root={values['eps_root']}: must be > 0 (e.g. {EPS_ROOT}); "
                             "forward-mode tangents through sqrt(nu) are NaN at nu = 0.")
    bounds = {name: Bound(*b).checked(name) for name, b in learn.items()}
    initial = []
    for name in bounds:
        value = values.get(name, arguments.get(name))
        if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name}: give its initial value as a float, e.g. {name}=0.1.")
        initial.append(float(value))
    space = HyperSpace(tuple(bounds), tuple(b.lower for b in bounds.values()),
                       tuple(b.upper for b in bounds.values()),
                       tuple(b.scale for b in bounds.values()))
    fixed = {k: v for k, v in values.items() if k not in bounds}
    return HyperOptimizer(space, space.raw(initial), fixed, factory)


def _sgd_factory(learning_rate, momentum, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum)
    )


def _unit(learn: tuple[str, ...], allowed: tuple[str, ...]) -> dict[str, Bound]:
    unknown = [name for name in learn if name not in allowed]
    if unknown or not learn:
        raise ValueError(
            f"learn={learn!r}: choose a non-empty subset of {allowed} (unknown: {unknown})."
        )
    return {name: Bound(0.0, 1.0) for name in learn}


def sgd(
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    *,
    learn: tuple[str, ...] = ("learning_rate", "momentum", "weight_decay"),
) -> HyperOptimizer:
    """SGD with momentum and weight decay, some hyperparameters learned in (0, 1) on a
    linear scale, as in the paper; the others fixed.

    **Arguments:** initial (learned) or fixed values, and `learn`, which of the three are φ.

    **Returns:** a `HyperOptimizer`.
    """
    bounds = _unit(learn, ("learning_rate", "momentum", "weight_decay"))
    return learnable(_sgd_factory, learn=bounds, learning_rate=learning_rate,
                     momentum=momentum, weight_decay=weight_decay)


def _adam_factory(learning_rate, b1, b2, eps_root):
    return optax.adam(learning_rate, b1=b1, b2=b2, eps_root=eps_root)


def adam(
    learning_rate: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    *,
    eps_root: float = EPS_ROOT,
    learn: tuple[str, ...] = ("learning_rate", "b1", "b2"),
) -> HyperOptimizer:
    """Adam with learned learning rate and betas in (0, 1) on a linear scale, as in the paper.

    `eps_root > 0` is required for forward mode: d√ν/dν is infinite at ν = 0, so a gradient
    entry that is exactly zero would turn the tangents into NaN.

    **Returns:** a `HyperOptimizer`.
    """
    bounds = _unit(learn, ("learning_rate", "b1", "b2"))
    return learnable(_adam_factory, learn=bounds, learning_rate=learning_rate, b1=b1, b2=b2,
                     eps_root=eps_root)
