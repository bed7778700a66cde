"""A quadratic bilevel problem whose best weight decay is known in closed form: the check
of the outer loop, and a noisy quadratic in the spirit of Wu et al. (2018)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._hyperparams import HyperOptimizer
from ._problems import InnerState, OptimizerProblem, _optimizer_step


class QuadraticProblem(OptimizerProblem):
    """ℓ(θ) = ½‖θ − a‖² (+ gradient noise), ℓ̃(θ) = ½‖θ − b‖²: built by `quadratic_problem`."""

    a: Float[Array, " p"]
    b: Float[Array, " p"]
    theta0: Float[Array, " p"]
    noise: float = eqx.field(static=True)
    metric_name = "val_loss"

    def init(self, key):
        return InnerState(self.theta0, self.optimizer.init(self.theta0))

    def step(self, state, phi, key):
        jitter = self.noise * jax.random.normal(key, self.a.shape, self.a.dtype)

        def train_loss(theta):  # the noise enters the gradient only: θ − a + ε
            return (0.5 * jnp.sum((theta - self.a) ** 2)
                    + jnp.vdot(jax.lax.stop_gradient(jitter), theta))

        return _optimizer_step(self.optimizer, train_loss, state, phi)

    def val_loss(self, params):
        return 0.5 * jnp.sum((params - self.b) ** 2)

    def evaluate(self, params):
        return {"val_loss": self.val_loss(params)}


def quadratic_problem(
    train_target: Float[Array, " p"],
    val_target: Float[Array, " p"],
    optimizer: HyperOptimizer,
    *,
    params0: Float[Array, " p"] | None = None,
    noise: float = 0.0,
) -> QuadraticProblem:
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

    **Returns:** a `QuadraticProblem`.
    """
    a = jnp.asarray(train_target)
    theta0 = jnp.zeros_like(a) if params0 is None else jnp.asarray(params0, a.dtype)
    return QuadraticProblem(optimizer, a, jnp.asarray(val_target), theta0, float(noise))
