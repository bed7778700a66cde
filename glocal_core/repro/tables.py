"""The book's tables: one `Table`, Markdown in the book and Jupyter, plain text in a terminal.

Import it as `import glocal_core.repro.tables as gt`. Each builder takes the numeric rows of
`glocal_core.repro.results` and `glocal_core.repro.quality` and formats them; none computes a result.
Pass each table the line that names the profile, data and settings that produced it
(`results.provenance(experiment)`) as its `caption`: the chapters never show one without.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .. import OuterResult
from .experiments import NUM_CLASSES, PAPER_TABLE2, PAPER_TABLE3, Experiment
from .quality import QualitySummary
from .spectra import DMDGridRow, SpectraRow
from ..estimators import USES
from .usage import usage
from .results import (
    HYPERPARAMETER_TITLES,
    STRATEGY_ORDER,
    TASK_TITLES,
    Panel,
    benchmark_title,
    describe_data,
    estimator_title,
    final,
    provenance,
    strategy_title,
    update_ratios,
    weighting_curve,
)


class Table(NamedTuple):
    """A table. **Fields:** `columns` (headers), `rows` (tuples of cell strings), `caption`
    (shown in italics above it). Jupyter and the book render `_repr_markdown_`; `str` gives
    aligned plain text for a terminal."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""

    def markdown(self) -> str:
        def cell(value) -> str:
            return str(value).replace("|", "\\|").replace("\n", " ")

        lines = [f"*{cell(self.caption)}*", ""] if self.caption else []
        lines += ["| " + " | ".join(map(cell, self.columns)) + " |",
                  "| " + " | ".join("---" for _ in self.columns) + " |"]
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in self.rows]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def __str__(self) -> str:
        widths = [max(len(str(c)) for c in column) for column in zip(self.columns, *self.rows)]
        lines = [self.caption] if self.caption else []
        for row in (self.columns, *self.rows):
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        return "\n".join(lines)

    __repr__ = __str__


def from_dicts(rows: Sequence[Mapping], caption: str = "") -> Table:
    """A `Table` of dict rows, columns in first-seen order; floats to four digits."""
    columns = tuple(dict.fromkeys(k for row in rows for k in row))

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return Table(columns, tuple(tuple(cell(row.get(c, "")) for c in columns) for row in rows),
                 caption)


def plus_minus(mean: float, std: float, n: int, digits: int = 3) -> str:
    """`"0.912 ± 0.004"`, `"0.912"` for one run, `"–"` for none."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def _uses(u) -> str:
    return " / ".join(f"{u.share(use):.0%}" for use in USES)


def estimator_usage(runs: Sequence[OuterResult]) -> str:
    """What the runs' estimates took, over every (window, hyperparameter) pair, and why they
    did not extrapolate, e.g. `"paper (Eq. 14) over 2 run(s), 160 window × hyperparameter
    entries: extrapolated / mean / local 66% / 0% / 34%; not extrapolated: no eigenvalue
    near 1: 54"`."""
    u, method = usage(runs), runs[0].config.estimator.method
    reasons = "; ".join(f"{k}: {n}" for k, n in u.reasons.items()) or "none"
    return (f"{method} ({estimator_title(method)}) over {len(runs)} run(s), {u.entries} "
            f"window × hyperparameter entries: extrapolated / mean / local {_uses(u)}; "
            f"not extrapolated: {reasons}")


def setup_table(exp: Experiment) -> Table:
    """What an experiment runs, one row per panel: data, model, inner optimizer (initial
    values, those learned marked with *), strategies, seeds, T / τ / σ / m, the outer Adam's
    learning rate and the batch size."""
    rows: dict[Panel, list] = {}
    for spec in exp.runs:
        if spec.task == "hpo":
            inner = TASK_TITLES[spec.optimizer] + ": " + ", ".join(
                f"{HYPERPARAMETER_TITLES.get(n, n)} {v:g}" + ("*" if n in spec.learn else "")
                for n, v in spec.initial)
        else:
            inner = "SGD lr 0.01, momentum 0.9; meta network* (q = 385)"
        o = spec.outer
        row = rows.setdefault(Panel.of(spec), [
            describe_data(spec.data), spec.model_title, inner, [], [],
            f"{o.total_steps} / {o.tau} / {o.sigma} / {o.m}", f"{o.outer_lr:g}",
            str(spec.batch_size)])
        for i, value in ((3, strategy_title(spec.strategy_key)), (4, str(spec.seed))):
            if value not in row[i]:
                row[i].append(value)
    columns = ("data", "model", "inner optimizer (* learned)", "strategies", "seeds",
               "T / τ / σ / m", "outer lr", "batch")
    return Table(columns, tuple(tuple(", ".join(c) if isinstance(c, list) else c for c in row)
                                for row in rows.values()),
                 f"{exp.name}, profile {exp.profile}: {exp.description}")


def summary_table(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]], *,
                  caption: str = "") -> Table:
    """One row per panel and strategy: final test accuracy and hyperparameters (mean ± std
    over the finished runs), finished runs, the estimator's fallbacks, seconds per run."""
    rows = []
    for panel, runs in groups.items():
        for strategy, results in runs.items():
            f = final(results)
            names = results[0].names
            values = ("(385 meta-network weights)" if names and names[0].startswith("meta_")
                      else ", ".join(f"{HYPERPARAMETER_TITLES.get(n, n)} {v:.3g}"
                                     + (f" ± {s:.2g}" if f.finished > 1 else "")
                                     for n, v, s in zip(names, f.hyperparameters,
                                                        f.hyperparameters_std)))
            dmd = f"{f.fallbacks}/{f.windows}" if strategy.startswith(("glocal", "global")) else ""
            rows.append((panel.title, strategy_title(strategy), f"{f.finished}/{f.runs}",
                         plus_minus(f.accuracy_mean, f.accuracy_std, f.finished),
                         values, dmd, f"{f.seconds:.1f}"))
    columns = ("data", "strategy", "finished", "final test accuracy", "final hyperparameters",
               "estimator fallbacks / windows", "seconds per run")
    return Table(columns, tuple(rows), caption)


def runs_table(exp: Experiment, results: Mapping[str, OuterResult]) -> Table:
    """One row per run of `exp` in `results` (what `reproduce` prints): its strategy (with
    glocal's estimator), windows, final test accuracy and hyperparameters (`results.final` of
    the run alone), estimator fallbacks, seconds, and why it stopped early if it did."""
    rows = []
    for spec in (s for s in exp.runs if s.label in results):
        label, r = spec.label, results[spec.label]
        f = final([r])
        values = ("" if not r.names or r.names[0].startswith("meta_") else ", ".join(
            f"{n} {v:.4g}" for n, v in zip(r.names, f.hyperparameters)))
        dmd = f"{f.fallbacks}/{f.windows}" if r.config.strategy in ("glocal", "global") else ""
        rows.append((label, strategy_title(spec.strategy_key), str(f.windows),
                     plus_minus(f.accuracy_mean, 0.0, f.finished, 4),
                     values, dmd, f"{f.seconds:.1f}", r.stopped))
    return Table(("run", "strategy", "windows", "final test accuracy", "final hyperparameters",
                  "fallbacks", "seconds", "stopped"), tuple(rows), provenance(exp))


# The strategies that Table 2 compares, ours in this order; the paper's glocal is Eq. 14.
TABLE2_STRATEGIES = ("local", "glocal", "glocal-paper")
PAPER_GLOCAL = "glocal-paper"


def points(a: float, b: float) -> str:
    """`a − b` in percentage points of accuracy, e.g. `"+19.5"`; `"–"` where either is NaN."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return "–"
    return f"{round(100 * (a - b), 1) + 0.0:+.1f}"  # + 0.0: no "-0.0" for a gap that rounds to 0


def table2(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]], *,
           caption: str = "") -> Table:
    """The paper's Table 2 beside ours, one row per (dataset, imbalance factor) and strategy
    of `TABLE2_STRATEGIES` that ran: our final test accuracy (mean ± std over the finished
    seeds, glocal titled with its estimator) and each glocal's gain over local in percentage
    points, then the paper's value for the same strategy on the dataset and factor the row
    reproduces or stands in for (its glocal is Eq. 14) and its gain. Long rather than wide,
    so that it fits a page's column."""
    ours = [s for s in TABLE2_STRATEGIES if any(s in runs for runs in groups.values())]
    rows = []
    for panel, runs in groups.items():
        finals = {s: final(runs[s]) for s in ours if s in runs}
        local = finals["local"].accuracy_mean if "local" in finals else np.nan
        paper = dict(zip(("local", PAPER_GLOCAL), PAPER_TABLE2.get(
            (panel.data.paper_name, panel.data.imbalance), (np.nan,) * 2)))
        for s, f in finals.items():
            theirs = paper.get(s, np.nan)
            rows.append((
                describe_data(panel.data), strategy_title(s),
                plus_minus(f.accuracy_mean, f.accuracy_std, f.finished),
                points(f.accuracy_mean, local) if s != "local" else "",
                f"{theirs:.3f}" if np.isfinite(theirs) else "–",
                points(theirs, paper["local"]) if s == PAPER_GLOCAL else "",
            ))
    columns = ("data", "strategy", "ours: test accuracy", "ours: − local (points)",
               "paper: test accuracy", "paper: − local (points)")
    return Table(columns, tuple(rows), caption)


def runtime_table(report: Mapping, *, caption: str = "") -> Table:
    """Table 3 beside ours: seconds per strategy and their ratio to plain training (`none`),
    from the benchmark report of `results.load("table3")`; glocal runs the paper's Eq. 14,
    as in the paper, and is titled so (`results.benchmark_title`)."""
    ours, paper = report["seconds"], PAPER_TABLE3
    rows = tuple((benchmark_title(s), f"{ours[s]:.2f}", f"{ours[s] / ours['none']:.2f}",
                  f"{paper[s]:.1f}", f"{paper[s] / paper['none']:.2f}")
                 for s in STRATEGY_ORDER if s in ours)
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
        rows.append((f"{benchmark_title(a)} / {benchmark_title(b)}", f"{ours[a] / ours[b]:.2f}",
                     predicted, f"{paper[a] / paper[b]:.2f}"))
    return Table(("ratio", "ours", "ours: step-count prediction", "paper"), tuple(rows))


def dmd_grid_table(rows: Sequence[DMDGridRow], *, caption: str = "") -> Table:
    """Figure 4 (right) as a table (the paper shows a plot and states no numbers)."""
    return Table(
        ("σ", "m", "finished / seeds", "final val loss", "final test accuracy",
         "fallback rate"),
        tuple((str(r.sigma), str(r.m), f"{r.finished}/{r.seeds}",
               plus_minus(r.val_loss, r.val_loss_std, r.finished),
               plus_minus(r.test_accuracy, r.test_accuracy_std, r.finished),
               f"{r.fallback_rate:.2f}") for r in rows),
        caption)


def quality_table(summaries: Mapping[str, tuple[QualitySummary, tuple[float, float]]],
                  caption: str = "", *, strategy: str = "glocal-paper") -> Table:
    """Local and glocal against h_T, one row per run: `{name: (summary, (low, high))}`, the
    interval a bootstrap interval of the rate at which glocal was closer.

    `strategy`: the key whose estimate the summaries scored, for the headers: `glocal-paper`
    (Eq. 14) for `quality.estimate_quality(..., delta=)` and other re-fits, the global runs'
    own (`glocal` for the default estimator) for the estimates they recorded."""
    rows = tuple((name, str(s.windows), f"{s.median_cosine_local:.3f}",
                  f"{s.median_cosine_glocal:.3f}", f"{s.median_error_local:.3g}",
                  f"{s.median_error_glocal:.3g}", f"{s.closer:.2f} [{low:.2f}, {high:.2f}]",
                  f"{s.tie:.2f}", f"{s.farther:.2f}")
                 for name, (s, (low, high)) in summaries.items())
    glocal = strategy_title(strategy)
    return Table(("run", "outer steps", "cos local", f"cos {glocal}", "err local",
                  f"err {glocal}", f"{glocal} closer", "tie (fallback)", f"{glocal} farther"),
                 rows, caption)


def spectra_table(rows: Mapping[str, SpectraRow], caption: str = "") -> Table:
    """How often the assumptions behind Eq. 14 and Theorem 3.1 failed, per group of runs."""
    return Table(
        ("runs", "windows", "fallback", "no eigenvalue near 1", "other fallbacks",
         "spectral radius > 1", "max spectral radius"),
        tuple((name, str(r.windows), f"{r.fallback:.2f}", f"{r.no_eigenvalue:.2f}",
               f"{r.other_fallback:.2f}", f"{r.radius_above_one:.2f}",
               f"{r.spectral_radius.max():.3f}") for name, r in rows.items()),
        caption)


def gap_table(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]], *,
              paper: Mapping[str, str] | None = None, caption: str = "") -> Table:
    """One row per panel and strategy: final test accuracy (mean ± std over the finished
    seeds) and, for each glocal, its gain over local in percentage points; `paper` maps the
    dataset a panel reproduces or stands in for to what the paper reports for its glocal
    (Eq. 14), shown on that strategy's row (e.g. `experiments.PAPER_FIG3`)."""
    rows = []
    for panel, runs in groups.items():
        local = final(runs["local"]).accuracy_mean if "local" in runs else np.nan
        for strategy, results in runs.items():
            f = final(results)
            gain = points(f.accuracy_mean, local) if strategy.startswith("glocal") else ""
            said = (paper or {}).get(panel.data.paper_name, "–") if strategy == PAPER_GLOCAL else ""
            rows.append((panel.title, strategy_title(strategy),
                         plus_minus(f.accuracy_mean, f.accuracy_std, f.finished), gain, said))
    return Table(("data", "strategy", "final test accuracy", "− local (points)", "paper"),
                 tuple(rows), caption)


def update_ratio_table(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]],
                       name: str = "learning_rate") -> Table:
    """Per panel and glocal strategy: in how many windows the run stepped with its estimate,
    and |ĥ∞| / |h_τ| for hyperparameter `name` there (`results.update_ratios`)."""
    rows = []
    for panel, runs in groups.items():
        for strategy in (s for s in runs if s.startswith("glocal")):
            u = update_ratios(runs[strategy], name)
            spread = (f"{np.median(u.ratios):.3g} [{u.ratios.min():.3g}, {u.ratios.max():.3g}]"
                      if u.ratios.size else "–")
            rows.append((panel.title, strategy_title(strategy), f"{u.used} of {u.windows}",
                         spread))
    title = HYPERPARAMETER_TITLES.get(name, name)
    return Table(("data", "strategy", "windows with the estimate",
                  f"|estimate| / |h_τ|, {title}: median [range]"), tuple(rows))


def reweighting_table(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]]) -> Table:
    """Per panel and strategy of a reweighting experiment: final test accuracy and the
    weighted training loss of the last window, mean over seeds."""
    rows = []
    for panel, runs in groups.items():
        for strategy, results in runs.items():
            f = final(results)
            loss = np.mean([r.train_loss[-1] for r in results])
            rows.append((panel.title, strategy_title(strategy),
                         plus_minus(f.accuracy_mean, f.accuracy_std, f.finished), f"{loss:.3g}"))
    return Table(("data", "strategy", "final test accuracy", "weighted train loss, last window"),
                 tuple(rows))


def weighting_table(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]]) -> Table:
    """Per panel and strategy of a reweighting experiment: the learned weight μ_φ(L) at
    L = 0.1, ln C and 2 ln C (C classes), initially and in the last window (mean over
    seeds), and the largest |φ − φ_local| in the last window."""
    rows = []
    for panel, runs in groups.items():
        log_c = np.log(NUM_CLASSES.get(panel.data.name, 10))
        losses = np.array([0.1, log_c, 2 * log_c])
        for strategy, results in runs.items():
            gap = (max(np.abs(a.phi[-1] - b.phi[-1]).max()
                       for a, b in zip(results, runs["local"]))
                   if strategy != "local" and "local" in runs else None)
            rows.append((panel.title, strategy_title(strategy),
                         " / ".join(f"{w:.3g}" for w in weighting_curve(results, losses,
                                                                        window=0).mean),
                         " / ".join(f"{w:.3g}" for w in weighting_curve(results, losses).mean),
                         "" if gap is None else f"{gap:.3g}"))
    return Table(("data", "strategy", "μ(0.1) / μ(ln C) / μ(2 ln C): initial", "last window",
                  "max |φ − φ_local|, last window"), tuple(rows))


def fallback_table(groups: Mapping[Panel, Mapping[str, Sequence[OuterResult]]]) -> Table:
    """Per panel and glocal strategy, over all seeds and every (window, hyperparameter)
    pair: the shares its estimate extrapolated, took the window mean and took the local
    hypergradient, and why it did not extrapolate."""
    rows = []
    for panel, runs in groups.items():
        for strategy, results in ((s, r) for s, r in runs.items() if s.startswith("glocal")):
            u = usage(results)
            rows.append((panel.title, strategy_title(strategy), str(u.entries), _uses(u),
                         "; ".join(f"{k}: {n}" for k, n in u.reasons.items()) or "none"))
    return Table(("data", "strategy", "window × hyperparameter entries",
                  "extrapolated / mean / local", "not extrapolated: why (entries)"),
                 tuple(rows))
