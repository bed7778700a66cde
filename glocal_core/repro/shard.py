"""Splitting an experiment's runs across N processes that share one cache directory.

Run i of an experiment (in `experiment(name).runs` order) belongs to shard i mod N, so every
run is computed by exactly one shard, and, since each run has its own result and checkpoint
file, no two shards ever write the same file. A Slurm job array (`--array=0-3` with
`--shard $SLURM_ARRAY_TASK_ID/4`) or one process per GPU (`CUDA_VISIBLE_DEVICES=k`) runs the
shards; a later `reproduce NAME` without `--shard` finds every run cached and computes
nothing.
"""

import os

from . import experiments as ex
def parse_shard(text: str) -> tuple[int, int]:
    """`"K/N"` → `(K, N)`, with 0 ≤ K < N; anything else is a `ValueError` saying why."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--shard {text!r}: write K/N with integers, e.g. 0/4 for the first "
                         "of four shards ($SLURM_ARRAY_TASK_ID/N in a Slurm array).")
    k, n = (int(p) for p in parts)
    if n < 1:
        raise ValueError(f"--shard {text!r}: N = {n}, need at least one shard.")
    if not 0 <= k < n:
        raise ValueError(f"--shard {text!r}: K = {k} must be in 0..{n - 1} (shards count "
                         "from 0, like Slurm's array indices).")
    return k, n


def shard_runs(runs, shard: int, num_shards: int) -> list:
    """The runs of shard `shard` of `num_shards`: every `num_shards`-th, from index `shard`."""
    return [spec for i, spec in enumerate(runs) if i % num_shards == shard]


def reproduce_shard(name: str, profile: str | None, shard: int, num_shards: int, *,
                    cache_dir: str | os.PathLike | None = None,
                    data_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> dict:
    """Run (or load) this shard's runs of experiment `name`; `{label: OuterResult}`.

    `table3`, a single benchmark, belongs to shard 0 (its report is returned there; `{}`
    elsewhere)."""
    exp = ex.experiment(name, profile)
    if exp.bench is not None:
        return ex.reproduce(name, profile, cache_dir=cache_dir, progress=progress) \
            if shard == 0 else {}
    return {spec.label: ex.run(spec, cache_dir=cache_dir, data_dir=data_dir, progress=progress)
            for spec in shard_runs(exp.runs, shard, num_shards)}
