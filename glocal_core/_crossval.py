"""Cross-validated linear prediction (`cv`): extrapolate a coordinate where its own tail says
the extrapolation holds and the fitted dynamics converge; otherwise keep the window's mean
or its last value, whichever forecasts that coordinate's tail better.

Two facts about a window `W` of local hypergradients decide which estimate of its limit is
right, and no single estimator serves both:

- A noise-free transient `h_t = h_∞ + Σ_j a_j λ_j^t` (`|λ_j| < 1`) obeys a linear recurrence
  with an intercept, `h_{t+k} = Σ_{i<k} β_i h_{t+i} + c`, whose fixed point
  `c / (1 − Σ β)` is `h_∞` exactly, for real and complex (oscillating) `λ_j` and for a
  constant (`β = 0`). The window mean, in contrast, lies somewhere along the transient.
- Minibatch noise makes the recurrence fit noise; the mean then averages it away, and an
  extrapolation only amplifies it.

A third fact makes a fixed point dangerous: a recurrence fitted to a *growing* window has a
characteristic root outside the unit circle, and its fixed point, which the sequence moves
away from, often lies on the other side of zero. Extrapolation calls it an anti-limit (Sidi,
*Practical Extrapolation Methods*, 2003). Taking it as the global hypergradient turns a
tuning run around.

So, for each coordinate separately (one coordinate's noise never decides another's
estimate), the estimator:

1. fits two recurrences of order `m` to the head of the window (all but the last `holdout`
   share of rows) and to the whole window: `joint` (one `β` for all coordinates, fitted to
   the coordinates standardised, so that none dominates by its scale) and `coord` (one `β`
   per coordinate);
2. admits a recurrence's fixed point only where it converges: every characteristic root has
   modulus at most `max_radius`, the fixed point is finite and within `max_growth` window
   ranges of the last value (`DIVERGENT`, `NOT_FINITE`, `TOO_LARGE` otherwise);
3. scores every candidate on the held-out tail: the squared errors of its forecast, plus the
   held-out rows times the squared change of its estimate between head and whole window (an
   estimate that moves when the window grows is not a limit). The baselines are the mean
   (forecast: the head's mean) and the local value (forecast: the head's last row);
4. keeps the better baseline unless an admitted extrapolation beats it by `margin` standard
   errors of their paired difference on the tail (`UNCONFIRMED` otherwise). The standard
   error is inflated by the lag-1 autocorrelation of the differences, so that correlated
   noise, whose tail a recurrence forecasts well for a few steps, does not pass for dynamics.
   The mean stands in as the baseline only where it also lies `sign_errors` standard errors
   from zero, so that it settles the sign of the hypergradient; elsewhere `h_τ` does.

The extrapolators are exact, up to round-off, on their class of noise-free windows, and the
guards never reject those: their roots lie inside the unit circle.
"""

from typing import NamedTuple

import numpy as np

from ._dmd import NOT_FINITE, TOO_LARGE

# A singular value below this times the window's scale is round-off: the centred columns of
# a constant window are zero only up to it.
_ROUNDOFF = 1e-12
# The fitted recurrence has a characteristic root outside `max_radius`: its fixed point is an
# anti-limit, or one too far in the future for the window to vouch for.
DIVERGENT = "divergent fit"
# The extrapolation did not beat the better of mean and local value on the held-out rows by
# the margin: noise, as far as the window can tell.
UNCONFIRMED = "not confirmed by the held-out rows"
# The lag-1 autocorrelation of the held-out differences is clipped to this: beyond it the
# inflation of the standard error (sqrt((1 + r) / (1 − r)) = 3) would hide any transient.
_MAX_AUTOCORRELATION = 0.8
# An extrapolation must also explain at least this share of the better baseline's held-out
# error: on noise around a level, even correlated noise, a recurrence forecasts the tail
# little better than the level does (AR(1) with ρ = 0.8: about 15% better), while on a
# transient whose bias exceeds the noise it forecasts it several times better.
_GAIN = 0.5
EXTRAPOLATORS = ("joint", "coord")
BASELINES = ("mean", "local")


class CrossValidation(NamedTuple):
    """What `cross_validated` decided, per coordinate, for diagnostics.

    **Fields:**

    - `choice`: per coordinate, the candidate returned: `"joint"` or `"coord"` (an
      extrapolation), `"mean"` or `"local"` (a baseline); a tuple of `q` strings.
    - `reasons`: per coordinate, `""` where it extrapolated, else why not: `DIVERGENT`,
      `NOT_FINITE` or `TOO_LARGE` (no extrapolation admitted), or `UNCONFIRMED`.
    - `scores`: `{candidate: (q,)}` held-out scores (lower is better; `inf` where the
      candidate was not admitted).
    - `limits`: `{candidate: (q,)}` each candidate's estimate on the whole window.
    - `radius`: `{extrapolator: (q,)}` the largest modulus of its characteristic roots.
    - `holdout`: the number of rows held out.
    """

    choice: tuple
    reasons: tuple
    scores: dict
    limits: dict
    radius: dict
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


def root_radius(beta: np.ndarray) -> np.ndarray:
    """The largest modulus of the characteristic roots of `x_{t+k} = Σ_{i<k} β_i x_{t+i}`,
    the eigenvalues of its companion matrix; `beta` `(..., k)`, returns `(...)`."""
    if not np.all(np.isfinite(beta)):
        return np.full(beta.shape[:-1], np.inf)
    k = beta.shape[-1]
    companion = np.zeros(beta.shape[:-1] + (k, k))
    companion[..., :-1, 1:] = np.eye(k - 1)
    companion[..., -1, :] = beta
    return np.max(np.abs(np.linalg.eigvals(companion)), axis=-1)


def _fit(W: np.ndarray, k: int, rtol: float) -> dict:
    """Fit `h_{t+k} = Σ_{i<k} β_i h_{t+i} + c` to every row of `W` `(n, q)`.

    **Returns:** `{name: (beta (q, k), c (q,), limit (q,), radius (q,))}` for `joint` (one `β`,
    fitted to the standardised coordinates) and `coord` (a `β` per coordinate).
    """
    n, q = W.shape
    rows = n - k
    # Standardise, so that a coordinate's share of the joint fit does not grow with its scale;
    # a constant coordinate (zero up to round-off) takes no part and keeps β's fixed point c.
    centre, spread = W.mean(axis=0), W.std(axis=0)
    alive = spread > _ROUNDOFF * np.maximum(np.max(np.abs(W), axis=0), 1e-300)
    scale = np.where(alive, spread, 1.0)
    Z = np.where(alive, (W - centre) / scale, 0.0)
    X = np.stack([Z[i : i + rows] for i in range(k)], axis=-1)  # (rows, q, k)
    y = Z[k:]
    x_mean, y_mean = X.mean(axis=0), y.mean(axis=0)  # centring over t eliminates c
    B = np.concatenate([X - x_mean, (y - y_mean)[..., None]], axis=-1)
    # One small QR per coordinate; stacked, their R factors hold the joint least-squares
    # problem too, so the tall (rows * q, k) matrix is never factored.
    R = np.linalg.qr(np.moveaxis(B, 1, 0), mode="r")  # (q, k+1, k+1)
    beta = _min_norm(np.linalg.qr(R.reshape(-1, k + 1), mode="r"), rtol,
                     _ROUNDOFF * np.sqrt(rows * q))
    beta_q = _min_norm(R, rtol, _ROUNDOFF * np.sqrt(rows))  # (q, k)
    fits = {}
    for name, b in (("joint", np.broadcast_to(beta, (q, k))), ("coord", beta_q)):
        c = y_mean - np.einsum("qk,qk->q", x_mean, b)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            limit = centre + scale * c / (1.0 - b.sum(axis=1))
        limit = np.where(alive, limit, W[-1])
        c_raw = (centre + scale * c) - centre * b.sum(axis=1)  # c of the unstandardised fit
        fits[name] = (b, np.where(alive, c_raw, W[-1] * (1.0 - b.sum(axis=1))), limit,
                      root_radius(b))
    return fits


def _forecast(W: np.ndarray, beta: np.ndarray, c: np.ndarray, steps: int) -> np.ndarray:
    """Iterate a fitted recurrence (`beta` `(q, k)`) `steps` rows past the end of `W`."""
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


def _autocorrelation(rows: np.ndarray) -> np.ndarray:
    """The lag-1 autocorrelation of each column of `rows` `(n, q)`, clipped to
    `[0, _MAX_AUTOCORRELATION]`, and the columns' variances."""
    n = len(rows)
    centred = rows - rows.mean(axis=0)
    variance = np.mean(centred**2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sum(centred[1:] * centred[:-1], axis=0) / (n * variance)
    return np.clip(np.nan_to_num(r), 0.0, _MAX_AUTOCORRELATION), variance


def _mean_error(W: np.ndarray) -> np.ndarray:
    """The standard error of each column's mean, inflated for its lag-1 autocorrelation."""
    r, variance = _autocorrelation(W)
    return np.sqrt(variance * (1 + r) / (1 - r) / len(W))


def _paired_error(difference: np.ndarray) -> np.ndarray:
    """The standard error of the sum over rows of `difference` `(n, q)`, per coordinate,
    inflated by `sqrt((1 + r) / (1 − r))` for the lag-1 autocorrelation `r >= 0` of the rows
    (the variance of a sum of AR(1) terms)."""
    r, variance = _autocorrelation(difference)
    return np.sqrt(len(difference) * variance * (1 + r) / (1 - r))


def cross_validated(W: np.ndarray, m: int, *, holdout: float, margin: float, rtol: float,
                    max_growth: float, max_radius: float,
                    sign_errors: float) -> tuple[np.ndarray, CrossValidation]:
    """The steady state of the window `W` `(sigma, q)` (float64, finite) by `cv`, decided
    coordinate by coordinate (see the module docstring for the rule).

    **Arguments:** `m`, the order of the recurrences; `holdout`, the share of rows held out;
    `margin`, the standard errors an extrapolation must win by; `rtol`, the singular-value
    cut-off of the fits; `max_growth`, how many window ranges a fixed point may lie from the
    last value; `max_radius`, the largest modulus admitted for a characteristic root;
    `sign_errors`, how many autocorrelation-inflated standard errors from zero the window
    mean must lie to replace `h_τ`.

    **Returns:** `(value (q,), CrossValidation)`. Every coordinate's value is an admitted
    extrapolation, the window mean or the last row: never a divergent fit's fixed point.
    """
    held = held_out_rows(m, holdout, len(W))
    head, tail = W[:-held], W[-held:]
    whole, early = _fit(W, m, rtol), _fit(head, m, rtol)
    reach = max_growth * np.ptp(W, axis=0) + _ROUNDOFF * np.max(np.abs(W))

    def stability(a, b):
        return held * (a - b) ** 2

    squared = {"mean": (head.mean(axis=0) - tail) ** 2, "local": (head[-1] - tail) ** 2}
    limits = {"mean": W.mean(axis=0), "local": W[-1]}
    scores = {"mean": squared["mean"].sum(axis=0) + stability(head.mean(axis=0), limits["mean"]),
              "local": squared["local"].sum(axis=0) + stability(head[-1], limits["local"])}
    radius, why = {}, {}
    for name in EXTRAPOLATORS:
        beta, c, limit, rho = early[name]
        limits[name], radius[name] = whole[name][2], np.maximum(rho, whole[name][3])
        with np.errstate(over="ignore", invalid="ignore"):
            squared[name] = (_forecast(head, beta, c, held) - tail) ** 2
            score = squared[name].sum(axis=0) + stability(limit, limits[name])
            far = np.abs(limits[name] - W[-1]) > reach
        finite = np.isfinite(limit) & np.isfinite(limits[name]) & np.isfinite(score)
        why[name] = np.where(~finite, NOT_FINITE, np.where(
            radius[name] > max_radius, DIVERGENT, np.where(far, TOO_LARGE, "")))
        scores[name] = np.where(why[name] == "", score, np.inf)

    q = W.shape[1]
    columns = np.arange(q)
    # The mean stands for the window only where it settles the hypergradient's sign; where it
    # does not, the window says nothing about the direction that h_τ does not, and the mean
    # of noise, steadier than h_τ, would only make the outer optimizer step more firmly in a
    # direction nobody measured (see the trust benchmark).
    signed = np.abs(limits["mean"]) >= sign_errors * _mean_error(W)
    better = np.where(scores["local"] < scores["mean"], 1, 0)  # ties keep the mean
    base_names = np.array(BASELINES)[np.where(signed, better, 1)]
    best = np.where(scores["coord"] < scores["joint"], 1, 0)
    best_names = np.array(EXTRAPOLATORS)[best]
    # An extrapolation must beat the better forecast of the two, whichever stands in for it.
    base_squared = np.where(better == 1, squared["local"], squared["mean"])
    best_squared = np.where(best == 1, squared["coord"], squared["joint"])
    with np.errstate(invalid="ignore"):
        noise = margin * _paired_error(np.nan_to_num(best_squared - base_squared))
    base_score = np.stack([scores[n] for n in BASELINES])[better, columns]
    best_score = np.stack([scores[n] for n in EXTRAPOLATORS])[best, columns]
    wins = (best_score + noise < base_score) & (best_score <= _GAIN * base_score)
    choice = np.where(wins, best_names, base_names)
    # Why not: the extrapolators' objection where both were refused, else the held-out rows'.
    # (Both extrapolators were refused where the better score is infinite.)
    objection = np.where(np.isfinite(best_score), "",
                         np.where(why["coord"] != "", why["coord"], why["joint"]))
    reasons = np.where(wins, "", np.where(objection == "", UNCONFIRMED, objection))
    value = np.stack([limits[n] for n in choice.tolist()], axis=0)[columns, columns]
    return value, CrossValidation(tuple(choice.tolist()), tuple(reasons.tolist()), scores,
                                  limits, radius, held)
