"""The paper's experiments as named configurations, at two profiles.

An experiment (`fig2`, `fig3`, `table2`, `fig4`, `fidelity`) is a list of `RunSpec`s: one
outer-loop run each, fully described by a frozen dataclass (data, model, inner optimizer,
`OuterConfig`, seed), whose hash (`RunSpec.digest`) keys its cached result; `table3` is a
benchmark (`BenchConfig`). `glocal_core.repro.experiments` runs them and re-exports this module.

Profiles (`GLOCAL_PROFILE`):

- `smoke`: the paper's DMD window (τ = 100, σ = 80, m = 10) on real Fashion-MNIST, the
  paper's main dataset, read from its IDX files (Debian's `dataset-fashion-mnist`), for
  every experiment. To fit 2 CPU cores, T shrinks (`SMOKE_STEPS`, `FIG3_SMOKE_STEPS`,
  `TABLE2_SMOKE_STEPS`) and small networks stand in: an MLP 784-32-10 for LeNet (fig2, fig4,
  table3) and for WideResNet-28-2 in data reweighting (table2), a `SmallCNN` (CNN 8-16) for
  WideResNet-28-2 in fig3. Under XLA:CPU a LeNet step tracked with q tangents costs about
  2 s inside a scan and 0.2 s on the host loop, the MLP's a few ms, the CNN's about a fifth
  of LeNet's. Fashion-MNIST stands in for CIFAR-10 in fig3 and, made imbalanced at the
  paper's factors 50 and 100, in table2, with the paper's balanced validation set of 1,000.
  Every label and caption names the stand-ins. Its numbers show the method on real data,
  not the paper's results.
- `full`: the paper's datasets (tensorflow-datasets, prepared beforehand), models and
  settings, three seeds, for a GPU.

Where the paper leaves a setting open, we chose:

- Initial momentum 0.9 and weight decay 5e-4 for SGD, and Adam's lr 1e-3, β1 0.9, β2 0.999:
  the paper gives only the initial SGD learning rate (0.1 for FMNIST, 0.01 for MNIST/KMNIST).
- WideResNet (fig3) starts from lr 0.1, wd 5e-4 with momentum 0.9 fixed, and trains, like
  LeNet, for T = 10k steps; data reweighting for T = 10k steps too.
- `full` runs Adam on Fashion-MNIST only, as the paper's Figure 2 does.
- Data reweighting updates the meta network with outer Adam at lr 1e-3, the meta learning
  rate of Meta-Weight-Net (Shu et al., 2019). The paper's 0.1 is for a few sigmoid-bounded
  optimizer hyperparameters; on 385 unbounded weights it moves every weight by about 0.1 per
  outer step, which saturates μ_φ within a few steps (measured: the smoke runs stopped
  learning at chance accuracy).
- `smoke`: Fashion-MNIST from lr 0.1 (the paper's) for the MLP and for fig3's CNN; fig3
  keeps the paper's learned pair (learning rate and weight decay, momentum fixed at 0.9),
  table2 the paper's inner SGD (lr 0.01, momentum 0.9) at batch 128. Two seeds for fig2, fig3 and table2, one for fig4.
"""


import dataclasses
import hashlib
import json
import os
from collections.abc import Callable

from .bench import PAPER as PAPER_BENCH
from .bench import PAPER_SECONDS, BenchConfig
from .. import DEFAULT_METHOD, EstimatorSettings, OuterConfig

PROFILES = ("smoke", "full")
EXPERIMENTS = ("fig2", "fig3", "table2", "fig4", "table3", "fidelity")
# Bump when a change in the library changes what a cached result would contain.
# 2: minibatches drawn with replacement; smoke on Fashion-MNIST at the paper's window.
# 3: OuterConfig.estimator; fallbacks recorded as FALLBACK_KINDS.
# 4: OuterConfig.dmd, a DMDSettings, replaces its estimator, delta and rtol fields.
# 5: OuterConfig.estimator, an EstimatorSettings (default method `cv`), replaces `dmd`;
#    Eq. 14's diagnostics of a non-DMD estimator only with `eq14_diagnostics`.
# 6: problems are equinox modules with their data as arguments of the jitted steps (float
#    rounding may differ); OuterResult records test_metric by name and the final phi.
# 7: `cv` decides per coordinate, never returns a divergent fit's fixed point (max_radius,
#    a margin inflated for autocorrelation); OuterResult records `used` and `reasons`.
CACHE_VERSION = 7
# Bump when a change alters what the benchmark (table3) measures; runs stay cached.
# 2: warm_up compiles the host loop's per-shape operations, which the first window had paid.
BENCH_VERSION = 2
# T of the smoke profile's fig2 and fig4 runs: 40 windows of the paper's τ = 100.
SMOKE_STEPS = 4000
# Memory settings of the full profile's WideResNet runs, so that each fits one 80 GiB GPU
# (peaks from `reproduce NAME --profile full --dry-run`, in book/reproducing.md).
FIG3_VAL_CHUNK = 1000
TABLE2_COTANGENT_CHUNK = 16
# The paper's estimator (Eq. 14) with the library's tolerances.
PAPER_ESTIMATOR = EstimatorSettings(method="paper")
# T of the smoke profile's fig3 (10 windows) and table2 (20 windows) runs: a tracked step of
# the convolutional stand-in, and reverse mode's σ cotangents per step of table2, cost more.
FIG3_SMOKE_STEPS = 1000
TABLE2_SMOKE_STEPS = 2000

DESCRIPTIONS = {
    "fig2": "LeNet (at smoke an MLP): SGD (lr, momentum, wd) and Adam (lr, β1, β2); "
            "local / global / glocal (Sec. 4.1, Figures 2, C.1–C.3)",
    "fig3": "WideResNet-28-2 on CIFAR-10/100: SGD lr and wd; local vs glocal (Figures 3, C.4)",
    "table2": "data reweighting on imbalanced CIFAR with a 385-parameter meta network "
              "(Sec. 4.2, Table 2)",
    "fig4": "DMD configurations σ × m against validation performance (Sec. 4.3, Figure 4)",
    "table3": "runtime of none / local / global / glocal (Table 3)",
    "fidelity": "steady-state estimators against the true global hypergradient: global runs "
                "that keep every window, SGD and Adam, Z reset and carried, φ moving and fixed",
}

# The paper's reported numbers, for side-by-side tables (never our results).
PAPER_TABLE2 = {  # test accuracy, (local, glocal)
    ("cifar10", 50): (0.520, 0.715),
    ("cifar10", 100): (0.445, 0.595),
    ("cifar100", 50): (0.315, 0.350),
}
PAPER_TABLE3 = PAPER_SECONDS
# Figures 3 and C.4 print no number: what the paper's text says of glocal against local.
PAPER_FIG3 = {
    "cifar10": "glocal above local (Fig. 3, no number given)",
    "cifar100": "glocal above local (Fig. C.4, no number given)",
}



@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which data a run uses. **Fields:** `name` (`digits` or a tfds name), `image_shape`
    (digits only), `val_size` (fraction or count), `imbalance` (factor f or `None`),
    `stands_in_for` (at `smoke`: the paper's dataset this replaces)."""

    name: str
    image_shape: tuple[int, int, int] | None = None
    val_size: float | int = 0.1
    imbalance: float | None = None
    stands_in_for: str | None = None

    @property
    def paper_name(self) -> str:
        return self.stands_in_for or self.name


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One outer-loop run, completely: what `run` computes and what the cache is keyed by.

    **Fields:**

    - `experiment`, `profile`: where it belongs.
    - `data`: a `DataSpec`.
    - `model`: `lenet`, `mlp` (784-32-10, the smoke stand-in for LeNet), `cnn` (`SmallCNN`
      with `width`, the smoke stand-in for WideResNet) or `wrn` (with `depth`, `width`).
    - `task`: `hpo` (optimizer hyperparameters) or `reweighting` (meta network, q = 385).
    - `optimizer`, `initial`, `learn`: the inner optimizer (`sgd`/`adam`), its initial values
      and which of them are learned (`hpo` only).
    - `batch_size`: training minibatch size.
    - `outer`: the `OuterConfig` (strategy, T, τ, σ, m, ...).
    - `seed`: model initialisation, data hold-outs and minibatches.
    - `val_chunk`: validation examples per forward pass of ℓ̃ (`None`: all at once), so that
      its gradient holds one chunk's activations (see `classification_problem`); the same
      ℓ̃ up to float rounding. `None` leaves it out of `digest`, as `outer.cotangent_chunk`.
    """

    experiment: str
    profile: str
    data: DataSpec
    outer: OuterConfig
    model: str = "lenet"
    depth: int = 28
    width: int = 2
    task: str = "hpo"
    optimizer: str = "sgd"
    initial: tuple[tuple[str, float], ...] = ()
    learn: tuple[str, ...] = ()
    batch_size: int = 128
    seed: int = 0
    val_chunk: int | None = None

    @property
    def label(self) -> str:
        """A readable name, e.g. `fashion_mnist/sgd/glocal/seed0`."""
        data = self.data.paper_name
        if self.data.imbalance is not None:
            data += f"-f{self.data.imbalance:g}"
        what = self.optimizer if self.task == "hpo" else "reweight"
        outer = self.strategy_key
        if self.experiment == "fig4":
            outer += f"-sigma{self.outer.sigma}-m{self.outer.m}"
        if self.experiment == "fidelity":  # fig2's shared runs keep fig2's labels
            outer += ("-reset" if self.outer.reset_tangents else "-carried")
            outer += ("-fixed" if self.outer.outer_lr == 0 else "-moving")
        return f"{data}/{what}/{outer}/seed{self.seed}"

    @property
    def strategy_key(self) -> str:
        """The strategy as figures and tables tell it apart: `glocal` with the default
        estimator, `glocal-<method>` with another (e.g. `glocal-paper`, Eq. 14)."""
        o = self.outer
        if o.strategy == "glocal" and o.estimator.method != DEFAULT_METHOD:
            return f"glocal-{o.estimator.method}"
        return o.strategy

    @property
    def model_title(self) -> str:
        """The model as captions name it, e.g. `MLP 784-32-10`, `CNN 8-16` or
        `WideResNet-28-2`."""
        if self.model == "wrn":
            return f"WideResNet-{self.depth}-{self.width}"
        if self.model == "cnn":
            return f"CNN {8 * self.width}-{16 * self.width}"
        return {"lenet": "LeNet", "mlp": "MLP 784-32-10"}.get(self.model, self.model)

    def digest(self) -> str:
        """A hash of everything that determines the result (and of `CACHE_VERSION`)."""
        fields = dataclasses.asdict(self)
        # Memory settings added later: unset, they leave the runs cached before them valid.
        if fields["val_chunk"] is None:
            del fields["val_chunk"]
        if fields["outer"]["cotangent_chunk"] is None:
            del fields["outer"]["cotangent_chunk"]
        if not fields["outer"]["eq14_diagnostics"]:
            del fields["outer"]["eq14_diagnostics"]
        if fields["outer"]["outer_optimizer"] is not None:
            raise ValueError("a run of the reproduction updates phi with Adam(outer_lr): "
                             "leave outer_optimizer=None.")
        del fields["outer"]["outer_optimizer"]
        text = json.dumps([CACHE_VERSION, fields], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named experiment at one profile: its runs, or (`table3`) a benchmark."""

    name: str
    profile: str
    description: str
    runs: tuple[RunSpec, ...] = ()
    bench: BenchConfig | None = None


def profile_from_env(default: str = "smoke") -> str:
    """`$GLOCAL_PROFILE` (default `smoke`), checked against `PROFILES`."""
    return check_profile(os.environ.get("GLOCAL_PROFILE", default))


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}: choose one of {', '.join(PROFILES)} "
                         "(set GLOCAL_PROFILE or pass --profile).")
    return profile


# --- the experiments -------------------------------------------------------------------

_SGD_ALL = ("learning_rate", "momentum", "weight_decay")
_ADAM_ALL = ("learning_rate", "b1", "b2")


def _sgd_initial(lr: float) -> tuple[tuple[str, float], ...]:
    return (("learning_rate", lr), ("momentum", 0.9), ("weight_decay", 5e-4))


_ADAM_INITIAL = (("learning_rate", 1e-3), ("b1", 0.9), ("b2", 0.999))


def _seeds(profile: str, *, smoke: int = 1) -> tuple[int, ...]:
    return tuple(range(smoke)) if profile == "smoke" else (0, 1, 2)


def _outer(profile: str, strategy: str, **overrides) -> OuterConfig:
    if profile == "smoke":
        base = dict(total_steps=SMOKE_STEPS, tau=100, sigma=80, m=10, eval_every=5)
    else:
        base = dict(total_steps=10_000, tau=100, sigma=80, m=10, eval_every=5)
    return OuterConfig(strategy, **{**base, **overrides})


# Every reproduction runs glocal with the default estimator and, beside it, with the paper's
# Eq. 14, so that no figure or table leaves a reader guessing which of the two the paper ran.
_LOCAL_AND_GLOCAL = (("local", {}), ("glocal", {})) + (
    (("glocal", dict(estimator=PAPER_ESTIMATOR)),) if DEFAULT_METHOD != "paper" else ())


def _fig2(profile: str) -> list[RunSpec]:
    if profile == "smoke":
        fmnist = DataSpec("fashion_mnist")
        panels = [(fmnist, "sgd", _sgd_initial(0.1)), (fmnist, "adam", _ADAM_INITIAL)]
    else:
        panels = [
            (DataSpec("fashion_mnist"), "sgd", _sgd_initial(0.1)),
            (DataSpec("fashion_mnist"), "adam", _ADAM_INITIAL),
            (DataSpec("mnist"), "sgd", _sgd_initial(0.01)),
            (DataSpec("kmnist"), "sgd", _sgd_initial(0.01)),
        ]
    # glocal with the default estimator, and with the paper's Eq. 14 beside it.
    strategies = [("local", {}), ("global", dict(keep_trajectories=True, eq14_diagnostics=True)),
                  *_LOCAL_AND_GLOCAL[1:]]
    return [
        RunSpec("fig2", profile, data, _outer(profile, strategy, **options),
                model="mlp" if profile == "smoke" else "lenet",
                optimizer=optimizer, initial=initial,
                learn=_SGD_ALL if optimizer == "sgd" else _ADAM_ALL, seed=seed)
        for data, optimizer, initial in panels
        for strategy, options in strategies
        for seed in _seeds(profile, smoke=2)
    ]


def _fig3(profile: str) -> list[RunSpec]:
    if profile == "smoke":
        datasets = [DataSpec("fashion_mnist", val_size=1000, stands_in_for="cifar10")]
        model = dict(model="cnn", width=1)
        overrides = dict(total_steps=FIG3_SMOKE_STEPS, eval_every=1)
    else:
        datasets = [DataSpec("cifar10"), DataSpec("cifar100")]
        # ℓ̃ over 5,000 images in chunks of 1,000: its gradient needs 44 GiB in one pass.
        model, overrides = dict(val_chunk=FIG3_VAL_CHUNK), {}
    model = {"model": "wrn", **model}
    return [
        RunSpec("fig3", profile, data, _outer(profile, strategy, **options, **overrides),
                initial=_sgd_initial(0.1), learn=("learning_rate", "weight_decay"), seed=seed,
                **model)
        for data in datasets
        for strategy, options in _LOCAL_AND_GLOCAL
        for seed in _seeds(profile, smoke=2)
    ]


def _table2(profile: str) -> list[RunSpec]:
    if profile == "smoke":
        datasets = [DataSpec("fashion_mnist", val_size=1000, imbalance=f,
                             stands_in_for="cifar10") for f in (50, 100)]
        model = dict(model="mlp")
        overrides = dict(total_steps=TABLE2_SMOKE_STEPS, eval_every=2)
    else:
        datasets = [DataSpec(name, val_size=1000, imbalance=f) for name, f in PAPER_TABLE2]
        # σ = 80 cotangents pulled back at once through WideResNet-28-2 need 152 GiB.
        model, overrides = dict(model="wrn"), dict(cotangent_chunk=TABLE2_COTANGENT_CHUNK)
    return [
        RunSpec("table2", profile, data,
                _outer(profile, strategy, mode="reverse", outer_lr=1e-3, **options,
                       **overrides),
                task="reweighting", seed=seed, **model)
        for data in datasets
        for strategy, options in _LOCAL_AND_GLOCAL
        for seed in _seeds(profile, smoke=2)
    ]


def _fig4(profile: str) -> list[RunSpec]:
    # The paper's grid at both profiles, on Fashion-MNIST from lr 0.1, with the paper's
    # estimator (Eq. 14): the grid is about the DMD's window and delays.
    grid = [(sigma, m) for sigma in (20, 50, 80, 100) for m in (1, 5, 10, 20) if m < sigma]
    return [
        RunSpec("fig4", profile, DataSpec("fashion_mnist"),
                _outer(profile, "glocal", sigma=sigma, m=m, keep_trajectories=True,
                       estimator=PAPER_ESTIMATOR),
                model="mlp" if profile == "smoke" else "lenet",
                initial=_sgd_initial(0.1), learn=_SGD_ALL, seed=seed)
        for sigma, m in grid
        for seed in _seeds(profile)
    ]


def _fidelity(profile: str) -> list[RunSpec]:
    # Global runs record, per window, the σ hypergradients any estimator reads and the h_T
    # it should predict. φ fixed (outer lr 0) isolates the estimator from the outer loop.
    # With Z reset and φ moving they are fig2's global runs of seed 0 on Fashion-MNIST, so
    # those two are shared with fig2 (and cached once).
    fig2 = {(s.optimizer, s.seed): s for s in _fig2(profile)
            if s.outer.strategy == "global" and s.data.name == "fashion_mnist"}
    fmnist = DataSpec("fashion_mnist")
    return [
        fig2[(optimizer, 0)] if reset and outer_lr else
        RunSpec("fidelity", profile, fmnist,
                _outer(profile, "global", keep_trajectories=True, reset_tangents=reset,
                       outer_lr=outer_lr, estimator=PAPER_ESTIMATOR),
                model="mlp" if profile == "smoke" else "lenet", optimizer=optimizer,
                initial=_sgd_initial(0.1) if optimizer == "sgd" else _ADAM_INITIAL,
                learn=_SGD_ALL if optimizer == "sgd" else _ADAM_ALL, seed=0)
        for optimizer in ("sgd", "adam")
        for reset in (True, False)
        for outer_lr in (0.1, 0.0)
    ]


def experiment(name: str, profile: str | None = None) -> Experiment:
    """The experiment `name` (one of `EXPERIMENTS`) at `profile` (default: from the env)."""
    profile = profile_from_env() if profile is None else check_profile(profile)
    builders: dict[str, Callable[[str], list[RunSpec]]] = {
        "fig2": _fig2, "fig3": _fig3, "table2": _table2, "fig4": _fig4,
        "fidelity": _fidelity,
    }
    if name == "table3":
        bench = (BenchConfig(steps=2000, tau=100, sigma=80, m=10, val_size=6000,
                             train_size=54_000, model="mlp") if profile == "smoke"
                 else PAPER_BENCH)
        return Experiment(name, profile, DESCRIPTIONS[name], bench=bench)
    if name not in builders:
        raise ValueError(f"Unknown experiment {name!r}: choose one of {', '.join(EXPERIMENTS)}.")
    return Experiment(name, profile, DESCRIPTIONS[name], runs=tuple(builders[name](profile)))
