"""`python -m glocal_core doctor` tells the truth about this machine."""

import os
import subprocess
import sys

import jax
import pytest

import glocal_core as gc
from glocal_core._idx import has_fashion_mnist_idx
from glocal_core.repro import doctor as _doctor, dryrun as _dryrun
from glocal_core.repro import experiments as ex


def test_doctor_reports_this_machine(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "glocal_core", "doctor", "--cache-dir", str(tmp_path / "cache"),
         "--data-dir", str(tmp_path / "tfds")],
        capture_output=True, text=True, check=True, env={**os.environ, "JAX_PLATFORMS": ""},
    ).stdout
    if jax.default_backend() == "cpu":
        assert "no GPU: CPU backend" in out or "JAX uses the CPU" in out
    assert "precision: float32" in out
    if has_fashion_mnist_idx():
        assert "fashion_mnist: Debian files" in out
    elif os.environ.get("GLOCAL_REQUIRE_DATA") == "1":
        pytest.fail("GLOCAL_REQUIRE_DATA=1 but Fashion-MNIST's IDX files are missing")
    command = f"python -m glocal_core data prepare cifar10 --data-dir {tmp_path / 'tfds'}"
    assert f"cifar10: missing" in out and command in out
    assert "no runs cached yet" in out
    assert "fig3: not estimated" in out


def test_doctor_counts_cached_runs_and_reads_dry_run_estimates(tmp_path):
    folder = tmp_path / "smoke" / "fig2"
    folder.mkdir(parents=True)
    (folder / "a.pkl").write_bytes(b"")
    (folder / "b.ckpt").write_bytes(b"")
    row = _dryrun.DryRun("table3", "mnist/sgd/none/seed0", "mock, real shapes", 0.1, 1.0,
                         2**30, "XLA", 2**34, 7200.0, True, "")
    _doctor.save_report("table3", [row, row._replace(complete=False)], tmp_path)
    text = _doctor.doctor(cache_dir=tmp_path, data_dir=tmp_path)
    assert "smoke/fig2: 1 cached, 1 checkpointed" in text
    assert "table3: ≥ 4.0 h for 2 runs" in text
    assert ex.default_cache_dir() != tmp_path
