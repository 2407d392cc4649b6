"""Using a fit: predicted loss and compute-optimal allocation with intervals, and the held-out check.

``predict`` and ``predict_optimal`` are pure functions of a ``FitResult`` (its bootstrap draws
and residuals; the same fit gives the same interval). ``validate`` fits Approach 3 without the
target runs and compares each target's prediction with its actual loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from scaling.errors import ConfigError, FitError
from scaling.fit import FitResult, _check_ci, _interval, _json_safe, fit_approach3
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


def _noise(fit: FitResult, size: int) -> np.ndarray:
    """Residual noise draws in log space, resampled from the fit's residuals (fixed seed)."""
    res = np.asarray(fit.residuals, float)
    return np.random.default_rng(fit.seed).choice(res, size) if res.size else np.zeros(size)


def _included(k: int, noise: bool) -> str:
    """What a prediction interval includes, in words."""
    if not k:
        return "no bootstrap draws, so no interval (fit with --bootstrap > 0)"
    return f"bootstrap distribution of the fit ({k} resamples of runs)" + (
        " times exp(a log-space residual of the full-data fit, resampled): parameter uncertainty "
        "plus run-to-run scatter" if noise else ": parameter uncertainty only")


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
    """Loss of N = ``n_params`` trained on D = ``tokens`` under an Approach 3 fit, with interval.

    The interval is a percentile interval of L(N, D; θ_b)·exp(ε_b) over the bootstrap draws θ_b,
    with ε_b drawn from the full-data fit's log residuals: parameter uncertainty plus the
    scatter of single runs about the law. Pure: the same fit gives the same interval. Without
    bootstrap draws (``n_bootstrap`` 0) the interval is None. Raises FitError for a fit the
    data do not identify (``FitResult.law``).
    """
    law, laws, ci = fit.law(), _sampled_law(fit), _level(fit, ci)
    iv, k = None, 0
    if laws is not None:
        loss_b = laws.loss(n_params, tokens)
        iv, k = _interval(loss_b * np.exp(_noise(fit, loss_b.size)), ci), loss_b.size
    return Prediction(fit.method, n_params, tokens, None, float(law.loss(n_params, tokens)),
                      {"loss": iv}, ci, _included(k, True))


def predict_optimal(fit: FitResult, flops: float, *, ci: float | None = None) -> Prediction:
    """Compute-optimal N, D (and loss, for Approach 3) at C = ``flops``, with intervals.

    Approach 3 minimises its L(N, D) on C's IsoFLOP curve under the fit's FLOP convention
    (``FitResult.optimal``: N_opt = G·(C/6)^a under C = 6·N·D, Hoffmann et al. Eq. 4);
    Approaches 1 and 2 use their fitted power laws. N and D intervals are bootstrap percentiles
    (no residual term); the loss interval adds residual noise as in ``predict``.

    Raises
    ------
    FitError
        A Kaplan fit, or an Approach 3 fit the data do not identify.
    """
    ci = _level(fit, ci)
    s = {k: np.asarray(v) for k, v in fit.samples.items()}
    n_b = d_b = loss_b = np.array([])
    if fit.method == "approach3":
        n, d = fit.optimal(flops)
        loss = float(fit.law().loss(n, d))
        if (laws := _sampled_law(fit)) is not None:
            n_b, d_b = iso_flop_optimum(laws, flops, fit.details.get("flops_ratio"))
            loss_b = laws.loss(n_b, d_b) * np.exp(_noise(fit, n_b.size))
    elif fit.method in ("approach1", "approach2"):
        p, loss = fit.params, None
        n, d = p["k_N"] * flops ** p["a"], p["k_D"] * flops ** p["b"]
        if s:
            n_b, d_b = s["k_N"] * flops ** s["a"], s["k_D"] * flops ** s["b"]
    else:
        raise FitError(f"{fit.method} gives no compute-optimal allocation; use approach 1, 2 or 3")
    return Prediction(fit.method, float(n), float(d), flops, loss,
                      {"n_params": _interval(n_b, ci), "tokens": _interval(d_b, ci), "loss": _interval(loss_b, ci)},
                      ci, _included(n_b.size, loss is not None))


@dataclass(frozen=True)
class ValidationRow:
    """One held-out run: the Approach 3 prediction for its (N, D) against its actual loss.

    ``rel_error`` is (predicted − actual) / actual; ``inside``: actual within ``interval``.
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


def validate(data: FitData, targets: Sequence[str], *, n_bootstrap: int = 1000, seed: int = 0,
             ci: float = 0.95, grid: np.ndarray | None = None) -> tuple[FitResult, list[ValidationRow]]:
    """Fit Approach 3 on every run except ``targets`` (names, run ids or sweeps); predict each target."""
    if n_bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1 to validate: the check needs prediction intervals "
                          f"(got {n_bootstrap})")
    held = data.match(targets)
    if (~held).sum() < 5:
        raise FitError(f"holding out {int(held.sum())} run(s) leaves {int((~held).sum())} to fit; Approach 3 "
                       "needs at least 5 (add results folders with more runs, or hold out fewer)")
    fit = fit_approach3(data.subset(~held), n_bootstrap=n_bootstrap, seed=seed, ci=ci, grid=grid)
    rows = []
    for i in np.flatnonzero(held):
        p = predict(fit, float(data.params[i]), float(data.tokens[i]))
        iv, actual = p.intervals["loss"], float(data.loss[i])
        rows.append(ValidationRow(data.names[i], data.run_ids[i], float(data.params[i]), float(data.tokens[i]),
                                  actual, p.loss, iv, (p.loss - actual) / actual,
                                  bool(iv and iv[0] <= actual <= iv[1])))
    return fit, rows
