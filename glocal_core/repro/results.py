"""Results of the paper's experiments, from the cache to numbers: the one entry point.

Import it as `import glocal_core.repro.results as gr`. Every chapter and the results page get an
experiment's results with `load(name, profile)`, which says whether they came from the
cache or were computed now. Then:

- `group_runs` sorts them into the paper's panels (`Panel`: data, task, model) and
  strategies, seeds in a list, keyed by `RunSpec.strategy_key`; `strategy_title` is what a
  reader sees for a key (glocal with the name of its estimator, e.g. `glocal (Eq. 14)`);
- `hyperparameter_curve`, `accuracy_curve`, `loss_curve` and `weighting_curve` reduce a
  strategy's runs to a `Curve`, mean ± std over seeds;
- `final` reduces them to a `Final`: the outcome the tables print.

`glocal_core.repro.quality` measures estimates against the global hypergradient,
`glocal_core.repro.tables` formats rows as tables and `glocal_core.repro.plotting` draws figures.
Everything here post-processes finished runs: nothing trains, nothing is cached.

Conventions, stated once:

- **Seeds.** `std` is the population standard deviation (`ddof=0`) over the runs that
  reached a point, so a single seed gives a band of width zero rather than NaN; `count` says
  how many runs each point averages.
- **Runs that stop early** (`OuterResult.stopped`, typically the global baseline diverging)
  keep their curves up to the stop, and are left out of every final number (accuracy, loss,
  hyperparameters): the last accuracy before a divergence is not that of a finished
  training run. Every table says how many runs finished.
- **Provenance.** `describe_data` names the data a run really used, and at `smoke` the
  paper's dataset it stands in for; `provenance` names profile, data, model and settings.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _estimators as _estimators
from . import experiments as ex
from .bench import METHOD as BENCHMARK_METHOD
from .. import MetaMLP, OuterResult, meta_network
from .experiments import DataSpec, Experiment

DATASET_TITLES = {
    "digits": "digits",
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "kmnist": "KMNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
}
TASK_TITLES = {"sgd": "SGD", "adam": "Adam", "reweighting": "reweighting"}
# How the chapters label a hyperparameter on an axis.
HYPERPARAMETER_TITLES = {
    "learning_rate": "learning rate",
    "momentum": "momentum",
    "weight_decay": "weight decay",
    "b1": "Adam β1",
    "b2": "Adam β2",
}
STRATEGY_ORDER = ("none", "local", "global", "glocal", "glocal-paper")
# How a reader is told each steady-state estimator (`_estimators.METHODS`) apart.
ESTIMATOR_TITLES = {
    "cv": "cross-validated",
    "paper": "Eq. 14",
    "mean": "window mean",
    "local": "last row",
    "fbdmd": "forward-backward DMD",
    "tlsdmd": "total-least-squares DMD",
    "affine": "affine fixed point",
    "rre": "reduced-rank extrapolation",
}


def estimator_title(method: str) -> str:
    """How captions name an estimator of `_estimators.METHODS`: `paper` → `Eq. 14`, `mean` →
    `window mean`; an unknown method keeps its name."""
    return ESTIMATOR_TITLES.get(method, method)


def strategy_title(key: str) -> str:
    """What a legend, table or caption shows for a strategy key (`RunSpec.strategy_key`):
    glocal names its estimator, so that the library's default is never taken for the paper's.

    `glocal` → `"glocal (cross-validated)"` while `_estimators.DEFAULT_METHOD` is `cv` (read at
    each call, so the title follows the default), `glocal-paper` → `"glocal (Eq. 14)"`,
    `glocal-<method>` → `"glocal (<estimator_title(method)>)"`; `none`, `local`, `global` and
    other keys unchanged.
    """
    if key == "glocal":
        method = _estimators.DEFAULT_METHOD
    elif key.startswith("glocal-"):
        method = key.removeprefix("glocal-")
    else:
        return key
    return f"glocal ({estimator_title(method)})"


def benchmark_title(key: str) -> str:
    """`strategy_title` of a strategy of Table 3's benchmark report, whose `glocal` runs the
    benchmark's estimator (`_bench.METHOD`, the paper's Eq. 14) whatever the default is."""
    return strategy_title(f"glocal-{BENCHMARK_METHOD}" if key == "glocal" else key)


def dataset_title(name: str) -> str:
    """The usual spelling of a dataset's name: `fashion_mnist` → `Fashion-MNIST`."""
    return DATASET_TITLES.get(name, name)


def describe_data(data: DataSpec) -> str:
    """The data a run used, for captions.

    E.g. `"digits (stand-in for MNIST)"`, `"imbalanced digits, f = 50 (stand-in for
    imbalanced CIFAR-10)"` or, at `full`, `"imbalanced CIFAR-10, f = 50"`.
    """
    text = dataset_title(data.name)
    if data.imbalance is not None:
        text = f"imbalanced {text}, f = {data.imbalance:g}"
    if data.stands_in_for is not None:
        paper = dataset_title(data.stands_in_for)
        if data.imbalance is not None:
            paper = f"imbalanced {paper}"
        text += f" (stand-in for {paper})"
    return text


def provenance(exp: Experiment) -> str:
    """One line naming what produced an experiment's numbers: profile, data, T, τ, σ, m and
    seeds (a setting that varies across runs is given as a set), or, for the `table3`
    benchmark, its workload."""
    if exp.bench is not None:
        b = exp.bench
        model = "MLP 784-32-10" if b.model == "mlp" else "LeNet"
        return (f"profile {exp.profile} · {model} on random 28×28 images (run time does not "
                f"depend on pixel values) · T = {b.steps}, τ = {b.tau}, σ = {b.sigma}, "
                f"m = {b.m}, batch {b.batch_size}, validation {b.val_size}")
    data = ", ".join(dict.fromkeys(describe_data(s.data) for s in exp.runs))
    models = ", ".join(dict.fromkeys(s.model_title for s in exp.runs))
    parts = [f"profile {exp.profile}", f"data: {data}", f"model: {models}"]
    for field, symbol in (("total_steps", "T"), ("tau", "τ"), ("sigma", "σ"), ("m", "m")):
        values = sorted({getattr(s.outer, field) for s in exp.runs})
        parts.append(f"{symbol} = {values[0]}" if len(values) == 1
                     else f"{symbol} ∈ {{{', '.join(map(str, values))}}}")
    parts.append(f"seeds: {len({s.seed for s in exp.runs})}")
    return " · ".join(parts)


def load(name: str, profile: str | None = None, **kwargs):
    """An experiment's results: `experiments.reproduce(name, profile)`, saying which runs
    were loaded from the cache and computing the missing ones (with progress bars).

    **Arguments:**

    - `name`: one of `experiments.EXPERIMENTS`.
    - `profile`: `smoke` or `full`; default `experiments.profile_from_env()`.
    - keyword arguments go to `reproduce` (e.g. `cache_dir`, `data_dir`).

    **Returns:** `{label: OuterResult}`, or for `table3` its benchmark report.
    """
    profile = ex.profile_from_env() if profile is None else profile
    exp = ex.experiment(name, profile)
    kwargs.pop("progress", None)
    cached = ex.reproduce(name, profile, progress=False, cached_only=True, **kwargs)
    total = 1 if exp.bench is not None else len(exp.runs)
    have = int(bool(cached)) if exp.bench is not None else len(cached)
    if have == total:
        print(f"{name} ({profile}): "
              + ("benchmark report" if exp.bench is not None else f"all {total} runs")
              + " loaded from the cache")
        return cached
    print(f"{name} ({profile}): {have} of {total} cached; computing the rest now "
          "(cached when done)")
    return ex.reproduce(name, profile, progress=True, **kwargs)


class Panel(NamedTuple):
    """One panel of a paper figure: a dataset and an inner optimizer (or the reweighting
    task), across strategies and seeds."""

    data: DataSpec
    task: str  # "sgd", "adam" or "reweighting"
    model: str = ""  # RunSpec.model_title; "" leaves it out of the title

    @classmethod
    def of(cls, spec) -> "Panel":
        """The panel a `RunSpec` belongs to."""
        return cls(spec.data, spec.optimizer if spec.task == "hpo" else spec.task,
                   spec.model_title)

    @property
    def title(self) -> str:
        """E.g. `"Fashion-MNIST, MLP 784-32-10, SGD"`."""
        task = "" if self.task == "reweighting" else f", {TASK_TITLES.get(self.task, self.task)}"
        model = f", {self.model}" if self.model else ""
        return describe_data(self.data) + model + task




def group_runs(
    exp: Experiment, results: Mapping[str, OuterResult]
) -> dict[Panel, dict[str, list[OuterResult]]]:
    """Sort `results` (`{label: OuterResult}` of `exp`; missing runs are left out) into
    `{Panel: {strategy: [OuterResult, ...]}}`: panels in the experiment's order, strategies
    in `STRATEGY_ORDER`, seeds in a list."""
    groups: dict[Panel, dict[str, list[OuterResult]]] = {}
    for spec in exp.runs:
        if spec.label not in results:
            continue
        panel = Panel.of(spec)
        groups.setdefault(panel, {}).setdefault(spec.strategy_key, []).append(
            results[spec.label]
        )
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    return {panel: dict(sorted(runs.items(), key=lambda kv: order.get(kv[0], len(order))))
            for panel, runs in groups.items()}


class Curve(NamedTuple):
    """Mean ± std over seeds along a shared x axis `(n,)`; `count`: the runs that reached
    each point."""

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray


def over_seeds(xs: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> Curve:
    """Mean and population std over runs of different lengths: one increasing `xs[r]`
    `(n_r,)` and one `values[r]` `(n_r, ...)` per run give a `Curve` on the union of the x
    values, each point averaging the runs that have it."""
    if len(xs) != len(values) or not xs:
        raise ValueError(f"need one x array per run and at least one run, got {len(xs)} x "
                         f"arrays and {len(values)} value arrays.")
    xs = [np.asarray(x) for x in xs]
    values = [np.asarray(v, dtype=float) for v in values]
    for x, v in zip(xs, values):
        if len(x) != len(v):
            raise ValueError(f"x has {len(x)} points but the values have {len(v)}.")
    grid = np.unique(np.concatenate(xs))
    tail = next((v.shape[1:] for v in values if len(v)), ())
    mean = np.full((len(grid), *tail), np.nan)
    std = np.full((len(grid), *tail), np.nan)
    count = np.zeros(len(grid), dtype=int)
    for i, point in enumerate(grid):
        stack = np.stack([v[x == point][0] for x, v in zip(xs, values) if np.any(x == point)])
        mean[i], std[i], count[i] = stack.mean(axis=0), stack.std(axis=0), len(stack)
    return Curve(grid, mean, std, count)


def _window_edges(r: OuterResult) -> tuple[np.ndarray, np.ndarray]:
    # Window s uses its values on [sτ, (s+1)τ): a staircase from 0 to the last step, with the
    # last value repeated at the end so that a `steps-post` line covers the whole run.
    if not len(r.step):
        return np.zeros(0, dtype=int), np.zeros((0, len(r.names)))
    x = np.concatenate([r.step - r.config.tau, r.step[-1:]])
    return x, np.concatenate([r.hyperparameters, r.hyperparameters[-1:]])


def hyperparameter_curve(runs: Sequence[OuterResult]) -> Curve:
    """The bounded hyperparameters over inner steps, mean ± std over seeds, `(n, q)`.

    `x` are window edges 0, τ, …, T: the values used in a window sit at its first step, and
    the last window's values are repeated at its end; draw with `steps-post`
    (`plotting.plot_mean_std(..., steps=True)`).
    """
    xs, values = zip(*(_window_edges(r) for r in runs))
    return over_seeds(xs, values)


def accuracy_curve(runs: Sequence[OuterResult]) -> Curve:
    """Test accuracy at the evaluation steps, mean ± std over seeds."""
    return over_seeds([r.eval_step for r in runs], [r.test_accuracy for r in runs])


def loss_curve(runs: Sequence[OuterResult], field: str = "val_loss") -> Curve:
    """`val_loss` or `train_loss` at the end of each window, mean ± std over seeds."""
    return over_seeds([r.step for r in runs], [getattr(r, field) for r in runs])


class Final(NamedTuple):
    """A strategy's outcome over seeds: final test accuracy and last-window hyperparameters
    `(q,)`, mean and std over the `finished` runs (NaN if none); estimator `fallbacks` and
    `windows` summed over all `runs`; mean `seconds` per run (training, playouts and DMD,
    not compilation); the reasons of the runs that `stopped` early."""

    accuracy_mean: float
    accuracy_std: float
    finished: int
    runs: int
    hyperparameters: np.ndarray
    hyperparameters_std: np.ndarray
    fallbacks: int
    windows: int
    seconds: float
    stopped: tuple[str, ...]


def final(runs: Sequence[OuterResult]) -> Final:
    """Reduce the runs of one strategy (one per seed) to a `Final`."""
    done = [r for r in runs if not r.stopped and len(r.test_accuracy)]
    accuracy = np.array([r.test_accuracy[-1] for r in done])
    q = len(runs[0].names)
    return Final(
        accuracy_mean=float(accuracy.mean()) if done else float("nan"),
        accuracy_std=float(accuracy.std()) if done else float("nan"),
        finished=len(done),
        runs=len(runs),
        hyperparameters=(np.mean([r.hyperparameters[-1] for r in done], axis=0) if done
                         else np.full(q, np.nan)),
        hyperparameters_std=(np.std([r.hyperparameters[-1] for r in done], axis=0) if done
                             else np.full(q, np.nan)),
        fallbacks=int(sum(np.sum(r.fallback) for r in runs)),
        windows=int(sum(len(r.step) for r in runs)),
        seconds=float(np.mean([np.sum(r.seconds_window + r.seconds_playout + r.seconds_estimate)
                               for r in runs])),
        stopped=tuple(r.stopped for r in runs if r.stopped),
    )


def weighting_function(phi) -> Callable[[np.ndarray], np.ndarray]:
    """The reweighting network μ_φ of Sec. 4.2 with the flat parameters `phi` (a row of a
    `table2` run's `OuterResult.phi`), as `weights(losses)`: NumPy in, NumPy out, values in
    (0, 1).

    The map back is the problem's own (`meta_network`), on a `MetaMLP` of the same shape: a
    `MetaMLP` 1 → h → 1 has `3h + 1` parameters, so `phi`'s length gives its width (385 for
    the paper's h = 128).
    """
    hidden, rest = divmod(np.size(phi) - 1, 3)
    if rest or hidden < 1 or np.ndim(phi) != 1:
        raise ValueError(f"phi has shape {np.shape(phi)}; a MetaMLP 1 -> h -> 1 has 3h + 1 "
                         "parameters in a flat vector.")
    template, network = meta_network(MetaMLP(key=jax.random.key(0), hidden=hidden))
    meta = network(jnp.asarray(phi, template.dtype))
    apply = eqx.filter_jit(lambda meta, losses: meta(losses))
    return lambda losses: np.asarray(apply(meta, jnp.asarray(losses, template.dtype)))


def weighting_curve(runs: Sequence[OuterResult], losses, *, window: int = -1) -> Curve:
    """μ_φ(L) on a grid of losses, mean ± std over seeds, with the φ of window `window`
    (`-1`: the last window's, i.e. the meta network that weighted the last τ steps; `0`: the
    initial one)."""
    losses = np.asarray(losses)
    weights = [weighting_function(r.phi[window])(losses) for r in runs if len(r.phi)]
    return over_seeds([losses] * len(weights), weights)


class UpdateRatios(NamedTuple):
    """How far a glocal run's updates moved from its local hypergradients, for one
    hyperparameter: `used` windows stepped with the estimate (of `windows`), and `ratios`
    holds |ĥ∞| / |h_τ| in those windows."""

    used: int
    windows: int
    ratios: np.ndarray


def update_ratios(runs: Sequence[OuterResult], name: str) -> UpdateRatios:
    """`UpdateRatios` of hyperparameter `name` pooled over `runs` (the seeds of a glocal
    strategy): the estimate each window stepped with against the local h_τ of the same window."""
    used, windows, ratios = 0, 0, []
    for r in runs:
        column, kept = r.names.index(name), ~np.asarray(r.fallback, bool)
        used, windows = used + int(kept.sum()), windows + len(kept)
        ratios.append(np.abs(r.hypergradient[kept, column] / r.local_hypergradient[kept, column]))
    return UpdateRatios(used, windows, np.concatenate(ratios) if ratios else np.zeros(0))
