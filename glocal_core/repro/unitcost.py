"""The cost of one compiled function, for the dry run: its memory, its predicted seconds,
and its measured seconds when it fits and is predicted to be quick enough.

Memory is XLA's `memory_analysis` of the compiled executable. The prediction is XLA's
`cost_analysis` flops divided by the device's rate on a float32 matmul or convolution,
whichever is slower, measured once per process (`device_flops`). Both run nearer the
device's peak than a network's step, so the prediction errs short: a call predicted over
the limit is slower still. A network's step can run at a fraction of both (XLA:CPU: a
WideResNet-28-2 step at a third of the convolution's rate or less), so `measure_unit` also takes
the rates that the same network's timed calls reached (`observed`), and the dry run times
a problem's functions cheapest first. XLA counts a
loop's body once, not once per trip, so a function whose chunks run in a `lax.map` is
predicted from its twin with every chunk in one (the same arithmetic, one pass), which the
caller passes as `predict_from`.
"""

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

_GIB = 2**30


class UnitCost(NamedTuple):
    """One compiled function: compile seconds, XLA's bytes (`None`: no analysis), seconds
    per call (`None`: not run), and why it was not run (`""` when it was)."""

    compile_seconds: float
    bytes: int | None
    seconds: float | None
    why: str = ""


class Prediction(NamedTuple):
    """A call's predicted cost: XLA's `flops` and the device's measured `rate` (flop/s)."""

    flops: float
    rate: float

    @property
    def seconds(self) -> float:
        """The predicted seconds of one call."""
        return self.flops / self.rate

    def describe(self, name: str) -> str:
        """Why `name` was not timed, e.g. `record not timed: 2.1 TFLOP, about 40 s at
        55 GFLOP/s on this device`."""
        return (f"{name} not timed: {_si(self.flops)}FLOP, about {self.seconds:.0f} s at "
                f"{_si(self.rate)}FLOP/s on this device")


def _si(x: float) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= factor:
            return f"{x / factor:.1f} {prefix}"
    return f"{x:.0f} "


def _rate(fn, make, count, sizes) -> float:
    """flop/s of `fn(make(n))`, which does `count(n)` flops, for the first n of `sizes` at
    which one call takes 20 ms (so that dispatch does not dominate on an accelerator), or
    the last; the fastest of three calls counts."""
    fn = jax.jit(fn)
    for n in sizes:
        x = make(n)
        jax.block_until_ready(fn(x))  # compile
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(fn(x))
            seconds.append(time.perf_counter() - start)
        if min(seconds) >= 0.02:
            break
    return count(n) / min(seconds)


@functools.cache
def device_flops() -> float:
    """Float32 flop/s of this device, the slower of a square matmul (n from 256 to 8192) and
    a 3×3 convolution of 32 channels on 32×32 images (batch from 16 to 1024), each grown
    until a call takes 20 ms. XLA:CPU runs convolutions at a tenth of its matmul rate or
    less (measured: WideResNet-28-2's step at 9 GFLOP/s against a 90–300 GFLOP/s matmul),
    and the networks here are convolutional, so the convolution's rate keeps the prediction
    from erring short by that much. Measured once per process."""
    matmul = _rate(lambda a: a @ a, lambda n: jnp.ones((n, n), jnp.float32),
                   lambda n: 2 * n**3, [256 * 2**i for i in range(6)])
    kernel = jnp.ones((3, 3, 32, 32), jnp.float32)

    def conv(x):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    convolution = _rate(conv, lambda n: jnp.ones((n, 32, 32, 32), jnp.float32),
                        lambda n: 2 * n * 32 * 32 * 32 * 32 * 9, [16 * 2**i for i in range(7)])
    return min(matmul, convolution)


def flops(lowered) -> float | None:
    """XLA's flops of a lowered function (each loop body counted once), `None` where XLA
    gives none."""
    # `eqx.filter_jit(...).lower` wraps jax's Lowered (and its Compiled) in its own
    analysis = getattr(lowered, "lowered", lowered).cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    value = (analysis or {}).get("flops")
    return float(value) if value and value > 0 else None


def compiled_bytes(compiled) -> int | None:
    """XLA's arguments + outputs + temporaries − aliased bytes of a compiled function
    (`None` where XLA gives no analysis)."""
    analysis = getattr(compiled, "compiled", compiled).memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def measure_unit(fn, args, *, repeats: int, budget: int, name: str = "call",
                 max_seconds: float | None = None, predict_from=None,
                 observed: list[float] | None = None) -> UnitCost:
    """Compile `fn(*args)` ahead of time, read its memory, and if it fits in `budget` bytes
    and is not predicted to take over `max_seconds` (`None`: no limit) call it up to
    `repeats` times (no more once a call has taken over `max_seconds`): the fastest counts.

    `predict_from`: the flops to predict from, or `(fn, args)` of the same arithmetic
    without the loops that chunking adds, whose flops give the prediction (default:
    `fn(*args)` itself). `observed`: flop/s that earlier calls of the same network achieved;
    the prediction uses the slowest of them and the device's rate, and a timed call appends
    its own. `name` names the function in `UnitCost.why`.
    """
    start = time.perf_counter()
    nbytes = compiled_bytes(fn.lower(*args).compile())
    compile_seconds = time.perf_counter() - start
    if nbytes is not None and nbytes > budget:
        return UnitCost(compile_seconds, nbytes, None,
                        f"does not fit: {name} needs {nbytes / _GIB:.1f} GiB")
    count = None
    if max_seconds is not None or observed is not None:
        if isinstance(predict_from, (int, float)):
            count = float(predict_from)
        else:
            twin, twin_args = predict_from or (fn, args)
            count = flops(twin.lower(*twin_args))
    if max_seconds is not None and count is not None:
        prediction = Prediction(count, min([device_flops(), *(observed or [])]))
        if prediction.seconds > max_seconds:
            return UnitCost(compile_seconds, nbytes, None, prediction.describe(name))
    seconds: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds.append(time.perf_counter() - start)
        if max_seconds is not None and seconds[-1] > max_seconds:
            break
    if observed is not None and count:
        observed.append(count / min(seconds))
    return UnitCost(compile_seconds, nbytes, min(seconds))
