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
import glocal_core.repro.plotting as gplt
import glocal_core.repro.quality as gq
import glocal_core.repro.results as gr
import glocal_core.repro.spectra as gs
import glocal_core.repro.tables as gt
from glocal_core.repro import experiments as ex

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = ("learning_rate", "weight_decay")


def _result(hyperparameters, accuracy, *, tau=10, strategy="glocal", stopped="",
            fallback=None, seconds=1.0, names=NAMES, method=gc.DEFAULT_METHOD):
    """An `OuterResult` with the given per-window values and zeros elsewhere; windows that
    are not given did not run (a run that stopped early). `method`: its estimator."""
    hyperparameters = np.asarray(hyperparameters, dtype=float)
    s, q = hyperparameters.shape
    step = tau * np.arange(1, s + 1)
    zeros = np.zeros((s, q))
    return gc.OuterResult(
        config=gc.OuterConfig(strategy, total_steps=4 * tau, tau=tau, sigma=tau - 2, m=2,
                              estimator=gc.EstimatorSettings(method=method)),
        names=names, step=step, phi=hyperparameters, hyperparameters=hyperparameters,
        hypergradient=zeros, local_hypergradient=zeros, estimate=zeros,
        train_loss=np.zeros(s), val_loss=np.arange(s, dtype=float), eval_step=step,
        test_metric=np.asarray(accuracy, dtype=float), spectral_radius=np.ones(s),
        num_kept=np.ones(s, int),
        fallback=np.zeros(s, bool) if fallback is None else np.asarray(fallback),
        fallback_reason=("",) * s, used=np.full((s, q), "extrapolated"),
        reasons=np.full((s, q), ""), seconds_window=np.full(s, seconds),
        seconds_playout=np.zeros(s), seconds_estimate=np.zeros(s), seconds_compile=0.0,
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
            == "imbalanced Fashion-MNIST, f = 50 (stand-in for imbalanced CIFAR-10)")
    full = ex.experiment("table2", "full")
    assert gr.describe_data(full.runs[-1].data) == "imbalanced CIFAR-100, f = 50"
    assert gr.dataset_title("fashion_mnist") == "Fashion-MNIST"


def test_strategy_title_names_glocal_by_its_estimator(monkeypatch):
    assert set(gr.ESTIMATOR_TITLES) == set(gc.METHODS)
    assert gr.strategy_title("glocal-paper") == "glocal (Eq. 14)"
    assert gr.strategy_title("glocal-rre") == "glocal (reduced-rank extrapolation)"
    assert [gr.strategy_title(s) for s in ("none", "local", "global")] == ["none", "local",
                                                                           "global"]
    assert gr.strategy_title("glocal") == f"glocal ({gr.ESTIMATOR_TITLES[gc.DEFAULT_METHOD]})"
    # the benchmark's glocal is Eq. 14 whatever the default
    assert gr.benchmark_title("glocal") == "glocal (Eq. 14)"
    for method, title in (("mean", "glocal (window mean)"), ("paper", "glocal (Eq. 14)"),
                          ("fbdmd", "glocal (forward-backward DMD)")):
        monkeypatch.setattr(gc._estimators, "DEFAULT_METHOD", method)
        assert gr.strategy_title("glocal") == title
        assert gr.benchmark_title("glocal") == "glocal (Eq. 14)"


def _table2_groups():
    exp = ex.experiment("table2", "smoke")
    panels = list(dict.fromkeys(gr.Panel.of(spec) for spec in exp.runs))
    meta = dict(names=("meta_0",))
    return exp, {panel: {
        "local": [_result(np.zeros((4, 1)), [0.5] * 4, strategy="local", **meta)],
        "glocal": [_result(np.zeros((4, 1)), [0.6] * 4, **meta),
                   _result(np.zeros((4, 1)), [0.7] * 4, **meta)],
        "glocal-paper": [_result(np.zeros((4, 1)), [0.45] * 4, method="paper", **meta)],
    } for panel in panels}


def test_table2_puts_the_papers_numbers_beside_ours():
    exp, groups = _table2_groups()
    table = gt.table2(groups, caption=gr.provenance(exp))
    default, paper = gr.strategy_title("glocal"), "glocal (Eq. 14)"
    assert table.columns == ("data", "strategy", "ours: test accuracy",
                             "ours: − local (points)", "paper: test accuracy",
                             "paper: − local (points)")
    assert len(table.rows) == 6  # two settings × three strategies
    assert [row[1:] for row in table.rows[:3]] == [
        ("local", "0.500", "", "0.520", ""),
        (default, "0.650 ± 0.050", "+15.0", "–", ""),
        (paper, "0.450", "-5.0", "0.715", "+19.5")]
    assert table.rows[3][0].startswith("imbalanced Fashion-MNIST, f = 100")
    assert [row[4:] for row in table.rows[3:]] == [("0.445", ""), ("–", ""), ("0.595", "+15.0")]
    text = table._repr_markdown_()
    assert text.startswith(f"*{gr.provenance(exp)}*")
    assert f"| {default} |" in text and "| paper: test accuracy |" in text


def test_table2_shows_the_strategies_that_ran():
    exp = ex.experiment("table2", "smoke")
    results = {spec.label: _result(np.zeros((4, 1)), [0.25, 0.5, 0.75, 0.6], names=("meta_0",),
                                   strategy=spec.outer.strategy, method=spec.outer.estimator.method)
               for spec in exp.runs}
    table = gt.table2(gr.group_runs(exp, results))
    ran = [s for s in gt.TABLE2_STRATEGIES if any(sp.strategy_key == s for sp in exp.runs)]
    setting = [row for row in table.rows if row[0] == table.rows[0][0]]
    assert [row[1] for row in setting] == [gr.strategy_title(s) for s in ran]
    assert all(row[2].startswith("0.600") for row in setting)
    assert [row[3] for row in setting[1:]] == ["+0.0"] * (len(ran) - 1)
    assert setting[-1][4:] == ("0.715", "+19.5")


def test_table2_figure_names_each_glocal_by_its_estimator():
    exp, groups = _table2_groups()
    fig = gplt.table2_figure(groups, "smoke")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["ours: local", "paper: local", f"ours: {gr.strategy_title('glocal')}",
                     "ours: glocal (Eq. 14)", "paper: glocal (Eq. 14)"]
    plt.close(fig)


def test_figures_and_tables_show_strategy_titles(monkeypatch):
    monkeypatch.setattr(gc._estimators, "DEFAULT_METHOD", "rre")
    default = "glocal (reduced-rank extrapolation)"
    panel = gr.Panel(ex.DataSpec("digits"), "sgd")
    groups = {panel: {
        "local": [_result([[0.1, 0.01]] * 4, [0.5] * 4, strategy="local")],
        "glocal": [_result([[0.1, 0.01]] * 4, [0.6] * 4, method="rre")._replace(
            local_hypergradient=np.ones((4, 2)))],
        "glocal-paper": [_result([[0.1, 0.01]] * 4, [0.7] * 4, method="paper")],
    }}
    fig = gplt.strategies_figure(groups, "smoke", title="test")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["local", default, "glocal (Eq. 14)"]
    plt.close(fig)
    fig = gplt.fallback_figure(groups, "smoke")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["glocal (Eq. 14)"]
    plt.close(fig)
    fig = gplt.used_update_figure(groups, "smoke")
    assert rf"$\hat h_\infty$ used ({default})" in [
        t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)
    table = gt.summary_table(groups)
    assert [row[1] for row in table.rows] == ["local", default, "glocal (Eq. 14)"]
    assert f"| {default} |" in table.markdown()
    assert gt.estimator_usage(groups[panel]["glocal-paper"]).startswith("paper (Eq. 14) over ")


def test_setup_and_runs_tables_name_each_glocal_by_its_estimator():
    exp = ex.experiment("fig2", "smoke")
    titles = ", ".join(dict.fromkeys(gr.strategy_title(s.strategy_key) for s in exp.runs))
    table = gt.setup_table(exp)
    assert {row[table.columns.index("strategies")] for row in table.rows} == {titles}
    assert "glocal (Eq. 14)" in titles and gr.strategy_title("glocal") in titles
    spec = next(s for s in exp.runs if s.strategy_key == "glocal-paper")
    runs = gt.runs_table(exp, {spec.label: _result([[0.1, 0.2, 0.3]] * 4, [0.5] * 4,
                                                   names=spec.learn, method="paper")})
    assert runs.rows[0][:2] == (spec.label, "glocal (Eq. 14)")


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
    # the benchmark's glocal runs the paper's Eq. 14, as the paper's Table 3 does
    assert [row[0] for row in table.rows] == ["none", "local", "global", "glocal (Eq. 14)"]
    assert table.rows[2][1:] == ("40.00", "20.00", "2891.2", f"{2891.2 / 11.4:.2f}")
    ratios = gt.runtime_ratios(report)
    assert ratios.rows[1] == ("global / glocal (Eq. 14)", "4.00", "2.50",
                              f"{2891.2 / 58.3:.2f}")
    text = str(ratios)
    assert text.splitlines()[0].startswith("ratio") and "glocal (Eq. 14) / none" in text


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
    assert " ".join(text.split()) == ("imbalanced Fashion-MNIST, f = 50 (stand-in for "
                                      "imbalanced CIFAR-10); profile smoke")


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
    assert [t.get_text() for t in left.get_xticklabels()] == ["none", "local", "global",
                                                              "glocal (Eq. 14)"]
    gplt.plot_fallbacks(right, [10, 20, 30], [1.5, 0.99, 2.0], [True, False, True])
    crosses = [line for line in right.get_lines() if line.get_marker() == "x"]
    np.testing.assert_array_equal(crosses[0].get_xdata(), [10, 30])
    assert right.get_yscale() == "log"
    plt.close(fig)


def test_estimator_usage_counts_what_each_entry_used():
    runs = [_result([[0.1, 0.0]] * 4, [0.5] * 4), _result([[0.1, 0.0]] * 4, [0.5] * 4)]
    runs[0] = runs[0]._replace(
        used=np.array([["extrapolated", "mean"], ["local", "mean"]] * 2),
        reasons=np.array([["", "not confirmed"], ["divergent fit", "not confirmed"]] * 2))
    text = gt.estimator_usage(runs)
    method = runs[0].config.estimator.method
    assert text.startswith(f"{method} ({gr.estimator_title(method)}) over 2 run(s), 16 "
                           "window × hyperparameter entries: extrapolated / mean / local "
                           "62% / 25% / 12%")
    assert text.endswith("not extrapolated: not confirmed: 4; divergent fit: 2")


def test_analysis_figures_name_the_estimate_they_score():
    run = _result([[0.1, 0.01]] * 4, [0.5] * 4, strategy="global")
    run = run._replace(hypergradient=np.array([[3.0, 4.0]] * 4),
                       local_hypergradient=np.array([[3.0, 4.0], [1.0, 0.0]] * 2),
                       estimate=np.array([[2.0, 4.0]] * 4), fallback=np.array([0, 1, 0, 0]))
    quality = gq.estimate_quality(run)

    def legend(fig):
        box = fig.legends[0] if fig.legends else fig.axes[0].get_legend()
        return [t.get_text() for t in box.get_texts()]

    # the chapter re-fits Eq. 14; the runs' own estimate is named where it is drawn
    assert "glocal (Eq. 14)" in legend(gplt.quality_figure({"run": quality}, "smoke",
                                                           subtitle="test"))
    assert f"fell back ({gr.strategy_title('glocal')} = local)" in legend(
        gplt.quality_figure({"run": quality}, "smoke", subtitle="test", strategy="glocal"))
    fig = gplt.error_scatter_figure({"run": quality}, "smoke")
    assert fig.axes[0].get_ylabel().startswith("glocal (Eq. 14): ")
    assert f"{gr.strategy_title('glocal')} vs global" in legend(
        gplt.hypergradient_error_figure({gr.Panel(ex.DataSpec("digits"), "sgd"):
                                         {"global": [run]}}, "smoke"))
    terms = gs.ErrorTerms(*(np.ones(2),) * 4, np.array([False, True]))
    assert "glocal (Eq. 14) error, fell back (= local)" in legend(
        gplt.error_terms_figure(terms, "smoke"))
    sweep = [gq.quality_summary(quality)] * 2
    assert "glocal (Eq. 14) closer to global" in legend(
        gplt.delta_sweep_figure([0.01, 0.1], sweep, 0.01, "smoke"))
    table = gt.quality_table({"run": (sweep[0], (0.0, 1.0))})
    assert "cos glocal (Eq. 14)" in table.columns and "glocal (Eq. 14) closer" in table.columns
    plt.close("all")


def test_gap_table_gives_each_glocal_gain_over_local_and_the_papers_claim():
    panel = gr.Panel(ex.DataSpec("fashion_mnist", stands_in_for="cifar10"), "sgd", "CNN 8-16")
    groups = {panel: {
        "local": [_result([[0.1, 0.01]] * 4, [0.5, 0.6, 0.7, 0.80], strategy="local"),
                  _result([[0.1, 0.01]] * 4, [0.5, 0.6, 0.7, 0.82], strategy="local")],
        "glocal": [_result([[0.1, 0.01]] * 4, [0.5, 0.6, 0.7, 0.79])] * 2,
        "glocal-paper": [_result([[0.1, 0.01]] * 4, [0.5, 0.6, 0.7, 0.86], method="paper")] * 2,
    }}
    table = gt.gap_table(groups, paper=ex.PAPER_FIG3, caption="made here")
    assert table.columns == ("data", "strategy", "final test accuracy", "− local (points)",
                             "paper")
    assert [row[1:] for row in table.rows] == [
        ("local", "0.810 ± 0.010", "", ""),
        (gr.strategy_title("glocal"), "0.790 ± 0.000", "-2.0", ""),
        ("glocal (Eq. 14)", "0.860 ± 0.000", "+5.0", ex.PAPER_FIG3["cifar10"]),
    ]
    assert table.rows[0][0] == panel.title and "| − local (points) |" in table.markdown()


def test_update_ratio_table_counts_windows_with_the_estimate():
    panel = gr.Panel(ex.DataSpec("fashion_mnist"), "sgd")
    local = np.array([[2.0, 1.0]] * 4)
    used = np.array([[1.0, 1.0], [4.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    run = _result([[0.1, 0.01]] * 4, [0.5] * 4, fallback=[False, False, True, False],
                  method="paper")._replace(hypergradient=used, local_hypergradient=local)
    ratios = gr.update_ratios([run, run], "learning_rate")
    assert (ratios.used, ratios.windows) == (6, 8)
    np.testing.assert_allclose(np.sort(ratios.ratios), [0.5, 0.5, 1, 1, 2, 2])
    table = gt.update_ratio_table({panel: {"local": [run], "glocal-paper": [run, run]}})
    assert table.rows == ((panel.title, "glocal (Eq. 14)", "6 of 8", "1 [0.5, 2]"),)


def test_points_never_prints_minus_zero():
    assert gt.points(0.8, 0.80004) == "+0.0" and gt.points(0.9, 0.8) == "+10.0"
    assert gt.points(np.nan, 0.8) == "–"


def test_fallback_table_counts_windows_and_reasons_per_glocal():
    panel = gr.Panel(ex.DataSpec("fashion_mnist"), "sgd")
    fell = _result([[0.1, 0.01]] * 4, [0.5] * 4, fallback=[True, False, True, False],
                   method="paper")._replace(
        fallback_reason=("no eigenvalue near 1", "", "no eigenvalue near 1", ""),
        used=np.array([["local"] * 2, ["extrapolated"] * 2] * 2),
        reasons=np.array([["no eigenvalue near 1"] * 2, [""] * 2] * 2))
    groups = {panel: {"local": [_result([[0.1, 0.01]] * 4, [0.5] * 4, strategy="local")],
                      "glocal": [_result([[0.1, 0.01]] * 4, [0.5] * 4)],
                      "glocal-paper": [fell, fell]}}
    table = gt.fallback_table(groups)
    assert [row[1:] for row in table.rows] == [
        (gr.strategy_title("glocal"), "8", "100% / 0% / 0%", "none"),
        ("glocal (Eq. 14)", "16", "50% / 0% / 50%", "no eigenvalue near 1: 8")]
