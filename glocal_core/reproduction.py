"""What the reproduction chapters need between `experiments.reproduce` and a figure.

A chapter loads an experiment's results (`{label: OuterResult}`), groups them into the
paper's panels (`group_runs`), reduces each panel to curves with mean ± std over seeds
(`hyperparameter_curve`, `accuracy_curve`, `weighting_curve`), draws them (`plot_runs`) and
tabulates the outcome beside the paper's numbers (`summary_table`, `table2`, `runtime_table`).
Everything here post-processes finished runs: nothing trains, and nothing is cached.

```python
exp = ex.experiment("fig2", PROFILE)
groups = group_runs(exp, ex.reproduce("fig2", PROFILE))
for panel, runs in groups.items():
    curve = hyperparameter_curve(runs["glocal"])  # mean ± std over seeds
```

Conventions:

- **Seeds.** `std` is the population standard deviation (`ddof=0`) over the runs that
  reached a step, so a single seed gives a band of width zero rather than NaN; `count` says
  how many runs each point averages.
- **Runs that stop early** (`OuterResult.stopped`, typically the global baseline diverging)
  keep their curves up to the stop, and are left out of final-accuracy averages: the last
  accuracy before a divergence is not the accuracy of a finished training run. Tables list
  how many runs finished.
- **Provenance.** `describe_data` names the data a run really used, and at `smoke` the
  paper's dataset it stands in for; every figure and table of a chapter carries it.
"""

import html
import textwrap
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from matplotlib.axes import Axes

from . import plotting as gplt
from . import experiments as ex
from .experiments import PAPER_TABLE2, PAPER_TABLE3, DataSpec, Experiment
from ._models import MetaMLP
from ._outer import OuterResult
from .analysis import relative_error as relative_error

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


def load_or_run(name: str, profile: str, **kwargs) -> dict:
    """`experiments.reproduce(name, profile)`, saying which: loaded from the cache, or
    computed (with progress bars) because runs were missing. Keyword arguments go to
    `reproduce` (e.g. `cache_dir`, `data_dir`).

    **Returns:** what `reproduce` returns.
    """
    exp = ex.experiment(name, profile)
    kwargs.pop("progress", None)
    cached = ex.reproduce(name, profile, progress=False, cached_only=True, **kwargs)
    where = kwargs.get("cache_dir") or ex.default_cache_dir()
    if exp.bench is not None:
        if cached:
            print(f"{name} ({profile}): benchmark report loaded from the cache ({where})")
            return cached
        print(f"{name} ({profile}): no cached benchmark; running it now")
    else:
        if len(cached) == len(exp.runs):
            print(f"{name} ({profile}): all {len(exp.runs)} runs loaded from the cache ({where})")
            return cached
        print(f"{name} ({profile}): {len(cached)} of {len(exp.runs)} runs cached; computing "
              f"the other {len(exp.runs) - len(cached)} now (they are cached when done)")
    return ex.reproduce(name, profile, progress=True, **kwargs)


def fallback_reasons(runs: Sequence[OuterResult]) -> dict[str, int]:
    """How often each reason for a fallback occurred over the windows of `runs`, the
    window-specific details in parentheses (e.g. the spectral radius) left out."""
    return dict(Counter(reason.split(" (")[0] for r in runs for reason in r.fallback_reason
                        if reason))


def estimator_usage(runs: Sequence[OuterResult]) -> str:
    """How often the runs' estimator stepped with its own estimate, and why it fell back
    elsewhere, e.g. `"paper: its estimate in 53 of 80 windows (66%) over 2 run(s); ..."`."""
    fell, windows = sum(int(np.sum(r.fallback)) for r in runs), sum(len(r.fallback) for r in runs)
    return (f"{runs[0].config.estimator}: its estimate in {windows - fell} of {windows} windows "
            f"({(windows - fell) / max(windows, 1):.0%}) over {len(runs)} run(s); fell back in "
            f"{fell}: {fallback_reasons(runs) or 'no fallbacks'}")


def panel_caption(panel: "Panel", profile: str, width: int = 48) -> str:
    """`plotting.caption` of a panel, wrapped to `width` characters for subplot titles."""
    return textwrap.fill(gplt.caption(profile, panel.title), width)


class Panel(NamedTuple):
    """One panel of a paper figure: a dataset and an inner optimizer (or the reweighting
    task), across strategies and seeds."""

    data: DataSpec
    task: str  # "sgd", "adam" or "reweighting"
    model: str = ""  # RunSpec.model_title; "" leaves it out of the title

    @property
    def title(self) -> str:
        """E.g. `"Fashion-MNIST, MLP 784-32-10, SGD"`."""
        task = "" if self.task == "reweighting" else f", {TASK_TITLES.get(self.task, self.task)}"
        model = f", {self.model}" if self.model else ""
        return describe_data(self.data) + model + task


def _panel(spec) -> Panel:
    return Panel(spec.data, spec.optimizer if spec.task == "hpo" else spec.task,
                 spec.model_title)


def group_runs(
    exp: Experiment, results: Mapping[str, OuterResult]
) -> dict[Panel, dict[str, list[OuterResult]]]:
    """Sort an experiment's results into panels and strategies, seeds in a list.

    **Arguments:**

    - `exp`: the `Experiment` the results belong to (for the specs behind the labels).
    - `results`: `{label: OuterResult}` as `experiments.reproduce` returns it; runs missing
        from it (e.g. `cached_only=True`) are left out.

    **Returns:**

    `{Panel: {strategy: [OuterResult, ...]}}` in the experiment's order, strategies in the
    order `none, local, global, glocal`.
    """
    groups: dict[Panel, dict[str, list[OuterResult]]] = {}
    for spec in exp.runs:
        if spec.label not in results:
            continue
        panel = _panel(spec)
        groups.setdefault(panel, {}).setdefault(spec.strategy_key, []).append(
            results[spec.label]
        )
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    return {panel: dict(sorted(runs.items(), key=lambda kv: order.get(kv[0], len(order))))
            for panel, runs in groups.items()}


class Curve(NamedTuple):
    """Mean ± std over seeds along a shared x axis.

    **Fields:** `x` `(n,)`; `mean`, `std` `(n, ...)`; `count` `(n,)`, the runs that reached
    each point.
    """

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray


def mean_std(xs: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> Curve:
    """Mean and population std over runs, per x, of runs that may have different lengths.

    **Arguments:**

    - `xs`: one increasing x array `(n_r,)` per run.
    - `values`: one array `(n_r, ...)` per run, matching its `xs`.

    **Returns:**

    A `Curve` on the union of the x values, each point averaging the runs that have it.
    """
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
    the last window's values are repeated at its end; draw with `steps-post` (as
    `plotting.plot_transitions` does).
    """
    xs, values = zip(*(_window_edges(r) for r in runs))
    return mean_std(xs, values)


def accuracy_curve(runs: Sequence[OuterResult]) -> Curve:
    """Test accuracy at the evaluation steps, mean ± std over seeds."""
    return mean_std([r.eval_step for r in runs], [r.test_accuracy for r in runs])


def loss_curve(runs: Sequence[OuterResult], field: str = "val_loss") -> Curve:
    """`val_loss` or `train_loss` at the end of each window, mean ± std over seeds."""
    return mean_std([r.step for r in runs], [getattr(r, field) for r in runs])


def hypergradient_errors(global_runs: Sequence[OuterResult]) -> dict[str, Curve]:
    """How far the local hypergradient and the glocal estimate are from the global one,
    window by window, mean ± std over seeds.

    A `global` run holds all three per window: `local_hypergradient` (h_τ), `estimate`
    (ĥ∞ of the window's DMD, h_τ where it fell back) and `hypergradient` (h_T of the playout,
    which the run followed). So both errors are measured on the same states, those of the
    global run. The last window is left out: it ends at T, where h_T is h_τ by definition.

    **Returns:** `{"local": Curve, "glocal": Curve}` of the relative errors over `step`.
    """
    if any(r.config.strategy != "global" for r in global_runs):
        raise ValueError("hypergradient_errors needs runs of the global strategy.")
    keep = [r.step < r.config.total_steps for r in global_runs]
    steps = [r.step[k] for r, k in zip(global_runs, keep)]
    return {
        "local": mean_std(steps, [relative_error(r.local_hypergradient[k], r.hypergradient[k])
                                  for r, k in zip(global_runs, keep)]),
        "glocal": mean_std(steps, [relative_error(r.estimate[k], r.hypergradient[k])
                                   for r, k in zip(global_runs, keep)]),
    }


class Final(NamedTuple):
    """A strategy's outcome over seeds. **Fields:** `accuracy_mean`, `accuracy_std` (over
    the `finished` runs; NaN if none finished), `finished`, `runs`, `hyperparameters` (mean of
    the last window's values over finished runs, `(q,)`), `fallbacks`, `windows` (DMD
    fallbacks and windows, summed over runs), `seconds` (mean training + playout + DMD time
    per run, compilation excluded), `stopped` (the reasons of runs that stopped early)."""

    accuracy_mean: float
    accuracy_std: float
    finished: int
    runs: int
    hyperparameters: np.ndarray
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
        fallbacks=int(sum(np.sum(r.fallback) for r in runs)),
        windows=int(sum(len(r.step) for r in runs)),
        seconds=float(np.mean([np.sum(r.seconds_window + r.seconds_playout + r.seconds_dmd)
                               for r in runs])),
        stopped=tuple(r.stopped for r in runs if r.stopped),
    )


def format_mean_std(mean: float, std: float, n: int, digits: int = 3) -> str:
    """`"0.912 ± 0.004"`, `"0.912"` for one run, `"–"` for none."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


class Table(NamedTuple):
    """A small table that renders as HTML in Jupyter and the book and as text elsewhere.

    **Fields:** `columns` (headers), `rows` (lists of cell strings), `caption`.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in self.rows)
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        widths = [max(len(str(c)) for c in column) for column in zip(self.columns, *self.rows)]
        lines = [self.caption] if self.caption else []
        for row in (self.columns, *self.rows):
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def setup_table(exp: Experiment) -> Table:
    """What an experiment runs, one row per panel: data, model, inner optimizer (initial
    values, those learned marked with *), strategies, seeds, T / τ / σ / m, the outer Adam's
    learning rate and the batch size."""
    rows: dict[Panel, list] = {}
    for spec in exp.runs:
        panel = _panel(spec)
        model = spec.model_title
        if spec.task == "hpo":
            inner = TASK_TITLES[spec.optimizer] + ": " + ", ".join(
                f"{HYPERPARAMETER_TITLES.get(n, n)} {v:g}" + ("*" if n in spec.learn else "")
                for n, v in spec.initial)
        else:
            inner = "SGD lr 0.01, momentum 0.9; meta network* (q = 385)"
        o = spec.outer
        row = rows.setdefault(panel, [describe_data(spec.data), model, inner, [], [],
                                      f"{o.total_steps} / {o.tau} / {o.sigma} / {o.m}",
                                      f"{o.outer_lr:g}", str(spec.batch_size)])
        for i, value in ((3, spec.strategy_key), (4, str(spec.seed))):
            if value not in row[i]:
                row[i].append(value)
    table = [tuple(", ".join(c) if isinstance(c, list) else c for c in row)
             for row in rows.values()]
    columns = ("data", "model", "inner optimizer (* learned)", "strategies", "seeds",
               "T / τ / σ / m", "outer lr", "batch")
    return Table(columns, tuple(table), f"{exp.name}, profile {exp.profile}: {exp.description}")


def summary_table(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]], *,
                  caption: str = "") -> Table:
    """One row per panel and strategy: final test accuracy (mean ± std over finished runs),
    finished runs, final hyperparameters, fallbacks of the estimator, seconds per run."""
    rows = []
    for panel, runs in groups.items():
        for strategy, results in runs.items():
            f = final(results)
            names = results[0].names
            values = ("(385 meta-network weights)" if names and names[0].startswith("meta_")
                      else ", ".join(f"{HYPERPARAMETER_TITLES.get(n, n)} {v:.3g}"
                                     for n, v in zip(names, f.hyperparameters)))
            dmd = (f"{f.fallbacks}/{f.windows}" if strategy.startswith(("glocal", "global")) else "")
            rows.append((panel.title, strategy, f"{f.finished}/{f.runs}",
                         format_mean_std(f.accuracy_mean, f.accuracy_std, f.finished),
                         values, dmd, f"{f.seconds:.1f}"))
    columns = ("data", "strategy", "finished", "final test accuracy",
               "final hyperparameters (mean)", "estimator fallbacks / windows", "seconds per run")
    return Table(columns, tuple(rows), caption)


def table2(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]], *,
           caption: str = "") -> Table:
    """The paper's Table 2 beside ours: final test accuracy of local and glocal per
    (dataset, imbalance factor), ours with mean ± std over finished seeds."""
    rows = []
    for panel, runs in groups.items():
        ours = {s: final(runs[s]) for s in ("local", "glocal") if s in runs}
        paper = PAPER_TABLE2.get((panel.data.paper_name, panel.data.imbalance))
        cell = {s: format_mean_std(f.accuracy_mean, f.accuracy_std, f.finished)
                for s, f in ours.items()}
        rows.append((
            describe_data(panel.data),
            cell.get("local", "–"), cell.get("glocal", "–"),
            f"{dataset_title(panel.data.paper_name)} / {panel.data.imbalance:g}",
            *(f"{v:.3f}" for v in (paper if paper else (np.nan, np.nan))),
        ))
    columns = ("our data", "ours: local", "ours: glocal", "paper: dataset / f",
               "paper: local", "paper: glocal")
    return Table(columns, tuple(rows), caption)


def runtime_table(report: Mapping, *, caption: str = "") -> Table:
    """Table 3 beside ours: seconds per strategy and their ratio to plain training
    (`none`), from a benchmark report of `experiments.reproduce("table3")`."""
    ours, paper = report["seconds"], PAPER_TABLE3
    rows = tuple(
        (s, f"{ours[s]:.2f}", f"{ours[s] / ours['none']:.2f}", f"{paper[s]:.1f}",
         f"{paper[s] / paper['none']:.2f}")
        for s in STRATEGY_ORDER if s in ours
    )
    return Table(("strategy", "ours: seconds", "ours: × none", "paper: seconds",
                  "paper: × none"), rows, caption)


def runtime_ratios(report: Mapping) -> Table:
    """The three ratios that carry Table 3's argument, ours beside the paper's, with the
    step-count prediction for global / glocal."""
    ours, paper = report["seconds"], PAPER_TABLE3
    rows = []
    for a, b in (("glocal", "local"), ("global", "glocal"), ("glocal", "none")):
        predicted = (f"{report['predicted_global/glocal']:.2f}" if (a, b) == ("global", "glocal")
                     else "")
        rows.append((f"{a} / {b}", f"{ours[a] / ours[b]:.2f}", predicted,
                     f"{paper[a] / paper[b]:.2f}"))
    return Table(("ratio", "ours", "ours: step-count prediction", "paper"), tuple(rows))


def weighting_function(phi, *, hidden: int = 128) -> Callable[[np.ndarray], np.ndarray]:
    """The reweighting network μ_φ of Sec. 4.2 with the flat parameters `phi`, as a function
    from per-example losses to weights in (0, 1).

    `phi` is a row of `OuterResult.phi` of a `table2` run: `reweighting_problem` flattens the
    inexact arrays of a `MetaMLP` with `ravel_pytree`, and this undoes that flattening on a
    `MetaMLP` of the same shape (its initial values are replaced, so its key does not matter).

    **Arguments:**

    - `phi`: the flat meta parameters, `(385,)` for `hidden=128`.
    - `hidden`: the width of the `MetaMLP` the run used.

    **Returns:**

    `weights(losses)`: NumPy in, NumPy out, the shape of `losses`.
    """
    template, static = eqx.partition(MetaMLP(key=jax.random.key(0), hidden=hidden),
                                     eqx.is_inexact_array)
    flat, unravel = ravel_pytree(template)
    phi = jnp.asarray(phi, flat.dtype)
    if phi.shape != flat.shape:
        raise ValueError(f"phi has shape {phi.shape}, but a MetaMLP with hidden={hidden} has "
                         f"{flat.size} parameters.")
    meta = eqx.combine(unravel(phi), static)
    apply = eqx.filter_jit(lambda meta, losses: meta(losses))
    return lambda losses: np.asarray(apply(meta, jnp.asarray(losses, flat.dtype)))


def weighting_curve(runs: Sequence[OuterResult], losses, *, window: int = -1) -> Curve:
    """μ_φ(L) on a grid of losses, mean ± std over seeds, with the φ of window `window`
    (`-1`: the last window's, i.e. the meta network that weighted the last τ steps; `0`: the
    initial one)."""
    losses = np.asarray(losses)
    weights = [weighting_function(r.phi[window])(losses) for r in runs if len(r.phi)]
    return mean_std([losses] * len(weights), weights)


def plot_runs(axes: Sequence[Axes], runs: Mapping[str, Sequence[OuterResult]]) -> None:
    """Fill a row of axes for one panel: test accuracy in `axes[0]`, then one hyperparameter
    per axis (the paper's Figures 2, 3 and C.1–C.4), every strategy in its colour, mean ± std
    over seeds; a dotted vertical line where a run stopped early.

    **Arguments:**

    - `axes`: `1 + q` axes.
    - `runs`: `{strategy: [OuterResult, ...]}`, one panel of `group_runs`.
    """
    names = next(iter(runs.values()))[0].names
    if len(axes) != 1 + len(names):
        raise ValueError(f"need 1 + q = {1 + len(names)} axes, got {len(axes)}.")
    for strategy, results in runs.items():
        acc = accuracy_curve(results)
        gplt.plot_mean_std(axes[0], acc.x, acc.mean, acc.std, strategy, label=strategy,
                           marker="o" if len(acc.x) < 30 else None)
        hp = hyperparameter_curve(results)
        for i, ax in enumerate(axes[1:]):
            gplt.plot_transitions(ax, hp.x, hp.mean[:, i], hp.std[:, i], strategy)
        stops = [r.step[-1] if len(r.step) else 0 for r in results if r.stopped]
        for ax in axes:
            gplt.plot_stops(ax, stops, strategy)
    axes[0].set(xlabel="inner step", ylabel="test accuracy")
    for ax, name in zip(axes[1:], names):
        ax.set(xlabel="inner step", ylabel=HYPERPARAMETER_TITLES.get(name, name))
