"""Cross-validated linear prediction (`cv`): extrapolate where the window's own tail says the
extrapolation holds, average where it does not.

Two facts about a window `W` of local hypergradients decide which estimate of its limit is
right, and no single estimator serves both:

- A noise-free transient `h_t = h_∞ + Σ_j a_j λ_j^t` (`|λ_j| < 1`) obeys a linear recurrence
  with an intercept, `h_{t+k} = Σ_{i<k} β_i h_{t+i} + c`, whose fixed point
  `c / (1 − Σ β)` is `h_∞` exactly, for real and complex (oscillating) `λ_j` and for a
  constant (`β = 0`). The window mean, in contrast, lies somewhere along the transient.
- Minibatch noise makes the recurrence fit noise; the mean then averages it away, and an
  extrapolation only amplifies it.

So the estimator fits both kinds of model to the head of the window (all but the last
`holdout` share of rows), forecasts the held-out tail with each, and returns, computed on the
whole window, the one that forecasts the tail best. An extrapolator must beat the mean by
`margin` standard errors of their paired difference on the tail, so that on a window of pure
noise, where either wins by chance, the mean is kept.

The extrapolators are `joint` (one `β` for all coordinates, `c` per coordinate: a linear
system of up to `k` modes) and `coord` (one `β` per coordinate: coordinates with dynamics of
their own). Each is exact, up to round-off, on its class of noise-free windows.
"""

from typing import NamedTuple

import numpy as np

from ._dmd import unusable

# A singular value below this times the window's scale is round-off: the centred columns of
# a constant window are zero only up to it.
_ROUNDOFF = 1e-12


class CrossValidation(NamedTuple):
    """What `cross_validated` decided, for diagnostics.

    **Fields:** `choice`, the estimator returned (`"mean"`, `"joint"` or `"coord"`); `scores`,
    each candidate's held-out score (lower is better, `inf` where it failed); `limits`, each
    candidate's estimate on the whole window; `holdout`, the number of rows held out.
    """

    choice: str
    scores: dict
    limits: dict
    holdout: int


def _min_norm(R: np.ndarray, rtol: float, floor) -> np.ndarray:
    """The minimum-norm least-squares `β` of `[A | y]` given its R factor `(..., k+1, k+1)`:
    singular values of `A` below `rtol` times the largest, or below `floor`, count as zero."""
    k = R.shape[-1] - 1
    U, s, Vh = np.linalg.svd(R[..., :k, :k])
    keep = (s > rtol * s[..., :1]) & (s > floor)
    inverse = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    projected = np.einsum("...ji,...j->...i", U, R[..., :k, k]) * inverse
    return np.einsum("...ji,...j->...i", Vh, projected)


def _fit(W: np.ndarray, k: int, *, per_coordinate: bool, rtol: float,
         max_growth: float) -> dict:
    """Fit `h_{t+k} = Σ_{i<k} β_i h_{t+i} + c` to every row of `W` `(n, q)`.

    **Returns:** `{name: (beta, c, limit)}` for `joint` and, when `per_coordinate` and
    `q > 1`, `coord`, whose coordinates with a non-finite limit or one more than `max_growth`
    window ranges from their last value take the joint limit (their last value where the
    joint limit is itself unusable).
    """
    n, q = W.shape
    rows = n - k
    X = np.stack([W[i : i + rows] for i in range(k)], axis=-1)  # (rows, q, k)
    y = W[k:]
    x_mean, y_mean = X.mean(axis=0), y.mean(axis=0)  # centring over t eliminates c
    B = np.concatenate([X - x_mean, (y - y_mean)[..., None]], axis=-1)
    # One small QR per coordinate; stacked, their R factors hold the joint least-squares
    # problem too, so the tall (rows * q, k) matrix is never factored.
    R = np.linalg.qr(np.moveaxis(B, 1, 0), mode="r")  # (q, k+1, k+1)
    scale = np.max(np.abs(W))
    beta = _min_norm(np.linalg.qr(R.reshape(-1, k + 1), mode="r"), rtol,
                     _ROUNDOFF * np.sqrt(rows * q) * scale)
    c = y_mean - x_mean @ beta
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        limit = c / (1.0 - beta.sum())
    fits = {"joint": (beta, c, limit)}
    if per_coordinate and q > 1:
        floor = _ROUNDOFF * np.sqrt(rows) * np.max(np.abs(W), axis=0)[:, None]
        beta_q = _min_norm(R, rtol, floor)  # (q, k)
        c_q = y_mean - np.einsum("qk,qk->q", x_mean, beta_q)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            limit_q = c_q / (1.0 - beta_q.sum(axis=1))
            reach = max_growth * np.ptp(W, axis=0) + _ROUNDOFF * scale
            wild = ~np.isfinite(limit_q) | (np.abs(limit_q - W[-1]) > reach)
        fill = W[-1] if unusable(limit, W, max_growth) else limit
        fits["coord"] = (beta_q, c_q, np.where(wild, fill, limit_q))
    return fits


def _forecast(W: np.ndarray, beta: np.ndarray, c: np.ndarray, steps: int) -> np.ndarray:
    """Iterate a fitted recurrence `steps` rows past the end of `W`: `(steps, q)`."""
    k = beta.shape[-1]
    rows = list(W[-k:])
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            rows.append((np.stack(rows[-k:], axis=-1) * beta).sum(axis=-1) + c)
    return np.array(rows[k:])


def held_out_rows(m: int, holdout: float, sigma: int) -> int:
    """How many of a `sigma`-row window's rows `cv` holds out (a `holdout` share, at least
    2); a `ValueError` that says what to change if the rows left cannot fit order `m`."""
    held = max(2, int(round(holdout * sigma)))
    if sigma - held < 2 * m + 2:
        raise ValueError(
            f"method='cv' fits a recurrence of order m={m} to the first {sigma - held} of "
            f"{sigma} rows and needs at least 2 m + 2 = {2 * m + 2}: raise sigma, lower m or "
            f"lower holdout ({holdout}).")
    return held


def cross_validated(W: np.ndarray, m: int, *, holdout: float, margin: float, rtol: float,
                    max_growth: float, per_coordinate: bool = True
                    ) -> tuple[np.ndarray, CrossValidation]:
    """The steady state of the window `W` `(sigma, q)` (float64, finite) by `cv`.

    Each candidate (`mean`; the recurrences `joint` and `coord` of order `m`) is fitted to
    the head of `W` and scored on its forecast of the last `holdout` share of rows: the sum of
    squared errors, plus the held-out rows times the squared change of its estimate between
    head and whole window (an estimate that moves when the window grows is not a limit).
    An extrapolator's score also carries `margin` standard errors of its paired difference
    with the mean's squared errors. The lowest score wins, and its estimate on the whole
    window is returned; an unusable winner (`glocal_core._dmd.unusable`: not finite, or
    beyond `max_growth`) gives way to the best usable candidate. The mean is always usable,
    so `cv` never falls back to the local hypergradient.

    **Returns:** `(value (q,), CrossValidation)`.
    """
    held = held_out_rows(m, holdout, len(W))
    head, tail = W[:-held], W[-held:]
    options = dict(per_coordinate=per_coordinate, rtol=rtol, max_growth=max_growth)
    whole, early = _fit(W, m, **options), _fit(head, m, **options)
    mean, head_mean = W.mean(axis=0), head.mean(axis=0)
    squared_mean = (head_mean - tail) ** 2
    limits = {"mean": mean}
    scores = {"mean": float(squared_mean.sum() + held * np.sum((head_mean - mean) ** 2))}
    kinds = {"mean": ""}
    for name, (beta, c, limit) in early.items():
        limits[name] = whole[name][2]
        kinds[name] = unusable(limits[name], W, max_growth)
        with np.errstate(over="ignore", invalid="ignore"):
            squared = (_forecast(head, beta, c, held) - tail) ** 2
            score = (squared.sum() + held * np.sum((limit - limits[name]) ** 2)
                     + margin * np.std(squared - squared_mean) * np.sqrt(squared.size))
        scores[name] = float(score) if np.isfinite(score) else np.inf
    choice = min((name for name in scores if not kinds[name]), key=scores.get)
    return limits[choice], CrossValidation(choice, scores, limits, held)
