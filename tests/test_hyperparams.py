import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import glocal_core as gc
from glocal_core._hyperparams import HyperSpace


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _params():
    return {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.3)}


def _grads(scale=1.0):
    return {"w": scale * jnp.array([0.2, -0.4, 1.0]), "b": scale * jnp.array(-0.7)}


def test_bounded_maps_into_bounds_and_raw_inverts_it():
    space = HyperSpace(("a", "b"), lower=(0.0, -2.0), upper=(1.0, 3.0))
    assert space.size == 2
    phi = jnp.array([[-30.0, 30.0], [0.0, 0.0], [2.0, -1.5]])
    values = jax.vmap(space.bounded)(phi)
    assert np.all(values >= np.array([0.0, -2.0])) and np.all(values <= np.array([1.0, 3.0]))
    np.testing.assert_allclose(values[1], [0.5, 0.5])  # sigmoid(0) is the midpoint
    np.testing.assert_allclose(values[2], [jax.nn.sigmoid(2.0), -2 + 5 * jax.nn.sigmoid(-1.5)])
    np.testing.assert_allclose(space.raw(values[2]), phi[2], rtol=1e-12)
    np.testing.assert_allclose(space.bounded(space.raw([0.01, 2.9])), [0.01, 2.9], rtol=1e-12)


def test_raw_refuses_values_outside_the_bounds():
    space = HyperSpace(("learning_rate", "momentum"), (0.0, 0.0), (1.0, 1.0))
    for bad in ([0.1, 1.0], [0.0, 0.5], [1.5, 0.5]):
        with pytest.raises(ValueError, match="strictly inside their bounds"):
            space.raw(bad)


def test_unbounded_space_is_the_identity():
    space = HyperSpace(("meta_0", "meta_1"), None, None)
    phi = jnp.array([-7.0, 12.0])
    np.testing.assert_array_equal(space.bounded(phi), phi)
    np.testing.assert_array_equal(space.raw([-7.0, 12.0]), phi)


@pytest.mark.parametrize(
    ("make", "initial"),
    [
        (lambda: gc.sgd(0.2, 0.7, 1e-3), {"learning_rate": 0.2, "momentum": 0.7,
                                         "weight_decay": 1e-3}),
        (lambda: gc.adam(3e-3, 0.85, 0.99), {"learning_rate": 3e-3, "b1": 0.85, "b2": 0.99}),
    ],
)
def test_phi0_gives_back_the_initial_values(make, initial):
    opt = make()
    assert opt.space.names == tuple(initial)
    assert opt.phi0.shape == (len(initial),)
    np.testing.assert_allclose(opt.space.bounded(opt.phi0), list(initial.values()), rtol=1e-10)
    # The state the optimizer starts from holds the same values.
    state = opt.init(_params())
    for name, value in initial.items():
        np.testing.assert_allclose(state.hyperparams[name], value, rtol=1e-10)


def test_learn_selects_the_hyperparameters_in_phi():
    opt = gc.sgd(0.2, 0.7, 1e-3, learn=("momentum",))
    assert opt.space.names == ("momentum",) and opt.space.size == opt.phi0.size == 1
    assert opt.fixed == {"learning_rate": 0.2, "weight_decay": 1e-3}
    opt = gc.adam(1e-2, learn=("b2", "learning_rate"))
    assert opt.space.names == ("b2", "learning_rate")  # φ follows the order of `learn`
    np.testing.assert_allclose(opt.space.bounded(opt.phi0), [0.999, 1e-2], rtol=1e-10)
    assert opt.fixed == {"b1": 0.9, "eps_root": 1e-16}


def test_fixed_values_need_not_lie_in_the_unit_interval():
    # Only learned values are sigmoid-bounded; a fixed learning rate of 2 is allowed.
    opt = gc.sgd(2.0, 0.5, 0.0, learn=("momentum",))
    assert opt.fixed["learning_rate"] == 2.0


@pytest.mark.parametrize("learn", [(), ("nesterov",), ("learning_rate", "eps")])
def test_bad_learn_names_the_choices(learn):
    with pytest.raises(ValueError, match="non-empty subset"):
        gc.sgd(learn=learn)
    with pytest.raises(ValueError, match="non-empty subset"):
        gc.adam(learn=learn)


def test_adam_needs_positive_eps_root():
    with pytest.raises(ValueError, match="eps_root"):
        gc.adam(eps_root=0.0)


def test_learned_values_outside_the_unit_interval_are_refused():
    with pytest.raises(ValueError, match="strictly inside"):
        gc.sgd(learning_rate=1.5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_state_dtype_follows_params(dtype):
    opt = gc.sgd()
    params = jax.tree.map(lambda a: a.astype(dtype), _params())
    state = opt.init(params)
    assert {v.dtype for v in state.hyperparams.values()} == {jnp.dtype(dtype)}
    _, new_state = opt.update(_grads(), state, params, phi=opt.phi0)
    assert {v.dtype for v in new_state.hyperparams.values()} == {jnp.dtype(dtype)}


def _flat(tree):
    return ravel_pytree(tree)[0]


def test_sgd_update_equals_hand_written_momentum_and_weight_decay():
    opt = gc.sgd(0.2, 0.7, 1e-3)
    params = _params()
    state = opt.init(params)
    trace = jnp.zeros_like(_flat(params))
    phis = [opt.phi0, jnp.array([0.3, -1.0, -2.0]), jnp.array([-1.5, 0.8, -4.0])]
    for i, phi in enumerate(phis):
        lr, momentum, decay = opt.space.bounded(phi)
        grads = _grads(1.0 + i)
        updates, state = opt.update(grads, state, params, phi=phi)
        # optax.sgd: trace ← g + μ·trace, update = −η·trace; decay adds λθ to g first.
        trace = _flat(grads) + decay * _flat(params) + momentum * trace
        np.testing.assert_allclose(_flat(updates), -lr * trace, rtol=1e-12)
        np.testing.assert_allclose(state.hyperparams["learning_rate"], lr, rtol=1e-12)
        params = optax.apply_updates(params, updates)


def test_sgd_with_one_learned_value_keeps_the_others_fixed():
    opt = gc.sgd(0.2, 0.0, 0.0, learn=("learning_rate",))
    params, grads = _params(), _grads()
    updates, _ = opt.update(grads, opt.init(params), params, phi=jnp.array([1.2]))
    np.testing.assert_allclose(_flat(updates), -jax.nn.sigmoid(1.2) * _flat(grads), rtol=1e-12)


def test_adam_update_equals_hand_written_adam():
    opt = gc.adam(0.05, 0.8, 0.95, eps_root=1e-3)  # large enough to matter
    params = _params()
    state = opt.init(params)
    mu = nu = jnp.zeros_like(_flat(params))
    phis = [opt.phi0, jnp.array([-2.0, 0.5, 3.0]), jnp.array([-3.0, 2.0, 1.0])]
    for t, phi in enumerate(phis, start=1):
        lr, b1, b2 = opt.space.bounded(phi)
        grads = _grads(0.5 * t)
        updates, state = opt.update(grads, state, params, phi=phi)
        g = _flat(grads)
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * g**2
        # Bias correction uses the β of this step for all past steps, as optax does.
        expected = -lr * (mu / (1 - b1**t)) / (jnp.sqrt(nu / (1 - b2**t) + 1e-3) + 1e-8)
        np.testing.assert_allclose(_flat(updates), expected, rtol=1e-10)
        params = optax.apply_updates(params, updates)


def _loss_after_steps(opt, phi, num_steps=4):
    """A quadratic trained `num_steps` steps with hyperparameters φ; then a validation loss."""
    target = jnp.array([1.0, -2.0, 0.5])
    params = jnp.array([0.3, 0.1, -0.4])
    state = opt.init(params)
    for _ in range(num_steps):
        grads = params - target + 0.1 * jnp.sin(3 * params)
        updates, state = opt.update(grads, state, params, phi=phi)
        params = optax.apply_updates(params, updates)
    return jnp.sum((params - jnp.array([0.8, -1.5, 0.0])) ** 2)


@pytest.mark.parametrize(
    "make", [lambda: gc.sgd(0.3, 0.6, 0.05), lambda: gc.adam(0.1, 0.7, 0.9)], ids=["sgd", "adam"]
)
def test_gradients_with_respect_to_phi_match_finite_differences(make):
    opt = make()
    phi = opt.phi0 + jnp.array([0.2, -0.3, 0.1])

    def loss(p):
        return _loss_after_steps(opt, p)

    reverse = jax.grad(loss)(phi)
    forward = jax.jacfwd(loss)(phi)
    eps = 1e-6
    fd = np.array([(loss(phi + eps * e) - loss(phi - eps * e)) / (2 * eps)
                   for e in jnp.eye(phi.size)])
    assert np.all(np.abs(fd) > 1e-6)  # every hyperparameter matters here
    np.testing.assert_allclose(reverse, fd, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(forward, reverse, rtol=1e-10)
