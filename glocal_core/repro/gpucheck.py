"""`python -m glocal_core gpu-check`: what a GPU should measure first, in a fixed budget.

One command, one JSON report: the device, the JAX backend and the versions; the runtime
benchmark of Table 3 on the paper's LeNet workload with T reduced (τ, σ, m and the
validation size kept, the reduction stated in the report); and the dry run of every
problem of every `full` experiment (real timings and XLA's memory, see `_dryrun`).

The budget is real. The measurements run in two worker processes, one after the other,
that record each finished stage as one JSON line; at its deadline a worker is stopped,
whatever it was doing is listed as unfinished and whatever it had not started as skipped,
and the report is written from the stages that finished. The bench's worker has until
`bench_share` of the budget: it first runs the bench at T = 2τ (a probe), then at the
largest T up to `bench_steps` that the probe predicts fits what is left of its share. The
dry runs' worker has the rest, and takes the experiments' problems in turns (the first
problem of each experiment, then the second, ...). The parent process never touches the
accelerator, so each worker has all of its memory.
"""

import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from .bench import PAPER, BenchConfig, format_table, predicted_global_ratio
from .._io import write_atomic

FULL_EXPERIMENTS = ("fig2", "fig3", "table2", "fig4", "table3")
BENCH_STEPS = 1_000
_PACKAGES = ("jax", "jaxlib", "numpy", "equinox", "optax", "jaxtyping", "scikit-learn",
             "glocal_core")
_WORKER = "import sys; from glocal_core.repro.gpucheck import _worker; _worker(sys.argv[1])"


def versions() -> dict[str, str | None]:
    """**Returns:** Python's and each package's version (`None`: absent), from metadata."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_info() -> dict:
    """**Returns:** the JAX backend, its devices, and the first device's memory (bytes,
    where the backend reports them; `None` on the CPU)."""
    import jax

    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "device_count": len(devices), "platform": platform.platform(),
            "memory_limit_bytes": (devices[0].memory_stats() or {}).get("bytes_limit"),
            "x64": bool(jax.config.jax_enable_x64)}


def reduction_statement(config: BenchConfig) -> str:
    """**Arguments:** `config`, the workload timed. **Returns:** how it differs from the
    paper's (`PAPER`): "reduced from the paper's workload: steps (T) 10000 → 1000; kept: ..."."""
    changed, kept = [], []
    for field in dataclasses.fields(BenchConfig):
        ours, paper = getattr(config, field.name), getattr(PAPER, field.name)
        name = "steps (T)" if field.name == "steps" else field.name
        (kept if ours == paper else changed).append(
            f"{name} {paper}" if ours == paper else f"{name} {paper} → {ours}")
    if not changed:
        return "the paper's workload, unreduced"
    return (f"reduced from the paper's workload: {', '.join(changed)}; kept: "
            f"{', '.join(kept)}; images random, as in every run of the bench")


def estimate_bench_seconds(probe: dict, steps: int) -> float:
    """The bench's seconds at `steps` inner steps, from a bench report at fewer (`probe`).

    none, local and glocal grow with T; global also plays out every window to T, so its
    seconds per inner step of the probe are scaled by T·`predicted_global_ratio`. The
    probe's compile seconds are added once (a new T may compile again).

    **Arguments:** `probe`, a `run_bench` report; `steps`, the T to predict.
    **Returns:** seconds.
    """
    t0, tau = probe["config"]["steps"], probe["config"]["tau"]
    s = probe["seconds"]
    scale = steps / t0
    per_global_step = s["global"] / (t0 * predicted_global_ratio(t0, tau))
    return (scale * (s["none"] + s["local"] + s["glocal"])
            + per_global_step * steps * predicted_global_ratio(steps, tau)
            + sum(probe["compile_seconds"].values()))


def choose_bench_steps(probe: dict, *, wanted: int, seconds: float) -> int | None:
    """**Returns:** the largest T ≤ `wanted`, a multiple of τ above the probe's, that
    `estimate_bench_seconds` puts within `seconds`; `None` if none does."""
    t0, tau = probe["config"]["steps"], probe["config"]["tau"]
    for steps in range(wanted - wanted % tau, t0, -tau):
        if estimate_bench_seconds(probe, steps) <= seconds:
            return steps
    return None


def dry_run_plan(experiments=FULL_EXPERIMENTS) -> list[dict]:
    """The problems (runs sharing compiled functions) of `experiments`, in turns: the first
    of each experiment, then the second, ... **Returns:** dicts with `experiment`, `problem`
    (1-based), `problems` (of that experiment), `first` (a run's label), `runs` (`RunSpec`s)."""
    from . import dryrun as dr
    per_experiment = {name: dr.problem_groups(name) for name in experiments}
    plan = []
    for turn in range(max(map(len, per_experiment.values()), default=0)):
        for name, groups in per_experiment.items():
            if turn < len(groups):
                plan.append({"experiment": name, "problem": turn + 1, "problems": len(groups),
                             "first": groups[turn][0].label, "runs": groups[turn]})
    return plan


def _describe(stage: dict) -> str:
    return (f"dry run {stage['experiment']} problem {stage['problem']}/{stage['problems']} "
            f"({stage['first']} and {len(stage['runs']) - 1} runs like it)")


def _worker(args_path: str) -> None:
    """A measuring process (one `phase`): one JSON line per stage into `args["records"]`."""
    import jax

    args = json.loads(Path(args_path).read_text())
    bench = BenchConfig(**args["bench"])
    records = open(args["records"], "a")

    def emit(kind, **fields):
        stats = jax.devices()[0].memory_stats() or {}
        fields["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
        records.write(json.dumps({"kind": kind, "time": time.time(), **fields},
                                 default=_plain) + "\n")
        records.flush()

    def say(text): print(f"gpu-check: {text}", file=sys.stderr, flush=True)  # noqa: E704

    emit("device", **device_info())
    if args["phase"] == "bench":
        say(f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), "
            f"jax {jax.__version__}")
        _bench_phase(args, bench, emit, say)
    else:
        _dry_run_phase(args, emit, say)
    emit("done", phase=args["phase"])


def _bench_phase(args: dict, bench: BenchConfig, emit, say) -> None:
    from .bench import run_bench

    probe = None
    for attempt in ("probe", "bench"):
        if attempt == "probe":
            steps = min(2 * bench.tau, args["bench_steps"])
        else:
            steps = choose_bench_steps(probe, wanted=args["bench_steps"],
                                       seconds=args["deadline"] - time.time())
            if steps is None:
                emit("note", stage="bench", text=f"T kept at {probe['config']['steps']}: a "
                     "larger T is estimated past the bench's share of the budget")
                break
        config = dataclasses.replace(bench, steps=steps)
        say(f"bench at T = {steps} ({reduction_statement(config)})")
        emit("started", stage=f"bench at T = {steps}")
        try:
            probe = run_bench(config, progress=args["progress"])
        except Exception as err:  # an accelerator's out-of-memory is a finding, not a crash
            emit("error", stage=f"bench at T = {steps}", error=f"{type(err).__name__}: {err}")
            break
        emit("bench", result=probe)
        if steps >= args["bench_steps"]:
            break


def _dry_run_phase(args: dict, emit, say) -> None:
    import jax

    from . import dryrun as dr
    for stage in dry_run_plan(args["experiments"]):
        if time.time() >= args["deadline"]:
            break
        say(_describe(stage))
        emit("started", stage=_describe(stage))
        start = time.time()
        try:
            # dry_run's own per-problem step, with its defaults
            rows = dr._dry_run_problem(stage["runs"], steps=args["dry_run_steps"],
                                       data_dir=args["data_dir"],
                                       max_call_seconds=dr.MAX_CALL_SECONDS)
        except Exception as err:
            emit("error", stage=_describe(stage), error=f"{type(err).__name__}: {err}")
            continue
        emit("dry_run", experiment=stage["experiment"], problem=stage["problem"],
             seconds=time.time() - start, rows=[r._asdict() for r in rows])


def _plain(value):  # numpy scalars in the rows
    return value.item() if hasattr(value, "item") else str(value)


def _read_records(path: Path) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line, cut by the stop at the deadline
            pass
    return records


def _why_missing(stage: str, records: list[dict], status: str) -> str:
    errors = [r["error"] for r in records if r["kind"] == "error" and r["stage"] == stage]
    if errors:
        return f"failed: {errors[0]}"
    spent = status in ("stopped at the deadline", "exit code 0")
    if any(r["kind"] == "started" and r["stage"] == stage for r in records):
        return ("started, unfinished when the budget ran out" if spent else
                f"started, then the worker ended ({status})")
    return "not started: budget spent" if spent else f"not started: the worker ended ({status})"


def _bench_section(records: list[dict], bench: BenchConfig, bench_steps: int,
                   status: str) -> tuple[dict, list[str]]:
    results = [r["result"] for r in records if r["kind"] == "bench"]
    notes = [r["text"] for r in records if r["kind"] == "note" and r["stage"] == "bench"]
    if results:
        result = results[-1]
        steps = result["config"]["steps"]
        section = {"status": "ran", "T": steps, "T_wanted": bench_steps, "T_paper": PAPER.steps,
                   "reduction": reduction_statement(dataclasses.replace(bench, steps=steps)),
                   "result": result, "notes": notes}
        skipped = []
        if steps < bench_steps:
            tried = [r["stage"] for r in records if r["kind"] == "started"
                     and r["stage"].startswith("bench") and r["stage"] != f"bench at T = {steps}"]
            why = (_why_missing(tried[-1], records, status) if tried else
                   notes[0] if notes else "budget spent")
            skipped = [f"the bench at T = {bench_steps} (T = {steps} measured instead): {why}"]
        return section, skipped
    started = [r["stage"] for r in records if r["kind"] == "started" and "bench" in r["stage"]]
    stage = started[0] if started else f"bench at T = {min(2 * bench.tau, bench_steps)}"
    why = _why_missing(stage, records, status)
    return ({"status": "skipped", "why": why, "T_wanted": bench_steps, "T_paper": PAPER.steps,
             "reduction": "planned, " + reduction_statement(
                 dataclasses.replace(bench, steps=bench_steps))},
            [f"the bench ({stage}): {why}"])


def _report(records, *, plan, experiments, bench, bench_steps, exit_status):
    device = next((r for r in records if r["kind"] == "device"), None)
    bench_section, skipped = _bench_section(records, bench, bench_steps, exit_status["bench"])
    done = {(r["experiment"], r["problem"]): r for r in records if r["kind"] == "dry_run"}
    dry_runs = {}
    for name in FULL_EXPERIMENTS:
        stages = [s for s in plan if s["experiment"] == name]
        section = {"problems": len(stages), "runs": sum(len(s["runs"]) for s in stages),
                   "rows": [], "skipped": []}
        if name not in experiments:
            section["skipped"].append("not requested")
            skipped.append(f"dry run {name}: not requested")
        for stage in stages:
            record = done.get((name, stage["problem"]))
            if record:
                section["rows"] += record["rows"]
                continue
            why = _why_missing(_describe(stage), records, exit_status["dry_run"])
            section["skipped"].append(f"{_describe(stage)}: {why}")
            skipped.append(f"{_describe(stage)}: {why}")
        section["dry_run"] = len(section["rows"])
        dry_runs[name] = section
    peaks = [r["peak_bytes_in_use"] for r in records if r.get("peak_bytes_in_use")]
    return {
        "command": "python -m glocal_core gpu-check",
        "device": None if device is None else {
            k: v for k, v in device.items() if k not in ("kind", "time", "peak_bytes_in_use")},
        "versions": versions(),
        "worker": exit_status,
        "peak_device_bytes_in_use": max(peaks, default=None),
        "bench": bench_section,
        "dry_runs": dry_runs,
        "skipped": skipped,
    }


def _run_worker(args: dict, args_path: Path, *, seconds: float, grace: float,
                progress: bool) -> str:
    """Run one worker for at most `seconds`; **Returns:** how it ended."""
    args_path.write_text(json.dumps(args))
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(args_path)],
                              stdout=sys.stderr if progress else subprocess.DEVNULL,
                              stderr=None if progress else subprocess.DEVNULL)
    try:
        return f"exit code {worker.wait(timeout=max(seconds, 0))}"
    except subprocess.TimeoutExpired:
        worker.terminate()
        try:
            worker.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        return "stopped at the deadline"


def gpu_check(*, budget_seconds: float = 480, out: str | Path = "gpu-check.json",
              bench: BenchConfig = PAPER, bench_steps: int = BENCH_STEPS,
              experiments=FULL_EXPERIMENTS, dry_run_steps: int = 2,
              bench_share: float = 0.4, data_dir=None, progress: bool = True) -> dict:
    """Measure this device within `budget_seconds` and write one JSON report to `out`.

    **Arguments:**

    - `budget_seconds`: wall seconds for everything, the report included.
    - `out`: the report's path (written atomically).
    - `bench`: the workload of the bench (default the paper's, `PAPER`); only its T changes.
    - `bench_steps`: the T wanted for the bench, a multiple of τ (the paper's is 10,000); a
      smaller T runs where the budget's `bench_share` is too short for it.
    - `experiments`: which `full` experiments to dry-run (the others are listed as skipped).
    - `dry_run_steps`: steps of each dry run's window, and calls timed (as `dry_run`'s
      `steps`); `data_dir`: prepared tensorflow-datasets, as for `reproduce`.
    - `progress`: one line per stage, and the bench's progress bars, on stderr.

    **Returns:** the report: `device`, `versions`, `bench` (`status`, `T`, `reduction`,
    `result` as `run_bench` returns it), `dry_runs` (per experiment: `rows`, one `DryRun`
    as a dict per run, and `skipped`), `skipped` (everything not measured, and why),
    `budget_seconds`, `wall_seconds`, `worker`.
    """
    start, wall_start = time.monotonic(), time.time()
    if bench_steps < bench.tau or bench_steps % bench.tau:
        raise ValueError(f"bench_steps={bench_steps}: use a multiple of tau={bench.tau}.")
    unknown = set(experiments) - set(FULL_EXPERIMENTS)
    if unknown:
        raise ValueError(f"experiments {sorted(unknown)}: choose from {FULL_EXPERIMENTS}.")
    plan = dry_run_plan(FULL_EXPERIMENTS)
    # Two workers' stops and the report need a few seconds of the budget.
    reserve = min(5.0, 0.1 * budget_seconds)
    ends = {"bench": min(bench_share * budget_seconds, budget_seconds - reserve),
            "dry_run": budget_seconds - reserve}
    status = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        records_path = Path(tmp) / "records.jsonl"
        for phase, end in ends.items():
            args = {"phase": phase, "bench": dataclasses.asdict(bench),
                    "bench_steps": bench_steps, "deadline": wall_start + end,
                    "experiments": list(experiments), "dry_run_steps": dry_run_steps,
                    "data_dir": None if data_dir is None else str(data_dir),
                    "progress": progress, "records": str(records_path)}
            status[phase] = _run_worker(args, Path(tmp) / f"{phase}.json",
                                        seconds=start + end - time.monotonic(),
                                        grace=reserve / 4, progress=progress)
        records = _read_records(records_path)
    report = _report(records, plan=plan, experiments=tuple(experiments), bench=bench,
                     bench_steps=bench_steps, exit_status=status)
    wall = time.monotonic() - start
    report.update(budget_seconds=budget_seconds, wall_seconds=wall,
                  within_budget=wall <= budget_seconds)
    write_atomic(out, lambda f: f.write(json.dumps(report, indent=1, default=_plain).encode()))
    return report


def format_gpu_check(report: dict) -> str:
    """**Arguments:** `report`, as `gpu_check` returns it. **Returns:** it in a few lines
    for people: device, bench table, dry runs, what was skipped."""
    device, v = report["device"], report["versions"]
    lines = [f"device: {device['device_kind']} ({device['backend']})" if device else
             "device: unknown (the worker did not start)",
             f"jax {v['jax']}, jaxlib {v['jaxlib']}, python {v['python']}", ""]
    bench = report["bench"]
    if bench["status"] == "ran":
        lines += [f"bench: {bench['reduction']}", format_table(bench["result"]), ""]
    else:
        lines += [f"bench skipped: {bench['why']} ({bench['reduction']})", ""]
    for name, section in report["dry_runs"].items():
        rows = section["rows"]
        hours = sum(r["estimated_seconds"] for r in rows) / 3600
        bound = "" if all(r["complete"] for r in rows) else "≥ "
        lines.append(f"dry run {name}: {len(rows)} of {section['runs']} runs measured"
                     + (f", {bound}{hours:.1f} h for them at full" if rows else ""))
    lines += ["", f"skipped ({len(report['skipped'])}):",
              *(f"  {s}" for s in report["skipped"]),
              f"{report['wall_seconds']:.0f} s of a {report['budget_seconds']:.0f} s budget"]
    return "\n".join(lines)
