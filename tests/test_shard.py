"""`reproduce NAME --shard K/N`: two processes share a cache, a third call collects."""

import subprocess
import sys
import textwrap

import pytest

from glocal_core.repro import configs as _configs, shard as _shard
from glocal_core.repro import experiments as ex
from glocal_core.repro.cli import main

pytest.importorskip("tensorflow_datasets")

# Four tiny digits runs stand in for an experiment (the CLI process patches them in).
_PATCH = textwrap.dedent("""
    import dataclasses, sys
    import glocal_core as gc
    from glocal_core.repro import configs as _configs
    from glocal_core.repro import experiments as ex
    from glocal_core.repro.cli import main

    fig2 = _configs._fig2

    def tiny(profile):
        spec = fig2("smoke")[0]
        outer = gc.OuterConfig("glocal", total_steps=8, tau=4, sigma=3, m=1, eval_every=1,
                                estimator=gc.EstimatorSettings(method="mean"))
        return [dataclasses.replace(spec, data=ex.DataSpec("digits", (28, 28, 1)),
                                    outer=outer, seed=seed) for seed in range(4)]

    _configs._fig2 = tiny
    sys.exit(main(sys.argv[1:]))
""")


def _tiny_runs():
    namespace = {}
    exec(_PATCH.split("_configs._fig2 = tiny")[0], namespace)
    return namespace["tiny"]("smoke")


def test_shard_parsing_refuses_bad_input():
    assert _shard.parse_shard("1/4") == (1, 4)
    for bad, reason in (("4/4", "0..3"), ("0/0", "at least one"), ("1-4", "K/N"),
                        ("a/2", "K/N"), ("-1/2", "K/N")):
        with pytest.raises(ValueError, match=reason):
            _shard.parse_shard(bad)
    assert main(["reproduce", "fig2", "--shard", "2/2", "--list"]) == 2


def test_the_benchmark_belongs_to_shard_zero(tmp_path, capsys):
    # Shard 1 neither computes nor prints table3; it must not fail on the empty report.
    assert main(["reproduce", "table3", "--shard", "1/2", "--cache-dir", str(tmp_path)]) == 0
    assert "shard 0" in capsys.readouterr().out
    assert not any(tmp_path.rglob("*.pkl"))


def test_every_run_belongs_to_exactly_one_shard():
    runs = ex.experiment("fig2", "full").runs
    shards = [_shard.shard_runs(runs, k, 5) for k in range(5)]
    assert sorted(s.label for shard in shards for s in shard) == sorted(s.label for s in runs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_two_shard_processes_then_a_collecting_call_that_computes_nothing(tmp_path, monkeypatch):
    script = tmp_path / "cli.py"
    script.write_text(_PATCH)
    cache = tmp_path / "cache"
    shards = [subprocess.Popen([sys.executable, str(script), "reproduce", "fig2", "--profile",
                                "smoke", "--shard", f"{k}/2", "--cache-dir", str(cache)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for k in range(2)]
    outputs = [p.communicate(timeout=300) for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    runs = _tiny_runs()
    for k, (out, _) in enumerate(outputs):  # each shard computed its own two runs only
        mine = {spec.label for spec in _shard.shard_runs(runs, k, 2)}
        labels = {spec.label for spec in runs}  # the first column of the printed table
        printed = {word for word in (line.split()[0] for line in out.splitlines() if line.strip())
                   if word in labels}
        assert printed == mine
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert len(files) == 4 and not any(f.endswith(".ckpt") for f in files)

    monkeypatch.setattr(_configs, "_fig2", lambda profile: runs)
    monkeypatch.setattr(ex, "run_outer", lambda *a, **k: pytest.fail("a run was recomputed"))
    results = ex.reproduce("fig2", "smoke", cache_dir=cache, progress=False)
    assert set(results) == {spec.label for spec in runs}
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == files
