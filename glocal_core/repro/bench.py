"""The runtime benchmark of Table 3: none / local / global / glocal on the LeNet workload.

The workload is the paper's: LeNet (15k parameters), SGD with learned learning rate,
momentum and weight decay (q = 3), minibatches of 128 MNIST-shaped images, full-batch
validation, τ = 100, σ = 80, m = 10. Images are random: run time does not depend on pixel
values, and the benchmark must run where no dataset can be downloaded. Compilation is
timed apart; the per-strategy seconds are the sum over windows of training (with
forward-mode tracking where the strategy needs it), playouts and DMD.

`compare_modes` answers a second question: for data reweighting (q = 385 meta-network
parameters), is forward mode (q tangents per step) or reverse mode (σ cotangents per step)
faster? It times one window of each on the same problem.
"""

import dataclasses
import json
import platform
import time

import jax
import numpy as np

from .. import (
    MLP,
    STRATEGIES,
    EstimatorSettings,
    LeNet,
    MetaMLP,
    OuterConfig,
    classification_problem,
    reweighting_problem,
    run_outer,
    sgd,
    track_forward,
    track_reverse,
    zero_tangents,
)
from .._warmup import warm_up

# glocal's estimator in the benchmark: the paper's, since Table 3 times the DMD of Eq. 14. Its
# report keys that run `glocal`; tables and figures title it `results.strategy_title(
# f"glocal-{METHOD}")`.
METHOD = "paper"
PAPER_SECONDS = {"none": 11.4, "local": 58.2, "global": 2891.2, "glocal": 58.3}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """**Fields:** `steps` (T), `tau`, `sigma`, `m`, `batch_size`, `val_size` (validation
    examples in ℓ̃), `train_size`, `seed`, `model` (`lenet`, the paper's, or `mlp`, the
    784-32-10 stand-in of the smoke profile).

    The defaults keep the σ/τ and m/σ proportions of the paper at a size that runs in a few
    CPU minutes; `PAPER` is the paper's workload (MNIST's 10% hold-out has 6000 examples).
    """

    steps: int = 100
    tau: int = 25
    sigma: int = 20
    m: int = 5
    batch_size: int = 128
    val_size: int = 256
    train_size: int = 4096
    seed: int = 0
    model: str = "lenet"


PAPER = BenchConfig(steps=10_000, tau=100, sigma=80, m=10, val_size=6000, train_size=54_000)


def predicted_global_ratio(steps: int, tau: int) -> float:
    """Inner steps of `global` over those of `glocal`: (T + Σ_s (T − sτ)) / T = (S + 1)/2.

    Both track tangents through the T real steps; `global` adds a playout from the end of
    every window s = 1..S to step T.
    """
    windows = steps // tau
    return 1 + sum(steps - s * tau for s in range(1, windows + 1)) / steps


def run_bench(config: BenchConfig, *, progress: bool = True) -> dict:
    """Run the four strategies on one workload; return seconds, ratios and DMD cost."""
    key = jax.random.key(config.seed)
    k_model, k_train, k_val, k_test, k_run = jax.random.split(key, 5)

    def images(k, n):
        return jax.random.normal(k, (n, 28, 28, 1)), jax.random.randint(k, (n,), 0, 10)

    if config.model not in ("lenet", "mlp"):
        raise ValueError(f"BenchConfig.model={config.model!r}: choose 'lenet' or 'mlp'.")
    model = LeNet(key=k_model) if config.model == "lenet" else MLP(key=k_model)
    problem = classification_problem(
        model, images(k_train, config.train_size), images(k_val, config.val_size),
        images(k_test, 1000), sgd(0.1, 0.9, 1e-4), batch_size=config.batch_size,
    )
    seconds, compile_seconds, dmd_ms = {}, {}, None
    for strategy in STRATEGIES:
        outer = OuterConfig(strategy, total_steps=config.steps, tau=config.tau,
                            sigma=config.sigma, m=config.m, eval_every=10**9,
                            estimator=EstimatorSettings(method=METHOD))
        result = run_outer(problem, outer, key=k_run, progress=progress, desc=f"bench {strategy}")
        seconds[strategy] = float(np.sum(result.seconds_window + result.seconds_playout
                                         + result.seconds_estimate))
        compile_seconds[strategy] = result.seconds_compile
        if strategy == "glocal":
            dmd_ms = 1e3 * float(np.mean(result.seconds_estimate))
    return {
        "config": dataclasses.asdict(config),
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.machine()}",
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "dmd_ms_per_outer_step": dmd_ms,
        "ratios": {
            "glocal/local": seconds["glocal"] / seconds["local"],
            "global/glocal": seconds["global"] / seconds["glocal"],
            "glocal/none": seconds["glocal"] / seconds["none"],
        },
        "predicted_global/glocal": predicted_global_ratio(config.steps, config.tau),
    }


def _timed_window(fn) -> float:
    jax.block_until_ready(fn())  # compile, and run once
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def compare_modes(*, tau: int = 10, sigma: int = 8, batch_size: int = 32,
                  val_size: int = 256, seed: int = 0) -> dict:
    """Seconds for one window of τ steps, σ hypergradients recorded, of the data-reweighting
    problem (LeNet, q = 385), in forward and in reverse mode; compilation excluded.

    The default batch is 32, not 128: forward mode pushes 385 tangents through every
    activation of the batch, which at 128 needs more than 24 GiB of host memory under XLA:CPU
    (reverse mode needs σ cotangents only)."""
    key = jax.random.key(seed)
    k_model, k_meta, k_train, k_val, k_run = jax.random.split(key, 5)

    def images(k, n):
        return jax.random.normal(k, (n, 28, 28, 1)), jax.random.randint(k, (n,), 0, 10)

    problem = reweighting_problem(LeNet(key=k_model), MetaMLP(key=k_meta),
                                  images(k_train, 4 * batch_size), images(k_val, val_size),
                                  images(k_val, 100), batch_size=batch_size)
    state, phi = problem.init(k_run), problem.phi0
    q = phi.shape[0]
    warm_up(problem, state, phi, k_run, num_steps=tau, num_recorded=sigma, mode="reverse")
    seconds = {
        "forward": _timed_window(lambda: track_forward(
            problem, state, zero_tangents(state, q), phi, k_run, num_steps=tau,
            num_recorded=sigma).hypergradients),
        "reverse": _timed_window(lambda: track_reverse(
            problem, state, phi, k_run, num_steps=tau, num_recorded=sigma).hypergradients),
    }
    return {"q": q, "tau": tau, "sigma": sigma, "seconds": seconds,
            "forward/reverse": seconds["forward"] / seconds["reverse"],
            "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})"}


def format_table(report: dict) -> str:
    """The report for a terminal: the device and workload, Table 3 beside ours as the book
    shows it (`tables.runtime_table` and `tables.runtime_ratios`), then what only the report
    has, the compile seconds and the DMD's cost."""
    from . import tables as gt  # tables imports this module (through experiments)

    compile_seconds = report["compile_seconds"]
    return "\n".join([
        f"device: {report['device']}",
        f"workload: {report['config']}",
        f"glocal's estimator: {METHOD!r} (the paper's Table 3: Eq. 14)",
        "",
        str(gt.runtime_table(report)),
        "",
        str(gt.runtime_ratios(report)),
        "",
        "compile seconds: " + ", ".join(f"{name} {compile_seconds[name]:.2f}"
                                        for name in STRATEGIES),
        f"DMD per outer step: {report['dmd_ms_per_outer_step']:.2f} ms (host, float64)",
    ])


def main(args) -> None:
    if args.modes:
        report = compare_modes(tau=args.tau, sigma=args.sigma, val_size=args.val_size,
                               seed=args.seed)
        s = report["seconds"]
        print(json.dumps(report) if args.json else
              f"data reweighting, q = {report['q']}, one window of tau = {report['tau']} steps, "
              f"sigma = {report['sigma']} recorded, on {report['device']}:\n"
              f"forward {s['forward']:.2f} s, reverse {s['reverse']:.2f} s, "
              f"forward/reverse {report['forward/reverse']:.1f}")
        return
    config = PAPER if args.paper else BenchConfig(
        steps=args.steps, tau=args.tau, sigma=args.sigma, m=args.m, val_size=args.val_size,
        seed=args.seed)
    report = run_bench(config, progress=not args.json)
    print(json.dumps(report) if args.json else format_table(report))
