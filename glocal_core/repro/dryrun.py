"""Dry runs of the `full` profile: every run built at full size, a few steps, the cost of all.

A dry run builds each run's problem exactly as `reproduce` would (the real model, batch,
validation set, q, forward tangents or reverse mode), compiles every function a window
calls, reads XLA's memory analysis of each, runs the ones that fit in this device's free
memory and are not predicted to be slow (`_unitcost`) a few times, runs the window itself
(tracked, a playout for `global`) for a few steps, and fits the DMD. Nothing is cached.
What it reports per run:

- seconds per tracked inner step on this device (compilation excluded, reported apart);
- peak memory: the data on the device plus the largest compiled function's arguments,
  outputs and temporaries (XLA's `memory_analysis`), plus the τ + 1 inner states that
  reverse mode keeps on the CPU's host-loop path; where XLA gives no analysis, the growth
  of the process' peak RSS while the functions ran;
- the estimated wall time of the whole run (`estimate_seconds`); a lower bound ("≥") where a
  function did not fit, or was predicted to take over `max_call_seconds` a call, and was
  not timed (the note says which and why).

The functions are timed one call at a time, as the CPU's host loop calls them; on an
accelerator, where a window is one `lax.scan`, the window of τ steps is also compiled as
that scan and its memory counted (`window_scan_bytes`), and the per-call timings include a
dispatch per step that the scan does not pay.

Data: Fashion-MNIST from its IDX files when present ("Debian files"), any dataset that is
prepared for tensorflow-datasets ("prepared"), else arrays of the real shapes, class counts
and split sizes ("mock, real shapes"): the cost and memory of a step depend on shapes, not
values. Runs that differ only in seed, strategy or DMD settings share a problem, so each
problem is built and compiled once per experiment.
"""

import dataclasses
import resource
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _hypergrad as hg
from .. import (Dataset, DatasetNotPreparedError, OuterConfig, Splits, load_dataset,
               steady_state, to_device)
from .._data import NUM_CLASSES, _split
from .._idx import has_fashion_mnist_idx
from .configs import _SGD_ALL, PAPER_ESTIMATOR, _sgd_initial
from .unitcost import UnitCost as UnitCost
from .unitcost import compiled_bytes, flops, measure_unit
from . import experiments as ex
# Image shape, training and test examples of each dataset as tensorflow-datasets has them.
REAL_SHAPES = {
    "mnist": ((28, 28, 1), 60_000, 10_000),
    "fashion_mnist": ((28, 28, 1), 60_000, 10_000),
    "kmnist": ((28, 28, 1), 60_000, 10_000),
    "cifar10": ((32, 32, 3), 50_000, 10_000),
    "cifar100": ((32, 32, 3), 50_000, 10_000),
}
_GIB = 2**30
# A call predicted to take longer is not timed: a CPU's dry run stays in minutes, and on a
# GPU no call of the paper's runs comes near it.
MAX_CALL_SECONDS = 20.0


class DryRun(NamedTuple):
    """What the dry run found for one run (see the module docstring)."""

    experiment: str
    label: str
    data: str
    seconds_per_step: float | None
    seconds_compile: float
    peak_bytes: int
    memory_source: str
    available_bytes: int
    estimated_seconds: float
    complete: bool
    note: str


def available_bytes() -> int:
    """Memory the next allocation can use: the accelerator's limit less what is in use, or
    on the CPU the kernel's `MemAvailable`."""
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def mock_splits(spec: "ex.RunSpec") -> Splits:
    """Random images and balanced labels of `spec`'s dataset's real shapes and sizes, split
    (validation hold-out, imbalance) exactly as the real data would be."""
    shape, n_train, n_test = REAL_SHAPES[spec.data.name]
    classes = NUM_CLASSES[spec.data.name]
    rng = np.random.default_rng(spec.seed)

    def data(n):
        return (rng.standard_normal((n, *shape), dtype=np.float32),
                rng.permutation(np.arange(n) % classes).astype(np.int32))

    test = Dataset(*data(n_test))
    return _split(*data(n_train), test, name=spec.data.name, num_classes=classes,
                  seed=spec.seed, val_size=spec.data.val_size, imbalance=spec.data.imbalance)


def dry_splits(spec: "ex.RunSpec", data_dir=None) -> tuple[Splits, str]:
    """`spec`'s real data where this machine has it, else `mock_splits`; and which it is."""
    kwargs = dict(seed=spec.seed, val_size=spec.data.val_size, imbalance=spec.data.imbalance)
    try:
        splits = load_dataset(spec.data.name, data_dir=data_dir, **kwargs)
    except (DatasetNotPreparedError, ImportError):
        return mock_splits(spec), "mock, real shapes"
    native = spec.data.name == "fashion_mnist" and has_fashion_mnist_idx()
    return splits, "Debian files" if native else "prepared"


def _num_evaluations(config: OuterConfig) -> int:
    windows = config.num_windows
    return sum((s + 1) % config.eval_every == 0 or s + 1 == windows for s in range(windows))


def estimate_seconds(config: OuterConfig, cost: dict[str, float], n_val: int,
                     n_test: int) -> float:
    """Wall time of a whole run from the measured seconds of one call of each function.

    With T steps, S = T/τ windows, r = `config.num_recorded` hypergradients per window and
    E test evaluations:

    - `forward`: T·t_step + S·r·t_record + S·(t_val + t_dmd) + E·t_eval, and for `global` the
      playouts, t_step·Σ_{s=1..S}(T − sτ), each ending in one t_record;
    - `reverse`: T·(t_plain + t_pull) + S·r·t_record + S·(t_val + t_dmd) + E·t_eval;
    - `none`: T·t_plain + S·t_val + E·t_eval.

    t_eval, a forward pass over the test set and ℓ̃, is t_val·(1 + n_test/n_val). t_dmd is
    0 unless the strategy fits the DMD. Missing entries count as 0 (a lower bound).
    """
    t = {k: v or 0.0 for k, v in cost.items()}
    T, S, r = config.total_steps, config.num_windows, config.num_recorded
    evaluations = _num_evaluations(config) * t.get("val", 0) * (1 + n_test / n_val)
    per_window = t.get("val", 0) + (t.get("dmd", 0) if config.strategy in ("glocal", "global")
                                    else 0)
    if config.strategy == "none":
        return T * t["plain"] + S * per_window + evaluations
    if config.mode == "reverse":
        steps = T * (t["plain"] + t["pull"])
    else:
        steps = T * t["step"]
    total = steps + S * r * t["record"] + S * per_window + evaluations
    if config.strategy == "global":
        total += t["step"] * sum(T - s * config.tau for s in range(1, S + 1)) + S * t["record"]
    return total


def _unit_functions(problem, state, phi, key, config: OuterConfig) -> dict:
    """The jitted functions a window of `config` calls, with full-size arguments; the
    reverse-mode pull-back carries a batch of r = `num_recorded` cotangents, pulled back
    `config.cotangent_chunk` at a time, as the window does."""
    units = {"val": (hg._val_loss, (problem, state.params))}
    if config.strategy == "none" or config.mode == "reverse":
        units["plain"] = (hg._plain_step, (problem, state, phi, key))
    if config.strategy == "none":
        return units
    if config.mode == "reverse":
        batch = jax.tree.map(lambda a: jnp.zeros((config.num_recorded, *a.shape), a.dtype),
                             hg._differentiable(state))
        units["record"] = (hg._val_cotangent, (problem, state))
        chunk = config.cotangent_chunk
        units[f"pull@{config.num_recorded}/{chunk or 'all'}"] = (
            hg._pull_back, (problem, state, phi, key, batch, chunk))
        return units
    tangents = hg.zero_tangents(state, phi.shape[0])
    units["step"] = (hg._forward_step, (problem, (state, tangents), phi, key))
    units["record"] = (hg._record, (problem, (state, tangents)))
    return units


def window_scan_bytes(problem, state, phi, key, config: OuterConfig) -> int | None:
    """XLA's bytes for a whole window of τ steps compiled as one scan, the accelerators' path
    (`_hypergrad.host_loop` is false there): reverse mode's checkpointed scan keeps τ states
    and σ cotangents at once, which the per-step functions do not show."""
    size = dict(num_steps=config.tau)
    if config.strategy == "none":
        lowered = hg._scan_steps.lower(hg._plain, None, problem, state, phi, key, **size,
                                       num_recorded=0)
    elif config.mode == "reverse":
        lowered = hg._track_reverse_scan.lower(problem, state, phi, key, **size,
                                               num_recorded=config.num_recorded,
                                               cotangent_chunk=config.cotangent_chunk)
    else:
        tangents = hg.zero_tangents(state, phi.shape[0])
        lowered = hg._scan_steps.lower(hg._forward, hg._forward_row, problem,
                                       (state, tangents), phi, key, **size,
                                       num_recorded=config.num_recorded)
    return compiled_bytes(lowered.compile())


def _run_window(problem, state, phi, key, config: OuterConfig, steps: int) -> None:
    """A window of `steps` inner steps through the library's own path (host loop or scan),
    a playout for `global`; raises on a wrong shape or a non-finite hypergradient."""
    if config.strategy == "none":
        jax.block_until_ready(hg.train_window(problem, state, phi, key, num_steps=steps))
        return
    recorded = min(steps, config.num_recorded)
    if config.mode == "reverse":
        window = hg.track_reverse(problem, state, phi, key, num_steps=steps,
                                  num_recorded=recorded, cotangent_chunk=config.cotangent_chunk)
    else:
        tangents = hg.zero_tangents(state, phi.shape[0])
        window = hg.track_forward(problem, state, tangents, phi, key, num_steps=steps,
                                  num_recorded=recorded)
    hs = np.asarray(window.hypergradients)
    if config.strategy == "global":
        h_T, _ = hg.playout(problem, window.state, window.tangents, phi, key, steps)
        hs = np.concatenate([hs, np.asarray(h_T)[None]])
    if hs.shape[1:] != phi.shape or not np.all(np.isfinite(hs)):
        raise FloatingPointError(f"dry-run window gave hypergradients of shape {hs.shape} "
                                 f"(q = {phi.shape[0]}), finite: {np.all(np.isfinite(hs))}")


def _dmd_seconds(config: OuterConfig, q: int, *, key) -> float:
    """One steady-state estimate on σ synthetic rows of q columns (a noisy approach to a
    fixed point): the DMD's cost depends on σ, m, q and the estimator, not on values."""
    t = np.arange(1, config.sigma + 1)[:, None]
    noise = np.asarray(jax.random.normal(key, (config.sigma, q)))
    rows = (1 - 0.9**t) + 0.01 * noise
    start = time.perf_counter()
    steady_state(rows, sigma=config.sigma, m=config.m, settings=config.estimator)
    return time.perf_counter() - start


def _seconds_per_step(config: OuterConfig, cost: dict) -> float | None:
    """One tracked inner step: the tangent step (forward), the plain step and its pull-back
    (reverse), the plain step (`none`)."""
    parts = (("plain",) if config.strategy == "none" else
             ("plain", "pull") if config.mode == "reverse" else ("step",))
    values = [cost.get(part) for part in parts]
    return None if None in values else sum(values)


def _problem_key(spec: "ex.RunSpec") -> "ex.RunSpec":
    # What fixes the compiled functions: not the seed, the outer loop or the imbalance (which
    # changes only the training set's length, not a shape a step sees).
    data = dataclasses.replace(spec.data, imbalance=None)
    return dataclasses.replace(spec, experiment="", seed=0, outer=None, data=data)


def _dry_run_problem(specs: list, *, steps: int, data_dir,
                     max_call_seconds: float | None) -> list[DryRun]:
    """Dry-run the runs `specs`, which share one problem (`_problem_key`)."""
    splits, source = dry_splits(specs[0], data_dir)
    splits = to_device(splits)  # once: the twin below shares the arrays
    problem = ex.build_problem(specs[0], splits=splits)
    # The same problem with ℓ̃ in one pass: its flops predict the chunked functions' seconds.
    twin = (problem if specs[0].val_chunk is None else
            ex.build_problem(dataclasses.replace(specs[0], val_chunk=None), splits=splits))
    data_bytes = sum(a.nbytes for d in (splits.train, splits.val, splits.test) for a in d)
    key = jax.random.key(0)
    state, phi = problem.init(key), jnp.asarray(problem.phi0)
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(hg._differentiable(state)))
    units: dict[str, UnitCost] = {}
    observed: list[float] = []  # flop/s of this problem's timed calls
    windows_run: set = set()
    scans: dict = {}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = []
    for spec in specs:
        config = spec.outer
        # Reverse mode on the host loop keeps the window's τ + 1 states.
        kept = state_bytes * (config.tau + 1) if config.mode == "reverse" and hg.host_loop() else 0
        functions = _unit_functions(problem, state, phi, key, config)
        unchunked = dict(zip(functions, _unit_functions(
            twin, state, phi, key, dataclasses.replace(config, cotangent_chunk=None)).values()))
        new = [name for name in functions if name not in units]
        # Cheapest first: each timed call tells the rate this network really runs at, which
        # predicts the next (XLA:CPU runs a WideResNet step at a tenth of its matmul rate).
        counts = {name: flops(unchunked[name][0].lower(*unchunked[name][1]))
                  for name in new} if max_call_seconds is not None else {}
        for name in sorted(new, key=lambda n: counts.get(n) or 0):
            fn, args = functions[name]
            budget = int(0.8 * available_bytes()) - kept
            units[name] = measure_unit(fn, args, repeats=steps, budget=budget,
                                       name=name.split("@")[0],
                                       predict_from=counts.get(name) or unchunked[name],
                                       max_seconds=max_call_seconds, observed=observed)
        mine = {name: units[name] for name in functions}
        missing = [u.why for u in mine.values() if u.seconds is None]
        kind = (config.strategy in ("none", "global"), config.mode, config.num_recorded,
                config.cotangent_chunk)
        if not hg.host_loop() and kind not in scans:
            scans[kind] = window_scan_bytes(problem, state, phi, key, config)
        if not missing and kind not in windows_run:
            _run_window(problem, state, phi, key, config, steps)
            windows_run.add(kind)
        cost = {n.split("@")[0]: u.seconds for n, u in mine.items()}
        cost["dmd"] = _dmd_seconds(config, phi.shape[0], key=key)
        xla = [u.bytes for u in mine.values()] + ([scans[kind]] if kind in scans else [])
        if None in xla:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            peak, memory_source = data_bytes + max(rss - rss_before, 0), "RSS growth"
        else:
            peak, memory_source = data_bytes + kept + max(xla), "XLA"
        rows.append(DryRun(
            spec.experiment, spec.label, source, _seconds_per_step(config, cost),
            sum(u.compile_seconds for u in mine.values()), peak, memory_source,
            available_bytes(), estimate_seconds(config, cost, len(splits.val.labels),
                                                len(splits.test.labels)),
            not missing, "; ".join(missing),
        ))
    return rows


def _bench_specs(bench) -> list:
    """Table 3's four strategies as runs: LeNet on MNIST-shaped data, SGD with q = 3, the
    bench's T, τ, σ, m and validation size (its images are random anyway)."""
    return [
        ex.RunSpec("table3", "full", ex.DataSpec("mnist", val_size=bench.val_size),
                   OuterConfig(strategy, total_steps=bench.steps, tau=bench.tau,
                               sigma=bench.sigma, m=bench.m, eval_every=10**9,
                               estimator=PAPER_ESTIMATOR),
                   model=bench.model, initial=_sgd_initial(0.1), learn=_SGD_ALL,
                   batch_size=bench.batch_size, seed=bench.seed)
        for strategy in ("none", "local", "global", "glocal")
    ]


def problem_groups(name: str) -> list[list["ex.RunSpec"]]:
    """The runs of experiment `name` at `full` (Table 3's strategies as runs), grouped by the
    problem they share (`_problem_key`), in the experiment's order: each group is dry-run
    with one build and one compilation."""
    exp = ex.experiment(name, "full")
    groups: dict = {}
    for spec in list(exp.runs) or _bench_specs(exp.bench):
        groups.setdefault(_problem_key(spec), []).append(spec)
    return list(groups.values())


def dry_run(name: str, *, steps: int = 2, data_dir=None, progress: bool = True,
            problems: int | None = None,
            max_call_seconds: float | None = MAX_CALL_SECONDS) -> list[DryRun]:
    """Dry-run every run of experiment `name` at the `full` profile; cache nothing.

    **Arguments:**

    - `name`: one of `EXPERIMENTS`.
    - `steps`: inner steps of the window that is run, and calls timed per function (the
      fastest counts). Sizes are never reduced.
    - `data_dir`: prepared tensorflow-datasets, as for `reproduce`.
    - `progress`: print one line per problem as it is built.
    - `problems`: dry-run only the runs of the first this many distinct problems (all if
      `None`), e.g. one WideResNet of each experiment where CI time is short.
    - `max_call_seconds`: a function predicted to take longer a call (XLA's flops over the
      device's matmul rate, `_unitcost`) is compiled, not timed; its row says so and its
      hours are a lower bound. `None`: time every function that fits.

    **Returns:** one `DryRun` per run, in the experiment's order.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: a dry run needs at least one step.")
    chosen = problem_groups(name)[:problems]
    specs = [spec for members in chosen for spec in members]
    rows = {}
    for members in chosen:
        if progress:
            print(f"  dry-running {members[0].label} (+{len(members) - 1} runs like it)",
                  flush=True)
        rows.update({r.label: r for r in _dry_run_problem(
            members, steps=steps, data_dir=data_dir, max_call_seconds=max_call_seconds)})
    return [rows[spec.label] for spec in specs]


def _hours(row: DryRun) -> str:
    return ("≥ " if not row.complete else "") + f"{row.estimated_seconds / 3600:.2f}"


def format_dry_runs(rows: list[DryRun]) -> str:
    """The dry runs as a Markdown table, with the device."""
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    lines = [f"device: {device}; free memory {rows[0].available_bytes / _GIB:.1f} GiB"
             if rows else f"device: {device}", "",
             "| run | data | s/step | compile s | peak GiB | memory | est. hours | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        step = "—" if r.seconds_per_step is None else f"{r.seconds_per_step:.3g}"
        lines.append(f"| {r.experiment}/{r.label} | {r.data} | {step} | "
                     f"{r.seconds_compile:.1f} | {r.peak_bytes / _GIB:.2f} | {r.memory_source} | "
                     f"{_hours(r)} | {r.note} |")
    if rows:
        bound = "" if all(r.complete for r in rows) else "≥ "
        hours = sum(r.estimated_seconds for r in rows) / 3600
        lines += ["", f"total: {bound}{hours:.1f} h for {len(rows)} runs on this device"]
    return "\n".join(lines)

