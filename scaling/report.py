"""What a fit shows: the readable table for the CLI, plots (PNG) and one HTML report.

Plots use matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), so no display
and no global pyplot state are involved. ``report.html`` is self-contained: it embeds every
PNG as base64 (the PNGs are also written next to it for use elsewhere).
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scaling.fit import FitResult, pareto_frontier
from scaling.laws import PUBLISHED_LAWS
from scaling.predict import Prediction, ValidationRow, predict_optimal
from scaling.results import FitData

__all__ = [
    "format_fits", "format_prediction", "format_validation", "plot_isoflop", "plot_loss_vs_compute",
    "format_cross_validation", "plot_allocation", "plot_residuals", "write_report",
]

_TITLES = {
    "approach1": "Approach 1: lower envelope of training curves; N_opt = k_N·C^a, D_opt = k_D·C^b",
    "approach2": "Approach 2: IsoFLOP parabolas; N_opt = k_N·C^a, D_opt = k_D·C^b",
    "approach3": "Approach 3: L(N, D) = E + A/N^alpha + B/D^beta (fitted in log L, L-BFGS)",
    "kaplan_N": "Kaplan L(N) = (N_c/N)^alpha_N, on the best loss per model size",
    "kaplan_D": "Kaplan L(D) = (D_c/D)^alpha_D, on the best loss per token count",
    "kaplan_C": "Kaplan L(C) = (C_c/C)^alpha_C, on the compute frontier (C_c in FLOPs)",
}
_PF_DAY = 8.64e19  # FLOPs in a petaflop/s-day (Kaplan et al. 2020, Sec. 1.3)
# Kaplan et al. 2020, Eq. 1.1-1.3 (non-embedding N, WebText2, their tokenizer): for reference
# only, as the constants depend on the data and tokenizer.
_KAPLAN_PUBLISHED = {
    "kaplan_N": "Kaplan et al. 2020 Eq. 1.1: alpha_N=0.076, N_c=8.8e13 non-embedding params",
    "kaplan_D": "Kaplan et al. 2020 Eq. 1.2: alpha_D=0.095, D_c=5.4e13 tokens",
    "kaplan_C": "Kaplan et al. 2020 Eq. 1.3: alpha_C=0.050, C_c=3.1e8 PF-days",
}


def _g(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _iv(iv: Sequence[float] | None) -> str:
    return f"[{_g(iv[0])}, {_g(iv[1])}]" if iv else ""


def _label(name: str, fit: FitResult) -> str:
    ref = fit.details.get("ref_flops")
    return name.replace("_ref", f" at C={ref:.3g}") if name.endswith("_ref") and ref else name


def format_fits(fits: dict[str, FitResult], skipped: dict[str, str], data: FitData) -> str:
    """The CLI's table: every fit's parameters with intervals, then the allocations side by side."""
    any_fit = next(iter(fits.values()))
    # The formula (6ND, 6(N_nonemb+Vd)D, ...) where the data names it; a table's C is as given.
    formula = data.conventions.get("flops_formula", data.conventions["flops"])
    out = [f"{len(data)} runs · N = {data.conventions['params']} parameters · C = {formula} · "
           f"{any_fit.n_bootstrap} bootstrap resamples of runs (seed {any_fit.seed}) · "
           f"{any_fit.ci:.0%} percentile intervals"]
    for name, fit in fits.items():
        dropped = f", {fit.n_bootstrap_degenerate} not identified" if fit.n_bootstrap_degenerate else ""
        out += ["", _TITLES[name], f"  {fit.message}  ({fit.n_points} points, "
                f"{fit.n_bootstrap_ok}/{fit.n_bootstrap} resamples{dropped})"]
        width = max(len(_label(k, fit)) for k in fit.params)
        out += [f"  {_label(k, fit):<{width}}  {_g(v):>10}  {_iv(fit.intervals.get(k))}"
                for k, v in fit.params.items()]
        if name == "kaplan_C":
            out.append(f"  {'C_c [PF-days]':<{width}}  {_g(fit.params['C_c'] / _PF_DAY):>10}")
        if name in _KAPLAN_PUBLISHED:
            out.append(f"  published: {_KAPLAN_PUBLISHED[name]}")
        if name == "approach3" and "sigma" in fit.details:
            out += format_cross_validation(fit)
        if name == "approach2":
            out += [_bracket_line(b) for b in fit.details["budgets"]]
        out += [f"  note: {n}" for n in fit.notes]
    out += _side_by_side(fits)
    out += [f"skipped {k}: {v}" for k, v in skipped.items()]
    return "\n".join(out)


def _bracket_line(budget: dict[str, Any]) -> str:
    """Whether one IsoFLOP budget's fitted minimum lies inside the sizes trained."""
    head = f"  budget {budget['flops']:.3g}: "
    if not budget["N_opt"]:
        return head + "no interior minimum (the parabola opens downward)"
    lo, hi = budget["log_n_range"]
    where = "inside" if lo <= math.log(budget["N_opt"]) <= hi else "OUTSIDE"
    return head + f"minimum N {_g(budget['N_opt'])} {where} the sizes trained ({_g(math.exp(lo))}-{_g(math.exp(hi))})"


def format_cross_validation(fit: FitResult) -> list[str]:
    """Approach 3's objective, run noise and in-sweep cross-validation, as indented lines."""
    d = fit.details
    out = [f"  objective: {d['objective']}; run noise sigma {d['sigma']:.2%} of the loss ({d['dof']} dof)"]
    cv = d.get("cv")
    if not cv:
        return out
    for f in cv["folds"]:
        what = f"  cross-validation, {f['fold']} held out ({len(f['runs'])} runs): "
        out.append(what + (f"skipped ({f['skipped']})" if "skipped" in f else
                           "predicted - actual " + " ".join(f"{e:+.1%}" for e in f["rel_error"])))
    if cv["kappa"] is not None:
        out.append(f"  cross-validation RMS error {cv['rms_rel_error']:.2%} over {cv['n_held']} held-out runs; "
                   + (f"prediction intervals widened x{cv['kappa']:.2f}" if cv["kappa"] > 1
                      else "within the fit's own uncertainty (intervals not widened)"))
    return out


def _side_by_side(fits: dict[str, FitResult]) -> list[str]:
    """Compute-optimal N, D at the largest C fitted, from each usable approach and the published laws."""
    alloc = [f for f in fits.values() if f.method in ("approach1", "approach2", "approach3") and f.usable]
    if not alloc:
        return []
    c = max(f.details["ref_flops"] for f in alloc)
    out = ["", f"Compute-optimal allocation at C = {c:.3g} FLOPs (C = 6·N·D for the published lines)"]
    for f in alloc:
        p = predict_optimal(f, c)
        out.append(f"  {f.method:<22} N {_g(p.n_params):>10} {_iv(p.intervals['n_params']):<24} "
                   f"D {_g(p.tokens):>10} {_iv(p.intervals['tokens']):<24} {p.tokens / p.n_params:6.1f} tokens/param")
    for key in ("chinchilla_approach1", "chinchilla_approach2", "chinchilla_approach3", "epoch_approach3"):
        n, d = PUBLISHED_LAWS[key].optimal(c)
        out.append(f"  {key:<22} N {_g(n):>10} {'':<24} D {_g(d):>10} {'':<24} {d / n:6.1f} tokens/param")
    return out


def format_prediction(pred: Prediction) -> str:
    """One prediction as readable lines."""
    iv = pred.intervals
    if pred.flops is None:
        lines = [f"{pred.method}: N = {_g(pred.n_params)}, D = {_g(pred.tokens)} → loss {_g(pred.loss)} "
                 f"{_iv(iv['loss'])} ({pred.ci:.0%})"]
    else:
        lines = [f"{pred.method}: C = {_g(pred.flops)} → N_opt {_g(pred.n_params)} {_iv(iv['n_params'])}, "
                 f"D_opt {_g(pred.tokens)} {_iv(iv['tokens'])}, {pred.tokens / pred.n_params:.1f} tokens/param"
                 + (f", loss {_g(pred.loss)} {_iv(iv['loss'])}" if pred.loss is not None else "")
                 + f" ({pred.ci:.0%})"]
    return "\n".join(lines + [f"  interval: {pred.included}"])


def format_validation(fit: FitResult, rows: Sequence[ValidationRow]) -> str:
    """Predicted vs actual for each held-out run, and whether the actual lies inside the interval."""
    head = (f"{'run':<28} {'N':>10} {'D':>10} {'actual':>8} {'predicted':>9} "
            f"{f'{fit.ci:.0%} interval':>20} {'rel.err':>8} {'eval s.e.':>9}  inside")
    out = [f"Approach 3 fitted on {fit.n_points} runs ({fit.message}); {len(rows)} held out",
           *format_cross_validation(fit), head]
    for r in rows:
        out.append(f"{r.name[:28]:<28} {_g(r.n_params):>10} {_g(r.tokens):>10} {r.actual:8.4f} {r.predicted:9.4f} "
                   f"{_iv(r.interval):>20} {r.rel_error:+8.2%} "
                   f"{'' if r.eval_se is None else f'{r.eval_se / r.actual:.2%}':>9}  {'yes' if r.inside else 'NO'}")
    inside = sum(r.inside for r in rows)
    out.append(f"{inside}/{len(rows)} inside the prediction interval")
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots


def _figure(ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * ncols, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save atomically (temp + rename), like every other write of the project."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _norm(values: np.ndarray) -> Any:
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=values.min(), vmax=max(values.max(), values.min() * 1.01))


def plot_isoflop(fit: FitResult, data: FitData, path: str | os.PathLike[str]) -> Path:
    """Loss vs N for every run, coloured by C, with each budget's parabola and its minimum."""
    fig, (ax,) = _figure()
    norm = _norm(data.flops)
    sc = ax.scatter(data.params, data.loss, c=data.flops, norm=norm, cmap="viridis", s=18)
    for b in fit.details["budgets"]:
        lo, hi = b["log_n_range"]
        x = np.linspace(lo - 0.2, hi + 0.2, 100)
        p = [np.nan if v is None else v for v in b["coef"]]
        u = x - b["center"]
        ax.plot(np.exp(x), p[0] + p[1] * u + p[2] * u * u, color=sc.cmap(norm(b["flops"])), lw=1)
        if b["N_opt"] is not None and b["loss_opt"] is not None:
            ax.plot(b["N_opt"], b["loss_opt"], "k*", ms=8)
    ax.set(xscale="log", xlabel=f"N ({data.conventions['params']} parameters)", ylabel="validation loss",
           title="IsoFLOP profiles (Approach 2); ★ minima")
    fig.colorbar(sc, ax=ax, label="C (FLOPs)")
    return _save(fig, path)


def plot_loss_vs_compute(data: FitData, fits: dict[str, FitResult], path: str | os.PathLike[str]) -> Path:
    """Loss vs C: runs (and their curves), the empirical compute frontier and the fitted ones
    (fits that are not ``usable`` are left out)."""
    fig, (ax,) = _figure()
    norm = _norm(data.params)
    sc = ax.scatter(data.flops, data.loss, c=data.params, norm=norm, cmap="plasma", s=18, zorder=3)
    for curve, n in zip(data.curves, data.params):
        if curve is not None:
            ax.plot(curve[0], curve[1], color=sc.cmap(norm(n)), lw=0.6, alpha=0.5)
    front = pareto_frontier(np.log(data.flops), data.loss)
    ax.step(data.flops[front], data.loss[front], "k-", where="post", lw=1, label="empirical frontier")
    c = np.geomspace(data.flops.min(), data.flops.max(), 100)
    if "approach3" in fits and fits["approach3"].usable:
        fit = fits["approach3"]
        ax.plot(c, fit.law().loss(*fit.optimal(c)), "r--", label="Approach 3 at its optimal N, D")
    if "kaplan_C" in fits:
        p = fits["kaplan_C"].params
        ax.plot(c, (p["C_c"] / c) ** p["alpha_C"], "b:", label="Kaplan L(C) fit")
    ax.set(xscale="log", yscale="log", xlabel=f"C (FLOPs, {data.conventions['flops']})", ylabel="validation loss",
           title="Loss vs compute")
    ax.legend(fontsize=8)
    fig.colorbar(sc, ax=ax, label="N")
    return _save(fig, path)


def plot_allocation(fits: dict[str, FitResult], data: FitData, path: str | os.PathLike[str]) -> Path:
    """N_opt and D_opt vs C from each usable approach, with the published Chinchilla lines for reference."""
    fig, axes = _figure(2)
    c = np.geomspace(data.flops.min() / 3.0, data.flops.max() * 30.0, 60)
    styles = {"approach1": "tab:blue", "approach2": "tab:orange", "approach3": "tab:green"}
    for name, color in styles.items():
        if name not in fits or not fits[name].usable:
            continue
        preds = [predict_optimal(fits[name], float(x)) for x in c]
        for ax, key in zip(axes, ("n_params", "tokens")):
            ax.plot(c, [getattr(p, key) for p in preds], color=color, label=f"{name} fit")
            if fits[name].samples:
                ax.fill_between(c, [p.intervals[key][0] for p in preds], [p.intervals[key][1] for p in preds],
                                color=color, alpha=0.15)
    if "approach2" in fits:
        for b in fits["approach2"].details["budgets"]:
            for ax, key in zip(axes, ("N_opt", "D_opt")):
                if b[key] is not None:
                    ax.plot(b["flops"], b[key], "o", color="tab:orange", ms=5)
    if "approach1" in fits:
        env = fits["approach1"].details["envelope"]
        for ax, key in zip(axes, ("N", "D")):
            ax.plot(env["flops"], env[key], ".", color="tab:blue", ms=3)
    for key, ls in (("chinchilla_approach1", ":"), ("chinchilla_approach2", "-."), ("chinchilla_approach3", "--")):
        law = PUBLISHED_LAWS[key]
        n, d = law.optimal(c)
        axes[0].plot(c, n, "k", ls=ls, lw=0.8, label=f"{law.name} (published)")
        axes[1].plot(c, d, "k", ls=ls, lw=0.8)
    axes[0].set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="N_opt", title="Compute-optimal N")
    axes[1].set(xscale="log", yscale="log", xlabel="C (FLOPs)", ylabel="D_opt (tokens)", title="Compute-optimal D")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_residuals(fit: FitResult, data: FitData, path: str | os.PathLike[str]) -> Path:
    """Approach 3's log-space residuals log L − log L̂ against N and against D."""
    fig, axes = _figure(2)
    r = np.asarray(fit.residuals)
    for ax, x, label in zip(axes, (data.params, data.tokens), ("N", "D (tokens)")):
        ax.scatter(x, r, c=np.log10(data.flops), cmap="viridis", s=14)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel=label, ylabel="log L − log L̂")
    axes[0].set_title(f"Approach 3 residuals (sd {_g(fit.residual_sd)})")
    return _save(fig, path)


# ----------------------------------------------------------------------------- HTML


def write_report(fits: dict[str, FitResult], skipped: dict[str, str], data: FitData,
                 out_dir: str | os.PathLike[str]) -> Path:
    """Write the plots that apply (PNG) and ``report.html`` (PNGs embedded as base64) to ``out_dir``.

    A fit that is not ``usable`` (no optimum, or a law the data do not identify) is listed in
    the table with its message, drawn in no plot, and named in a note above the plots.
    """
    from scaling.config import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    usable = {k: f for k, f in fits.items() if f.usable}
    pngs = [plot_loss_vs_compute(data, usable, out / "loss_vs_compute.png")]
    if "approach2" in fits:  # the budgets' parabolas show even where their minima define no law
        pngs.append(plot_isoflop(fits["approach2"], data, out / "isoflop.png"))
    if any(k in usable for k in ("approach1", "approach2", "approach3")):
        pngs.append(plot_allocation(usable, data, out / "allocation.png"))
    if "approach3" in usable:
        pngs.append(plot_residuals(usable["approach3"], data, out / "residuals.png"))
    images = "\n".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.name}</figcaption></figure>" for p in pngs)
    notes = "".join(f'<p class="note">{html.escape(k)} is drawn in no plot: {html.escape(f.message)}</p>'
                    for k, f in fits.items() if not f.usable)
    body = (f"<h1>Scaling-law fit</h1><p>Sources: {html.escape(', '.join(data.sources))}</p>"
            f"<pre>{html.escape(format_fits(fits, skipped, data))}</pre>{notes}{images}")
    style = "body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%}pre{font-size:12px}"
    page = f'<!doctype html><html><head><meta charset="utf-8"><title>scaling fit</title><style>{style}</style>' \
           f"</head><body>{body}</body></html>\n"
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
