import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glocal_core as gc

from _compiles import counting_compilations
from glocal_core import _hypergrad as hg
from glocal_core._warmup import warm_up


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _mlp_problem(optimizer, *, seed=0, batch_size=8):
    """A tiny MLP classifier on random data: nonlinear, stochastic, cheap in float64."""
    keys = jax.random.split(jax.random.key(seed), 4)
    model = eqx.nn.MLP(5, 3, 7, 1, activation=jax.nn.tanh, key=keys[0])
    model = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)

    def data(key, n):
        x = jax.random.normal(key, (n, 5), jnp.float64)
        return x, (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0.5).astype(jnp.int32)

    return gc.classification_problem(
        model, data(keys[1], 32), data(keys[2], 16), data(keys[3], 16), optimizer,
        batch_size=batch_size,
    )


OPTIMIZERS = {
    "sgd": lambda: gc.sgd(0.3, 0.8, 0.05),
    "adam": lambda: gc.adam(0.05, 0.8, 0.9),
}


def _unrolled_val_loss(problem, phi, key, num_steps, t=None):
    """ℓ̃(θ_t) as an explicit Python-unrolled function of φ: the ground truth.

    Uses the first t of the window's `num_steps` keys (a window splits its key once).
    """
    state = problem.init(None)
    for k in jax.random.split(key, num_steps)[:t]:
        state, _ = problem.step(state, phi, k)
    return problem.val_loss(state.params)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_forward_matches_grad_through_unrolled_loop(name):
    problem = _mlp_problem(OPTIMIZERS[name]())
    phi = problem.phi0.astype(jnp.float64)
    key = jax.random.key(1)
    tau, sigma = 6, 4
    state = problem.init(None)
    window = gc.track_forward(
        problem, state, gc.zero_tangents(state, phi.size), phi, key,
        num_steps=tau, num_recorded=sigma,
    )
    assert window.hypergradients.shape == (sigma, phi.size)
    for row, t in enumerate(range(tau - sigma + 1, tau + 1)):
        expected = jax.grad(_unrolled_val_loss, argnums=1)(problem, phi, key, tau, t)
        np.testing.assert_allclose(window.hypergradients[row], expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_forward_matches_central_finite_differences(name):
    problem = _mlp_problem(OPTIMIZERS[name]())
    phi = problem.phi0.astype(jnp.float64)
    key = jax.random.key(2)
    tau = 5
    state = problem.init(None)
    window = gc.track_forward(
        problem, state, gc.zero_tangents(state, phi.size), phi, key,
        num_steps=tau, num_recorded=1,
    )
    eps = 1e-6
    fd = np.array([
        (_unrolled_val_loss(problem, phi + eps * e, key, tau)
         - _unrolled_val_loss(problem, phi - eps * e, key, tau)) / (2 * eps)
        for e in np.eye(phi.size)
    ])
    np.testing.assert_allclose(window.hypergradients[-1], fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_forward_and_reverse_agree(name):
    problem = _mlp_problem(OPTIMIZERS[name]())
    phi = problem.phi0.astype(jnp.float64)
    key = jax.random.key(3)
    state = problem.init(None)
    forward = gc.track_forward(
        problem, state, gc.zero_tangents(state, phi.size), phi, key,
        num_steps=7, num_recorded=5,
    )
    reverse = gc.track_reverse(problem, state, phi, key, num_steps=7, num_recorded=5)
    np.testing.assert_allclose(forward.hypergradients, reverse.hypergradients, rtol=1e-8)
    np.testing.assert_allclose(forward.train_losses, reverse.train_losses, rtol=1e-12)
    assert jax.tree.all(jax.tree.map(
        lambda a, b: np.allclose(a, b, rtol=1e-12), forward.state.params, reverse.state.params
    ))


def test_tangents_carry_through_momentum():
    """With lr learned, Z^θ after one SGD step from zero momentum is −g₀·dlr/dφ; after two
    steps the momentum buffer's tangent must enter, or h would be wrong by the momentum term."""
    a = jnp.array([1.0, -2.0])
    problem = gc.quadratic_problem(a, jnp.zeros(2), gc.sgd(0.1, 0.5, 0.0, learn=("learning_rate",)))
    phi = problem.phi0.astype(jnp.float64)
    state = problem.init(None)
    window = gc.track_forward(
        problem, state, gc.zero_tangents(state, 1), phi, jax.random.key(0),
        num_steps=2, num_recorded=2,
    )
    expected = [jax.grad(_unrolled_val_loss, argnums=1)(problem, phi, jax.random.key(0), 2, t)
                for t in (1, 2)]
    np.testing.assert_allclose(window.hypergradients, np.stack(expected), rtol=1e-10)


def test_adam_tangents_finite_with_exactly_zero_gradient():
    # the second coordinate already sits at its target: its gradient is exactly 0 throughout
    problem = gc.quadratic_problem(
        jnp.array([1.0, 0.0]), jnp.array([0.5, 0.0]), gc.adam(0.1, 0.9, 0.99)
    )
    phi = problem.phi0.astype(jnp.float64)
    state = problem.init(None)
    window = gc.track_forward(
        problem, state, gc.zero_tangents(state, 3), phi, jax.random.key(0),
        num_steps=20, num_recorded=20,
    )
    assert np.all(np.isfinite(window.hypergradients))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(window.tangents))
    assert np.any(window.hypergradients != 0)


def test_playout_equals_one_long_window():
    problem = _mlp_problem(gc.sgd(0.2, 0.5, 0.01))
    phi = problem.phi0.astype(jnp.float64)
    state = problem.init(None)
    zero = gc.zero_tangents(state, phi.size)
    key = jax.random.key(4)
    h_short, _ = gc.playout(problem, state, zero, phi, key, 3)
    h_long, val = gc.playout(problem, state, zero, phi, key, 9)
    h_zero, _ = gc.playout(problem, state, zero, phi, key, 0)
    keys = [jax.random.fold_in(key, i) for i in range(9)]

    def unrolled(p):
        s = problem.init(None)
        for k in keys:
            s, _ = problem.step(s, p, k)
        return problem.val_loss(s.params)

    np.testing.assert_allclose(h_long, jax.grad(unrolled)(phi), rtol=1e-6)
    np.testing.assert_allclose(val, unrolled(phi), rtol=1e-12)
    assert not np.allclose(h_short, h_long)
    np.testing.assert_array_equal(h_zero, np.zeros(phi.size))


def test_window_arguments_are_checked():
    problem = _mlp_problem(gc.sgd())
    state = problem.init(None)
    with pytest.raises(ValueError, match="num_recorded"):
        gc.track_forward(problem, state, gc.zero_tangents(state, 3), problem.phi0,
                         jax.random.key(0), num_steps=3, num_recorded=4)
    with pytest.raises(ValueError, match="num_steps"):
        gc.train_window(problem, state, problem.phi0, jax.random.key(0), num_steps=0)


def test_hyperspace_round_trip_and_bounds():
    space = gc.sgd().space
    values = jnp.array([0.3, 0.9, 1e-3])
    np.testing.assert_allclose(space.bounded(space.raw(values)), values, rtol=1e-6)
    with pytest.raises(ValueError, match="strictly inside"):
        space.raw([1.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="learn="):
        gc.sgd(learn=("beta",))
    with pytest.raises(ValueError, match="eps_root"):
        gc.adam(eps_root=0.0)


def test_scan_and_host_loop_give_the_same_window(monkeypatch):
    """Accelerators run windows as one `lax.scan`, the CPU as a host loop: same numbers."""
    problem = _mlp_problem(gc.sgd(0.2, 0.5, 0.01))
    phi = problem.phi0.astype(jnp.float64)
    state = problem.init(None)
    zero = gc.zero_tangents(state, phi.size)
    key = jax.random.key(6)
    results = {}
    for host in (True, False):
        monkeypatch.setattr(gc._hypergrad, "host_loop", lambda host=host: host)
        results[host] = (
            gc.track_forward(problem, state, zero, phi, key, num_steps=6, num_recorded=4),
            gc.track_reverse(problem, state, phi, key, num_steps=6, num_recorded=4),
            gc.train_window(problem, state, phi, key, num_steps=6),
            gc.playout(problem, state, zero, phi, key, 5),
        )
    for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("host", [True, False], ids=["host-loop", "scan"])
def test_reverse_mode_in_cotangent_chunks_gives_the_same_hypergradients(host, monkeypatch):
    """σ = 5 cotangents pulled back 1, 2 or 3 at a time (2 and 3 do not divide 5) or 5 and
    more at once, on both reverse paths: the hypergradients of all of them at once."""
    monkeypatch.setattr(gc._hypergrad, "host_loop", lambda: host)
    problem = _mlp_problem(gc.sgd(0.3, 0.8, 0.05))
    phi = problem.phi0.astype(jnp.float64)
    state, key = problem.init(None), jax.random.key(9)
    window = dict(num_steps=7, num_recorded=5)
    whole = gc.track_reverse(problem, state, phi, key, **window)
    for chunk in (1, 2, 3, 5, 8):
        if host:
            chunked = gc.track_reverse(problem, state, phi, key, **window, cotangent_chunk=chunk)
        else:
            chunked = hg._track_reverse_scan(problem, state, phi, key, **window,
                                             cotangent_chunk=chunk)
        np.testing.assert_allclose(chunked.hypergradients, whole.hypergradients,
                                   rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(chunked.train_losses, whole.train_losses)
    assert np.abs(whole.hypergradients).min() > 0


def test_reweighting_hypergradients_forward_reverse_and_grad_agree():
    """q = 385 meta-network parameters: reverse mode (σ backward passes) against forward
    mode (385 tangents) and against jax.grad through the unrolled loop."""
    keys = jax.random.split(jax.random.key(7), 5)

    def data(key, n):
        x = jax.random.normal(key, (n, 5), jnp.float64)
        return x, (x[:, 0] > 0).astype(jnp.int32)

    model = eqx.nn.MLP(5, 2, 6, 1, activation=jax.nn.tanh, key=keys[0])
    model = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
    meta = gc.MetaMLP(key=keys[1])
    meta = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, meta)
    problem = gc.reweighting_problem(model, meta, data(keys[2], 40), data(keys[3], 20),
                                     data(keys[4], 20), learning_rate=0.3, batch_size=8)
    assert problem.phi0.shape == (385,)
    state = problem.init(None)
    key = jax.random.key(8)
    reverse = gc.track_reverse(problem, state, problem.phi0, key, num_steps=4, num_recorded=2)
    forward = gc.track_forward(problem, state, gc.zero_tangents(state, 385), problem.phi0, key,
                               num_steps=4, num_recorded=2)
    expected = jax.grad(_unrolled_val_loss, argnums=1)(problem, problem.phi0, key, 4)
    np.testing.assert_allclose(reverse.hypergradients[-1], expected, rtol=1e-7, atol=1e-14)
    np.testing.assert_allclose(forward.hypergradients, reverse.hypergradients,
                               rtol=1e-7, atol=1e-14)
    assert np.abs(expected).max() > 0


@pytest.mark.parametrize("mode", [None, "forward", "reverse"])
def test_a_window_after_warm_up_compiles_nothing(mode):
    """Window times exclude compilation: after `warm_up`, a whole window on this machine's
    path (the host loop on a CPU) starts no XLA compilation, not even of the small
    per-shape operations around its steps (the τ keys, the stacked losses and rows)."""
    problem = _mlp_problem(OPTIMIZERS["sgd"]())
    phi, key = problem.phi0, jax.random.key(7)
    state = problem.init(key)
    warm_up(problem, state, phi, key, num_steps=6, num_recorded=4, mode=mode)
    with counting_compilations() as compiles:
        if mode is None:
            window = gc.train_window(problem, state, phi, key, num_steps=6)
        elif mode == "forward":
            window = gc.track_forward(problem, state, gc.zero_tangents(state, phi.shape[0]),
                                      phi, key, num_steps=6, num_recorded=4)
        else:
            window = gc.track_reverse(problem, state, phi, key, num_steps=6, num_recorded=4)
        jax.block_until_ready(window)
    assert compiles == [], f"{len(compiles)} compilations inside a warmed-up window"
