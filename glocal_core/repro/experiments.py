"""The paper's experiments, run: every run cached on disk under a hash of its spec.

An experiment (`fig2`, `fig3`, `table2`, `fig4`, `table3`, `fidelity`; see `EXPERIMENTS` and
`DESCRIPTIONS`) is a list of `RunSpec`s: one outer-loop run each, fully described by a frozen
dataclass (data, model, inner optimizer, `OuterConfig`, seed). What each experiment runs at
each profile, and the settings the paper leaves open, are in `_configs`; this module runs
them, and

- a finished run is never recomputed (`run` loads it);
- a long run checkpoints every few windows and when interrupted, and resumes from there to
  the identical result;
- an experiment interrupted halfway keeps every run it finished.

`glocal_core.repro.results.load` is how the chapters call `reproduce`.
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

from .bench import run_bench
from .configs import BENCH_VERSION as BENCH_VERSION
from .configs import CACHE_VERSION as CACHE_VERSION
from .configs import DESCRIPTIONS as DESCRIPTIONS
from .configs import EXPERIMENTS as EXPERIMENTS
from .configs import PAPER_FIG3 as PAPER_FIG3
from .configs import PAPER_TABLE2 as PAPER_TABLE2
from .configs import PAPER_ESTIMATOR as PAPER_ESTIMATOR
from .configs import PAPER_TABLE3 as PAPER_TABLE3
from .configs import PROFILES as PROFILES
from .configs import SMOKE_STEPS as SMOKE_STEPS
from .configs import DataSpec as DataSpec
from .configs import Experiment as Experiment
from .configs import RunSpec as RunSpec
from .configs import check_profile as check_profile
from .configs import experiment as experiment
from .configs import profile_from_env as profile_from_env
from .. import (
    MLP,
    BilevelProblem,
    LeNet,
    MetaMLP,
    OuterResult,
    SmallCNN,
    Splits,
    WideResNet,
    adam,
    classification_problem,
    load_dataset,
    reweighting_problem,
    run_outer,
    sgd,
    to_device,
)
from .._data import NUM_CLASSES
from .._io import load_pickle, save_pickle


def default_cache_dir() -> Path:
    """`$GLOCAL_CACHE_DIR`, else `~/.cache/glocal_core` (the Makefile uses `_build/cache`)."""
    env = os.environ.get("GLOCAL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "glocal_core"


# --- running ----------------------------------------------------------------------------


def build_problem(spec: RunSpec, *, data_dir: str | os.PathLike | None = None,
                  splits: Splits | None = None) -> BilevelProblem:
    """The `BilevelProblem` of `spec`: data loaded (and put on the device), model built.

    `splits` replaces the loaded data (the dry run's arrays of the real shapes).
    Raises `DatasetNotPreparedError` (naming the command that prepares it) for a tfds dataset
    that is not prepared under `data_dir` / `$TFDS_DATA_DIR`.
    """
    if splits is None:
        kwargs = dict(seed=spec.seed, val_size=spec.data.val_size, imbalance=spec.data.imbalance)
        if spec.data.name == "digits":
            kwargs["image_shape"] = spec.data.image_shape or (28, 28, 1)
        else:
            kwargs["data_dir"] = data_dir
        splits = load_dataset(spec.data.name, **kwargs)
    splits = to_device(splits)
    train, val, test = ((d.images, d.labels) for d in (splits.train, splits.val, splits.test))
    model_key, meta_key = jr.split(jr.key(spec.seed))
    shape = train[0].shape[1:]
    num_classes = NUM_CLASSES.get(spec.data.name, 10)
    if spec.model == "lenet":
        model = LeNet(key=model_key, in_channels=shape[-1], image_size=shape[0],
                      num_classes=num_classes)
    elif spec.model == "mlp":
        model = MLP(key=model_key, in_features=int(np.prod(shape)), num_classes=num_classes)
    elif spec.model == "cnn":
        model = SmallCNN(key=model_key, width=spec.width, in_channels=shape[-1],
                         image_size=shape[0], num_classes=num_classes)
    elif spec.model == "wrn":
        model = WideResNet(spec.depth, spec.width, key=model_key, num_classes=num_classes,
                           in_channels=shape[-1])
    else:
        raise ValueError(f"Unknown model {spec.model!r}: choose 'lenet', 'mlp', 'cnn' or 'wrn'.")
    if spec.task == "reweighting":
        return reweighting_problem(model, MetaMLP(key=meta_key), train, val, test,
                                   batch_size=spec.batch_size, val_chunk=spec.val_chunk)
    factory = {"sgd": sgd, "adam": adam}[spec.optimizer]
    optimizer = factory(**dict(spec.initial), learn=spec.learn)
    return classification_problem(model, train, val, test, optimizer,
                                  batch_size=spec.batch_size, val_chunk=spec.val_chunk)


def result_path(spec: RunSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `run` caches `spec`'s result: `<cache>/<profile>/<experiment>/<label>-<hash>.pkl`."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = spec.label.replace("/", "_") + f"-{spec.digest()}.pkl"
    return root / spec.profile / spec.experiment / name


def load_result(spec: RunSpec, cache_dir: str | os.PathLike | None = None) -> OuterResult | None:
    """The cached result of `spec`, or `None` if it has not been run."""
    path = result_path(spec, cache_dir)
    return load_pickle(path)["result"] if path.exists() else None


def run(
    spec: RunSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    checkpoint_every: int = 10,
    callback=None,
) -> OuterResult:
    """The result of `spec`: from the cache if it is there, else computed and cached.

    The computation checkpoints every `checkpoint_every` windows (and when interrupted) next
    to the result file and resumes from that checkpoint when called again.
    `callback` is passed to `run_outer`.
    """
    path = result_path(spec, cache_dir)
    cached = load_result(spec, cache_dir)
    if cached is not None:
        return cached
    problem = build_problem(spec, data_dir=data_dir)
    checkpoint = path.with_suffix(".ckpt")
    result = run_outer(problem, spec.outer, key=jr.fold_in(jr.key(spec.seed), 1),
                       progress=progress, desc=spec.label, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, callback=callback)
    save_pickle(path, {"spec": spec, "result": result,
                       "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})"})
    checkpoint.unlink(missing_ok=True)
    return result


def _bench_path(exp: Experiment, cache_dir) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    text = json.dumps([CACHE_VERSION, BENCH_VERSION, dataclasses.asdict(exp.bench),
                       jax.default_backend()], sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return root / exp.profile / exp.name / f"bench-{jax.default_backend()}-{digest}.pkl"


def reproduce(
    name: str,
    profile: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    cached_only: bool = False,
) -> dict:
    """Run (or load) every run of experiment `name` at `profile`.

    **Returns:** `{label: OuterResult}` for run experiments, the benchmark report (a dict,
    see `run_bench`) for `table3`. With `cached_only`, nothing is computed: missing runs are
    left out (`table3`: `{}` if not cached).
    """
    exp = experiment(name, profile)
    if exp.bench is not None:
        path = _bench_path(exp, cache_dir)
        if path.exists():
            return load_pickle(path)
        if cached_only:
            return {}
        report = run_bench(exp.bench, progress=progress)
        save_pickle(path, report)
        return report
    results = {}
    bar = tqdm(exp.runs, desc=f"{name} ({exp.profile})", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.label)
        if cached_only:
            result = load_result(spec, cache_dir)
            if result is not None:
                results[spec.label] = result
        else:
            results[spec.label] = run(spec, cache_dir=cache_dir, data_dir=data_dir,
                                      progress=progress)
    return results
