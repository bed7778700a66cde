"""Hankel DMD, Eq. 10 and 13: the fit, its forecast and its modes' terms. Eq. 14, the
paper's steady-state estimate built on it, is the `paper` method of `_estimators`.

Everything here runs on the host in NumPy, in float64/complex128. The matrices are tiny
(at most `m*q` by `sigma`), and JAX has no non-symmetric eigendecomposition on the GPU, so a
device round trip would buy nothing. Inputs may be JAX arrays; they are copied to the host.

Hankel DMD is plain exact DMD after a Hankel (time-delay) step, as in PyDMD: the observable
is `g(h_t) = [h_t; h_{t+1}; ...; h_{t+m-1}]` (paper, Sec. 4 "Implementation"; Arbabi & Mezic
2017). Its inverse `g^{-1}` is the mean of the `m` blocks, each advanced to the same time
(see `forecast`). For a mode with `λ = 1` all blocks are equal, so for Eq. 14 this is the
plain mean of the blocks. For a fitted `λ ≈ 1` the blocks differ by `O(|λ - 1|)` and the mean
is the choice that favours none of them; with noisy trajectories it measured no better and
no worse than the first block (it does not average noise away: the mode is already a fit).
"""

from typing import NamedTuple

import numpy as np
import scipy.linalg

# A singular value below `rtol * s_max` is round-off, not dynamics. 1e-6 sits above float32
# round-off (hypergradients computed on a GPU arrive with relative noise ~1e-7) and far below
# any mode that matters to a hypergradient step.
_RTOL = 1e-6
# |λ - 1| <= δ marks the steady-state modes of Eq. 14. A mode with |λ - 1| <= 1e-2 has a time
# constant of at least 100 steps (the paper's τ), longer than the σ = 80 window, so it cannot
# be told from a constant there; freezing it at its current value is what the local
# hypergradient does anyway. Noise moves a true λ = 1 by ~0.2x the relative noise level (95%
# quantile ~0.6x, measured on a constant plus decaying exponentials), so 1e-2 tolerates a
# few percent of noise; a tighter δ makes noisy trajectories fall back to the local one.
_DELTA = 1e-2
# A steady state ten times larger than anything seen in the window is an extrapolation that
# a window of `sigma` steps cannot support.
_MAX_GROWTH = 10.0


class DMDFit(NamedTuple):
    """A Hankel DMD fit: `g(h_{L-m+n}) ≈ modes @ (eigenvalues**n * amplitudes)` (Eq. 13)."""

    eigenvalues: np.ndarray  # complex (r,), of the reduced operator Ã
    modes: np.ndarray  # complex (m*q, r), exact DMD modes u_j
    amplitudes: np.ndarray  # complex (r,), b_j fitted to the last Hankel column
    singular_values: np.ndarray  # float (k,), all singular values of the lagged matrix X
    rank: int
    m: int
    q: int


# Why an estimate fell back to the local hypergradient, as data: one of these, or "".
NO_EIGENVALUE = "no eigenvalue near 1"
NOT_FINITE = "not finite"
IMAGINARY = "imaginary"
TOO_LARGE = "too large"
SINGULAR = "singular"
FALLBACK_KINDS = (NO_EIGENVALUE, NOT_FINITE, IMAGINARY, TOO_LARGE, SINGULAR)
# DMD variants that `hankel_dmd` fits; None is exact DMD.
DEBIAS = (None, "fb", "tls")


def _check_trajectory(H, m: int, sigma: int | None = None) -> np.ndarray:
    H = np.asarray(H)
    if H.ndim != 2:
        raise ValueError(
            f"`H` must be a 2-D (L, q) trajectory with times as rows, got shape {H.shape}; "
            "pass a 1-D trajectory as `H[:, None]`."
        )
    L = H.shape[0]
    if sigma is not None:
        if sigma < 2:
            raise ValueError(f"`sigma` must be at least 2 rows, got {sigma}.")
        if sigma > L:
            raise ValueError(
                f"`sigma`={sigma} exceeds len(H)={L}; lower `sigma` or pass more rows."
            )
        H, L = H[L - sigma :], sigma
    if m < 1:
        raise ValueError(f"`m` (the number of delays) must be at least 1, got {m}.")
    if m >= L:
        raise ValueError(
            f"`m`={m} must be smaller than the {L} rows used (`sigma` or len(H)): the Hankel "
            "matrix needs at least two columns."
        )
    if not np.all(np.isfinite(H)):
        raise ValueError("`H` has non-finite values in the rows used; check the hypergradients.")
    return H.astype(np.float64)


def hankel(H, m: int) -> np.ndarray:
    """The Hankel (time-delay) matrix of a trajectory.

    **Arguments:**

    - `H`: an `(L, q)` trajectory, one time per row.
    - `m`: the number of delays.

    **Returns:**

    An `(m*q, L-m+1)` array whose column `t` is `g(h_t) = [h_t; h_{t+1}; ...; h_{t+m-1}]`.

    ```python
    >>> hankel(np.arange(4.0)[:, None], 2)
    array([[0., 1., 2.],
           [1., 2., 3.]])

    ```
    """
    H = _check_trajectory(H, m)
    cols = H.shape[0] - m + 1
    return np.concatenate([H[k : k + cols].T for k in range(m)], axis=0)


def _rank(s: np.ndarray, rank: int | None, rtol: float) -> int:
    r = int(np.sum(s > 0)) if rank is not None else int(np.sum(s > rtol * s[0]))
    return r if rank is None else min(r, rank)


def hankel_dmd(
    H, m: int, *, rank: int | None = None, rtol: float = _RTOL, debias: str | None = None
) -> DMDFit:
    """Exact DMD of the Hankel matrix of `H`, the finite Koopman matrix of Eq. 10.

    With `G = hankel(H, m)`, `X = G[:, :-1]` and `Y = G[:, 1:]`, the reduced operator is
    `Ã = U_r^* Y V_r Σ_r^{-1}` from the SVD of `X`, with eigenpairs `(λ, W)`; the exact modes
    are `Φ = Y V_r Σ_r^{-1} W` and the amplitudes `b` solve `Φ b ≈ G[:, -1]` in least squares.

    Noise in `X` biases these eigenvalues towards the origin. Two variants correct for it:

    - `debias="fb"`, forward-backward DMD (Dawson et al., 2016): with `Ã_f` the forward and
      `Ã_b` the backward operator in the POD coordinates of `X`, `Ã = (Ã_f Ã_b^{-1})^{1/2}`;
      the modes are `U_r W`.
    - `debias="tls"`, total-least-squares DMD (Hemati et al., 2017): `X` and `Y` are first
      projected onto the leading `r` right singular vectors of `[X; Y]`, then fitted exactly.

    **Arguments:**

    - `H`: an `(L, q)` trajectory, one time per row.
    - `m`: the number of delays, `1 <= m < L`.
    - `rank`: keep the first `rank` singular values (exact zeros are still dropped).
    - `rtol`: otherwise keep singular values above `rtol * s_max`, `0 < rtol < 1`.
    - `debias`: `None` (exact DMD), `"fb"` or `"tls"`.

    **Returns:**

    A `DMDFit`. An all-zero trajectory gives `rank == 0` and empty spectra.
    """
    if rank is not None and rank < 1:
        raise ValueError(f"`rank` must be a positive integer or None, got {rank}.")
    if not 0 < rtol < 1:
        raise ValueError(f"`rtol` must lie in (0, 1), got {rtol}; 1e-6 suits float32 data.")
    if debias not in DEBIAS:
        raise ValueError(f"`debias`={debias!r}: choose None (exact DMD), 'fb' or 'tls'.")
    G = hankel(H, m)
    X, Y = G[:, :-1], G[:, 1:]
    U, s, Vh = np.linalg.svd(X, full_matrices=False)
    r = _rank(s, rank, rtol)
    s_used = s
    if debias == "tls" and r > 0:
        # Project both onto the r leading right singular vectors of the stacked data: the
        # part of X and Y that a noise-free linear map could relate.
        P = np.linalg.svd(np.concatenate([X, Y]), full_matrices=False)[2][:r].conj().T
        X, Y = X @ P @ P.conj().T, Y @ P @ P.conj().T
        U, s_used, Vh = np.linalg.svd(X, full_matrices=False)
        r = min(r, int(np.sum(s_used > rtol * s_used[0])))
    U, V, inv_s = U[:, :r], Vh[:r].conj().T, 1.0 / s_used[:r]
    if debias == "fb" and r > 0:
        X_r, Y_r = U.conj().T @ X, U.conj().T @ Y
        forward = Y_r @ np.linalg.pinv(X_r)
        backward = X_r @ np.linalg.pinv(Y_r)
        operator = scipy.linalg.sqrtm(forward @ np.linalg.pinv(backward))
        eigenvalues, W = np.linalg.eig(np.asarray(operator, np.complex128))
        modes = U @ W.astype(np.complex128)
    else:
        YV = (Y @ V) * inv_s
        eigenvalues, W = np.linalg.eig(U.conj().T @ YV)
        modes = YV @ W.astype(np.complex128)
    amplitudes = np.linalg.lstsq(modes, G[:, -1].astype(np.complex128), rcond=None)[0]
    return DMDFit(eigenvalues.astype(np.complex128), modes, amplitudes, s, r, m, H.shape[1])


def unusable(value: np.ndarray, window: np.ndarray, max_growth: float = _MAX_GROWTH) -> str:
    """Why `value` cannot stand for the steady state of `window`: `NOT_FINITE`, `TOO_LARGE`
    (its norm exceeds `max_growth` times the largest row norm of the window), or `""`."""
    if not np.all(np.isfinite(value)):
        return NOT_FINITE
    if np.linalg.norm(value) > max_growth * np.max(np.linalg.norm(window, axis=1)):
        return TOO_LARGE
    return ""


def _unhankel(fit: DMDFit, coefficients: np.ndarray, shift: bool) -> np.ndarray:
    # g^{-1}: block k of the last column is time L-m+k, so it needs `m-1-k` more steps to
    # reach the last row. With shift=False every mode is treated as λ = 1 (Eq. 14).
    blocks = fit.modes.reshape(fit.m, fit.q, fit.rank)
    powers = np.arange(fit.m - 1, -1, -1)
    steps = fit.eigenvalues[None, :] ** powers[:, None] if shift else np.ones((fit.m, fit.rank))
    return np.einsum("kqr,kr,...r->...q", blocks, steps, coefficients) / fit.m


def mode_contributions(fit: DMDFit, n) -> np.ndarray:
    """Each mode's term of the forecast `n` steps after the window, in hypergradient space:
    `g^{-1}(b_j λ_j^n u_j)` (Eq. 13). The one place the book evaluates Eq. 13: `forecast` sums
    these terms, and the plots and the widget draw their sizes (`mode_magnitudes`).

    A conjugate pair of modes sums to a real term; mode `j`'s size is `|λ_j|^n` times its
    size at `n = 0`, so it fades geometrically where `|λ_j| < 1` and stays put at `λ_j = 1`.

    **Arguments:**

    - `fit`: a `DMDFit` from `hankel_dmd`.
    - `n`: a non-negative integer, or an array of them.

    **Returns:**

    Complex, `(rank, q)` for a scalar `n`, `(len(n), rank, q)` for an array. A term whose
    size `|λ_j|^n |b_j u_j|` exceeds the largest float (a mode outside the unit circle, far
    enough ahead) is infinite, with its phase; a term that is zero at `n = 0` stays zero.
    """
    n = np.asarray(n)
    at_zero = _unhankel(fit, np.diag(fit.amplitudes), shift=True)  # (rank, q)
    lam = fit.eigenvalues
    # λ^n b_j u_j as a size |λ|^n |b_j u_j| times a phase: the size overflows to inf, by
    # design, for |λ| > 1 and large n, where `lam ** n` would give inf + nan·i. Each product
    # is taken only where its factors are non-zero, so inf never meets a zero.
    with np.errstate(over="ignore"):
        growth = (np.abs(lam) ** n[..., None])[..., None]
        size = np.multiply(growth, np.abs(at_zero), out=np.zeros(np.broadcast_shapes(
            growth.shape, at_zero.shape)), where=at_zero != 0)
    theta = (n[..., None] * np.angle(lam))[..., None] + np.angle(at_zero)
    parts = [np.multiply(size, w, out=np.zeros_like(size), where=(size != 0) & (w != 0))
             for w in (np.cos(theta), np.sin(theta))]
    terms = np.empty(size.shape, dtype=complex)
    terms.real, terms.imag = parts  # not parts[0] + 1j * parts[1]: 1j * inf is nan + inf·i
    return terms


def mode_magnitudes(fit: DMDFit, n, *, component: int | None = None) -> np.ndarray:
    """The size of each mode's term of the forecast (`mode_contributions`): `|·|` of one
    hyperparameter's `component` (the paper's Figure 4, middle, shows the learning rate's),
    or the Euclidean norm over all `q` (`None`). `(rank,)` for a scalar `n`, else
    `(len(n), rank)`."""
    terms = mode_contributions(fit, n)
    if component is not None:
        return np.abs(terms[..., component])
    with np.errstate(over="ignore"):  # a norm past the largest float is inf, as its terms
        return np.sqrt((np.abs(terms) ** 2).sum(axis=-1))


def forecast(fit: DMDFit, n) -> np.ndarray:
    """The DMD forecast of `h` at `n` steps after the last row of `H` (Eq. 13): the real part
    of the sum of `mode_contributions`.

    **Arguments:**

    - `fit`: a `DMDFit` from `hankel_dmd`.
    - `n`: a non-negative integer, or an array of them; `n = 0` reconstructs the last row.

    **Returns:**

    `(q,)` for a scalar `n`, `(len(n), q)` for an array. A forecast whose largest term
    overflows (`mode_contributions`) is `±inf`, or `nan` where infinite terms of opposite
    signs meet.
    """
    with np.errstate(invalid="ignore"):  # inf - inf: no size to give, so nan, as documented
        return mode_contributions(fit, n).real.sum(axis=-2)
