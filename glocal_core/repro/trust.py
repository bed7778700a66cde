"""The trust benchmark: where glocal helps, where it does nothing, where it would hurt.

The fidelity benchmark scores estimators on the book's own recordings. This one tunes
models the library does not ship, as a user would, and asks of every estimator the one
question a user has: is glocal ever worse than the local hypergradient it costs as much as?

Setups (`SETUPS`), each over 8 seeds (16 for the diabetes MLP, whose runs cost a second and
whose outcome is the noisiest; 3 for `global`, 2 on the digits CNN, whose global run costs
about 45 s on 2 CPU cores) (a seed draws the model, the minibatches and the
playouts), with `none`, `local`, glocal with each estimator of `METHODS` and `global`:

- `digits-cnn`: an equinox CNN (3×3 convolutions with 8 and 16 channels, stride 1 then 2,
  a linear head) on scikit-learn's digits (898 train, 449 validation, 450 test, stratified),
  `optax.sgd` with the learning rate (log scale, 1e-4 to 1, from 0.01) and the momentum (0 to
  0.99, from 0.5) learned; batch 64, T = 1,000, τ/σ/m = 50/40/5.
- `diabetes-mlp`: an over-fitting regression: a 10-64-64-1 MLP on 100 examples of
  scikit-learn's diabetes, `optax.adamw` with the learning rate learned on a log scale;
  the metric is the test MSE (of standardised targets).
- `nqm-low`, `nqm-high`: chapter 9's noisy quadratic model (Wu et al., 2018) from a learning
  rate too low and too high; the metric is the final validation loss.

Per setup and strategy, `trust_rows` gives the final metric over seeds, the paired difference
from local on the same seed with its standard error, the seeds that end far behind their
local twin, and the share of the local → global gap closed; along the `global` runs, which
keep every window, each estimator's median relative error to h_T and its sign agreement with
h_T per coordinate. `meets_targets` checks the default against the issue's targets.

`python -m glocal_core fidelity --trust` prints the table; chapter 7 shows it.
"""

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .. import (
    BilevelProblem,
    Bound,
    ESTIMATOR_DEFAULTS,
    OuterConfig,
    OuterResult,
    classification_problem,
    learnable,
    loss_problem,
    run_outer,
)
from .._io import load_pickle, save_pickle
from .configs import CACHE_VERSION
from .fidelity import estimator_scores
from .results import strategy_title
from .tables import Table

# The estimators run as glocal strategies, the default first.
TRUST_METHODS = ("cv", "paper", "mean")
STRATEGIES = ("none", "local", *(f"glocal-{m}" for m in TRUST_METHODS), "global")
TRUST_VERSION = 1


class Setup(NamedTuple):
    """One own-model setup: `title` for people; `build(seed)` the problem (its model drawn
    from the seed); the window; `seeds` and `global_seeds` (a global run costs about
    S/2 + 1 times a local one); `loss`, whether the metric is a loss (lower is better)."""

    title: str
    build: Callable[[int], BilevelProblem]
    total_steps: int
    tau: int
    sigma: int
    m: int
    seeds: int
    global_seeds: int
    loss: bool


class _CNN(eqx.Module):
    """Two 3×3 convolutions (8 and 16 channels, stride 1 then 2, padding 1), a linear head."""

    convs: tuple
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.convs = (eqx.nn.Conv2d(1, 8, 3, stride=1, padding=1, key=k1),
                      eqx.nn.Conv2d(8, 16, 3, stride=2, padding=1, key=k2))
        self.head = eqx.nn.Linear(16 * 4 * 4, 10, key=k3)

    def __call__(self, x):
        x = jnp.transpose(x, (2, 0, 1))
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(x.reshape(-1))


def _digits_splits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, train_size=898, stratify=y,
                                                        random_state=0)
    X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, train_size=449,
                                                    stratify=y_rest, random_state=0)
    return [(jnp.asarray(a), jnp.asarray(b, jnp.int32))
            for a, b in ((X_train, y_train), (X_val, y_val), (X_test, y_test))]


def _digits_cnn(seed: int) -> BilevelProblem:
    train, val, test = _digits_splits()
    opt = learnable(optax.sgd, learning_rate=0.01, momentum=0.5,
                    learn={"learning_rate": Bound(1e-4, 1.0, "log"),
                           "momentum": Bound(0.0, 0.99)})
    return classification_problem(_CNN(jax.random.key(100 + seed)), train, val, test, opt,
                                  batch_size=64)


def _diabetes_splits():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    y = (y - y.mean()) / y.std()
    parts = np.split(np.arange(len(X)), [100, 200])
    return [(jnp.asarray(X[i], jnp.float32), jnp.asarray(y[i], jnp.float32)) for i in parts]


def _mse(model, batch):
    x, y = batch
    return jnp.mean((jax.vmap(model)(x)[:, 0] - y) ** 2)


def test_mse(model, batch):
    """The mean squared error on the test set (standardised targets)."""
    return _mse(model, batch)


def _diabetes_mlp(seed: int) -> BilevelProblem:
    train, val, test = _diabetes_splits()
    model = eqx.nn.MLP(10, 1, 64, 2, key=jax.random.key(200 + seed))
    opt = learnable(optax.adamw, learning_rate=0.01, weight_decay=1e-4,
                    learn={"learning_rate": Bound(1e-4, 1.0, "log")})
    return loss_problem(_mse, model, train, val, opt, test=test, metric=test_mse,
                        batch_size=32)


# Chapter 9's noisy quadratic model: a stiff and a flat block of 25 curvatures each.
_CURVATURE = {"stiff": np.ones(25), "flat": np.logspace(-2, -3, 25)}


def _nqm_loss(theta, c):
    halves = jax.tree.map(lambda h, t, c: 0.5 * jnp.sum(h * (t - c) ** 2, axis=-1),
                          {k: jnp.asarray(v) for k, v in _CURVATURE.items()}, theta, c)
    return jnp.mean(sum(jax.tree.leaves(halves)))


def _nqm(lr: float) -> Callable[[int], BilevelProblem]:
    def build(seed: int) -> BilevelProblem:
        key = jax.random.key(300 + seed)
        draws = {name: jax.random.normal(jax.random.fold_in(key, i), (4096, 25))
                 for i, name in enumerate(_CURVATURE)}
        train = jax.tree.map(lambda c: c - c.mean(axis=0), draws)
        val = jax.tree.map(lambda c: jnp.zeros((1, 25)), train)
        theta0 = {"stiff": jnp.zeros(25), "flat": jnp.ones(25)}
        opt = learnable(optax.sgd, learning_rate=lr,
                        learn={"learning_rate": Bound(1e-3, 1.0, "log")})
        return loss_problem(_nqm_loss, theta0, train, val, opt, batch_size=32)
    return build


SETUPS: dict[str, Setup] = {
    "digits-cnn": Setup("digits, CNN 8-16, SGD (learning rate, momentum)", _digits_cnn,
                        1000, 50, 40, 5, seeds=8, global_seeds=2, loss=False),
    # 16 seeds: a run costs a second, and its final test MSE swings by more than 5% between
    # seeds whenever the learning rate's path changes at all.
    "diabetes-mlp": Setup("diabetes (100 train), MLP 64-64, AdamW (learning rate)",
                          _diabetes_mlp, 1000, 50, 40, 5, seeds=16, global_seeds=3, loss=True),
    "nqm-low": Setup("noisy quadratic, SGD from learning rate 0.003", _nqm(0.003),
                     1000, 50, 40, 5, seeds=8, global_seeds=3, loss=True),
    "nqm-high": Setup("noisy quadratic, SGD from learning rate 0.5", _nqm(0.5),
                      1000, 50, 40, 5, seeds=8, global_seeds=3, loss=True),
}


def _config(setup: Setup, strategy: str) -> OuterConfig:
    method = strategy.split("-", 1)[1] if strategy.startswith("glocal-") else None
    estimator = ESTIMATOR_DEFAULTS._replace(method=method) if method else ESTIMATOR_DEFAULTS
    return OuterConfig(strategy.split("-", 1)[0], setup.total_steps, tau=setup.tau,
                       sigma=setup.sigma, m=setup.m, estimator=estimator,
                       keep_trajectories=strategy == "global")


def _seeds(setup: Setup, strategy: str) -> range:
    return range(1, 1 + (setup.global_seeds if strategy == "global" else setup.seeds))


class TrustRuns(NamedTuple):
    """Every run of the benchmark: `runs[setup][strategy]`, a list of `OuterResult`s in seed
    order (seeds 1, 2, ...); `seconds[setup]`, the wall time of its runs."""

    runs: dict
    seconds: dict


def run_trust(setups: Sequence[str] | None = None, *, progress: bool = True) -> TrustRuns:
    """Run every strategy of `STRATEGIES` on every seed of each named setup (default: all
    of `SETUPS`)."""
    setups = tuple(SETUPS) if setups is None else tuple(setups)
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        raise ValueError(f"unknown setup(s) {unknown}: choose from {', '.join(SETUPS)}.")
    # Seed by seed, so that each problem is built once for all its strategies.
    jobs = [(name, strategy, seed) for name in setups for seed in _seeds(SETUPS[name], "local")
            for strategy in STRATEGIES if seed in _seeds(SETUPS[name], strategy)]
    runs: dict = {name: {s: [] for s in STRATEGIES} for name in setups}
    seconds = dict.fromkeys(setups, 0.0)
    problems: dict = {}
    for name, strategy, seed in tqdm(jobs, desc="trust benchmark", disable=not progress):
        start = time.perf_counter()
        if (name, seed) not in problems:
            problems = {(name, seed): SETUPS[name].build(seed)}
        result = run_outer(problems[(name, seed)], _config(SETUPS[name], strategy),
                           key=jax.random.key(seed), progress=False)
        if result.stopped:
            raise FloatingPointError(f"trust benchmark: {name}, {strategy}, seed {seed} "
                                     f"stopped: {result.stopped}")
        runs[name][strategy].append(result)
        seconds[name] += time.perf_counter() - start
    return TrustRuns(runs, seconds)


def cache_path(cache_dir: str | Path, name: str) -> Path:
    """Where setup `name`'s runs are cached: a hash of what determines them in the name."""
    fields = [SETUPS[name][2:], [str(_config(SETUPS[name], s)) for s in STRATEGIES]]
    text = json.dumps([CACHE_VERSION, TRUST_VERSION, name, fields], sort_keys=True, default=str)
    return Path(cache_dir) / f"trust-{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pkl"


def load_or_run(cache_dir: str | Path, setups: Sequence[str] | None = None, *,
                progress: bool = True) -> TrustRuns:
    """The `TrustRuns` of `setups` (default: all of `SETUPS`): each setup loaded from its
    cache file under `cache_dir`, or run and cached as soon as it finishes, so that an
    interrupted benchmark keeps its finished setups and two processes can share the work
    (`reproduce all --shard K/N` runs every N-th setup)."""
    setups = tuple(SETUPS) if setups is None else tuple(setups)
    runs, seconds = {}, {}
    for name in setups:
        path = cache_path(cache_dir, name)
        if path.exists():
            done = load_pickle(path)
        else:
            done = run_trust([name], progress=progress)
            save_pickle(path, done)
        runs[name], seconds[name] = done.runs[name], done.seconds[name]
    return TrustRuns(runs, seconds)


def _final(results: Sequence[OuterResult]) -> np.ndarray:
    return np.array([r.test_metric[-1] for r in results], dtype=float)


class TrustRow(NamedTuple):
    """One setup and strategy.

    **Fields:** `setup`, `strategy` (keys); `metric`, `metric_se` (mean final metric over
    the seeds and its standard error); `versus_local`, `versus_local_se` (the mean paired
    difference from local on the same seeds, signed so that positive is better, in the
    metric's units for an accuracy and relative to local's for a loss, and its standard
    error); `far_behind`, the seeds that end more than 2 points (5% for a loss) behind
    their local twin, and `far_ahead` the seeds as far ahead (between them, how much seed
    noise alone moves the outcome); `seeds`; `gap_closed`, the share of the local → global gap closed on
    the seeds with a global run (NaN where global is not better than local by more than
    two standard errors); `error`, `sign` (median relative error to h_T and the share of
    coordinates with h_T's sign, along the global runs; NaN for `none` and `global`).
    """

    setup: str
    strategy: str
    metric: float
    metric_se: float
    versus_local: float
    versus_local_se: float
    far_behind: int
    far_ahead: int
    seeds: int
    gap_closed: float
    error: float
    sign: float


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def _gain(setup: Setup, value: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Improvement over local, positive is better: points of accuracy, or relative loss."""
    return (local - value) / local if setup.loss else value - local


def trust_rows(trust: TrustRuns) -> list[TrustRow]:
    """`TrustRow`s for every setup and strategy of `trust`."""
    rows = []
    for name, runs in trust.runs.items():
        setup = SETUPS[name]
        local = _final(runs["local"])
        n_global = len(runs["global"])
        global_gain = _gain(setup, _final(runs["global"]), local[:n_global])
        real_gap = np.mean(global_gain) > 2 * _se(global_gain)
        for strategy in STRATEGIES:
            values = _final(runs[strategy])
            gain = _gain(setup, values, local[: len(values)])
            closed = (np.mean(gain[:n_global]) / np.mean(global_gain)
                      if real_gap and strategy != "global" else float("nan"))
            method = strategy.split("-", 1)[1] if strategy.startswith("glocal-") else (
                "local" if strategy == "local" else None)
            error = sign = float("nan")
            if method is not None:
                scores = [estimator_scores(r, method) for r in runs["global"]]
                error = float(np.median(np.concatenate([s.error for s in scores])))
                sign = float(np.mean(np.concatenate([s.sign for s in scores])))
            rows.append(TrustRow(name, strategy, float(np.mean(values)), _se(values),
                                 float(np.mean(gain)), _se(gain),
                                 int(np.sum(gain < -(0.05 if setup.loss else 0.02))),
                                 int(np.sum(gain > (0.05 if setup.loss else 0.02))),
                                 len(values), float(closed), error, sign))
    return rows


def meets_targets(row: TrustRow) -> bool:
    """Never worse than local: the mean paired difference is no worse than two standard
    errors or 0.5 point (1% for a loss), whichever is larger, and at most one seed in
    eight ends more than 2 points (5%) behind its local twin."""
    allowed = max(2 * np.nan_to_num(row.versus_local_se), 0.01 if SETUPS[row.setup].loss
                  else 0.005)
    return row.versus_local >= -allowed and row.far_behind <= max(1, row.seeds // 8)


def _number(x: float, loss: bool, *, signed: bool = False) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x:{'+' if signed else ''}.{1 if loss else 3}{'%' if loss else 'f'}}"


def trust_table(rows: Sequence[TrustRow]):
    """The trust table (a `tables.Table`): one row per setup and strategy."""
    out = []
    for r in rows:
        loss = SETUPS[r.setup].loss
        glocal = r.strategy.startswith("glocal")
        out.append((
            r.setup, strategy_title(r.strategy), f"{r.metric:.3f} ± {r.metric_se:.3f}",
            "" if r.strategy == "local" else
            f"{_number(r.versus_local, loss, signed=True)} ± "
            f"{_number(r.versus_local_se, loss)}",
            f"{r.far_behind} / {r.far_ahead} of {r.seeds}" if r.strategy != "local" else "",
            "" if not glocal else f"{round(r.gap_closed, 2) + 0.0:.0%}"
            if np.isfinite(r.gap_closed)
            else "no gap",
            _number(r.error, False), _number(r.sign, False),
            ("yes" if meets_targets(r) else "**no**") if glocal else ""))
    return Table(("setup", "strategy", "final metric (mean ± se)",
                  "vs local, paired (+ better)", "seeds far behind / ahead", "gap closed",
                  "median error to h_T", "sign agreement", "never worse than local"),
                 tuple(out),
                 "Own models, the same at every profile. Metric: test accuracy (digits), test "
                 "MSE (diabetes), validation loss (noisy quadratic); for a loss the paired "
                 "difference is relative to local. Far: more than 2 points of accuracy or 5% "
                 "of a loss from the local twin. Error and sign: of each estimate against h_T "
                 "along the global runs.")


def setups_table():
    """What each setup runs (a `tables.Table`)."""
    return Table(("setup", "what", "T / τ / σ / m", "seeds (global)"), tuple(
        (name, s.title, f"{s.total_steps} / {s.tau} / {s.sigma} / {s.m}",
         f"{s.seeds} ({s.global_seeds})") for name, s in SETUPS.items()))


def closer_than(rows: Sequence[TrustRow], strategy: str) -> Mapping[str, float]:
    """Per setup, `strategy`'s median error to h_T divided by local's (below 1: closer)."""
    table = {(r.setup, r.strategy): r for r in rows}
    return {name: table[(name, strategy)].error / table[(name, "local")].error
            for name in dict.fromkeys(r.setup for r in rows)}
