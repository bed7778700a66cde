"""The paper's experiments as configs, their cache, checkpoint/resume, and the CLI. Only the
two tests of the tensorflow-datasets route need tensorflow-datasets; the rest run at smoke
without it."""

import dataclasses

import jax
import numpy as np
import pytest

import glocal_core as gc
from glocal_core._data import DATASET_NAMES
from glocal_core._idx import has_fashion_mnist_idx
from glocal_core.repro import configs as _configs
from glocal_core.repro.bench import BenchConfig
from glocal_core.repro import experiments as ex
from glocal_core.repro.cli import main

# Windows of 3 rows are too short for the default estimator (cv holds rows out): the mean.
MEAN = gc.EstimatorSettings(method="mean")
TINY = gc.OuterConfig("glocal", total_steps=12, tau=4, sigma=3, m=1, eval_every=1,
                      estimator=MEAN)


def _tiny(**outer):
    """The first smoke run of fig2 on digits (no dataset to install), three windows of 4 steps."""
    spec = ex.experiment("fig2", "smoke").runs[0]
    return dataclasses.replace(spec, data=ex.DataSpec("digits", (28, 28, 1)),
                               outer=dataclasses.replace(TINY, **outer))


def _assert_same(a: gc.OuterResult, b: gc.OuterResult):
    for name, value in a._asdict().items():
        if name.startswith("seconds"):
            continue
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(other, value, err_msg=name)
        else:
            assert other == value, name


@pytest.mark.parametrize("profile", ex.PROFILES)
@pytest.mark.parametrize("name", ex.EXPERIMENTS)
def test_every_experiment_is_well_formed(name, profile):
    exp = ex.experiment(name, profile)
    assert exp.profile == profile and exp.description
    if name == "table3":
        assert exp.bench is not None and not exp.runs
        assert (exp.bench == BenchConfig(steps=10_000, tau=100, sigma=80, m=10,
                                            val_size=6000, train_size=54_000)) == (profile == "full")
        assert (exp.bench.tau, exp.bench.sigma, exp.bench.m) == (100, 80, 10)
        return
    labels = [spec.label for spec in exp.runs]
    assert len(set(labels)) == len(labels)
    assert len({spec.digest() for spec in exp.runs}) == len(labels)
    seeds = {spec.seed for spec in exp.runs}
    names = {spec.data.name for spec in exp.runs}
    if name == "fidelity":
        # Global runs that keep their windows, every combination of optimizer, Z and φ.
        assert all(s.outer.strategy == "global" and s.outer.keep_trajectories for s in exp.runs)
        assert {(s.optimizer, s.outer.reset_tangents, s.outer.outer_lr) for s in exp.runs} == {
            (o, r, lr) for o in ("sgd", "adam") for r in (True, False) for lr in (0.1, 0.0)}
        fig2 = {s.digest() for s in ex.experiment("fig2", profile).runs}
        shared = [s for s in exp.runs if s.digest() in fig2]
        assert len(shared) == 2 and all(s.outer.reset_tangents and s.outer.outer_lr for s in shared)
        assert names == {"fashion_mnist"}
    elif profile == "smoke" and name in ("fig2", "fig4"):
        # The paper's data and DMD window; only T and the model shrink.
        assert names == {"fashion_mnist"} and {spec.model for spec in exp.runs} == {"mlp"}
        assert all(spec.outer.total_steps == ex.SMOKE_STEPS >= 2000 for spec in exp.runs)
        if name == "fig2":
            assert seeds == {0, 1}
            assert {(s.outer.tau, s.outer.sigma, s.outer.m) for s in exp.runs} == {(100, 80, 10)}
            assert {s.strategy_key for s in exp.runs} == {"local", "global", "glocal",
                                                          "glocal-paper"}
        else:
            assert {s.outer.tau for s in exp.runs} == {100}
    elif profile == "smoke":
        # fig3 and table2: Fashion-MNIST stands in for CIFAR-10 at the paper's window, a
        # small CNN (fig3) and the MLP (table2) for WideResNet, Eq. 14 beside the default.
        assert seeds == {0, 1} and names == {"fashion_mnist"}
        assert {spec.data.stands_in_for for spec in exp.runs} == {"cifar10"}
        assert {(s.outer.tau, s.outer.sigma, s.outer.m) for s in exp.runs} == {(100, 80, 10)}
        assert {s.strategy_key for s in exp.runs} == {"local", "glocal", "glocal-paper"}
        if name == "fig3":
            assert {s.model for s in exp.runs} == {"cnn"}
            assert all(s.outer.total_steps >= 1000 for s in exp.runs)
        else:
            assert {(s.data.imbalance, s.data.val_size) for s in exp.runs} == {(50, 1000),
                                                                             (100, 1000)}
            assert all(s.outer.total_steps >= 2000 for s in exp.runs)
    else:
        assert seeds == {0, 1, 2} and names <= set(DATASET_NAMES) - {"digits"}
        assert all(spec.outer.total_steps == 10_000 and spec.outer.tau == 100
                   for spec in exp.runs)


def test_full_profile_follows_the_paper():
    fig2 = ex.experiment("fig2", "full").runs
    lr = {(s.data.name, s.optimizer): dict(s.initial)["learning_rate"] for s in fig2}
    assert lr[("fashion_mnist", "sgd")] == 0.1
    assert lr[("mnist", "sgd")] == lr[("kmnist", "sgd")] == 0.01
    assert {s.outer.strategy for s in fig2} == {"local", "global", "glocal"}
    table2 = ex.experiment("table2", "full").runs
    assert {(s.data.name, s.data.imbalance) for s in table2} == set(ex.PAPER_TABLE2)
    assert all(s.task == "reweighting" and s.model == "wrn" and (s.depth, s.width) == (28, 2)
               and s.data.val_size == 1000 and s.outer.mode == "reverse" for s in table2)
    grid = {(s.outer.sigma, s.outer.m) for s in ex.experiment("fig4", "full").runs}
    assert grid == {(s, m) for s in (20, 50, 80, 100) for m in (1, 5, 10, 20) if m < s}


def test_unknown_experiment_and_profile_are_explained(monkeypatch):
    with pytest.raises(ValueError, match="fig2, fig3"):
        ex.experiment("fig9", "smoke")
    with pytest.raises(ValueError, match="smoke, full"):
        ex.experiment("fig2", "huge")
    monkeypatch.setenv("GLOCAL_PROFILE", "huge")
    with pytest.raises(ValueError, match="GLOCAL_PROFILE"):
        ex.profile_from_env()


def test_digest_changes_with_anything_that_changes_the_result():
    spec = _tiny()
    assert spec.digest() == _tiny().digest()
    assert spec.digest() != _tiny(m=2).digest()
    assert spec.digest() != dataclasses.replace(spec, seed=1).digest()
    assert spec.digest() != dataclasses.replace(
        spec, data=dataclasses.replace(spec.data, imbalance=10)).digest()


def test_memory_settings_key_the_cache_only_when_set():
    """val_chunk, cotangent_chunk and eq14_diagnostics unset: the digest of before they
    existed, so cached runs stay valid; set (fig3's and table2's WideResNets at full, the
    global runs of fig2), part of the key."""
    import hashlib
    import json

    spec = _tiny()
    fields = dataclasses.asdict(spec)
    del fields["val_chunk"], fields["outer"]["cotangent_chunk"]
    del fields["outer"]["eq14_diagnostics"], fields["outer"]["outer_optimizer"]
    text = json.dumps([ex.CACHE_VERSION, fields], sort_keys=True)
    assert spec.digest() == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert spec.digest() != dataclasses.replace(spec, val_chunk=100).digest()
    diagnosed = dataclasses.replace(spec.outer, eq14_diagnostics=True)
    assert dataclasses.replace(spec, outer=diagnosed).digest() != spec.digest()
    chunked = dataclasses.replace(spec.outer, mode="reverse", cotangent_chunk=4)
    assert dataclasses.replace(spec, outer=chunked).digest() != dataclasses.replace(
        spec, outer=dataclasses.replace(chunked, cotangent_chunk=None)).digest()
    assert all(s.val_chunk == 1000 for s in ex.experiment("fig3", "full").runs)
    assert all(s.outer.cotangent_chunk == 16 for s in ex.experiment("table2", "full").runs)


def test_run_is_cached_and_never_recomputed(tmp_path, monkeypatch):
    spec = _tiny()
    assert ex.load_result(spec, tmp_path) is None
    first = ex.run(spec, cache_dir=tmp_path, progress=False)
    path = ex.result_path(spec, tmp_path)
    assert path.exists() and not path.with_suffix(".ckpt").exists()
    assert len(first.step) == 3 and len(first.test_accuracy) == 3

    def never(*args, **kwargs):
        raise AssertionError("a cached run was recomputed")

    monkeypatch.setattr(ex, "run_outer", never)
    _assert_same(ex.run(spec, cache_dir=tmp_path, progress=False), first)
    with pytest.raises(AssertionError, match="recomputed"):
        ex.run(_tiny(m=2), cache_dir=tmp_path, progress=False)


def test_interrupted_run_resumes_to_the_identical_result(tmp_path):
    spec = _tiny()
    uninterrupted = ex.run(spec, cache_dir=tmp_path / "a", progress=False)

    def interrupt(s, partial):
        if s == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.run(spec, cache_dir=tmp_path / "b", progress=False, callback=interrupt)
    path = ex.result_path(spec, tmp_path / "b")
    assert path.with_suffix(".ckpt").exists() and not path.exists()
    windows = []
    resumed = ex.run(spec, cache_dir=tmp_path / "b", progress=False,
                     callback=lambda s, partial: windows.append(s))
    assert windows == [2]
    assert path.exists() and not path.with_suffix(".ckpt").exists()
    _assert_same(resumed, uninterrupted)


def test_full_specs_run_on_tensorflow_datasets(tmp_path):
    """The `full` path end to end, on tfds' mock data: the loaders, LeNet and the reweighting
    problem at q = 385 (shortened, and with LeNet in place of the WideResNet)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    fig2 = next(s for s in ex.experiment("fig2", "full").runs if s.data.name == "kmnist")
    table2 = ex.experiment("table2", "full").runs[0]
    table2 = dataclasses.replace(table2, model="lenet", batch_size=8)
    with tfds.testing.mock_data(num_examples=2500):
        for spec in (fig2, table2):
            problem = ex.build_problem(spec, data_dir=tmp_path)
            outer = dataclasses.replace(spec.outer, total_steps=4, tau=2, sigma=2, m=1,
                                        estimator=MEAN)
            result = gc.run_outer(problem, outer, key=jax.random.key(0), progress=False)
            assert result.stopped == "" and len(result.step) == 2
            assert np.all(np.isfinite(result.hypergradient))
    assert problem.phi0.shape == (385,)


def test_missing_dataset_names_the_command_that_prepares_it(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")  # without it the error names its install
    spec = ex.experiment("fig3", "full").runs[0]
    with pytest.raises(gc.DatasetNotPreparedError, match="python -m glocal_core data prepare"):
        ex.build_problem(spec, data_dir=tmp_path)
    code = main(["reproduce", "fig3", "--profile", "full", "--data-dir", str(tmp_path),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 2
    assert "data prepare cifar10" in capsys.readouterr().err


def test_cli_lists_runs_and_refuses_bad_names(tmp_path, capsys):
    assert main(["reproduce", "table2", "--profile", "smoke", "--list",
                 "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("to run") == len(ex.experiment("table2", "smoke").runs)
    assert main(["reproduce", "fig2", "--profile", "huge"]) == 2
    assert "smoke, full" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "fig9"])


def test_mode_comparison_times_both_modes_on_the_385_parameter_problem():
    from glocal_core.repro.bench import compare_modes

    report = compare_modes(tau=2, sigma=1, batch_size=2, val_size=4)
    assert report["q"] == 385
    assert all(s > 0 for s in report["seconds"].values())
    assert report["forward/reverse"] == report["seconds"]["forward"] / report["seconds"]["reverse"]


@pytest.mark.skipif(not has_fashion_mnist_idx(), reason="needs dataset-fashion-mnist")
def test_smoke_fig2_trains_the_mlp_on_real_fashion_mnist():
    spec = next(s for s in ex.experiment("fig2", "smoke").runs if s.outer.strategy == "glocal")
    problem = ex.build_problem(spec)
    outer = dataclasses.replace(spec.outer, total_steps=200)
    result = gc.run_outer(problem, outer, key=jax.random.key(0), progress=False)
    assert spec.model_title == "MLP 784-32-10"
    assert result.stopped == "" and len(result.step) == 2
    assert 0.5 < result.test_accuracy[-1] <= 1  # 200 steps of SGD at lr 0.1: well past chance


def test_fidelity_cli_scores_every_estimator(tmp_path, monkeypatch, capsys):
    import json

    import functools

    import glocal_core.repro.fidelity as gf

    # Windows of 8 rows: the shortest that every estimator, cv included, reads at m = 2.
    specs = [dataclasses.replace(_tiny(strategy="global", keep_trajectories=True,
                                       reset_tangents=reset, total_steps=32, tau=8, sigma=8,
                                       m=2), experiment="fidelity")
             for reset in (True, False)]
    monkeypatch.setattr(_configs, "_fidelity", lambda profile: specs)
    # The costs at q = 3 only: `affine` takes seconds per estimate at q = 385.
    monkeypatch.setattr(gf, "estimator_costs", functools.partial(gf.estimator_costs, qs=(3,)))
    assert main(["fidelity", "--profile", "smoke", "--cache-dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["estimator"] for row in report["costs"]} == set(gc.METHODS)
    assert {row["case"] for row in report["synthetic"]} == set(gf.SYNTHETIC_CASES)
    assert report["default"] == gc.DEFAULT_METHOD
    recordings = {row["recording"] for row in report["rows"]}
    assert {"all", "all, Z reset", "all, Z carried"} <= recordings
    assert {row["estimator"] for row in report["rows"]} == {*gc.METHODS, "zero"}
    assert all(row["windows"] == 3 for row in report["rows"] if "SGD" in row["recording"])
    assert report["best"]["all"] in gc.METHODS
    # The recordings were cached: a second call computes nothing.
    monkeypatch.setattr(ex, "run_outer", lambda *a, **k: pytest.fail("recomputed"))
    assert main(["fidelity", "--profile", "smoke", "--cache-dir", str(tmp_path), "--json"]) == 0
