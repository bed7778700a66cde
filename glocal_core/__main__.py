"""`python -m glocal_core {bench,data}`: the command line."""

import argparse
import sys

from ._bench import BenchConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glocal_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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
    bench.add_argument("--json", action="store_true",
                       help="print one JSON line instead of a table")

    data = commands.add_parser("data", help="prepare tensorflow-datasets data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser(
        "prepare", help="download and prepare NAME once (needs TensorFlow and internet)"
    )
    prepare.add_argument("name")
    prepare.add_argument("--data-dir", default=None,
                         help="where to put it (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from ._bench import main as bench_main

        bench_main(args)
    elif args.command == "data":
        from ._data import prepare_tfds

        path = prepare_tfds(args.name, data_dir=args.data_dir)
        print(f"prepared {args.name} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
