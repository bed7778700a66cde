"""The engine as a user meets it: their own model, loss, data and optax optimizer."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import glocal_core as gc

from _compiles import counting_compilations

LOG_LR = {"learning_rate": gc.Bound(1e-4, 1.0, "log")}


def mse(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _regression(n=320, d=5, seed=0):
    kx, kn = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, d))
    y = x @ jnp.linspace(-1.0, 1.0, d) + 0.5 + 0.1 * jax.random.normal(kn, (n,))
    return (x[:256], y[:256]), (x[256:], y[256:])


def _regression_problem(optimizer, params=None, **kwargs):
    train, val = _regression()
    params = params or {"w": jnp.zeros(5), "b": jnp.zeros(())}
    return gc.loss_problem(mse, params, train, val, optimizer, test=val, metric=mse,
                           metric_name="test_mse", batch_size=32, **kwargs)


SMALL = dict(total_steps=600, tau=30, sigma=24, m=4, eval_every=5)


def test_a_regression_with_adamw_learns_a_log_scale_learning_rate():
    """Too small a start: glocal raises the learning rate by factors and beats fixed training."""
    opt = gc.learnable(optax.adamw, learning_rate=1e-3, weight_decay=1e-4, learn=LOG_LR)
    assert opt.fixed["eps_root"] > 0  # set for forward mode
    problem = _regression_problem(opt)
    runs = {s: gc.run_outer(problem, gc.OuterConfig(s, **SMALL), key=jax.random.key(1),
                            progress=False) for s in ("none", "glocal")}
    tuned, fixed = runs["glocal"], runs["none"]
    assert tuned.stopped == "" and len(tuned.step) == 20
    assert tuned.metric_name == "test_mse" and np.all(np.isfinite(tuned.test_metric))
    lr = tuned.hyperparameters[:, 0]
    assert lr[0] == pytest.approx(1e-3) and tuned.final_hyperparameters[0] > 5 * lr[0]
    assert tuned.val_loss[-1] < 0.5 * fixed.val_loss[-1]
    with pytest.raises(AttributeError, match="test_metric"):
        tuned.test_accuracy


class _CNN(eqx.Module):
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 4, 3, key=k1)
        self.head = eqx.nn.Linear(4 * 6 * 6, 10, key=k2)

    def __call__(self, x):
        return self.head(jnp.ravel(jax.nn.relu(self.conv(x))))


def _digits(seed=0):
    data = load_digits()
    x = jnp.asarray(data.images[:, None] / 16.0, jnp.float32)
    y = jnp.asarray(data.target)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    return (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500]), (x[1500:], y[1500:])


def _cnn_problem(seed=0, lr=0.01):
    train, val, test = _digits(seed)
    opt = gc.learnable(optax.sgd, learning_rate=lr, momentum=0.9,
                       learn={"learning_rate": gc.Bound(1e-3, 1.0, "log")})
    return gc.classification_problem(_CNN(jax.random.key(seed)), train, val, test, opt,
                                     batch_size=32), opt


CNN = dict(total_steps=200, tau=20, sigma=16, m=3, eval_every=5)


def test_an_equinox_cnn_with_sgd_learns_and_exports_its_schedule():
    problem, opt = _cnn_problem()
    result = gc.run_outer(problem, gc.OuterConfig("glocal", **CNN), key=jax.random.key(0),
                          progress=False)
    assert result.stopped == "" and result.metric_name == "test_accuracy"
    assert result.test_accuracy[-1] > 0.6 and result.test_accuracy[-1] > result.test_accuracy[0]
    assert result.final_hyperparameters[0] != pytest.approx(0.01, rel=1e-3)
    # the exported schedule replays the learned values window by window, then holds the last
    schedule = opt.export(result.hyperparameters, tau=CNN["tau"])
    params = eqx.filter(_CNN(jax.random.key(0)), eqx.is_inexact_array)
    state = schedule.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    seen = []
    for _ in range(CNN["total_steps"] + 30):
        _, state = schedule.update(zeros, state, params)
        seen.append(float(state.hyperparams["learning_rate"]))
    expected = [result.hyperparameters[min(i // CNN["tau"], 9), 0] for i in range(len(seen))]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    constant = opt.export(result.final_hyperparameters)
    assert float(constant.init(params).hyperparams["learning_rate"]) == pytest.approx(
        result.final_hyperparameters[0], rel=1e-6)


def test_two_problems_of_the_same_shapes_compile_once():
    """Data are leaves, functions static: a second problem (other data, other model weights,
    same shapes) runs a whole outer loop without compiling anything."""
    config = gc.OuterConfig("glocal", total_steps=40, tau=20, sigma=16, m=3, eval_every=1)
    gc.run_outer(_cnn_problem(seed=0)[0], config, key=jax.random.key(0), progress=False)
    with counting_compilations() as compiles:
        result = gc.run_outer(_cnn_problem(seed=1, lr=0.02)[0], config, key=jax.random.key(1),
                              progress=False)
    assert result.stopped == "" and len(result.step) == 2
    assert compiles == [], f"{len(compiles)} compilations for a problem of the same shapes"


def test_as_optax_chains_into_a_training_loop_of_ones_own():
    opt = gc.learnable(optax.sgd, learning_rate=0.1, learn=LOG_LR)
    tx = optax.chain(optax.clip_by_global_norm(1.0), opt.as_optax())
    assert isinstance(opt.as_optax(), optax.GradientTransformationExtraArgs)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([3.0, 4.0, 0.0])}
    phi = opt.space.raw([0.05])
    updates, _ = tx.update(grads, tx.init(params), params, phi=phi)
    np.testing.assert_allclose(updates["w"], -0.05 * np.array([0.6, 0.8, 0.0]), rtol=1e-6)


def test_any_optax_transformation_updates_phi():
    opt = gc.learnable(optax.sgd, learning_rate=0.01, learn=LOG_LR)
    config = gc.OuterConfig("local", **SMALL, outer_optimizer=optax.sgd(0.5))
    result = gc.run_outer(_regression_problem(opt), config, key=jax.random.key(0),
                          progress=False)
    np.testing.assert_allclose(result.phi[1:], result.phi[:-1] - 0.5 * result.hypergradient[:-1],
                               rtol=1e-6)
    np.testing.assert_allclose(result.final_phi, result.phi[-1] - 0.5 * result.hypergradient[-1],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="outer_optimizer"):
        gc.OuterConfig("local", **SMALL, outer_optimizer="adam")


@pytest.mark.parametrize("build, match", [
    (lambda: gc.learnable(optax.adamw, learning_rate=0.1, eps_root=0.0, learn=LOG_LR),
     "eps_root"),
    (lambda: gc.learnable(optax.sgd, learning_rate=0.1, learn={"lr": (1e-4, 1.0)}),
     "learning_rate"),
    (lambda: gc.learnable(optax.sgd, learning_rate=2.0, learn=LOG_LR), "inside"),
    (lambda: gc.learnable(optax.sgd, learning_rate=0.1,
                          learn={"learning_rate": gc.Bound(0.0, 1.0, "log")}), "lower > 0"),
    (lambda: gc.learnable(optax.sgd, learning_rate=0.1, learn={}), "at least one"),
])
def test_learnable_refuses_what_cannot_work(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_problems_refuse_what_cannot_work():
    opt = gc.learnable(optax.sgd, learning_rate=0.1, learn=LOG_LR)
    train, val = _regression()
    with pytest.raises(ValueError, match="no floating-point array"):
        gc.loss_problem(mse, {"w": jnp.zeros(5, int)}, train, val, opt)
    with pytest.raises(ValueError, match="scalar"):
        gc.loss_problem(lambda p, b: b[0] @ p["w"], {"w": jnp.zeros(5)}, train, val, opt)
    with pytest.raises(ValueError, match="same number of examples"):
        gc.loss_problem(mse, {"w": jnp.zeros(5), "b": 0.0}, (train[0], val[1]), val, opt)
    with pytest.raises(ValueError, match="test and metric"):
        gc.loss_problem(mse, {"w": jnp.zeros(5)}, train, val, opt, test=val)
    (x, y), (xv, yv), test = _digits()
    with pytest.raises(ValueError, match="integer class indices"):
        gc.classification_problem(_CNN(jax.random.key(0)), (x, y.astype(float)), (xv, yv),
                                  test, opt)


def test_a_non_finite_first_window_names_the_likely_cause():
    """Adam with eps_root = 0 and a parameter the loss never uses: its second moment stays 0
    and forward-mode tangents through sqrt turn NaN."""
    space = gc.HyperSpace(("learning_rate",), (1e-4,), (1.0,), ("log",))
    opt = gc.HyperOptimizer(space, space.raw([0.01]), {"eps_root": 0.0}, optax.adam)
    params = {"w": jnp.zeros(5), "b": jnp.zeros(()), "unused": jnp.zeros(2)}
    problem = _regression_problem(opt, params=params)
    with pytest.raises(FloatingPointError, match="eps_root"):
        gc.run_outer(problem, gc.OuterConfig("glocal", **SMALL), key=jax.random.key(0),
                     progress=False)


class _Silent(gc.BilevelProblem):
    """A problem whose evaluate does not report the metric it names."""

    space = gc.HyperSpace(("x",), (0.0,), (1.0,))
    phi0 = jnp.zeros(1)
    metric_name = "test_accuracy"

    def init(self, key):
        return gc.InnerState(jnp.ones(2), ())

    def step(self, state, phi, key):
        return gc.InnerState(state.params * self.space.bounded(phi)[0], ()), jnp.sum(state.params)

    def val_loss(self, params):
        return jnp.sum(params**2)

    def evaluate(self, params):
        return {"val_loss": self.val_loss(params)}


def test_an_unknown_metric_name_is_an_error_before_the_run():
    with pytest.raises(ValueError, match="metric_name='test_accuracy'.*val_loss"):
        gc.run_outer(_Silent(), gc.OuterConfig("local", total_steps=20, tau=10),
                     key=jax.random.key(0), progress=False)


def test_learnable_keeps_what_it_should_and_reads_what_it_is_given():
    # a positive default eps_root is the factory's own; 0 (the Adam family) becomes 1e-16
    assert gc.learnable(optax.adan, learning_rate=0.1, learn=LOG_LR).fixed["eps_root"] == 1e-8
    assert gc.learnable(optax.adam, learning_rate=0.1, learn=LOG_LR).fixed["eps_root"] == 1e-16
    # initial values of numpy's types, and a log bound's midpoint at phi = 0
    opt = gc.learnable(optax.sgd, learning_rate=np.float32(0.01), learn=LOG_LR)
    np.testing.assert_allclose(opt.space.bounded(jnp.zeros(1)), [1e-2], rtol=1e-6)
    np.testing.assert_allclose(opt.space.bounded(opt.phi0), [0.01], rtol=1e-6)
    # mixed scales and a negative linear bound round-trip
    space = gc.HyperSpace(("a", "b"), (-2.0, 1e-3), (3.0, 10.0), ("linear", "log"))
    np.testing.assert_allclose(space.bounded(space.raw([0.5, 0.2])), [0.5, 0.2], rtol=1e-6)
    with pytest.raises(ValueError, match="too close"):
        gc.learnable(optax.sgd, learning_rate=float(np.nextafter(np.float32(1), np.float32(0))),
                     learn=LOG_LR)  # the largest float32 below the bound
    with pytest.raises(ValueError, match="a dict"):
        gc.learnable(optax.sgd, learning_rate=0.1, learn=("learning_rate",))
    # hyperparameters take the widest dtype of the parameters, as optax does
    params = {"a": jnp.zeros(2, jnp.bfloat16), "b": jnp.zeros(2, jnp.float32)}
    assert opt.init(params).hyperparams["learning_rate"].dtype == jnp.float32
    replay = opt.export(np.full((3, 1), 0.25), tau=np.int64(5))  # numpy's int is a tau too
    _, state = replay.update(params, replay.init(params), params)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.25)


def test_a_python_float_in_params_is_trained():
    opt = gc.learnable(optax.sgd, learning_rate=0.1, learn=LOG_LR)
    train, val = _regression()
    problem = gc.loss_problem(mse, {"w": jnp.zeros(5), "b": 0.0}, train, val, opt)
    assert problem.params0["b"] is not None
    state, _ = problem.step(problem.init(None), opt.phi0, jax.random.key(0))
    assert float(state.params["b"]) != 0.0
    with pytest.raises(ValueError, match="without a metric"):
        gc.loss_problem(mse, {"w": jnp.zeros(5)}, train, val, opt, metric_name="mse")
    with pytest.raises(ValueError, match="val_chunk"):
        gc.loss_problem(mse, {"w": jnp.zeros(5)}, train, val, opt, val_chunk=0)
