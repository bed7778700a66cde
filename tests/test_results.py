"""The results layer: loading, grouping, mean ± std over seeds, finals, tables, μ_φ(L), and
the figures drawn from them."""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import glocal_core as gc
import glocal_core.plotting as gplt
import glocal_core.quality as gq
import glocal_core.results as gr
import glocal_core.tables as gt
from glocal_core import experiments as ex

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = ("learning_rate", "weight_decay")


def _result(hyperparameters, accuracy, *, tau=10, strategy="glocal", stopped="",
            fallback=None, seconds=1.0, names=NAMES):
    """An `OuterResult` with the given per-window values and zeros elsewhere; windows that
    are not given did not run (a run that stopped early)."""
    hyperparameters = np.asarray(hyperparameters, dtype=float)
    s, q = hyperparameters.shape
    step = tau * np.arange(1, s + 1)
    zeros = np.zeros((s, q))
    return gc.OuterResult(
        config=gc.OuterConfig(strategy, total_steps=4 * tau, tau=tau, sigma=tau - 2, m=2),
        names=names, step=step, phi=hyperparameters, hyperparameters=hyperparameters,
        hypergradient=zeros, local_hypergradient=zeros, estimate=zeros,
        train_loss=np.zeros(s), val_loss=np.arange(s, dtype=float), eval_step=step,
        test_accuracy=np.asarray(accuracy, dtype=float), spectral_radius=np.ones(s),
        num_kept=np.ones(s, int),
        fallback=np.zeros(s, bool) if fallback is None else np.asarray(fallback),
        fallback_reason=("",) * s, seconds_window=np.full(s, seconds),
        seconds_playout=np.zeros(s), seconds_dmd=np.zeros(s), seconds_compile=0.0,
        stopped=stopped,
    )


def test_over_seeds_over_seeds_of_equal_runs():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 5, 2))
    x = np.arange(5) * 10
    curve = gr.over_seeds([x] * 3, list(values))
    np.testing.assert_array_equal(curve.x, x)
    np.testing.assert_allclose(curve.mean, values.mean(axis=0))
    np.testing.assert_allclose(curve.std, values.std(axis=0))
    np.testing.assert_array_equal(curve.count, [3] * 5)


def test_over_seeds_keeps_a_shorter_run_until_it_ends():
    curve = gr.over_seeds([np.array([1, 2, 3]), np.array([1, 2])],
                         [np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0])])
    np.testing.assert_array_equal(curve.x, [1, 2, 3])
    np.testing.assert_allclose(curve.mean, [2.0, 3.0, 3.0])
    np.testing.assert_allclose(curve.std, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(curve.count, [2, 2, 1])


def test_over_seeds_refuses_mismatched_input():
    with pytest.raises(ValueError, match="one x array per run"):
        gr.over_seeds([np.arange(3)], [])
    with pytest.raises(ValueError, match="3 points"):
        gr.over_seeds([np.arange(3)], [np.zeros(2)])


def test_hyperparameter_curve_is_a_staircase_over_window_edges():
    a = _result([[0.1, 1e-3], [0.2, 2e-3], [0.3, 3e-3], [0.4, 4e-3]], [0.5] * 4)
    b = _result([[0.3, 3e-3], [0.4, 4e-3], [0.5, 5e-3], [0.6, 6e-3]], [0.7] * 4)
    curve = gr.hyperparameter_curve([a, b])
    np.testing.assert_array_equal(curve.x, [0, 10, 20, 30, 40])
    np.testing.assert_allclose(curve.mean[:, 0], [0.2, 0.3, 0.4, 0.5, 0.5])
    np.testing.assert_allclose(curve.std[:, 1], [1e-3] * 5)
    np.testing.assert_allclose(gr.accuracy_curve([a, b]).mean, [0.6] * 4)


def test_final_leaves_stopped_runs_out_of_the_accuracy():
    done = [_result([[0.1, 0.0]] * 4, [0.5, 0.6, 0.7, 0.8], fallback=[1, 0, 1, 0]),
            _result([[0.3, 0.0]] * 4, [0.5, 0.6, 0.7, 0.6], fallback=[0, 0, 0, 1])]
    diverged = _result([[0.9, 0.0]] * 2, [0.9, 0.99], stopped="training diverged in window 2")
    f = gr.final([*done, diverged])
    assert (f.finished, f.runs) == (2, 3)
    assert f.accuracy_mean == pytest.approx(0.7)
    assert f.accuracy_std == pytest.approx(0.1)
    np.testing.assert_allclose(f.hyperparameters, [0.2, 0.0])
    assert (f.fallbacks, f.windows) == (3, 10)
    assert f.seconds == pytest.approx(10 / 3)
    assert f.stopped == ("training diverged in window 2",)
    nothing = gr.final([diverged])
    assert np.isnan(nothing.accuracy_mean)
    assert gt.plus_minus(nothing.accuracy_mean, nothing.accuracy_std, 0) == "–"
    assert gt.plus_minus(0.71234, 0.0123, 3) == "0.712 ± 0.012"
    assert gt.plus_minus(0.71234, 0.0, 1) == "0.712"


def test_group_runs_follows_the_experiment():
    exp = ex.experiment("fig2", "smoke")
    results = {spec.label: _result([[0.1, 0.2, 0.3]] * 4, [0.5] * 4,
                                   names=spec.learn, strategy=spec.outer.strategy)
               for spec in exp.runs if spec.outer.strategy != "global"}
    groups = gr.group_runs(exp, results)
    panels = list(groups)
    assert [p.task for p in panels] == ["sgd", "adam"]
    assert panels[0].title == "Fashion-MNIST, MLP 784-32-10, SGD"
    seeds = len({spec.seed for spec in exp.runs})
    for runs in groups.values():
        # global is not in the results; glocal with the paper's rule is told apart
        assert list(runs) == ["local", "glocal", "glocal-paper"]
        assert all(len(r) == seeds for r in runs.values())


def test_describe_data_names_the_stand_in():
    exp = ex.experiment("table2", "smoke")
    assert (gr.describe_data(exp.runs[0].data)
            == "imbalanced digits, f = 50 (stand-in for imbalanced CIFAR-10)")
    full = ex.experiment("table2", "full")
    assert gr.describe_data(full.runs[-1].data) == "imbalanced CIFAR-100, f = 50"
    assert gr.dataset_title("fashion_mnist") == "Fashion-MNIST"


def test_table2_puts_the_papers_numbers_beside_ours():
    exp = ex.experiment("table2", "smoke")
    results = {spec.label: _result(np.zeros((4, 1)), [0.25, 0.5, 0.75, 0.6], names=("meta_0",),
                                   strategy=spec.outer.strategy) for spec in exp.runs}
    table = gt.table2(gr.group_runs(exp, results), caption=gr.provenance(exp))
    assert len(table.rows) == 2
    assert table.rows[0][1:] == ("0.600", "0.600", "CIFAR-10 / 50", "0.520", "0.715", "1")
    assert table.rows[1][3:] == ("CIFAR-10 / 100", "0.445", "0.595", "1")
    assert table._repr_markdown_().startswith("*profile smoke · data: imbalanced digits")


def test_summary_table_counts_fallbacks_and_finished_runs():
    groups = {gr.Panel(ex.DataSpec("digits"), "sgd"): {
        "local": [_result([[0.1, 0.01]] * 4, [0.5] * 4, strategy="local")],
        "glocal": [_result([[0.1, 0.01]] * 4, [0.5] * 4, fallback=[1, 1, 0, 0]),
                   _result([[0.1, 0.01]] * 2, [0.5] * 2, stopped="diverged")],
    }}
    table = gt.summary_table(groups)
    local, glocal = table.rows
    assert local[2:4] == ("1/1", "0.500") and local[5] == ""
    assert glocal[2:4] == ("1/2", "0.500") and glocal[5] == "2/6"
    assert "learning rate 0.1" in glocal[4]


def test_runtime_tables_divide_by_plain_training():
    report = {"seconds": {"none": 2.0, "local": 8.0, "global": 40.0, "glocal": 10.0},
              "predicted_global/glocal": 2.5}
    table = gt.runtime_table(report)
    assert [row[0] for row in table.rows] == ["none", "local", "global", "glocal"]
    assert table.rows[2][1:] == ("40.00", "20.00", "2891.2", f"{2891.2 / 11.4:.2f}")
    ratios = gt.runtime_ratios(report)
    assert ratios.rows[1] == ("global / glocal", "4.00", "2.50", f"{2891.2 / 58.3:.2f}")
    text = str(ratios)
    assert text.splitlines()[0].startswith("ratio") and "glocal / none" in text


def test_table_renders_markdown_and_text():
    table = gt.Table(("a|b", "c"), (("x\ny", "1"),), "caption")
    assert table.markdown().splitlines() == ["*caption*", "", "| a\\|b | c |", "| --- | --- |",
                                             "| x y | 1 |"]
    assert str(table) == "caption\na|b  c\nx\ny  1"
    assert gt.from_dicts([{"a": 1.23456, "b": "x"}, {"a": 2}]).rows == (("1.235", "x"),
                                                                        ("2", ""))


def test_weighting_function_is_the_meta_network():
    meta = gc.MetaMLP(key=jax.random.key(3))
    phi, _ = ravel_pytree(eqx.partition(meta, eqx.is_inexact_array)[0])
    assert phi.size == 385
    losses = np.linspace(0.0, 5.0, 11)
    weights = gr.weighting_function(np.asarray(phi))(losses)
    assert weights.shape == losses.shape
    np.testing.assert_allclose(weights, np.asarray(meta(jnp.asarray(losses))), rtol=1e-6)
    assert np.all((weights > 0) & (weights < 1))
    with pytest.raises(ValueError, match="3h \\+ 1"):
        gr.weighting_function(np.zeros(11))


def test_weighting_function_reads_the_phi_of_a_reweighting_problem():
    key_model, key_meta, key_data = jax.random.split(jax.random.key(0), 3)
    images = jax.random.normal(key_data, (8, 28, 28, 1))
    labels = jnp.arange(8) % 10
    meta = gc.MetaMLP(key=key_meta)
    problem = gc.reweighting_problem(gc.LeNet(key=key_model), meta, (images, labels),
                                     (images, labels), (images, labels), batch_size=4)
    losses = np.array([[0.1, 1.0], [2.0, 4.0]])
    np.testing.assert_allclose(gr.weighting_function(problem.phi0)(losses),
                               np.asarray(meta(jnp.asarray(losses))), rtol=1e-6)
    shifted = _result(np.tile(np.asarray(problem.phi0), (4, 1)), [0.5] * 4,
                      names=problem.space.names)
    curve = gr.weighting_curve([shifted, shifted], losses[0])
    np.testing.assert_allclose(curve.mean, np.asarray(meta(jnp.asarray(losses[0]))), rtol=1e-6)
    np.testing.assert_array_equal(curve.std, 0.0)


def test_plot_runs_draws_every_strategy_and_marks_stops():
    runs = {"local": [_result([[0.1, 0.01]] * 4, [0.5] * 4, strategy="local")],
            "global": [_result([[0.1, 0.01]] * 2, [0.5] * 2, strategy="global",
                               stopped="diverged")]}
    fig, axes = plt.subplots(1, 3)
    gplt.plot_runs(axes, runs)
    colors = {line.get_color() for line in axes[1].get_lines()}
    assert colors == {gc_color for s, gc_color in gplt.STRATEGY_COLORS.items()
                      if s in runs}
    stops = [line for line in axes[0].get_lines() if line.get_linestyle() == ":"]
    assert len(stops) == 1 and stops[0].get_xdata()[0] == 20
    with pytest.raises(ValueError, match="1 \\+ q"):
        gplt.plot_runs(axes[:2], runs)
    plt.close(fig)


def test_hypergradient_errors_measure_local_and_glocal_against_global():
    run = _result([[0.1, 0.01]] * 4, [0.5] * 4, strategy="global")
    target = np.array([[3.0, 4.0]] * 4)
    local = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [3.0, 4.0]])
    run = run._replace(hypergradient=target, local_hypergradient=local,
                       estimate=np.array([[3.0, 4.0]] * 4))
    errors = gq.hypergradient_errors([run, run])
    # the last window ends at T = 40, where h_T is h_tau: left out
    np.testing.assert_array_equal(errors["local"].x, [10, 20, 30])
    np.testing.assert_allclose(errors["local"].mean, [0.0, 1.0, 1.0])
    np.testing.assert_allclose(errors["glocal"].mean, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(errors["glocal"].std, 0.0)
    pooled = gq.window_errors([run, run])
    np.testing.assert_allclose(pooled.error_local, [0.0, 1.0, 1.0] * 2)
    np.testing.assert_array_equal(pooled.step, [10, 20, 30] * 2)
    with pytest.raises(ValueError, match="`global` run"):
        gq.hypergradient_errors([_result([[0.1, 0.01]] * 4, [0.5] * 4)])


def test_panel_caption_names_data_and_profile_on_short_lines():
    panel = gr.Panel(ex.experiment("table2", "smoke").runs[0].data, "reweighting")
    text = gplt.panel_caption(panel, "smoke", width=30)
    assert all(len(line) <= 30 for line in text.splitlines())
    assert " ".join(text.split()) == ("imbalanced digits, f = 50 (stand-in for imbalanced "
                                      "CIFAR-10); profile smoke")


def test_load_or_run_computes_only_when_runs_are_missing(monkeypatch, capsys):
    exp = ex.experiment("fig3", "smoke")
    calls = []

    def fake_reproduce(name, profile, *, progress, cached_only=False, **kwargs):
        calls.append(cached_only)
        have = exp.runs if not cached_only or len(calls) > 2 else exp.runs[:1]
        return {spec.label: None for spec in have}

    monkeypatch.setattr(ex, "reproduce", fake_reproduce)
    assert len(gr.load("fig3", "smoke")) == len(exp.runs)
    assert calls == [True, False] and "computing the rest" in capsys.readouterr().out
    assert len(gr.load("fig3", "smoke")) == len(exp.runs)
    assert calls[2:] == [True] and "loaded from the cache" in capsys.readouterr().out


def test_runtime_and_fallback_plots_label_what_they_draw():
    fig, (left, right) = plt.subplots(1, 2)
    ours = {"none": 2.0, "local": 8.0, "global": 40.0, "glocal": 10.0}
    gplt.plot_runtime(left, ours, ex.PAPER_TABLE3)
    labels = [t.get_text() for t in left.texts]
    assert labels[:4] == ["1", "4", "20", "5"]  # ours, relative to none
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["ours", "paper"]
    gplt.plot_fallbacks(right, [10, 20, 30], [1.5, 0.99, 2.0], [True, False, True])
    crosses = [line for line in right.get_lines() if line.get_marker() == "x"]
    np.testing.assert_array_equal(crosses[0].get_xdata(), [10, 30])
    assert right.get_yscale() == "log"
    plt.close(fig)


def test_estimator_usage_counts_the_windows_that_used_the_estimate():
    runs = [r._replace(fallback_reason=tuple("no eigenvalue near 1" if f else ""
                                             for f in r.fallback))
            for r in (_result([[0.1, 0.0]] * 4, [0.5] * 4, fallback=[1, 0, 1, 0]),
                      _result([[0.1, 0.0]] * 4, [0.5] * 4, fallback=[0, 0, 0, 1]))]
    text = gt.estimator_usage(runs)
    assert text.startswith(f"{runs[0].config.dmd.method}: its estimate in 5 of 8 windows (62%)")
    assert "fell back in 3: {'no eigenvalue near 1': 3}" in text
