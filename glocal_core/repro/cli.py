"""`python -m glocal_core {reproduce,doctor,bench,gpu-check,fidelity,data}`: the command line."""

import argparse
import sys

from .bench import BenchConfig
from .experiments import DESCRIPTIONS, EXPERIMENTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glocal_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    reproduce = commands.add_parser(
        "reproduce", help="run one of the paper's experiments (cached, resumable)",
        description="Run every run of an experiment, or load it from the cache. A finished "
                    "run is never recomputed; an interrupted one resumes from its last "
                    "checkpoint. Experiments: " + "; ".join(
                        f"{name}: {text}" for name, text in DESCRIPTIONS.items()),
    )
    reproduce.add_argument("name", choices=(*EXPERIMENTS, "all"))
    reproduce.add_argument("--profile", default=None,
                           help="smoke (digits, CPU minutes) or full (the paper's settings, "
                                "a GPU); default: $GLOCAL_PROFILE, else smoke")
    reproduce.add_argument("--cache-dir", default=None,
                           help="where results and checkpoints go (default: "
                                "$GLOCAL_CACHE_DIR, else ~/.cache/glocal_core)")
    reproduce.add_argument("--data-dir", default=None,
                           help="prepared tensorflow-datasets (default: $TFDS_DATA_DIR, else "
                                "~/tensorflow_datasets)")
    reproduce.add_argument("--list", action="store_true",
                           help="list the runs and whether each is cached; run nothing")
    reproduce.add_argument("--dry-run", action="store_true",
                           help="build every run of the full profile at full size, run a few "
                                "steps, print seconds per step, peak memory and estimated "
                                "hours on this device; cache no result")
    reproduce.add_argument("--steps", type=int, default=2,
                           help="with --dry-run: steps of the window run, and calls timed")
    reproduce.add_argument("--memory-limit", type=float, default=80, metavar="GIB",
                           help="with --dry-run: exit with status 1, naming them, if any "
                                "run's peak memory is over GIB (default 80, one GPU's)")
    reproduce.add_argument("--shard", default=None, metavar="K/N",
                           help="compute only shard K of N (run i goes to shard i mod N), "
                                "e.g. $SLURM_ARRAY_TASK_ID/4; a later call without --shard "
                                "collects them")

    doctor = commands.add_parser(
        "doctor", help="what to check before a long run: backend, precision, datasets, "
                       "cache, estimated hours")
    doctor.add_argument("--cache-dir", default=None, help="as for reproduce")
    doctor.add_argument("--data-dir", default=None, help="as for reproduce")

    fidelity = commands.add_parser(
        "fidelity", help="score every steady-state estimator against the true global "
                         "hypergradient (records the trajectories once, cached)",
        description="Records global runs that keep every window's hypergradients (SGD and "
                    "Adam, Z reset and carried, phi moving and fixed; experiment 'fidelity'), "
                    "then re-fits every estimator to every window and scores it against h_T: "
                    "median relative error and cosine, sign agreement, share of windows "
                    "closer than the local hypergradient, fallback rate, time per estimate.",
    )
    fidelity.add_argument("--profile", default=None,
                          help="smoke or full; default: $GLOCAL_PROFILE, else smoke")
    fidelity.add_argument("--cache-dir", default=None, help="as for reproduce")
    fidelity.add_argument("--data-dir", default=None, help="as for reproduce")
    fidelity.add_argument("--json", action="store_true", help="print one JSON line")
    fidelity.add_argument("--trust", action="store_true",
                          help="the trust benchmark instead: own models (digits CNN, diabetes "
                               "MLP, noisy quadratic) tuned by none, local, glocal with each "
                               "estimator and global over several seeds (cached; the same at "
                               "every profile)")

    bench = commands.add_parser(
        "bench", help="time none / local / global / glocal on the LeNet workload (Table 3)"
    )
    small = BenchConfig()
    bench.add_argument("--paper", action="store_true",
                       help="the paper's workload (T=10000, tau=100, sigma=80, m=10, 6000 "
                            "validation examples): hours on a CPU, minutes on a GPU")
    bench.add_argument("--steps", type=int, default=small.steps,
                       help=f"T, inner steps per strategy (default {small.steps}, sized for a CPU)")
    bench.add_argument("--tau", type=int, default=small.tau)
    bench.add_argument("--sigma", type=int, default=small.sigma)
    bench.add_argument("--m", type=int, default=small.m)
    bench.add_argument("--val-size", type=int, default=small.val_size,
                       help="validation examples in each hypergradient")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--modes", action="store_true",
                       help="instead: forward vs reverse mode for data reweighting (q = 385), "
                            "one window of --tau steps with --sigma recorded")
    bench.add_argument("--json", action="store_true",
                       help="print one JSON line instead of a table")

    gpu = commands.add_parser(
        "gpu-check", help="in a fixed budget: device and versions, the bench at T = 1000, "
                          "a dry run of every full experiment; one JSON report",
        description="Measure this device within --budget seconds: the JAX backend and "
                    "versions, the Table 3 bench on the paper's LeNet workload with T "
                    "reduced (tau, sigma, m, validation kept), and the dry run of every "
                    "problem of fig2, fig3, table2, fig4 and table3. What does not fit in "
                    "the budget is listed as skipped in the report.",
    )
    gpu.add_argument("--budget", type=float, default=480, metavar="SECONDS",
                     help="wall seconds for everything (default 480)")
    gpu.add_argument("--out", default="gpu-check.json", metavar="PATH",
                     help="the JSON report (default gpu-check.json)")
    gpu.add_argument("--steps", type=int, default=1000,
                     help="T wanted for the bench (default 1000; the paper's is 10000)")
    gpu.add_argument("--data-dir", default=None, help="as for reproduce")

    data = commands.add_parser("data", help="prepare tensorflow-datasets data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser(
        "prepare", help="download and prepare NAME once (needs TensorFlow and internet)"
    )
    prepare.add_argument("name")
    prepare.add_argument("--data-dir", default=None,
                         help="where to put it (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    return parser


def _reproduce(args) -> int:
    from . import experiments as ex
    from . import results as gr
    from . import tables as gt
    from .. import DatasetNotPreparedError
    from .shard import parse_shard, reproduce_shard

    names = EXPERIMENTS if args.name == "all" else (args.name,)
    over = []  # dry-run rows over --memory-limit
    try:
        profile = args.profile or ex.profile_from_env()
        ex.check_profile(profile)
        shard = parse_shard(args.shard) if args.shard else None
        for name in names:
            exp = ex.experiment(name, profile)
            print(f"# {name} ({profile}): {exp.description}")
            if args.dry_run:
                over += _dry_run(name, profile, args)
                continue
            if args.list:
                for spec in exp.runs:
                    path = ex.result_path(spec, args.cache_dir)
                    state = ("cached" if path.exists() else
                             "checkpointed" if path.with_suffix(".ckpt").exists() else "to run")
                    print(f"{spec.label:55s} {state}")
                continue
            if shard is not None:
                results = reproduce_shard(name, profile, *shard, cache_dir=args.cache_dir,
                                          data_dir=args.data_dir)
            else:
                results = ex.reproduce(name, profile, cache_dir=args.cache_dir,
                                       data_dir=args.data_dir)
            if exp.bench and not results:
                print("the benchmark runs on shard 0")
                continue
            print(gt.runtime_table(results, caption=gr.provenance(exp)) if exp.bench
                  else gt.runs_table(exp, results))
    except (DatasetNotPreparedError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.name == "all" and not (args.dry_run or args.list):
        from . import trust as gtr

        print("# trust: own models tuned by every strategy (the same at every profile)")
        setups = list(gtr.SETUPS)[shard[0]::shard[1]] if shard else None
        trust = gtr.load_or_run(args.cache_dir or ex.default_cache_dir(), setups)
        print(gtr.trust_table(gtr.trust_rows(trust)))
    if over:
        print(f"error: over the memory limit of {args.memory_limit:g} GiB: {', '.join(over)}",
              file=sys.stderr)
        return 1
    return 0


def _dry_run(name: str, profile: str, args) -> list[str]:
    """Print the dry runs of `name`, save them for `doctor`; return the runs (with their
    peak GiB) over `--memory-limit`."""
    from .doctor import save_report
    from .dryrun import dry_run, format_dry_runs

    if profile != "full":
        raise ValueError(f"--dry-run is for the full profile (got {profile!r}): pass "
                         "--profile full.")
    rows = dry_run(name, steps=args.steps, data_dir=args.data_dir)
    print(format_dry_runs(rows))
    save_report(name, rows, args.cache_dir)
    return [f"{r.experiment}/{r.label} ({r.peak_bytes / 2**30:.1f} GiB)" for r in rows
            if r.peak_bytes > args.memory_limit * 2**30]


def _trust(args) -> int:
    import json

    from . import experiments as ex
    from . import trust as gtr

    runs = gtr.load_or_run(args.cache_dir or ex.default_cache_dir(), progress=not args.json)
    rows = gtr.trust_rows(runs)
    if args.json:
        print(json.dumps({"rows": [r._asdict() for r in rows], "seconds": runs.seconds}))
        return 0
    print(gtr.setups_table())
    print(gtr.trust_table(rows))
    print("seconds per setup: " + ", ".join(f"{k} {v:.0f}" for k, v in runs.seconds.items()))
    return 0


def _fidelity(args) -> int:
    import json

    if args.trust:
        return _trust(args)

    from . import experiments as ex
    from . import fidelity as gf
    from . import results as gr
    from . import tables as gt
    from .. import DatasetNotPreparedError
    from .._estimators import DEFAULT_METHOD  # its binding at this call: tests patch it

    try:
        profile = args.profile or ex.profile_from_env()
        exp = ex.experiment("fidelity", profile)
        results = ex.reproduce("fidelity", profile, cache_dir=args.cache_dir,
                               data_dir=args.data_dir, progress=not args.json)
    except (DatasetNotPreparedError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = gf.fidelity_rows(exp, results)
    best = {r["recording"]: gf.best_estimator(rows, r["recording"]) for r in rows}
    synthetic, costs = gf.synthetic_rows(), gf.estimator_costs()
    if args.json:
        print(json.dumps({"profile": profile, "default": DEFAULT_METHOD, "best": best,
                          "rows": rows, "synthetic": synthetic, "costs": costs}))
        return 0
    print(gt.from_dicts(gf.format_fidelity(rows), caption=gr.provenance(exp)))
    for recording, method in best.items():
        print(f"closest to h_T on {recording}: {method}")
    print("\n".join(gf.summary_lines(rows)))
    print(gt.from_dicts(gf.format_fidelity(synthetic), caption="synthetic windows, exact "
                        "limits (sigma 80, m 10, q 3, 20 windows per case)"))
    print(gt.from_dicts(gf.format_fidelity(costs), caption="cost per estimate on this machine"))
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "reproduce":
        return _reproduce(args)
    if args.command == "fidelity":
        return _fidelity(args)
    if args.command == "doctor":
        from .doctor import doctor

        print(doctor(cache_dir=args.cache_dir, data_dir=args.data_dir))
        return 0
    if args.command == "gpu-check":
        from .gpucheck import format_gpu_check, gpu_check

        try:
            report = gpu_check(budget_seconds=args.budget, out=args.out,
                               bench_steps=args.steps, data_dir=args.data_dir)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(format_gpu_check(report))
        print(f"report: {args.out}")
        return 0
    if args.command == "bench":
        from .bench import main as bench_main

        bench_main(args)
    elif args.command == "data":
        from .._data import prepare_tfds

        path = prepare_tfds(args.name, data_dir=args.data_dir)
        print(f"prepared {args.name} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
