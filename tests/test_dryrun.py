"""The `full` profile's dry run: every run at full size on this CPU, a step, its costs."""

import dataclasses

import numpy as np
import pytest

import glocal_core as gc
from glocal_core import _dryrun as dr
from glocal_core import experiments as ex
from glocal_core.__main__ import main
from glocal_core._doctor import load_report

FULL = ("fig2", "fig3", "table2", "fig4", "table3")


@pytest.mark.parametrize("name", FULL)
def test_dry_run_of_every_full_experiment_on_the_cpu(name, tmp_path, monkeypatch):
    """One step per function, at full size: fewer steps, never smaller problems; for CI time,
    the runs of each experiment's first problem (fig2: LeNet on Fashion-MNIST, all strategies;
    fig3: WideResNet-28-2 on CIFAR-10; table2: its reweighting on CIFAR-10, local and glocal)."""
    monkeypatch.setenv("GLOCAL_CACHE_DIR", str(tmp_path))
    rows = dr.dry_run(name, steps=1, data_dir=tmp_path / "tfds", progress=False, problems=1)
    exp = ex.experiment(name, "full")
    first = dr._problem_key((exp.runs or dr._bench_specs(exp.bench))[0])
    assert len(rows) == sum(dr._problem_key(s) == first
                            for s in (exp.runs or dr._bench_specs(exp.bench)))
    if name in ("fig2", "table3"):  # the playouts of global ran too
        assert any(r.label.split("/")[-2] == "global" and r.complete for r in rows)
    assert len({r.label for r in rows}) == len(rows)
    for row in rows:
        assert row.peak_bytes > 0 and row.estimated_seconds > 0 and row.seconds_compile > 0
        assert row.complete == (row.note == "")
        if row.complete:
            assert row.seconds_per_step > 0
        fmnist = row.label.startswith("fashion_mnist")
        expected = "Debian files" if fmnist and gc.has_fashion_mnist_idx() else "mock, real shapes"
        assert row.data == expected
    assert not any(tmp_path.iterdir()), "a dry run cached something"
    assert "| run | data | s/step |" in dr.format_dry_runs(rows)


def test_mock_data_has_the_real_shapes_and_split_sizes():
    spec = ex.experiment("table2", "full").runs[0]  # CIFAR-10, f = 50, 1000 validation
    splits = dr.mock_splits(spec)
    assert splits.val.images.shape == (1000, 32, 32, 3) and splits.test.images.shape[0] == 10_000
    counts = np.bincount(np.asarray(splits.train.labels), minlength=10)
    assert counts[0] == 4900 and counts[-1] == 4900 // 50  # Cui et al.'s long tail
    fig3 = ex.experiment("fig3", "full").runs[-1]  # CIFAR-100, 10% held out
    splits = dr.mock_splits(fig3)
    assert splits.train.images.shape == (45_000, 32, 32, 3) and splits.num_classes == 100


def test_estimate_follows_the_documented_formula():
    cost = {"step": 2.0, "record": 3.0, "val": 5.0, "dmd": 7.0, "plain": 1.0, "pull": 4.0}
    outer = gc.OuterConfig("glocal", total_steps=40, tau=10, sigma=8, m=2, eval_every=2)
    n_val, n_test = 100, 300  # t_eval = 5 · (1 + 3) = 20
    assert dr.estimate_seconds(outer, cost, n_val, n_test) == 40 * 2 + 4 * 8 * 3 + 4 * 12 + 2 * 20
    local = dataclasses.replace(outer, strategy="local")
    assert dr.estimate_seconds(local, cost, n_val, n_test) == 40 * 2 + 4 * 3 + 4 * 5 + 2 * 20
    glob = dataclasses.replace(outer, strategy="global")
    playouts = 2.0 * (30 + 20 + 10 + 0) + 4 * 3
    assert dr.estimate_seconds(glob, cost, n_val, n_test) == \
        dr.estimate_seconds(outer, cost, n_val, n_test) + playouts
    reverse = dataclasses.replace(outer, mode="reverse")
    assert dr.estimate_seconds(reverse, cost, n_val, n_test) == \
        40 * (1 + 4) + 4 * 8 * 3 + 4 * 12 + 2 * 20
    none = dataclasses.replace(outer, strategy="none")
    assert dr.estimate_seconds(none, cost, n_val, n_test) == 40 * 1 + 4 * 5 + 2 * 20


def test_a_function_that_does_not_fit_is_compiled_not_run():
    import jax
    import jax.numpy as jnp

    fn = jax.jit(lambda x: jnp.sum(x @ x))
    unit = dr.measure_unit(fn, (jnp.ones((64, 64)),), repeats=1, budget=10)
    assert unit.bytes > 10 and unit.seconds is None
    unit = dr.measure_unit(fn, (jnp.ones((64, 64)),), repeats=2, budget=2**30)
    assert unit.seconds > 0


def test_cli_dry_run_prints_the_table_and_leaves_a_report_for_doctor(tmp_path, capsys):
    assert main(["reproduce", "table3", "--profile", "full", "--dry-run", "--steps", "1",
                 "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("| table3/mnist/sgd/") == 4 and "est. hours" in out
    assert list(tmp_path.rglob("*.pkl")) == []  # no result cached
    assert set(load_report(tmp_path)) == {"table3"}
    assert main(["reproduce", "fig2", "--profile", "smoke", "--dry-run"]) == 2
    assert "--profile full" in capsys.readouterr().err


def test_accelerator_path_counts_the_memory_of_the_whole_window_scan():
    """The scan an accelerator runs, compiled here at a small size: forward and reverse."""
    import jax

    spec = ex.experiment("table2", "smoke").runs[0]  # LeNet reweighting on digits, q = 385
    problem = ex.build_problem(spec)
    key = jax.random.key(0)
    state, phi = problem.init(key), problem.phi0
    for mode in ("forward", "reverse"):
        outer = gc.OuterConfig("glocal", total_steps=4, tau=4, sigma=3, m=1, mode=mode)
        assert dr.window_scan_bytes(problem, state, phi, key, outer) > 0
