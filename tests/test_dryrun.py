"""The `full` profile's dry run: every run at full size on this CPU, a step, its costs."""

import dataclasses

import numpy as np
import pytest

import glocal_core as gc
from glocal_core._idx import has_fashion_mnist_idx
from glocal_core.repro import dryrun as dr
from glocal_core.repro import unitcost as _unitcost
from glocal_core.repro import experiments as ex
from glocal_core.repro.cli import main
from glocal_core.repro.doctor import load_report

FULL = ("fig2", "fig3", "table2", "fig4", "table3")


@pytest.fixture(scope="module")
def full_dry_run(tmp_path_factory):
    """`full_dry_run(name)`: the dry run of experiment `name`'s first problem at one step,
    with its own empty cache directory, run once per module and shared by every test."""
    done = {}

    def get(name):
        if name not in done:
            tmp = tmp_path_factory.mktemp(name)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("GLOCAL_CACHE_DIR", str(tmp))
                done[name] = dr.dry_run(name, steps=1, data_dir=tmp / "tfds", progress=False,
                                        problems=1), tmp
        return done[name]

    return get


@pytest.mark.parametrize("name", FULL)
def test_dry_run_of_every_full_experiment_on_the_cpu(name, full_dry_run):
    """One step per function, at full size: fewer steps, never smaller problems; for CI time,
    the runs of each experiment's first problem (fig2: LeNet on Fashion-MNIST, all strategies;
    fig3: WideResNet-28-2 on CIFAR-10; table2: its reweighting on CIFAR-10, local and glocal)."""
    rows, tmp_path = full_dry_run(name)
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
        expected = "Debian files" if fmnist and has_fashion_mnist_idx() else "mock, real shapes"
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


@pytest.mark.parametrize("name", ["fig3", "table2"])
def test_full_wide_resnet_runs_fit_one_80_gib_gpu_and_the_cli_checks_it(
        name, full_dry_run, monkeypatch, capsys):
    """fig3's chunked validation gradient and table2's chunked pull-back: every run's peak
    under 80 GiB, so `--dry-run` exits 0 at the default limit; at 0.001 GiB it exits 1,
    naming the runs and the limit. The CLI reads the shared dry run instead of a second."""
    rows, _ = full_dry_run(name)
    assert rows and max(r.peak_bytes for r in rows) < 80 * 2**30, dr.format_dry_runs(rows)
    monkeypatch.setattr(dr, "dry_run", lambda *args, **kwargs: rows)
    monkeypatch.setattr("glocal_core.repro.doctor.save_report", lambda *args: None)
    command = ["reproduce", name, "--profile", "full", "--dry-run"]
    assert main(command) == 0
    assert main([*command, "--memory-limit", "0.001"]) == 1
    err = capsys.readouterr().err
    assert "over the memory limit of 0.001 GiB" in err
    assert all(f"{name}/{r.label} (" in err for r in rows)


def test_a_call_predicted_to_be_slow_is_compiled_not_timed():
    import jax
    import jax.numpy as jnp

    fn = jax.jit(lambda x: jnp.sum(x @ x))
    x = jnp.ones((64, 64))
    unit = dr.measure_unit(fn, (x,), repeats=1, budget=2**30, name="record", max_seconds=0)
    assert unit.seconds is None and unit.bytes > 0
    assert unit.why.startswith("record not timed: ") and "FLOP/s on this device" in unit.why
    # Predicted from a twin with more flops: over a limit that the function itself is under.
    seconds = dr.measure_unit(fn, (x,), repeats=1, budget=2**30, max_seconds=1e9).seconds
    assert seconds > 0
    big = (fn, (jnp.ones((2048, 2048)),))
    limit = 0.5 * 2 * 2048**3 / _unitcost.device_flops()
    assert dr.measure_unit(fn, (x,), repeats=1, budget=2**30, max_seconds=limit,
                           predict_from=big).seconds is None
    assert _unitcost.Prediction(2.1e12, 55e9).describe("record") == \
        "record not timed: 2.1 TFLOP, about 38 s at 55.0 GFLOP/s on this device"


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
        outer = gc.OuterConfig("glocal", total_steps=4, tau=4, sigma=3, m=1, mode=mode,
                               estimator=gc.EstimatorSettings(method="mean"))
        assert dr.window_scan_bytes(problem, state, phi, key, outer) > 0


def test_the_rate_a_network_achieved_predicts_its_next_call():
    """A timed call records the flop/s it ran at; a later call of the same network is
    predicted at the slowest recorded rate, so a device rate that errs short is corrected."""
    import jax
    import jax.numpy as jnp

    fn, x = jax.jit(lambda x: jnp.sum(x @ x)), jnp.ones((64, 64))
    observed: list[float] = []
    unit = dr.measure_unit(fn, (x,), repeats=2, budget=2**30, max_seconds=1e9,
                           observed=observed)
    assert unit.seconds > 0 and len(observed) == 1 and observed[0] > 0
    slow = [2 * 64**3 / 10.0]  # a rate at which one call takes 10 s
    unit = dr.measure_unit(fn, (x,), repeats=1, budget=2**30, name="step", max_seconds=5,
                           observed=slow)
    assert unit.seconds is None and unit.why.startswith("step not timed: ")
    assert dr.measure_unit(fn, (x,), repeats=1, budget=2**30, max_seconds=5,
                           predict_from=1.0).seconds > 0
