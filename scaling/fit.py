"""Scaling-law fits: Chinchilla Approaches 1–3 and Kaplan forms, with bootstrap intervals.

Fit points are finished runs: N (parameters, "total" or "non-embedding"), D (tokens), C (FLOPs,
"6nd" or "6nd+attn", always from ``scaling.model.flops_per_token``) and the final validation
loss L, read from results folders or from a CSV/Parquet table (``scaling.results.load_points``).

Every fit returns a ``FitResult``. Data that cannot support a fit (too few runs, one budget,
NaN losses, a missing column) raises ``FitError``; an optimizer that fails on valid data is
reported in the result (``success`` False, ``status``, ``message``), never raised, and so is an
Approach 3 law the data do not identify (status 4), whose predictions then raise ``FitError``.

Bootstrap: the resampling unit is the run (each run is drawn with replacement; a repeated run
counts twice), ``n_bootstrap`` resamples from ``numpy.random.default_rng(seed)``, percentile
intervals at level ``ci``. Approach 2 resamples runs within each budget (stratified), so each
IsoFLOP profile keeps its size. A resample that yields no fit, or (Approach 3) a law the data do
not identify, is dropped and counted.

The law forms and the published laws are in ``scaling.laws``; predictions from a fit and the
held-out check in ``scaling.predict``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from scaling.errors import ConfigError, FitError
from scaling.laws import ParametricLaw, iso_flop_optimum

if TYPE_CHECKING:
    from scaling.results import FitData  # annotations only: else building the CLI parser loads pyarrow

__all__ = [
    "APPROACHES", "FitResult", "Objective", "hoffmann_grid", "linearized_covariance", "log_prediction", "fit_approach1", "fit_approach2", "fit_approach3",
    "fit_kaplan", "pareto_frontier", "fit_all", "save_fits", "load_fits",
]

# What each --approach runs; the Kaplan forms are three separate fits.
APPROACHES: dict[str, tuple[str, ...]] = {
    "1": ("approach1",), "2": ("approach2",), "3": ("approach3",),
    "kaplan": ("kaplan_N", "kaplan_D", "kaplan_C"),
    "all": ("approach1", "approach2", "approach3", "kaplan_N", "kaplan_D", "kaplan_C"),
}

# ----------------------------------------------------------------------------- results

# One table of status codes and messages (as scipy.optimize's _status_message); the detail
# after the colon names what happened.
_STATUS = {
    0: "fit converged",
    1: "optimizer did not converge; best point kept",
    2: "the data define no optimum",
    3: "fewer than 90% of bootstrap resamples gave a fit; intervals may be too narrow",
    4: "the data do not identify the law",
}
_NO_LAW = (2, 4)  # statuses whose parameters draw and predict nothing (see FitResult.usable)


def _status(code: int, detail: str = "") -> dict[str, Any]:
    """success/status/message fields for status ``code``, the detail after a colon."""
    msg = _STATUS[code] + (f": {detail}" if detail else "")
    return {"success": code == 0, "status": code, "message": msg}


@dataclass(frozen=True)
class FitResult:
    """One fitted law, modelled on ``scipy.optimize.OptimizeResult`` but with fixed fields.

    ``params`` holds the fitted and derived quantities (``*_ref``: at C = ``details["ref_flops"]``,
    the largest C fitted), ``intervals`` their bootstrap percentile intervals at level ``ci``
    (None where no bootstrap ran); ``n_bootstrap_degenerate`` resamples gave a law the data do
    not identify (Approach 3) and were dropped. ``samples`` are the bootstrap draws predictions
    need; ``residuals`` are the full-data fit's log-space residuals (log L − log L̂ for Approach 3 and
    the Kaplan forms, log N_opt about its line for Approaches 1 and 2). ``details`` holds
    per-method data for plots, JSON-native. Messages come from one status table, ``_STATUS``.
    """

    method: str
    params: dict[str, float]
    intervals: dict[str, tuple[float, float] | None]
    success: bool
    status: int
    message: str
    n_points: int
    n_runs: int
    conventions: dict[str, str]
    ci: float
    n_bootstrap: int
    n_bootstrap_ok: int
    seed: int
    n_bootstrap_degenerate: int = 0
    fun: float | None = None
    residual_sd: float | None = None
    notes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict, repr=False)
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)
    residuals: tuple[float, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        width = max(map(len, self.params), default=0)
        lines = [f"FitResult({self.method})", f"  message: {self.message}",
                 f"  success: {self.success}  status: {self.status}"]
        for k, v in self.params.items():
            iv = self.intervals.get(k)
            ci = f"  [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else ""
            lines.append(f"  {k:>{width}}: {v:.4g}{ci}")
        lines += [f"  n_points: {self.n_points}  n_runs: {self.n_runs}  conventions: {self.conventions}",
                  f"  bootstrap: {self.n_bootstrap_ok}/{self.n_bootstrap} resamples"
                  + (f" ({self.n_bootstrap_degenerate} not identified, dropped)" if self.n_bootstrap_degenerate else "")
                  + f", seed {self.seed}, {self.ci:.0%} percentile intervals"]
        return "\n".join(lines)

    @property
    def usable(self) -> bool:
        """Whether the fit has a law to draw: not where the data define no optimum (status 2, NaN
        parameters) or do not identify the law (status 4, whose predictions raise FitError)."""
        return self.status not in _NO_LAW

    def law(self) -> ParametricLaw:
        """The fitted L(N, D) (Approach 3 only).

        Raises
        ------
        FitError
            Not an Approach 3 fit, or one the data do not identify (status 4).
        """
        if self.method != "approach3":
            raise FitError(f"{self.method} fits no L(N, D); use the approach3 fit (scaling fit --approach 3)")
        if self.status == 4:
            raise FitError(f"the approach3 fit predicts nothing: {self.message}")
        p = self.params
        return ParametricLaw(p["E"], p["A"], p["B"], p["alpha"], p["beta"], name="fit",
                             params_convention=self.conventions.get("params", "total"))

    def optimal(self, flops: Any) -> tuple[Any, Any]:
        """Compute-optimal (N, D) at C = ``flops`` (Approach 3 only), under the FLOP convention
        the fit was made with (``details["allocation"]`` says how; see ``iso_flop_optimum``)."""
        return iso_flop_optimum(self.law(), flops, self.details.get("flops_ratio"))

    def to_dict(self, draws: bool = True) -> dict[str, Any]:
        """A JSON-safe dict of every field (NaN and inf become None); ``draws=False`` leaves out
        ``samples`` and ``residuals``."""
        skip = () if draws else ("samples", "residuals")
        return _json_safe({f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitResult:
        """Inverse of ``to_dict``."""
        nan = lambda v: np.nan if v is None else float(v)  # noqa: E731
        return cls(**{
            **d, "params": {k: nan(v) for k, v in d["params"].items()},
            "intervals": {k: None if v is None else (nan(v[0]), nan(v[1])) for k, v in d["intervals"].items()},
            "samples": {k: [nan(x) for x in v] for k, v in d.get("samples", {}).items()},
            "notes": tuple(d["notes"]), "residuals": tuple(d.get("residuals", ()))})


def _json_safe(x: Any) -> Any:
    """``x`` with numpy types and tuples made JSON-native; NaN and ±inf become None."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (bool, int, str)) or x is None:
        return x
    x = float(x)
    return x if math.isfinite(x) else None


def _interval(samples: np.ndarray, ci: float) -> tuple[float, float] | None:
    """Percentile interval at level ``ci``; None without draws."""
    s = np.asarray(samples, float)
    s = s[~np.isnan(s)]  # NaN = a failed resample; ±inf (an overflowed draw) stays in the tails
    if not s.size:
        return None
    q = [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)]
    with np.errstate(invalid="ignore"):
        lo, hi = np.percentile(s, q)
    if np.isnan(lo) or np.isnan(hi):  # interpolated between two infinite draws (inf - inf)
        lo, hi = np.where(np.isnan([lo, hi]), np.percentile(s, q, method="nearest"), [lo, hi])
    return float(lo), float(hi)


def _resample(rng: np.random.Generator, n: int, n_bootstrap: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(n_bootstrap, n) draw counts: runs resampled with replacement, within groups if given."""
    if groups is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap)
    counts = np.zeros((n_bootstrap, n), int)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        counts[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n_bootstrap)
    return counts


def _check_ci(ci: float, n_bootstrap: int) -> None:
    if not 0.0 < ci < 1.0:
        raise ConfigError(f"--ci must be in (0, 1), e.g. 0.95 (got {ci})")
    if n_bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0 resamples (got {n_bootstrap})")


def _result(method: str, data: FitData, point: dict[str, float], boot: dict[str, np.ndarray],
            status: dict[str, Any], *, ci: float, n_bootstrap: int, seed: int, n_points: int,
            keep: Sequence[str] = (), residuals: np.ndarray | None = None, **extra: Any) -> FitResult:
    """Assemble a FitResult: intervals from ``boot`` draws (NaN = failed resample)."""
    ok = int((~np.isnan(next(iter(boot.values())))).sum()) if n_bootstrap else 0
    if status["status"] == 0 and n_bootstrap and ok < 0.9 * n_bootstrap:
        status = _status(3, f"{ok} of {n_bootstrap}")
    res = np.asarray(residuals if residuals is not None else [], float)
    # Keep whole draws: a law is only usable with all its parameters finite.
    joint = np.all([np.isfinite(boot[k]) for k in keep], axis=0) if keep and n_bootstrap else None
    extra["details"] = _json_safe(extra.get("details", {}))  # JSON-native: the same after a round trip
    return FitResult(
        method=method, params={k: float(v) for k, v in point.items()},
        intervals={k: _interval(boot[k], ci) if n_bootstrap else None for k in point},
        **status, n_points=n_points, n_runs=len(data), conventions=dict(data.conventions), ci=ci,
        n_bootstrap=n_bootstrap, n_bootstrap_ok=ok, seed=seed,
        residual_sd=float(res.std(ddof=1)) if res.size > 1 else None,
        # No draws kept (none had every parameter finite): no samples, so no bands or intervals.
        samples={k: [float(x) for x in boot[k][joint]] for k in keep} if joint is not None and joint.any() else {},
        residuals=tuple(float(r) for r in res), **extra)


def _line(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares y = c + s·x along the last axis, batched; NaN where < 2 points."""
    w = np.ones_like(y) if w is None else w
    w = np.where(np.isfinite(y), w, 0.0)
    y = np.where(w > 0, y, 0.0)
    sw = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = (w * x).sum(-1) / sw, (w * y).sum(-1) / sw
        dx = x - mx[..., None]
        sxx = (w * dx * dx).sum(-1)
        s = np.where((sxx > 0) & ((w > 0).sum(-1) >= 2), (w * dx * (y - my[..., None])).sum(-1) / sxx, np.nan)
    return my - s * mx, s


# ----------------------------------------------------------------------------- Approach 3

def hoffmann_grid() -> np.ndarray:
    """The 4,500 initialisations of Hoffmann et al. 2022 (App. D.2), rows (a, b, e, alpha, beta).

    alpha, beta ∈ {0, 0.5, ..., 2}, e ∈ {-1, -0.5, ..., 1}, a, b ∈ {0, 5, ..., 25}.
    """
    ab, e, ex = np.arange(0.0, 30.0, 5.0), np.arange(-1.0, 1.5, 0.5), np.arange(0.0, 2.5, 0.5)
    return np.stack(np.meshgrid(ab, ab, e, ex, ex, indexing="ij"), -1).reshape(-1, 5)


@dataclass(frozen=True)
class Objective:
    """What Approach 3 minimises over the runs' log-space residuals r = log L̂ − log L.

    ``"lsq"``: Σ r²/2, least squares in log L — the maximum-likelihood fit under multiplicative
    Gaussian eval noise, and the one whose residuals estimate that noise (``FitResult.details``'s
    ``sigma``), so prediction intervals can use them. The default: on known-truth sweeps
    (``benchmarks/calibration.py``) it predicts the held-out target and recovers the exponents with
    less error than Huber at 0.5% and 2% noise, and on the 12 reference runs Huber's near-L1 fit
    leaves 4 residuals under δ (|r| < 7e-4), shrinking the noise estimate.
    ``"huber"``: Σ Huber_δ(r)/δ, Hoffmann et al. 2022 (App. D.2, δ = 1e-3) and Besiroglu et al.
    2024; robust to an outlying run. Dividing by δ changes no optimum but keeps the objective
    O(Σ|r|), so L-BFGS's relative stopping tolerance means the same at any δ.
    """

    kind: str = "lsq"
    delta: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in ("lsq", "huber"):
            raise ConfigError(f"--loss must be lsq or huber[:DELTA] (got {self.kind!r})")
        if not (math.isfinite(self.delta) and self.delta > 0):
            raise ConfigError(f"--loss huber:DELTA needs a finite DELTA > 0, e.g. huber:1e-3 (got {self.delta})")

    @classmethod
    def parse(cls, text: str) -> Objective:
        """``lsq``, ``huber`` (δ = 1e-3) or ``huber:DELTA``; a ConfigError naming --loss otherwise."""
        kind, _, delta = text.strip().partition(":")
        if kind != "huber" and delta:
            raise ConfigError(f"--loss {text!r}: only huber takes a DELTA (huber:1e-3); use lsq or huber[:DELTA]")
        try:
            return cls(kind, float(delta) if delta else 1e-3)
        except ValueError:
            raise ConfigError(f"--loss {text!r}: DELTA must be a number, e.g. huber:1e-3") from None

    def describe(self) -> str:
        """The objective in words, as fit.json records it."""
        return ("least squares in log L" if self.kind == "lsq"
                else f"Huber (delta {self.delta:g}) in log L, as Hoffmann et al. 2022")

    def rho_psi(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The per-run loss of residual ``r`` and its derivative in r."""
        if self.kind == "lsq":
            return 0.5 * r * r, r
        d, ar = self.delta, np.abs(r)
        return np.where(ar <= d, 0.5 * r * r / d, ar - 0.5 * d), np.clip(r, -d, d) / d


def _lse_terms(theta: np.ndarray, lN: np.ndarray, lD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log L̂ = LSE(a − α·log N, b − β·log D, e) for K parameter rows, and ∂log L̂/∂θ (K, n, 5)."""
    la, lb, le, al, be = (theta[:, i, None] for i in range(5))
    t1, t2 = la - al * lN, lb - be * lD
    m = np.maximum(np.maximum(t1, t2), le)
    e1, e2, e3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(le - m)
    s = e1 + e2 + e3
    p1, p2, p3 = e1 / s, e2 / s, e3 / s
    return m + np.log(s), np.stack([p1, p2, p3, -p1 * lN, -p2 * lD], -1)


def _objective(theta: np.ndarray, lN: np.ndarray, lD: np.ndarray, lL: np.ndarray, w: np.ndarray,
               obj: Objective) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σ w·ρ(r), its gradient and r = log L̂ − log L, for K parameter rows at once."""
    lhat, jac = _lse_terms(theta, lN, lD)
    r = lhat - lL
    rho, psi = obj.rho_psi(r)
    return (w * rho).sum(-1), ((w * psi)[..., None] * jac).sum(-2), r


def linearized_covariance(theta: np.ndarray, lN: np.ndarray, lD: np.ndarray,
                          lL: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Gauss-Newton covariance of θ = (a, b, e, α, β) at a least-squares optimum, σ̂ and its dof.

    cov = σ̂²·(JᵀJ)⁺ with J = ∂log L̂/∂θ at the runs and σ̂² = Σr²/(n − 5), the textbook
    nonlinear-regression estimate (Seber & Wild 1989, Ch. 5). The pseudo-inverse leaves out a
    direction the data do not move, such as e when E → 0 (its column of J is ~0).
    """
    lhat, jac = _lse_terms(theta[None], lN, lD)
    r, J = lhat[0] - lL, jac[0]
    dof = max(len(lL) - 5, 1)
    sigma = float(np.sqrt((r * r).sum() / dof))
    return sigma**2 * np.linalg.pinv(J.T @ J, rcond=1e-12, hermitian=True), sigma, dof


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Limit OpenBLAS to one thread inside the block, then restore its setting.

    L-BFGS-B calls BLAS/LAPACK on 5- to 20-element arrays thousands of times per fit, where
    OpenBLAS's threads only add synchronisation: on this 2-core machine under load a 40-resample
    fit took 2-28 s with them and 0.5 s without. Finds the loaded OpenBLAS builds (numpy's,
    scipy's) through /proc/self/maps, as threadpoolctl does; elsewhere it does nothing.
    """
    import ctypes

    # The block runs scipy.optimize, whose OpenBLAS is only mapped once it is imported: import it
    # first, or the first fit of a process runs with all of that library's threads.
    import scipy.optimize  # noqa: F401

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({ln.split()[-1] for ln in maps if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        paths = []
    restore = []
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("openblas", "scipy_openblas"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{name}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{name}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    restore.append((put, get()))
                    put(1)
    try:
        yield
    finally:
        for put, n in restore:
            put(n)


def _lbfgs(x0: np.ndarray, args: tuple[Any, ...]) -> Any:
    """One L-BFGS run of ``_objective`` (args: log N, log D, log L, weights, Objective) from
    ``x0``; a scipy OptimizeResult."""
    from scipy.optimize import minimize

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g, _ = _objective(x[None], *args)
        return float(f[0]), g[0]

    # Tolerances tighter than scipy's defaults: ~50% more iterations, and the optimum is pinned
    # to the last digits rather than ~4 significant figures (measured on Epoch's law + noise).
    return minimize(fun, x0, jac=True, method="L-BFGS-B",
                    options={"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-9, "maxls": 50})


def _approach3_params(theta: np.ndarray, ref_flops: float,
                      ratio: dict[str, list[float]] | None) -> dict[str, np.ndarray]:
    """Fitted and derived quantities of K rows of (a, b, e, alpha, beta), allocated at ``ref_flops``."""
    # A row outside the identified domain can overflow here; it is reported, never predicted with.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        law = ParametricLaw(E=np.exp(theta[:, 2]), A=np.exp(theta[:, 0]), B=np.exp(theta[:, 1]),
                            alpha=theta[:, 3], beta=theta[:, 4])
        n, d = iso_flop_optimum(law, ref_flops, ratio)
        return {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta, "G": law.G,
                "a": law.a, "b": 1.0 - law.a, "N_opt_ref": n, "D_opt_ref": d, "tokens_per_param_ref": d / n}


# --- identification: where the data pin L = E + A/N^alpha + B/D^beta down
# An exponent near 0 turns its term into a constant that E absorbs; a large one turns it into a
# step, 0 past the smallest size, with A or B growing without bound to place the step; a term
# below _MIN_TERM of the loss at every run is 0 as far as the data go. Published exponents are
# 0.28-0.37 (Hoffmann et al. 2022, Eq. 10; Besiroglu et al. 2024, Eq. 3) and Hoffmann's starts
# reach 2; an exponent of 3 means a term that falls 1000x per decade.
_EXPONENT_RANGE = (0.01, 3.0)
_MIN_TERM = 1e-4
_LOG_MAX = math.log(np.finfo(float).max)  # exp() of more overflows


def _too_few_values(lN: np.ndarray, lD: np.ndarray, w: np.ndarray) -> str | None:
    """Why runs of weight ``w`` cannot identify the law by their spread alone, or None."""
    for x, lx, more in (("N", lN, "sizes"), ("D", lD, "token counts")):
        if np.unique(lx[w > 0]).size < 2:
            return (f"all runs have one {x} ({math.exp(lx[w > 0][0]):.3g}): the data do not constrain "
                    f"{x}'s term; add {more} / budgets")
    return None


def _outside_domain(theta: np.ndarray, lN: np.ndarray, lD: np.ndarray,
                    lL: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """The identification checks on K rows of (a, b, e, alpha, beta).

    Returns (label, rows that fail, value, message template with ``{v}``) per check. E = exp(e)
    is never negative: an optimum that wants E <= 0 runs e toward −inf, a boundary optimum whose
    predictions stay finite, so it passes.
    """
    lo, hi = _EXPONENT_RANGE
    checks = [("not finite", ~np.isfinite(theta).all(1), np.zeros(len(theta)),
               "a parameter is not finite (the optimizer diverged); add sizes / budgets")]
    for i, (ex, x, lx, more) in enumerate((("alpha", "N", lN, "sizes"), ("beta", "D", lD, "token counts"))):
        coef, k, c = "AB"[i], theta[:, 3 + i], theta[:, i]
        rel = c - k * lx.min() - lL.min()  # log of the term at the smallest x, over the smallest loss
        checks += [
            (f"{ex} -> 0", k < lo, k, f"{ex} -> 0 ({{v:.3g}}): the data do not constrain {x}'s term (a constant, "
             f"merged with E); add {more} / budgets"),
            (f"{ex} -> inf", k > hi, k, f"{ex} -> inf ({{v:.3g}}): {x}'s term vanishes past the smallest {x}; the "
             f"data do not constrain it; add {more} / budgets"),
            (f"{coef} overflows", c > _LOG_MAX, c, f"{coef} overflows (log {coef} = {{v:.4g}}): the data do not "
             f"constrain {x}'s term; add {more} / budgets"),
            (f"{coef}/{x}^{ex} -> 0", rel < math.log(_MIN_TERM), np.exp(np.minimum(rel, 0.0)),
             f"{coef}/{x}^{ex} -> 0 (at most {{v:.2g}} of the loss): the loss does not depend on {x} over the "
             f"runs; add {more} / budgets"),
        ]
    return checks


def _drop_outside_domain(thetas: np.ndarray, lN: np.ndarray, lD: np.ndarray, lL: np.ndarray) -> dict[str, int]:
    """Set the bootstrap draws (rows; NaN = failed) outside the identified domain to NaN in
    place; return how many per reason, each draw counted under its first."""
    ran = np.flatnonzero(np.isfinite(thetas).all(1))
    out, counts = np.zeros(ran.size, bool), {}
    for label, bad, _, _ in _outside_domain(thetas[ran], lN, lD, lL):
        counts[label] = int((bad & ~out).sum())
        out |= bad
    thetas[ran[out]] = np.nan
    return counts


# --- allocation under a FLOP convention
_ALLOCATION_6ND = "closed form under C = 6·N·D: N_opt = G·(C/6)^a (Hoffmann et al. 2022, Eq. 4)"
_ALLOCATION_RATIO = ("numeric under C = f(N)·N·D, f = the runs' C/(N·D) interpolated in log N (held at the "
                     "end values beyond the sizes trained): N_opt minimises L(N, C/(f(N)·N))")


def _flops_ratio(data: FitData) -> dict[str, list[float]] | None:
    """C/(N·D) of the runs by size: None where it is 6 at every size (total N under "6nd"), else
    the mean of log(C/(N·D)) per distinct N, as the attention term ("6nd+attn") and the
    unembedding under non-embedding N (6·V·d per token) depend on the shape."""
    if data.conventions["flops"] == "6nd" and data.conventions["params"] == "total":
        return None
    log_n, inverse = np.unique(np.log(data.params), return_inverse=True)
    log_f = np.log(data.flops / (data.params * data.tokens))
    return {"log_n": log_n.tolist(), "log_ratio": (np.bincount(inverse, log_f) / np.bincount(inverse)).tolist()}


def _refine(starts: np.ndarray, args: tuple[Any, ...], n_refine: int) -> tuple[Any, int]:
    """The lowest L-BFGS optimum from the best starts of ``starts``, and how many were refined.

    Refines the ``n_refine`` starts with the lowest objective, then doubles the number refined
    (up to every start) until the lowest optimum is reached from at least 3 of them: on 12 runs
    the objective can have separate basins whose starts rank low on the grid.
    """
    order = np.argsort(_objective(starts, *args)[0])
    runs: list[Any] = []
    k = n_refine
    while True:
        runs += [_lbfgs(starts[i], args) for i in order[len(runs):k]]
        funs = np.array([r.fun if np.isfinite(r.fun) else np.inf for r in runs])
        best = runs[int(funs.argmin())]
        if np.sum(funs <= best.fun + 1e-9 * max(abs(best.fun), 1e-12)) >= 3 or k >= len(starts):
            return best, len(runs)
        k = min(2 * k, len(starts))


def log_prediction(details: dict[str, Any], n_params: Any, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
    """log L̂ at (N, D) and its linearized standard error from a fit's ``theta`` and ``cov``.

    sd = sqrt(gᵀ·cov·g), g = ∂log L̂/∂θ at (N, D): the fit's own uncertainty, without the run
    noise σ̂ (``details['sigma']``) a new run adds.
    """
    theta = np.asarray(details["theta"], float)[None]
    lhat, g = _lse_terms(theta, np.log(np.atleast_1d(np.asarray(n_params, float))),
                         np.log(np.atleast_1d(np.asarray(tokens, float))))
    cov = np.asarray(details["cov"], float)
    with np.errstate(invalid="ignore"):
        return lhat[0], np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", g[0], cov, g[0]), 0.0))


def _cv_folds(data: FitData) -> list[tuple[str, np.ndarray]]:
    """The extrapolations a sweep can check on itself: the largest size and the largest budget
    held out, each in turn (a target lies beyond both)."""
    labels = _budget_groups(data)
    last = labels[int(np.argmax(data.flops))]
    return [("largest size", data.params == data.params.max()), ("largest budget", labels == last)]


def _cross_validate(data: FitData, obj: Objective, grid: np.ndarray | None, n_refine: int) -> dict[str, Any]:
    """In-sweep cross-validation of Approach 3 (see ``fit_approach3``).

    Per fold: the held-out runs' relative errors and standardized errors
    z = (log L − log L̂)/sqrt(sd² + σ̂²) under the fold's fit, each turned into a normal score
    q = Φ⁻¹(F_t(z; dof)) so that folds of few degrees of freedom count as what they are. Under a
    law that extrapolates as its uncertainty says, q ~ N(0, 1); ``kappa`` = max(1, RMS q) over every
    held-out run is the factor the prediction intervals are widened by.
    """
    from scipy.stats import norm, t as student_t

    folds, qs = [], []
    for name, held in _cv_folds(data):
        rest = data.subset(~held)
        fold: dict[str, Any] = {"fold": name, "runs": [data.names[i] for i in np.flatnonzero(held)]}
        if len(rest) < 6 or held.all():
            folds.append({**fold, "skipped": f"{len(rest)} runs left; a fold needs 6 to fit and judge"})
            continue
        try:
            f = fit_approach3(rest, n_bootstrap=0, grid=grid, n_refine=n_refine, loss=obj, cross_validate=False)
        except FitError as e:
            folds.append({**fold, "skipped": str(e)})
            continue
        if not f.usable:
            folds.append({**fold, "skipped": f.message})
            continue
        mu, sd = log_prediction(f.details, data.params[held], data.tokens[held])
        err = np.log(data.loss[held]) - mu
        z = err / np.sqrt(sd**2 + f.details["sigma"] ** 2)
        q = norm.ppf(np.clip(student_t.cdf(z, f.details["dof"]), 1e-12, 1 - 1e-12))
        qs += q.tolist()
        folds.append({**fold, "rel_error": (np.exp(-err) - 1.0).tolist(), "z": z.tolist(), "q": q.tolist(),
                      "sigma": f.details["sigma"], "dof": f.details["dof"]})
    rel = [e for f in folds for e in f.get("rel_error", [])]
    return {"folds": folds, "n_held": len(qs),
            "kappa": max(1.0, float(np.sqrt(np.mean(np.square(qs))))) if qs else None,
            "rms_rel_error": float(np.sqrt(np.mean(np.square(rel)))) if rel else None}


def fit_approach3(data: FitData, *, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95,
                  grid: np.ndarray | None = None, n_refine: int = 16, loss: Objective | str = "lsq",
                  cross_validate: bool = True) -> FitResult:
    """Chinchilla Approach 3: L(N, D) = E + A/N^α + B/D^β, fitted in log space.

    Minimises Σ ρ(LSE(a − α log N, b − β log D, e) − log L) over (a, b, e, α, β) with
    A, B, E = exp(a, b, e), ρ from ``loss`` (``Objective``: least squares by default, or
    Hoffmann et al. 2022's Huber δ = 1e-3). The objective is evaluated at every start of
    ``grid`` (default: the paper's 4,500) at once; L-BFGS runs from the ``n_refine`` best, more
    where the lowest optimum is not reached from 3 starts (``_refine``). Each bootstrap refit
    starts from the full-data optimum. ``N_opt_ref`` etc. are the allocation at
    ``details['ref_flops']`` (the largest C fitted), under the data's FLOP convention
    (``iso_flop_optimum``; ``details['allocation']`` says which).

    ``details`` also holds what prediction intervals need: ``theta`` and its linearized
    covariance ``cov``, the run noise ``sigma`` (σ̂ = sqrt(Σr²/dof), dof = n − 5), and with
    ``cross_validate`` the in-sweep cross-validation ``cv``: Approach 3 refitted without the
    largest size, then without the largest budget, predicting the runs left out. Its ``kappa``
    (≥ 1) widens every prediction interval where the law extrapolates worse than its own
    uncertainty says (``scaling.predict``).

    A law outside the identified domain (``_outside_domain``: an exponent outside
    ``_EXPONENT_RANGE``, A or B overflowing, a term negligible at every run, or all runs at one
    N or D) is not a fit: the full-data one gets status 4 with the reason and no bootstrap;
    such resamples are dropped and counted in ``n_bootstrap_degenerate``.
    """
    _check_ci(ci, n_bootstrap)
    obj = loss if isinstance(loss, Objective) else Objective.parse(loss)
    if len(data) < 5:
        raise FitError(f"Approach 3 fits 5 parameters (E, A, B, alpha, beta) and needs at least 5 "
                       f"finished runs; got {len(data)}")
    args = (np.log(data.params), np.log(data.tokens), np.log(data.loss))
    starts = hoffmann_grid() if grid is None else np.asarray(grid, float)
    w = np.ones(len(data))
    counts = _resample(np.random.default_rng(seed), len(data), n_bootstrap)
    thetas = np.full((n_bootstrap, 5), np.nan)
    dropped = {"one N or D": 0}
    with _one_blas_thread():
        best, n_refined = _refine(starts, (*args, w, obj), n_refine)
        why = _too_few_values(*args[:2], w) or "; ".join(
            t.format(v=v[0]) for _, bad, v, t in _outside_domain(best.x[None], *args) if bad[0])
        for i, c in enumerate(counts if not why else ()):
            if _too_few_values(*args[:2], c):  # not identified whatever the optimizer does
                dropped["one N or D"] += 1
            elif (r := _lbfgs(best.x, (*args, c.astype(float), obj))).success and np.all(np.isfinite(r.x)):
                thetas[i] = r.x
    dropped.update(_drop_outside_domain(thetas, *args))
    n_dropped = sum(dropped.values())
    notes = [f"{n_dropped} of {n_bootstrap} resamples gave a law the data do not identify and were dropped ("
             + ", ".join(f"{k}: {v}" for k, v in dropped.items() if v) + "); intervals are over identified laws"
             ] if n_dropped else []
    if why:
        status = _status(4, why)
        notes += ["no bootstrap: the full-data law is not identified"] if n_bootstrap else []
    else:
        status = _status(0) if best.success else _status(1, str(best.message))
    ref, ratio = float(data.flops.max()), _flops_ratio(data)
    _, _, resid = _objective(best.x[None], *args, w, obj)
    cov, sigma, dof = linearized_covariance(best.x, *args)
    details = {"ref_flops": ref, "n_starts": len(starts), "n_refined": n_refined, "objective": obj.describe(),
               "loss": obj.kind, "huber_delta": obj.delta if obj.kind == "huber" else None, "nit": int(best.nit),
               "allocation": _ALLOCATION_6ND if ratio is None else _ALLOCATION_RATIO, "flops_ratio": ratio,
               "theta": best.x.tolist(), "cov": cov.tolist(), "sigma": sigma, "dof": dof}
    if cross_validate and not why:
        details["cv"] = _cross_validate(data, obj, grid, n_refine)
    point = {k: v[0] for k, v in _approach3_params(best.x[None], ref, ratio).items()}
    return _result("approach3", data, point, _approach3_params(thetas, ref, ratio), status, ci=ci,
                   n_bootstrap=n_bootstrap, seed=seed, n_points=len(data),
                   keep=("E", "A", "B", "alpha", "beta"), residuals=-resid[0],
                   fun=float(best.fun) * (obj.delta if obj.kind == "huber" else 1.0),
                   n_bootstrap_degenerate=n_dropped, notes=tuple(notes), details=details)


# ----------------------------------------------------------------------------- Approach 2

_GROUP_GAP_DECADES = 0.05  # a new budget starts where sorted log10 C jumps by more (12%)


def _budget_groups(data: FitData) -> np.ndarray:
    """Integer budget label per run: its planned budget, else C clustered in log space.

    Runs without a planned budget (plain tables without a budget column) are sorted by
    log10 C and split wherever consecutive values differ by more than 0.05 decades (12%), so
    IsoFLOP points a few percent off their nominal budget stay together.
    """
    labels = np.full(len(data), -1)
    planned = np.isfinite(data.budget)
    _, labels[planned] = np.unique(data.budget[planned], return_inverse=True)
    idx = np.flatnonzero(~planned)
    if idx.size:
        order = idx[np.argsort(data.flops[idx])]
        jumps = np.diff(np.log10(data.flops[order])) > _GROUP_GAP_DECADES
        labels[order] = labels.max() + 1 + np.concatenate([[0], np.cumsum(jumps)])
    return labels


def _parabola_minima(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted LSQ y = p0 + p1·u + p2·u², u = x − mean(x), batched over rows of ``w``.

    Returns (x at the minimum, y at the minimum, coefficients); NaN where fewer than 3
    distinct x carry weight or the parabola opens downward.
    """
    c = x.mean()
    X = np.stack([np.ones_like(x), x - c, (x - c) ** 2], -1)
    M = np.einsum("bi,ij,ik->bjk", w, X, X)
    v = np.einsum("bi,ij,i->bj", w, X, y)
    ok = np.array([np.unique(x[wi > 0]).size >= 3 for wi in w])
    M[~ok] = np.eye(3)
    p = np.linalg.solve(M, v[..., None])[..., 0]
    p[~ok] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(p[:, 2] > 0, -p[:, 1] / (2.0 * p[:, 2]), np.nan)
    return c + u, p[:, 0] + p[:, 1] * u + p[:, 2] * u * u, p


def _allocation(log_c: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, ref: float) -> dict[str, np.ndarray]:
    """Power laws N_opt = k_N·C^a and D_opt = k_D·C^b through the rows of (log N, log D) at
    ``log_c``, with their values at C = ``ref``; NaN where a row has fewer than 2 points."""
    kn, a = _line(log_c, log_n)
    kd, b = _line(log_c, log_d)
    with np.errstate(over="ignore", invalid="ignore"):
        n_ref, d_ref = np.exp(kn + a * math.log(ref)), np.exp(kd + b * math.log(ref))
        return {"a": a, "b": b, "k_N": np.exp(kn), "k_D": np.exp(kd), "N_opt_ref": n_ref,
                "D_opt_ref": d_ref, "tokens_per_param_ref": d_ref / n_ref}


def _allocation_result(method: str, data: FitData, log_c: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                       failure: str, **kw: Any) -> FitResult:
    """A FitResult for Approaches 1 and 2: row 0 of ``log_n``/``log_d`` is the full data, the rest
    bootstrap resamples; residuals are log N_opt about the fitted line."""
    ref = float(data.flops.max())
    est = _allocation(log_c, log_n, log_d, ref)
    status = _status(0) if np.isfinite(est["a"][0]) else _status(2, failure)
    ok = np.isfinite(log_n[0])
    resid = (log_n[0] - np.log(est["k_N"][0]) - est["a"][0] * log_c)[ok]
    kw["details"] = {"ref_flops": ref, **kw.get("details", {})}
    return _result(method, data, {k: v[0] for k, v in est.items()}, {k: v[1:] for k, v in est.items()},
                   status, keep=("a", "b", "k_N", "k_D"), residuals=resid, **kw)


def fit_approach2(data: FitData, *, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> FitResult:
    """Chinchilla Approach 2: IsoFLOP profiles.

    Per budget, a parabola of L in log N (and separately in log D) gives the loss-optimal N and
    D; power laws N_opt = k_N·C^a and D_opt = k_D·C^b go through those minima by least squares
    in log space. A budget's C is the geometric mean of its runs' C under the chosen FLOP
    convention. Budgets need 3 distinct sizes; a budget whose parabola opens downward is left out.
    """
    _check_ci(ci, n_bootstrap)
    labels = _budget_groups(data)
    sizes = {g: np.unique(data.params[labels == g]).size for g in np.unique(labels)}
    groups = [g for g, s in sizes.items() if s >= 3]
    if len(groups) < 2:
        raise FitError(f"Approach 2 needs at least 2 compute budgets with 3 or more model sizes each; "
                       f"found {len(groups)} of {len(sizes)} budget(s) (train another budget, or add a "
                       "budget column to the table)")
    counts = _resample(np.random.default_rng(seed), len(data), n_bootstrap, labels)
    W = np.vstack([np.ones(len(data)), counts]).astype(float)  # row 0: the full data
    log_c = np.array([np.log(data.flops[labels == g]).mean() for g in groups])
    xn, xd, notes, budgets = [], [], [], []
    for g, lc in zip(groups, log_c):
        m = labels == g
        x, y = np.log(data.params[m]), data.loss[m]
        x_n, l_n, p = _parabola_minima(x, y, W[:, m])
        x_d, _, _ = _parabola_minima(np.log(data.tokens[m]), y, W[:, m])
        xn.append(x_n), xd.append(x_d)
        with np.errstate(over="ignore"):
            n_b, d_b = np.exp(x_n), np.exp(x_d)
        if np.isfinite(x_n[0]) and not x.min() <= x_n[0] <= x.max():
            notes.append(f"budget {math.exp(lc):.3g}: minimum N {n_b[0]:.3g} lies outside the sizes "
                         f"trained ({math.exp(x.min()):.3g}-{math.exp(x.max()):.3g}); extrapolated")
        budgets.append({"flops": math.exp(lc), "n_runs": int(m.sum()), "coef": p[0], "center": x.mean(),
                        "log_n_range": [x.min(), x.max()], "N_opt": n_b[0], "D_opt": d_b[0], "loss_opt": l_n[0],
                        "N_opt_interval": _interval(n_b[1:], ci), "D_opt_interval": _interval(d_b[1:], ci)})
    XN, XD = np.array(xn).T, np.array(xd).T  # (1 + n_bootstrap, n_budgets)
    bad = [f"{b['flops']:.3g}" for b, v in zip(budgets, XN[0]) if not np.isfinite(v)]
    if bad:
        notes.append(f"no interior minimum (parabola opens downward) at budget(s) {', '.join(bad)}; left out")
    return _allocation_result("approach2", data, log_c, XN, XD, "fewer than 2 budgets have a minimum",
                              ci=ci, n_bootstrap=n_bootstrap, seed=seed, n_points=int(sum(sizes[g] for g in groups)),
                              notes=tuple(notes), details={"budgets": budgets})


# ----------------------------------------------------------------------------- Approach 1

_ENVELOPE_POINTS = 50


def fit_approach1(data: FitData, *, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> FitResult:
    """Chinchilla Approach 1: the lower envelope of training curves.

    Curves are validation loss at each run's evaluation steps (not smoothed training loss),
    interpolated linearly in log C; a run's final loss also stands for the 0.05 decades (12%)
    past its end. On 50 log-spaced C between the smallest and largest final C of the runs, the
    run lowest on the envelope gives N_opt(C), and D_opt(C) = C / (C per token of that run);
    N_opt = k_N·C^a and D_opt = k_D·C^b are fitted in log space.

    Limitation: with a cosine schedule sized to each run, a run's intermediate points are not
    at the end of its schedule, so they sit above what a run of that length would reach; the
    envelope is biased toward larger models at C below a run's end. Hoffmann et al. trained
    each size with several cosine lengths to reduce this; one length per size cannot.
    """
    _check_ci(ci, n_bootstrap)
    has = np.array([c is not None for c in data.curves])
    if has.sum() < 2:
        raise FitError(f"Approach 1 needs training curves (metrics.parquet with val_loss at eval steps) "
                       f"for at least 2 runs; found {int(has.sum())} (a table has none: use --approach 2 or 3)")
    sub = data.subset(has)
    curves = [c for c in sub.curves if c is not None]
    grid = np.geomspace(min(c[0][-1] for c in curves), max(c[0][-1] for c in curves), _ENVELOPE_POINTS)
    lg = np.log(grid)
    # A run counts as reaching C up to 0.05 decades past its end (at its final loss), as runs
    # planned for one budget end a few percent apart and the top grid point is the largest end.
    M = np.array([np.interp(lg, np.append(np.log(c), np.log(c[-1]) + _GROUP_GAP_DECADES * math.log(10)),
                            np.append(l, l[-1]), left=np.nan, right=np.nan) for c, l in curves])
    counts = _resample(np.random.default_rng(seed), len(sub), n_bootstrap)
    present = np.vstack([np.ones(len(sub), bool), counts > 0])  # row 0: the full data
    Mb = np.where(present[:, :, None] & np.isfinite(M)[None], M[None], np.inf)
    win = Mb.argmin(1)  # (1 + n_bootstrap, grid): the run on the envelope
    covered = np.isfinite(np.take_along_axis(Mb, win[:, None], 1)[:, 0])
    log_n = np.where(covered, np.log(sub.params)[win], np.nan)
    log_d = np.where(covered, lg - np.log(sub.flops / sub.tokens)[win], np.nan)
    distinct = np.array([np.unique(row[np.isfinite(row)]).size for row in log_n])
    log_n[distinct < 2] = np.nan  # one size on the whole envelope defines no slope
    log_d[distinct < 2] = np.nan  # ... and so no D_opt line either: the draw failed as a whole
    ok = np.isfinite(log_n[0])
    envelope = {"flops": grid[ok], "N": np.exp(log_n[0][ok]), "D": np.exp(log_d[0][ok]),
                "loss": M[win[0], np.arange(lg.size)][ok]}
    return _allocation_result(
        "approach1", sub, lg, log_n, log_d, "fewer than 2 model sizes on the envelope", ci=ci,
        n_bootstrap=n_bootstrap, seed=seed, n_points=int(ok.sum()), details={"envelope": envelope},
        notes=("intermediate points of cosine-schedule runs are not at their schedule's end "
               "(see fit_approach1)",))


# ----------------------------------------------------------------------------- Kaplan forms

_KAPLAN = {"N": ("params", "N_c", "alpha_N"), "D": ("tokens", "D_c", "alpha_D"), "C": ("flops", "C_c", "alpha_C")}


def pareto_frontier(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the Pareto frontier: points no smaller-or-equal x beats in loss."""
    order = np.lexsort((loss, x))
    best = np.minimum.accumulate(loss[order])
    keep = np.concatenate([[True], loss[order][1:] < best[:-1]])
    return order[keep]


def fit_kaplan(data: FitData, form: str, *, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> FitResult:
    """A Kaplan et al. 2020 form (Eq. 1.1–1.3): L = (X_c / X)^α_X for X = N, D or C.

    Fitted by least squares of log L on log X over the Pareto frontier of (X, L): the runs that
    no run with less X beats. For N that is the best loss per model size (the closest these
    runs get to Kaplan's "trained to convergence"); for C it is the compute frontier (Kaplan's
    C_min). C_c is in FLOPs (1 PF-day = 8.64e19 FLOPs).
    """
    _check_ci(ci, n_bootstrap)
    column, xc_name, alpha_name = _KAPLAN[form]
    x, lossv = np.log(getattr(data, column)), np.log(data.loss)
    front = pareto_frontier(x, lossv)
    if front.size < 3:
        raise FitError(f"Kaplan L({form}) needs 3 or more runs on the loss frontier over {column}; "
                       f"found {front.size} (train more sizes/budgets)")
    counts = _resample(np.random.default_rng(seed), len(data), n_bootstrap)
    boot = np.full((n_bootstrap, 2), np.nan)
    for i, c in enumerate(counts):
        idx = np.flatnonzero(c)
        f = idx[pareto_frontier(x[idx], lossv[idx])]
        if f.size >= 3:
            boot[i] = _line(x[f], lossv[f], c[f].astype(float))
    c0, s0 = _line(x[front], lossv[front])

    def est(c: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return {alpha_name: -s, xc_name: np.exp(-c / s)}

    return _result(f"kaplan_{form}", data, {k: float(v) for k, v in est(c0, s0).items()},
                   est(boot[:, 0], boot[:, 1]), _status(0), ci=ci, n_bootstrap=n_bootstrap, seed=seed,
                   n_points=int(front.size), keep=(alpha_name, xc_name),
                   residuals=lossv[front] - c0 - s0 * x[front],
                   details={"frontier": {"x": np.exp(x[front]), "loss": data.loss[front]}, "x": column})


# ----------------------------------------------------------------------------- all, I/O

def fit_all(data: FitData, approach: str = "all", *, n_bootstrap: int = 1000, seed: int = 0,
            ci: float = 0.95, grid: np.ndarray | None = None,
            loss: Objective | str = "lsq") -> tuple[dict[str, FitResult], dict[str, str]]:
    """Run the fits ``approach`` names (a key of APPROACHES); return (fits, skipped reasons).

    With "all", a fit the data cannot support is skipped with its reason; a single approach
    raises FitError instead.
    """
    if approach not in APPROACHES:
        raise ConfigError(f"--approach must be one of {', '.join(APPROACHES)} (got {approach!r})")
    kw = {"n_bootstrap": n_bootstrap, "seed": seed, "ci": ci}
    runners = {"approach1": lambda: fit_approach1(data, **kw), "approach2": lambda: fit_approach2(data, **kw),
               "approach3": lambda: fit_approach3(data, grid=grid, loss=loss, **kw),
               **{f"kaplan_{f}": (lambda f=f: fit_kaplan(data, f, **kw)) for f in _KAPLAN}}
    fits, skipped = {}, {}
    for name in APPROACHES[approach]:
        try:
            fits[name] = runners[name]()
        except FitError as e:
            if approach != "all":
                raise
            skipped[name] = str(e)
    if not fits:
        raise FitError("no fit possible: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return fits, skipped


_FORMAT = "scaling.fit/1"


def save_fits(path: str | os.PathLike[str], fits: dict[str, FitResult], skipped: dict[str, str],
              data: FitData) -> Path:
    """Write fit.json atomically: sources, conventions, every FitResult and skipped reasons."""
    from scaling.config import atomic_write_text

    any_fit = next(iter(fits.values()))
    doc = {"format": _FORMAT, "sources": list(data.sources), "conventions": data.conventions,
           "n_runs": len(data), "n_bootstrap": any_fit.n_bootstrap, "seed": any_fit.seed, "ci": any_fit.ci,
           "fits": {k: f.to_dict() for k, f in fits.items()}, "skipped": skipped}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return Path(path)


def load_fits(path: str | os.PathLike[str]) -> dict[str, FitResult]:
    """The FitResults of a fit.json written by ``save_fits``."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise FitError(f"--fit {path}: cannot read ({e}); write one with scaling fit") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise FitError(f"--fit {path}: not a fit.json written by scaling fit (format {_FORMAT})")
    return {k: FitResult.from_dict(v) for k, v in doc["fits"].items()}
