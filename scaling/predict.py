"""Using a fit: predicted loss and compute-optimal allocation with intervals, and the held-out check.

``predict`` and ``predict_optimal`` are pure functions of a ``FitResult`` (its bootstrap draws
and residuals; the same fit gives the same interval). ``validate`` fits Approach 3 without the
target runs and compares each target's prediction with its actual loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from scaling.errors import FitError
from scaling.fit import FitResult, Objective, _check_ci, _interval, _json_safe, fit_approach3, log_prediction
from scaling.laws import ParametricLaw, iso_flop_optimum

if TYPE_CHECKING:
    from scaling.results import FitData

__all__ = ["Prediction", "ValidationRow", "predict", "predict_optimal", "validate"]


@dataclass(frozen=True)
class Prediction:
    """A prediction with its interval; ``loss`` is None where the law predicts no loss."""

    method: str
    n_params: float
    tokens: float
    flops: float | None
    loss: float | None
    intervals: dict[str, tuple[float, float] | None]
    ci: float
    included: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return _json_safe({f.name: getattr(self, f.name) for f in fields(self)})


def _included(fit: FitResult) -> str:
    """What a loss interval includes, in words."""
    if "sigma" not in fit.details:
        return "no interval: this fit predates linearized intervals; refit it with scaling fit"
    cv = fit.details.get("cv") or {}
    kappa = cv.get("kappa")
    widened = (f", widened x{kappa:.2f} by in-sweep cross-validation ({cv['n_held']} held-out runs "
               f"extrapolated worse than the fit's own uncertainty)" if kappa and kappa > 1 else
               ", not widened: in-sweep cross-validation found errors within it" if kappa else
               ", not checked by in-sweep cross-validation (too few runs per fold)")
    return ("linearized fit uncertainty plus run noise sigma "
            f"{fit.details['sigma']:.2%} (Student t, {fit.details['dof']} dof){widened}")


def loss_interval(fit: FitResult, n_params: float, tokens: float, ci: float) -> tuple[float, float] | None:
    """The prediction interval at level ``ci`` of a new run's loss at (N, D) under an Approach 3 fit.

    In log space: log L̂ ± kappa·t_dof·sqrt(sd² + σ̂²), with sd the linearized standard error of
    log L̂ (``scaling.fit.log_prediction``), σ̂ the runs' scatter about the law, t the Student
    quantile at the fit's n − 5 degrees of freedom, and kappa ≥ 1 the in-sweep cross-validation's
    widening (``fit_approach3``). Known-truth coverage of this interval is measured by
    ``benchmarks/calibration.py``. None for a fit written before these fields existed.
    """
    from scipy.stats import t as student_t

    d = fit.details
    if "cov" not in d:
        return None
    mu, sd = log_prediction(d, n_params, tokens)
    kappa = (d.get("cv") or {}).get("kappa") or 1.0
    half = kappa * float(student_t.ppf(0.5 + ci / 2.0, d["dof"])) * np.sqrt(sd[0] ** 2 + d["sigma"] ** 2)
    return float(np.exp(mu[0] - half)), float(np.exp(mu[0] + half))


def _sampled_law(fit: FitResult) -> ParametricLaw | None:
    """One law per bootstrap draw (arrays) of an Approach 3 fit; None without draws."""
    s = fit.samples
    return ParametricLaw(*(np.asarray(s[k]) for k in ("E", "A", "B", "alpha", "beta"))) if s else None


def _level(fit: FitResult, ci: float | None) -> float:
    """The interval level asked for (checked: a ConfigError outside (0, 1)), else the fit's."""
    if ci is None:
        return fit.ci
    _check_ci(ci, 0)
    return ci


def predict(fit: FitResult, n_params: float, tokens: float, *, ci: float | None = None) -> Prediction:
    """Loss of N = ``n_params`` trained on D = ``tokens`` under an Approach 3 fit, with the
    prediction interval of ``loss_interval`` (fit uncertainty plus run noise, widened by the
    in-sweep cross-validation). Pure: the same fit gives the same interval. Raises FitError for
    a fit the data do not identify (``FitResult.law``).
    """
    law, ci = fit.law(), _level(fit, ci)
    return Prediction(fit.method, n_params, tokens, None, float(law.loss(n_params, tokens)),
                      {"loss": loss_interval(fit, n_params, tokens, ci)}, ci, _included(fit))


def predict_optimal(fit: FitResult, flops: float, *, ci: float | None = None) -> Prediction:
    """Compute-optimal N, D (and loss, for Approach 3) at C = ``flops``, with intervals.

    Approach 3 minimises its L(N, D) on C's IsoFLOP curve under the fit's FLOP convention
    (``FitResult.optimal``: N_opt = G·(C/6)^a under C = 6·N·D, Hoffmann et al. Eq. 4);
    Approaches 1 and 2 use their fitted power laws. N and D intervals are bootstrap percentiles
    (no residual term); the loss interval is ``predict``'s at the predicted (N_opt, D_opt).

    Raises
    ------
    FitError
        A Kaplan fit, or an Approach 3 fit the data do not identify.
    """
    ci = _level(fit, ci)
    s = {k: np.asarray(v) for k, v in fit.samples.items()}
    n_b = d_b = np.array([])
    loss_iv = None
    if fit.method == "approach3":
        n, d = fit.optimal(flops)
        loss = float(fit.law().loss(n, d))
        loss_iv = loss_interval(fit, n, d, ci)
        if (laws := _sampled_law(fit)) is not None:
            n_b, d_b = iso_flop_optimum(laws, flops, fit.details.get("flops_ratio"))
    elif fit.method in ("approach1", "approach2"):
        p, loss = fit.params, None
        n, d = p["k_N"] * flops ** p["a"], p["k_D"] * flops ** p["b"]
        if s:
            n_b, d_b = s["k_N"] * flops ** s["a"], s["k_D"] * flops ** s["b"]
    else:
        raise FitError(f"{fit.method} gives no compute-optimal allocation; use approach 1, 2 or 3")
    return Prediction(fit.method, float(n), float(d), flops, loss,
                      {"n_params": _interval(n_b, ci), "tokens": _interval(d_b, ci), "loss": loss_iv},
                      ci, (f"N, D: bootstrap distribution of the fit ({n_b.size} resamples of runs)" if n_b.size
                           else "N, D: no bootstrap draws, so no interval (fit with --bootstrap > 0)")
                      + (f"; loss: {_included(fit)}" if loss is not None else ""))


@dataclass(frozen=True)
class ValidationRow:
    """One held-out run: the Approach 3 prediction for its (N, D) against its actual loss.

    ``rel_error`` is (predicted − actual) / actual; ``inside``: actual within ``interval``;
    ``eval_se`` the standard error of the actual loss from its eval (None where not recorded), the
    floor under any error a single run can show.
    """

    name: str
    run_id: str
    n_params: float
    tokens: float
    actual: float
    predicted: float
    interval: tuple[float, float] | None
    rel_error: float
    inside: bool
    eval_se: float | None = None


def validate(data: FitData, targets: Sequence[str], *, n_bootstrap: int = 1000, seed: int = 0,
             ci: float = 0.95, grid: np.ndarray | None = None,
             loss: Objective | str = "lsq") -> tuple[FitResult, list[ValidationRow]]:
    """Fit Approach 3 (with its in-sweep cross-validation) on every run except ``targets`` (names,
    run ids or sweeps); predict each target with ``predict``'s interval."""
    held = data.match(targets)
    if (~held).sum() < 5:
        raise FitError(f"holding out {int(held.sum())} run(s) leaves {int((~held).sum())} to fit; Approach 3 "
                       "needs at least 5 (add results folders with more runs, or hold out fewer)")
    fit = fit_approach3(data.subset(~held), n_bootstrap=n_bootstrap, seed=seed, ci=ci, grid=grid, loss=loss)
    rows = []
    for i in np.flatnonzero(held):
        p = predict(fit, float(data.params[i]), float(data.tokens[i]))
        iv, actual = p.intervals["loss"], float(data.loss[i])
        se = None if data.loss_se is None or not np.isfinite(data.loss_se[i]) else float(data.loss_se[i])
        rows.append(ValidationRow(data.names[i], data.run_ids[i], float(data.params[i]), float(data.tokens[i]),
                                  actual, p.loss, iv, (p.loss - actual) / actual,
                                  bool(iv and iv[0] <= actual <= iv[1]), se))
    return fit, rows
