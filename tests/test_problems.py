import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import glocal_core as gc
from glocal_core._data import sample_batch


@pytest.fixture(autouse=True, scope="module")
def float64():
    with jax.enable_x64(True):
        yield


def _f64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


def _data(rng, n):
    """4×4×1 images whose class (0, 1 or 2) is read off two pixels: easy to learn."""
    x = rng.standard_normal((n, 4, 4, 1))
    y = (x[:, 0, 0, 0] > 0).astype(np.int32) + (x[:, 1, 1, 0] > 0.5).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


@functools.cache
def _splits(seed=0, n_train=48, n_val=16, n_test=7):
    model = _f64(gc.MLP(key=jax.random.key(seed), in_features=16, hidden=8, num_classes=3))
    rng = np.random.default_rng(seed)
    return model, _data(rng, n_train), _data(rng, n_val), _data(rng, n_test)


def _mean_cross_entropy(model, params, x, y):
    """ℓ̃ written out: the mean of −log softmax(f(x))_y."""
    _, static = eqx.partition(model, eqx.is_inexact_array)
    logits = jax.vmap(eqx.combine(params, static))(x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _train(problem, state, phi, key, num_steps):
    def body(state, k):
        return problem.step(state, phi, k)

    return jax.lax.scan(body, state, jax.random.split(key, num_steps))


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


# --- quadratic_problem ------------------------------------------------------------------

A = np.array([2.0, 1.0])
B = np.array([1.9, 0.2])  # ⟨a, b⟩ = 4 = ‖a‖²/1.25, so λ* = ‖a‖²/⟨a, b⟩ − 1 = 0.25
LAMBDA_STAR = 0.25


def _quadratic(weight_decay=0.1, **kwargs):
    opt = gc.sgd(0.5, 0.0, weight_decay, learn=("weight_decay",))
    return gc.quadratic_problem(A, B, opt, **kwargs)


def test_quadratic_init_and_val_loss():
    problem = _quadratic()
    assert problem.space.names == ("weight_decay",) and problem.phi0.shape == (1,)
    state = problem.init(jax.random.key(0))
    assert isinstance(state, gc.InnerState)
    np.testing.assert_array_equal(state.params, jnp.zeros(2))
    theta = jnp.array([0.5, -1.0])
    expected = 0.5 * ((0.5 - 1.9) ** 2 + (-1.0 - 0.2) ** 2)
    np.testing.assert_allclose(problem.val_loss(theta), expected, rtol=1e-12)
    np.testing.assert_allclose(problem.evaluate(theta)["val_loss"], expected, rtol=1e-12)
    start = _quadratic(params0=[1.0, 1.0]).init(jax.random.key(0))
    np.testing.assert_array_equal(start.params, [1.0, 1.0])


def test_quadratic_step_is_gradient_descent_with_weight_decay():
    problem = _quadratic(params0=[1.0, -1.0])
    state = problem.init(jax.random.key(0))
    phi = jnp.array([0.7])
    lam = jax.nn.sigmoid(0.7)
    new, loss = problem.step(state, phi, jax.random.key(1))
    theta = jnp.array([1.0, -1.0])
    np.testing.assert_allclose(loss, 0.5 * jnp.sum((theta - A) ** 2), rtol=1e-12)
    np.testing.assert_allclose(new.params, theta - 0.5 * (theta - A + lam * theta), rtol=1e-12)


def test_quadratic_converges_to_the_closed_form():
    problem = _quadratic()
    lam = 0.1
    state, losses = _train(problem, problem.init(None), problem.phi0, jax.random.key(0), 80)
    np.testing.assert_allclose(state.params, A / (1 + lam), rtol=1e-10)
    assert losses[-1] < losses[0]


def test_quadratic_best_weight_decay_is_the_closed_form():
    problem = _quadratic()

    def final_val_loss(phi):
        state, _ = _train(problem, problem.init(None), phi, jax.random.key(0), 80)
        return problem.val_loss(state.params)

    phi_star = problem.space.raw([LAMBDA_STAR])
    np.testing.assert_allclose(jax.grad(final_val_loss)(phi_star), 0.0, atol=1e-9)
    best = final_val_loss(phi_star)
    for lam in (0.15, 0.35):
        assert final_val_loss(problem.space.raw([lam])) > best + 1e-4


def test_quadratic_noise_enters_through_the_key():
    state = _quadratic().init(None)
    phi = jnp.array([0.0])
    quiet = _quadratic()
    a, _ = quiet.step(state, phi, jax.random.key(1))
    b, _ = quiet.step(state, phi, jax.random.key(2))
    np.testing.assert_array_equal(a.params, b.params)
    noisy = _quadratic(noise=0.5)
    c, _ = noisy.step(state, phi, jax.random.key(1))
    d, _ = noisy.step(state, phi, jax.random.key(2))
    again, _ = noisy.step(state, phi, jax.random.key(1))
    assert not np.allclose(c.params, d.params)
    np.testing.assert_array_equal(c.params, again.params)


def test_problems_are_pytrees_with_data_as_leaves():
    # `eqx.filter_jit` traces the data and keeps the functions static: equal shapes, one trace.
    first, second = _quadratic(), _quadratic(noise=0.0)
    traces = []

    @eqx.filter_jit
    def val(problem, theta):
        traces.append(1)
        return problem.val_loss(theta)

    np.testing.assert_allclose(val(first, B), 0.0)
    np.testing.assert_allclose(val(second, B), 0.0)
    assert len(traces) == 1


# --- classification_problem -------------------------------------------------------------


def _classification(batch_size=8, eval_chunk=3, seed=0):
    model, train, val, test = _splits(seed)
    problem = gc.classification_problem(model, train, val, test, gc.sgd(0.1, 0.9, 1e-4),
                                        batch_size=batch_size, eval_chunk=eval_chunk)
    return problem, model, train, val, test


def test_classification_shapes_and_init():
    problem, model, *_ = _classification()
    assert problem.space.names == ("learning_rate", "momentum", "weight_decay")
    assert problem.phi0.shape == (3,)
    state = problem.init(jax.random.key(0))
    _assert_trees_equal(state, problem.init(jax.random.key(0)))
    params, _ = eqx.partition(model, eqx.is_inexact_array)
    _assert_trees_equal(state.params, params)
    assert state.params.hidden.weight.shape == (8, 16) and state.params.head.weight.shape == (3, 8)


def test_classification_step_uses_the_keys_minibatch():
    problem, model, (x, y), *_ = _classification()
    state = problem.init(None)
    step = eqx.filter_jit(problem.step)
    key = jax.random.key(3)
    new, loss = step(state, problem.phi0, key)
    xb, yb = sample_batch(x, y, key, 8)
    np.testing.assert_allclose(loss, _mean_cross_entropy(model, state.params, xb, yb),
                               rtol=1e-12)
    assert not np.allclose(new.params.head.weight, state.params.head.weight)
    _, other_loss = step(state, problem.phi0, jax.random.key(4))
    assert other_loss != loss


def test_classification_training_decreases_the_losses():
    problem, model, (x, y), (xv, yv), _ = _classification()
    state = problem.init(None)
    trained, _ = eqx.filter_jit(_train)(
        problem, state, problem.phi0, jax.random.key(0), 60)
    before = _mean_cross_entropy(model, state.params, x, y)
    after = _mean_cross_entropy(model, trained.params, x, y)
    assert after < 0.8 * before
    # ℓ̃ is the full-batch validation cross-entropy, before and after training.
    for params in (state.params, trained.params):
        np.testing.assert_allclose(problem.val_loss(params),
                                   _mean_cross_entropy(model, params, xv, yv), rtol=1e-12)
    assert problem.val_loss(trained.params) < problem.val_loss(state.params)


@pytest.mark.parametrize("eval_chunk", [3, 7, 1000])
def test_classification_evaluate_counts_every_test_example(eval_chunk):
    # 7 test examples: chunks of 3 leave one over, which must still be counted.
    problem, model, _, _, (xt, yt) = _classification(eval_chunk=eval_chunk)
    state, _ = _train(problem, problem.init(None), problem.phi0, jax.random.key(0), 20)
    metrics = eqx.filter_jit(problem.evaluate)(state.params)
    _, static = eqx.partition(model, eqx.is_inexact_array)
    predicted = jnp.argmax(jax.vmap(eqx.combine(state.params, static))(xt), -1)
    correct = int(np.sum(np.asarray(predicted) == np.asarray(yt)))
    np.testing.assert_allclose(metrics["test_accuracy"], correct / 7, rtol=1e-12)
    np.testing.assert_allclose(metrics["val_loss"], problem.val_loss(state.params), rtol=1e-12)


@pytest.mark.parametrize("val_chunk", [5, 15, 16, 100])
def test_chunked_val_loss_and_its_gradient_are_the_full_batch_ones(val_chunk):
    # 16 validation examples: chunks of 5 or 15 leave some over, which must still count.
    model, train, val, test = _splits()
    full = gc.classification_problem(model, train, val, test, gc.sgd(), batch_size=8)
    chunked = gc.classification_problem(model, train, val, test, gc.sgd(), batch_size=8,
                                        val_chunk=val_chunk)
    params = full.init(None).params
    np.testing.assert_allclose(chunked.val_loss(params), full.val_loss(params), rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-15),
                 jax.grad(chunked.val_loss)(params), jax.grad(full.val_loss)(params))


def test_a_chunked_val_gradient_holds_one_chunk_of_activations():
    """XLA's own accounting of the compiled gradient of ℓ̃ through LeNet over 2,000
    examples: in chunks of 100, a small fraction of the temporary memory of one pass."""
    def temporary_bytes(val_chunk):
        with jax.enable_x64(False):  # the float32 of a real run
            x, y = jnp.zeros((2000, 28, 28, 1)), jnp.zeros(2000, jnp.int32)
            model = gc.LeNet(key=jax.random.key(0))
            problem = gc.classification_problem(model, (x[:8], y[:8]), (x, y), (x[:8], y[:8]),
                                                gc.sgd(), batch_size=8, val_chunk=val_chunk)
            compiled = jax.jit(jax.grad(lambda p: problem.val_loss(p))).lower(problem.init(None).params)
            return compiled.compile().memory_analysis().temp_size_in_bytes

    full, chunked = temporary_bytes(None), temporary_bytes(100)
    assert chunked < full / 10, (chunked, full)  # measured: 0.05; one pass of lax.map: 0.21


@pytest.mark.parametrize("batch_size", [0, 49])
def test_classification_bad_batch_size(batch_size):
    model, train, val, test = _splits()
    with pytest.raises(ValueError, match=f"batch_size={batch_size}: must be in \\[1, 48\\]"):
        gc.classification_problem(model, train, val, test, gc.sgd(), batch_size=batch_size)


# --- reweighting_problem ----------------------------------------------------------------


def _reweighting(hidden=128):
    model, train, val, test = _splits(seed=1)
    meta = _f64(gc.MetaMLP(key=jax.random.key(5), hidden=hidden))
    problem = gc.reweighting_problem(model, meta, train, val, test, batch_size=8)
    return problem, model, meta, train, val


def test_reweighting_phi_is_the_meta_network():
    problem, _, meta, *_ = _reweighting()
    assert problem.phi0.shape == (385,) and problem.space.size == 385
    assert problem.space.lower is None and problem.space.upper is None
    assert problem.space.names[0] == "meta_0" and problem.space.names[-1] == "meta_384"
    assert gc.count_parameters(meta) == 385
    np.testing.assert_array_equal(problem.space.bounded(problem.phi0), problem.phi0)
    _assert_trees_equal(problem.init(jax.random.key(0)), problem.init(jax.random.key(0)))
    small, *_ = _reweighting(hidden=4)
    assert small.phi0.shape == (3 * 4 + 1,)
    phi, network = gc.meta_network(meta)
    np.testing.assert_array_equal(phi, problem.phi0)
    losses = jnp.linspace(0.0, 3.0, 7)
    np.testing.assert_array_equal(network(phi)(losses), meta(losses))
    assert not np.allclose(network(jnp.zeros_like(phi))(losses), meta(losses))  # φ is used


def test_reweighting_step_is_sgd_on_the_weighted_loss():
    problem, model, meta, (x, y), _ = _reweighting()
    state = problem.init(None)
    key = jax.random.key(2)
    xb, yb = sample_batch(x, y, key, 8)
    _, static = eqx.partition(model, eqx.is_inexact_array)

    def per_example(params):
        logits = jax.vmap(eqx.combine(params, static))(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb)

    losses = per_example(state.params)
    weights = meta(losses)
    assert weights.shape == (8,) and np.all((weights > 0) & (weights < 1))

    def weighted(params):
        return jnp.mean(per_example(params) * meta(jax.lax.stop_gradient(per_example(params))))

    new, loss = problem.step(state, problem.phi0, key)
    np.testing.assert_allclose(loss, jnp.mean(losses * weights), rtol=1e-12)
    # The first SGD step from a zero momentum trace, weight decay 0, learning rate 0.01.
    expected = jax.tree.map(lambda p, g: p - 0.01 * g, state.params, jax.grad(weighted)(state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), new.params, expected)


def test_reweighting_val_loss_is_unweighted_and_depends_on_phi():
    problem, model, _, _, (xv, yv) = _reweighting()
    state = problem.init(None)
    np.testing.assert_allclose(problem.val_loss(state.params),
                               _mean_cross_entropy(model, state.params, xv, yv), rtol=1e-12)

    # One step only: from the second on, the weights' input is a stop_gradient of losses that
    # depend on φ through θ, a path the unrolled gradient drops by design (Meta-Weight-Net).
    @jax.jit
    def val_after_one_step(phi):
        trained, _ = problem.step(state, phi, jax.random.key(0))
        return problem.val_loss(trained.params)

    phi = problem.phi0
    grad = jax.grad(val_after_one_step)(phi)
    assert np.all(np.isfinite(grad)) and np.linalg.norm(grad) > 0
    direction = jax.random.normal(jax.random.key(9), phi.shape, phi.dtype)
    direction /= jnp.linalg.norm(direction)
    eps = 1e-5
    fd = (val_after_one_step(phi + eps * direction)
          - val_after_one_step(phi - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=1e-5)
