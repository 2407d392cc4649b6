"""Known-truth checks of the fitting method: synthetic sweeps from a known L(N, D).

A study's prediction is only as trustworthy as the method's record on data whose answer is known.
``known_truth`` draws ``replicates`` synthetic sweeps on one grid of (N, D) points — the
planner's own grid, as a study would train it — from a known law with multiplicative Gaussian
noise in log L, fits each exactly as ``scaling fit`` / ``scaling validate`` do (Approach 3 with
its in-sweep cross-validation), predicts a held-out target and reports:

- coverage: how often the prediction interval holds the target's observed (noisy) loss — what
  a prediction interval promises — and how often it holds the noise-free law;
- the error of the point prediction (mean and RMS relative error);
- bias and RMS error of alpha, beta, E and a = beta/(alpha + beta).

``benchmarks/calibration.py`` prints the full table (two noise levels, 200+ replicates);
tests/test_calibration.py runs a small version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from scaling.fit import Objective, fit_approach3
from scaling.laws import PUBLISHED_LAWS, ParametricLaw
from scaling.predict import predict
from scaling.results import FitData

__all__ = ["KnownTruth", "known_truth", "planner_grid"]


@dataclass(frozen=True)
class KnownTruth:
    """The known-truth record of one (grid, law, noise, objective) over ``replicates`` sweeps.

    ``coverage`` counts intervals holding the target's observed loss, ``coverage_truth`` the
    noise-free law's; ``rel_error_*`` are (predicted − observed)/observed of the target;
    ``bias``/``rmse`` are per parameter over the usable fits; ``unusable`` fits (not identified)
    are left out of every figure, and ``mean_kappa`` is the cross-validation's mean widening.
    """

    noise: float
    objective: str
    replicates: int
    usable: int
    ci: float
    coverage: float
    coverage_truth: float
    coverage_uncalibrated: float
    rel_error_mean: float
    rel_error_rms: float
    mean_kappa: float
    median_width: float
    bias: dict[str, float]
    rmse: dict[str, float]
    target: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """A dict of every field."""
        return asdict(self)


def planner_grid(budgets: Sequence[float], **request: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N_total, D) of every point the planner plans for ``budgets`` (``PlanRequest`` fields as kwargs)."""
    from scaling.plan import PlanRequest, make_plan

    plan = make_plan(PlanRequest(budgets=tuple(budgets), **request))
    return (np.array([p.n_params_total for p in plan.points], float),
            np.array([p.tokens for p in plan.points], float))


def known_truth(params: np.ndarray, tokens: np.ndarray, target: tuple[float, float], *, noise: float,
                replicates: int = 200, law: ParametricLaw | None = None, loss: Objective | str = "lsq",
                ci: float = 0.95, seed: int = 0, grid: np.ndarray | None = None) -> KnownTruth:
    """Fit ``replicates`` synthetic sweeps at (``params``, ``tokens``) and score the prediction of
    ``target`` = (N, D); ``law`` defaults to Besiroglu et al. 2024's Approach 3 law (Eq. 3), the
    noise is log L + ``noise``·ε, ε ~ N(0, 1), drawn from ``numpy.random.default_rng(seed)``."""
    law = law or PUBLISHED_LAWS["epoch_approach3"]
    obj = loss if isinstance(loss, Objective) else Objective.parse(loss)
    rng = np.random.default_rng(seed)
    n_t, d_t = target
    true_t = float(law.loss(n_t, d_t))
    true = {"alpha": law.alpha, "beta": law.beta, "E": law.E, "a": law.a}
    hits = hits_truth = hits_raw = 0
    errors, kappas, widths, est = [], [], [], {k: [] for k in true}
    clean = law.loss(params, tokens)
    for _ in range(replicates):
        observed = clean * np.exp(noise * rng.standard_normal(params.size))
        observed_t = true_t * float(np.exp(noise * rng.standard_normal()))
        fit = fit_approach3(FitData.from_arrays(params, tokens, observed), n_bootstrap=0, ci=ci, grid=grid, loss=obj)
        if not fit.usable:
            continue
        p = predict(fit, n_t, d_t)
        lo, hi = p.intervals["loss"]
        kappa = (fit.details.get("cv") or {}).get("kappa") or 1.0
        hits += lo <= observed_t <= hi
        hits_truth += lo <= true_t <= hi
        # The same interval before the cross-validation widened it (log-symmetric about the point).
        half = np.log(hi / lo) / 2.0 / kappa
        hits_raw += abs(np.log(observed_t / p.loss)) <= half
        errors.append((p.loss - observed_t) / observed_t)
        widths.append(hi / lo - 1.0)
        kappas.append(kappa)
        for k in est:
            est[k].append(fit.params[k])
    k = len(errors)
    err = np.array(errors)
    return KnownTruth(
        noise=noise, objective=obj.describe(), replicates=replicates, usable=k, ci=ci,
        coverage=hits / k if k else float("nan"), coverage_truth=hits_truth / k if k else float("nan"),
        coverage_uncalibrated=hits_raw / k if k else float("nan"),
        rel_error_mean=float(err.mean()) if k else float("nan"),
        rel_error_rms=float(np.sqrt(np.mean(err**2))) if k else float("nan"),
        mean_kappa=float(np.mean(kappas)) if k else float("nan"),
        median_width=float(np.median(widths)) if k else float("nan"),
        bias={n: float(np.mean(v) - true[n]) if v else float("nan") for n, v in est.items()},
        rmse={n: float(np.sqrt(np.mean((np.array(v) - true[n]) ** 2))) if v else float("nan") for n, v in est.items()},
        target=(float(n_t), float(d_t)))
