import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glocal_core as gc
from glocal_core._outer_step import Diverged, init, step


def _targets():
    a = jnp.array([2.0, 1.0])
    return a, a / 1.5  # the long-run optimum weight decay is λ* = ‖a‖²/⟨a, b⟩ − 1 = 0.5


def _weight_decay_problem(wd0, *, at_equilibrium=True, lr=0.1, momentum=0.5):
    """Gradient descent on ½‖θ − a‖² with learned weight decay; ℓ̃ = ½‖θ − b‖²."""
    a, b = _targets()
    optimizer = gc.sgd(lr, momentum, wd0, learn=("weight_decay",))
    theta0 = a / (1 + wd0) if at_equilibrium else None
    return gc.quadratic_problem(a, b, optimizer, params0=theta0)


@pytest.mark.parametrize("strategy", ["local", "global", "glocal"])
@pytest.mark.parametrize("wd0", [0.1, 0.9])
def test_every_strategy_moves_weight_decay_towards_closed_form_optimum(strategy, wd0):
    problem = _weight_decay_problem(wd0)
    config = gc.OuterConfig(strategy, total_steps=800, tau=40, sigma=30, m=4)
    result = gc.run_outer(problem, config, key=jax.random.key(0), progress=False)
    assert result.stopped == ""
    wd = result.hyperparameters[:, 0]
    assert abs(wd[-1] - 0.5) < 0.5 * abs(wd[0] - 0.5)
    assert np.all(np.sign(result.hypergradient[:3, 0]) == np.sign(wd0 - 0.5))


def test_none_keeps_phi_and_trains():
    problem = _weight_decay_problem(0.9, at_equilibrium=False)
    config = gc.OuterConfig("none", total_steps=200, tau=20)
    result = gc.run_outer(problem, config, key=jax.random.key(0), progress=False)
    assert np.all(result.phi == result.phi[0])
    assert result.train_loss[-1] < result.train_loss[0]
    assert np.all(np.isnan(result.local_hypergradient))


def test_glocal_with_window_as_long_as_training_matches_global():
    problem = _weight_decay_problem(0.2, at_equilibrium=False)
    runs = {
        s: gc.run_outer(problem, gc.OuterConfig(s, total_steps=300, tau=300, sigma=200, m=5,
                                                estimator=gc.EstimatorSettings(method="paper")),
                        key=jax.random.key(1), progress=False)
        for s in ("global", "glocal")
    }
    np.testing.assert_allclose(
        runs["glocal"].hypergradient, runs["global"].hypergradient, rtol=1e-3
    )
    assert not runs["glocal"].fallback[0]


@pytest.mark.parametrize("estimator", ["paper", "affine"])
def test_glocal_predicts_global_better_than_local(estimator):
    """From θ_0 = 0 the local hypergradient after τ steps has the wrong sign (short-horizon
    bias: shrinking θ hurts while θ_t < b, helps later); the DMD steady state sees where h_t
    goes. θ_t passes b after ~50 steps at this learning rate.

    float64: h_t mixes modes 1, ρ, tρ^t, ρ², tρ^{2t} with ρ ≈ 0.96; over 40 steps their
    Hankel matrix is so ill-conditioned that float32 round-off hides the λ = 1 mode.
    """
    with jax.enable_x64(True):
        problem = _weight_decay_problem(0.3, at_equilibrium=False, lr=0.03, momentum=0.0)
        runs = {
            s: gc.run_outer(problem, gc.OuterConfig(s, total_steps=1000, tau=50, sigma=40, m=6,
                                                    estimator=gc.EstimatorSettings(method=estimator)),
                            key=jax.random.key(2), progress=False)
            for s in ("local", "global", "glocal")
        }
    h_global = runs["global"].hypergradient[0]
    err_glocal = np.linalg.norm(runs["glocal"].hypergradient[0] - h_global)
    err_local = np.linalg.norm(runs["local"].hypergradient[0] - h_global)
    assert err_glocal < 0.1 * err_local
    assert np.sign(runs["local"].hypergradient[0, 0]) != np.sign(h_global[0])
    np.testing.assert_allclose(runs["glocal"].local_hypergradient[0],
                               runs["local"].hypergradient[0], rtol=1e-5)


def test_same_key_same_history():
    problem = gc.quadratic_problem(*_targets(), gc.sgd(0.1, 0.5, 0.3), noise=0.1)
    config = gc.OuterConfig("glocal", total_steps=200, tau=40, sigma=30, m=4)
    first, second = (gc.run_outer(problem, config, key=jax.random.key(3), progress=False)
                     for _ in range(2))
    for name in ("phi", "hypergradient", "train_loss", "val_loss", "test_metric"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    third = gc.run_outer(problem, config, key=jax.random.key(4), progress=False)
    assert not np.array_equal(first.train_loss, third.train_loss)


class _Exploding(gc.BilevelProblem):
    """θ grows tenfold per step: the training loss overflows float32 in the second window."""

    space = gc.HyperSpace(("scale",), (0.0,), (1.0,))
    phi0 = jnp.zeros(1)
    metric_name = "val_loss"

    def init(self, key):
        return gc.InnerState(jnp.ones(2), ())

    def step(self, state, phi, key):
        theta = state.params * (10.0 + self.space.bounded(phi)[0])
        return gc.InnerState(theta, state.opt_state), jnp.sum(theta**2)

    def val_loss(self, params):
        return jnp.sum(params)

    def evaluate(self, params):
        return {"val_loss": self.val_loss(params)}


def _exploding_problem():
    return _Exploding()


def test_divergence_stops_cleanly_with_reason():
    problem = _exploding_problem()
    config = gc.OuterConfig("local", total_steps=200, tau=10)
    result = gc.run_outer(problem, config, key=jax.random.key(0), progress=False)
    assert "diverged" in result.stopped
    assert 0 < len(result.step) < config.num_windows
    assert np.all(np.isfinite(result.train_loss))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strategy="best"), "strategy"),
        (dict(tau=0), "tau"),
        (dict(total_steps=250, tau=100), "multiple of tau"),
        (dict(sigma=120), "sigma"),
        (dict(m=80), "m"),
        (dict(m=0), "m"),
        (dict(mode="sideways"), "mode"),
        (dict(strategy="global", mode="reverse"), "reverse"),
        (dict(estimator=gc.EstimatorSettings(method="median")), "estimator: method"),
        (dict(cotangent_chunk=0), "cotangent_chunk"),
        (dict(cotangent_chunk=2.5), "cotangent_chunk=2.5: a positive int"),
    ],
)
def test_bad_config_is_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gc.OuterConfig(**kwargs)


def test_reverse_mode_runs_the_same_history_as_forward():
    problem = _weight_decay_problem(0.8, at_equilibrium=False)
    runs = [gc.run_outer(problem, gc.OuterConfig("glocal", total_steps=120, tau=40, sigma=30,
                                                 m=4, mode=mode),
                         key=jax.random.key(5), progress=False)
            for mode in ("forward", "reverse")]
    np.testing.assert_allclose(runs[0].hypergradient, runs[1].hypergradient, rtol=1e-4)
    np.testing.assert_allclose(runs[0].phi, runs[1].phi, rtol=1e-5)


@pytest.mark.parametrize("reset", [True, False])
def test_tangent_reset_flag_matches_its_ground_truth(reset):
    """Two windows with φ held fixed (outer_lr = 0). With the reset of Eq. (12) the local
    hypergradient differentiates only through the second window; without it, through both."""
    with jax.enable_x64(True):
        problem = _weight_decay_problem(0.3, at_equilibrium=False, lr=0.05, momentum=0.5)
        tau = 15
        config = gc.OuterConfig("local", total_steps=2 * tau, tau=tau, outer_lr=0.0,
                                reset_tangents=reset)
        result = gc.run_outer(problem, config, key=jax.random.key(0), progress=False)

        def val_after_two_windows(phi_first, phi_second):
            state = problem.init(None)
            for phi in (phi_first, phi_second):
                for _ in range(tau):
                    state, _ = problem.step(state, phi, jax.random.key(0))  # noise-free
            return problem.val_loss(state.params)

        phi = problem.phi0
        argnums = 1 if reset else (0, 1)
        expected = jax.grad(val_after_two_windows, argnums=argnums)(phi, phi)
        expected = expected if reset else expected[0] + expected[1]
        np.testing.assert_allclose(result.local_hypergradient[1], expected, rtol=1e-8)


def test_global_run_holds_local_glocal_and_global_side_by_side():
    problem = _weight_decay_problem(0.3, at_equilibrium=False)
    config = gc.OuterConfig("global", total_steps=200, tau=40, sigma=30, m=4,
                            keep_trajectories=True, eq14_diagnostics=True)
    result = gc.run_outer(problem, config, key=jax.random.key(0), progress=False)
    assert result.trajectories.shape == (5, 30, 1)
    np.testing.assert_array_equal(result.trajectories[:, -1], result.local_hypergradient)
    for s in range(5):
        refit = gc.steady_state(result.trajectories[s], sigma=30, m=4)  # the default estimator
        np.testing.assert_array_equal(result.estimate[s], refit.value)
        assert result.fallback[s] == bool(refit.fallback)
        eq14 = gc.steady_state(result.trajectories[s], sigma=30, m=4, method="paper")
        assert result.spectral_radius[s] == eq14.fit.spectral_radius  # eq14_diagnostics
        assert result.num_kept[s] == eq14.fit.kept.sum()
    assert not np.allclose(result.estimate, result.hypergradient)  # h_T: from the playouts
    local = gc.run_outer(problem, gc.OuterConfig("local", total_steps=200, tau=40),
                         key=jax.random.key(0), progress=False)
    assert np.all(np.isnan(local.estimate)) and local.trajectories is None


def _comparable(result):
    """Every field of an `OuterResult` except wall times."""
    return {k: v for k, v in result._asdict().items() if not k.startswith("seconds")}


@pytest.mark.parametrize("strategy, reset", [("global", True), ("glocal", False), ("none", True)])
def test_interrupted_run_resumes_to_the_identical_result(tmp_path, strategy, reset):
    problem = gc.quadratic_problem(*_targets(), gc.sgd(0.1, 0.5, 0.3), noise=0.1)
    config = gc.OuterConfig(strategy, total_steps=280, tau=40, sigma=30, m=4,
                            eval_every=2, reset_tangents=reset)
    key = jax.random.key(7)
    uninterrupted = gc.run_outer(problem, config, key=key, progress=False)

    def interrupt(s, partial):
        assert len(partial.step) == s + 1
        if s == 4:
            raise KeyboardInterrupt

    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        gc.run_outer(problem, config, key=key, progress=False, checkpoint=path,
                     checkpoint_every=3, callback=interrupt)
    assert path.exists()
    seen = []
    resumed = gc.run_outer(problem, config, key=key, progress=False, checkpoint=path,
                           callback=lambda s, partial: seen.append(s))
    assert seen == [5, 6]  # windows 0–4 came from the checkpoint written at the interrupt
    expected, got = _comparable(uninterrupted), _comparable(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        if isinstance(expected[name], np.ndarray):
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        else:
            assert got[name] == expected[name], name


def test_checkpoint_of_another_run_is_refused(tmp_path):
    problem = _weight_decay_problem(0.3)
    config = gc.OuterConfig("local", total_steps=80, tau=40)
    path = tmp_path / "run.ckpt"

    def interrupt(s, partial):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gc.run_outer(problem, config, key=jax.random.key(0), progress=False,
                     checkpoint=path, callback=interrupt)
    with pytest.raises(ValueError, match="another run"):
        gc.run_outer(problem, config, key=jax.random.key(1), progress=False, checkpoint=path)


@pytest.mark.parametrize("estimator", gc.METHODS)
def test_glocal_steps_with_its_estimator(estimator):
    problem = _weight_decay_problem(0.2, at_equilibrium=False)
    config = gc.OuterConfig("glocal", total_steps=120, tau=40, sigma=30, m=4,
                            estimator=gc.EstimatorSettings(method=estimator), keep_trajectories=True)
    result = gc.run_outer(problem, config, key=jax.random.key(3), progress=False)
    for s, H in enumerate(result.trajectories):
        expected = gc.steady_state(H, 30, 4, method=estimator)
        np.testing.assert_allclose(result.hypergradient[s], expected.value, rtol=1e-6)
        assert result.fallback_reason[s] == expected.fallback
    if estimator == "mean":
        np.testing.assert_allclose(result.hypergradient, result.trajectories.mean(axis=1),
                                   rtol=1e-6)


def _host(tree):
    """The leaves of a carry as numpy arrays (PRNG keys as their key data), to compare."""
    def host(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(leaf))
        return np.asarray(leaf)

    return [host(leaf) for leaf in jax.tree.leaves(tree)]


def _assert_same_record(got, expected):
    for name, value in got._asdict().items():
        if not name.startswith("seconds"):
            np.testing.assert_array_equal(value, getattr(expected, name), err_msg=name)


@pytest.mark.parametrize("strategy", gc.STRATEGIES)
def test_stepping_window_by_window_is_run_outer(strategy):
    problem = gc.quadratic_problem(*_targets(), gc.sgd(0.1, 0.5, 0.3), noise=0.1)
    config = gc.OuterConfig(strategy, total_steps=160, tau=40, sigma=30, m=4, eval_every=3,
                            keep_trajectories=True)
    key = jax.random.key(8)
    carry, records = init(problem, config, key=key), []
    for _ in range(config.num_windows):
        carry, record = step(problem, config, carry)
        records.append(record)
    result = gc.run_outer(problem, config, key=key, progress=False)
    assert carry.window == len(result.step) == 4
    for name in ("step", "phi", "hyperparameters", "hypergradient", "local_hypergradient",
                 "estimate", "train_loss", "val_loss", "spectral_radius", "num_kept", "fallback"):
        np.testing.assert_array_equal([getattr(r, name) for r in records], getattr(result, name),
                                      err_msg=name)
    assert tuple(r.fallback_reason for r in records) == result.fallback_reason
    np.testing.assert_array_equal([r.trajectory for r in records], result.trajectories)
    assert [r.step for r in records if r.evaluated] == list(result.eval_step) == [120, 160]
    np.testing.assert_array_equal([r.test_metric for r in records if r.evaluated],
                                  result.test_metric)


@pytest.mark.parametrize("reset", [True, False])
def test_a_step_is_a_function_of_its_carry(reset):
    problem = gc.quadratic_problem(*_targets(), gc.sgd(0.1, 0.5, 0.3), noise=0.1)
    config = gc.OuterConfig("glocal", total_steps=200, tau=40, sigma=30, m=4,
                            reset_tangents=reset)
    carry, _ = step(problem, config, init(problem, config, key=jax.random.key(9)))
    before = _host(carry)
    (first, first_record), (second, second_record) = (step(problem, config, carry)
                                                      for _ in range(2))
    for got, expected in [(_host(second), _host(first)), (_host(carry), before)]:
        for a, b in zip(got, expected, strict=True):  # and the carry stepped from is unchanged
            np.testing.assert_array_equal(a, b)
    _assert_same_record(second_record, first_record)
    assert (first.window, first_record.step) == (2, 80)
    # Minibatches are drawn by window index: the same carry labelled window 3 trains otherwise.
    _, elsewhere = step(problem, config, carry._replace(window=3))
    assert elsewhere.train_loss != first_record.train_loss


def test_init_is_window_zero_at_phi0():
    problem = _weight_decay_problem(0.3)
    for strategy, mode, tracked in [("glocal", "forward", True), ("glocal", "reverse", False),
                                    ("none", "forward", False)]:
        config = gc.OuterConfig(strategy, total_steps=80, tau=40, sigma=30, m=4, mode=mode)
        carry = init(problem, config, key=jax.random.key(0))
        assert carry.window == 0
        np.testing.assert_array_equal(carry.phi, problem.phi0)
        if tracked:
            assert all(np.all(z == 0) for z in jax.tree.leaves(carry.tangents))
        else:
            assert carry.tangents is None
        # The carry keeps its structure from window to window: a checkpoint fits any of them.
        after, _ = step(problem, config, carry)
        assert jax.tree.structure(after) == jax.tree.structure(carry)


def test_step_raises_diverged_and_the_driver_stops_before_that_window():
    problem = _exploding_problem()
    config = gc.OuterConfig("local", total_steps=200, tau=10)
    carry, _ = step(problem, config, init(problem, config, key=jax.random.key(0)))
    with pytest.raises(Diverged, match="training diverged in window 1"):
        step(problem, config, carry)
    result = gc.run_outer(problem, config, key=jax.random.key(0), progress=False)
    assert result.stopped == "training diverged in window 1 (non-finite training loss)"
    assert len(result.step) == 1


def test_unreadable_checkpoint_says_to_delete_it(tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_bytes(b"a checkpoint of an older glocal_core, or a truncated file")
    config = gc.OuterConfig("local", total_steps=80, tau=40)
    with pytest.raises(ValueError, match="cannot be read.*Delete it"):
        gc.run_outer(_weight_decay_problem(0.3), config, key=jax.random.key(0),
                     progress=False, checkpoint=path)
