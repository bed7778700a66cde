"""`python -m glocal_core doctor`: what to check before a long run, as true lines of text.

The JAX backend and whether CUDA is the one in use, the precision, each dataset (real files,
prepared, or missing with the command that prepares it: a dry run then uses mock arrays of
the real shapes), the cache directory with its free space and the runs already in it, and
the estimated time of each experiment on this device from its last dry run, which the
dry run leaves beside the cache (`save_report`): a report, never a result.
"""

import json
import shutil
from pathlib import Path

import jax

from . import experiments as ex
from .._data import TFDS_NAMES, resolve_data_dir
from .dryrun import DryRun
from .._idx import fashion_mnist_dir, has_fashion_mnist_idx
from .._io import write_atomic

_GIB = 2**30


def report_path(cache_dir=None) -> Path:
    """Where the dry run leaves its estimates for `doctor`, per device (not a result)."""
    root = Path(cache_dir) if cache_dir is not None else ex.default_cache_dir()
    device = f"{jax.default_backend()}-{jax.devices()[0].device_kind}".replace(" ", "_")
    return root / "dryrun" / f"{device}.json"


def save_report(name: str, rows: list[DryRun], cache_dir=None) -> Path:
    """Record experiment `name`'s dry run for `doctor` (other experiments' entries kept)."""
    path = report_path(cache_dir)
    report = load_report(cache_dir)
    report[name] = [r._asdict() for r in rows]
    return write_atomic(path, lambda f: f.write(json.dumps(report, indent=1).encode()))


def load_report(cache_dir=None) -> dict:
    """`{experiment: [DryRun as dict, ...]}` of the dry runs done on this device."""
    path = report_path(cache_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def backend_lines() -> list[str]:
    """The backend and devices, and whether a GPU is present that JAX does not use."""
    backend, devices = jax.default_backend(), jax.devices()
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    if backend in ("gpu", "cuda"):
        verdict = f"GPU in use: {kinds} (CUDA)"
    elif shutil.which("nvidia-smi"):
        verdict = ("a GPU driver is present (nvidia-smi) but JAX uses the CPU: install JAX "
                   "with CUDA (`pip install -e .[cuda12]`)")
    else:
        verdict = "no GPU: CPU backend"
    return [f"backend: {backend}, {len(devices)} device(s): {kinds}", verdict]


def precision_line() -> str:
    x64 = jax.config.jax_enable_x64
    matmul = jax.config.jax_default_matmul_precision or "default"
    return (f"precision: {'float64' if x64 else 'float32'} arrays (jax_enable_x64={x64}), "
            f"matmul precision {matmul}; the DMD runs in float64 on the host")


def _tfds_prepared(name: str, data_dir: Path) -> bool:
    decoded = data_dir / "glocal_npy" / name / "train_images.npy"
    return decoded.exists() or any((data_dir / name).glob("*/dataset_info.json"))


def dataset_line(name: str, data_dir=None) -> str:
    """One dataset: `Debian files`, `prepared`, or `missing` with the command to prepare it."""
    data_dir = resolve_data_dir(data_dir)
    if name == "fashion_mnist" and has_fashion_mnist_idx():
        return f"{name}: Debian files ({fashion_mnist_dir()})"
    if _tfds_prepared(name, data_dir):
        return f"{name}: prepared ({data_dir})"
    return (f"{name}: missing (a dry run uses mock arrays of the real shapes); prepare it "
            f"with `python -m glocal_core data prepare {name} --data-dir {data_dir}`")


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def cache_lines(cache_dir=None) -> list[str]:
    """The cache directory, its free space, and its runs per profile and experiment."""
    root = Path(cache_dir) if cache_dir is not None else ex.default_cache_dir()
    free = shutil.disk_usage(_existing_parent(root)).free
    lines = [f"cache: {root} ({free / _GIB:.1f} GiB free)"]
    for profile in ex.PROFILES:
        for name in ex.EXPERIMENTS:
            folder = root / profile / name
            runs = len(list(folder.glob("*.pkl"))) if folder.exists() else 0
            checkpoints = len(list(folder.glob("*.ckpt"))) if folder.exists() else 0
            if runs or checkpoints:
                lines.append(f"  {profile}/{name}: {runs} cached, {checkpoints} checkpointed")
    if len(lines) == 1:
        lines.append("  no runs cached yet")
    return lines


def estimate_lines(cache_dir=None) -> list[str]:
    """Per experiment, the hours its `full` runs take on this device, from the dry run."""
    report = load_report(cache_dir)
    lines = []
    for name in ex.EXPERIMENTS:
        rows = report.get(name)
        if not rows:
            lines.append(f"  {name}: not estimated; run `python -m glocal_core reproduce "
                         f"{name} --profile full --dry-run`")
            continue
        hours = sum(r["estimated_seconds"] for r in rows) / 3600
        bound = "" if all(r["complete"] for r in rows) else "≥ "
        lines.append(f"  {name}: {bound}{hours:.1f} h for {len(rows)} runs on one such "
                     "device (N shards: about 1/N of it)")
    return lines


def doctor(*, cache_dir=None, data_dir=None) -> str:
    """The whole report (what `python -m glocal_core doctor` prints)."""
    lines = [*backend_lines(), precision_line(), "datasets:"]
    lines += [f"  {dataset_line(name, data_dir)}" for name in TFDS_NAMES]
    lines += cache_lines(cache_dir)
    lines += ["estimated time at full, from the dry run on this device:",
              *estimate_lines(cache_dir)]
    return "\n".join(lines)
