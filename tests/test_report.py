"""Tests of scaling.report: the CLI table, prediction/validation text, plots and the HTML report."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from test_fit import CHINCHILLA, SMALL_GRID, degenerate_table, isoflop_table, write_sweep

from scaling import fit as F
from scaling import report
from scaling.predict import ValidationRow, predict, predict_optimal
from scaling.results import load_points

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table_fits():
    data = isoflop_table(CHINCHILLA, np.geomspace(1e18, 1e21, 4), sizes=7)
    fits, skipped = F.fit_all(data, "all", n_bootstrap=40, grid=SMALL_GRID)
    return data, fits, skipped


def test_format_fits_shows_every_fit_side_by_side(table_fits):
    data, fits, skipped = table_fits
    text = report.format_fits(fits, skipped, data)
    assert text.startswith("28 runs · N = total parameters · C = 6ND · 40 bootstrap resamples of runs (seed 0)")
    for title in ("Approach 2: IsoFLOP", "Approach 3: L(N, D)", "Kaplan L(N)", "Kaplan L(D)", "Kaplan L(C)"):
        assert title in text
    alpha, (lo, hi) = fits["approach3"].params["alpha"], fits["approach3"].intervals["alpha"]
    assert re.search(rf"alpha\s+{re.escape(f'{alpha:.4g}  [{lo:.4g}, {hi:.4g}]')}", text)
    assert "N_opt at C=1e+21" in text and "C_c [PF-days]" in text
    assert "published: Kaplan et al. 2020 Eq. 1.1: alpha_N=0.076" in text
    # The published laws at the same C, for reference (Hoffmann et al. 2022; Besiroglu et al. 2024).
    n, d = CHINCHILLA.optimal(1e21)
    assert re.search(rf"chinchilla_approach3\s+N\s+{re.escape(f'{n:.4g}')}\s+D\s+{re.escape(f'{d:.4g}')}", text)
    assert "skipped approach1: Approach 1 needs training curves" in text


def test_format_prediction_and_validation(table_fits):
    _, fits, _ = table_fits
    p = predict(fits["approach3"], 1e9, 2e10)
    text = report.format_prediction(p)
    assert f"loss {p.loss:.4g} [{p.intervals['loss'][0]:.4g}, {p.intervals['loss'][1]:.4g}] (95%)" in text
    assert "interval: linearized fit uncertainty plus run noise sigma" in text and "dof)" in text
    text = report.format_prediction(predict_optimal(fits["approach2"], 1e22))
    assert text.startswith("approach2: C = 1e+22 → N_opt") and "N, D: bootstrap distribution of the fit (40" in text
    row = ValidationRow("big-run", "id1", 1e9, 2e10, 2.5, 2.4, (2.3, 2.45), -0.04, False)
    text = report.format_validation(fits["approach3"], [row])
    assert "big-run" in text and "-4.00%" in text and "NO" in text and "0/1 inside" in text


def test_write_report_embeds_every_plot(tmp_path):
    folder = write_sweep(tmp_path, "s1", CHINCHILLA, list(np.geomspace(1e14, 1e17, 4)), sizes=5)
    data = load_points([folder])
    fits, skipped = F.fit_all(data, "all", n_bootstrap=20, grid=SMALL_GRID)
    page = report.write_report(fits, skipped, data, tmp_path / "out")
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["allocation.png", "isoflop.png", "loss_vs_compute.png", "residuals.png"]
    html = page.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == 4 and all(base64.b64decode(e)[:8] == PNG for e in embedded)
    assert "<img" in html and html.count("<img") == 4  # self-contained: no other image source
    assert "Approach 1: lower envelope" in html and str(folder) in html


def test_report_with_approach3_only_draws_what_applies(tmp_path, table_fits):
    data, fits, _ = table_fits
    page = report.write_report({"approach3": fits["approach3"]}, {}, data, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["allocation.png", "loss_vs_compute.png", "residuals.png"]
    assert (tmp_path / "residuals.png").read_bytes()[:8] == PNG and page.name == "report.html"


def test_report_leaves_out_a_fit_the_data_do_not_identify(tmp_path):
    # All runs at one N: Approach 3 is not identified, Approach 2 and Kaplan L(N) are skipped;
    # the report still writes, says why, and draws only what the other fits support.
    data = degenerate_table("one_n")
    fits, skipped = F.fit_all(data, "all", n_bootstrap=10, grid=SMALL_GRID)
    assert not fits["approach3"].usable and {"kaplan_D", "kaplan_C"} <= set(fits)
    page = report.write_report(fits, skipped, data, tmp_path).read_text()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["loss_vs_compute.png"]
    assert "approach3 is drawn in no plot: the data do not identify the law: all runs have one N" in page
    text = report.format_fits(fits, skipped, data)
    assert "the data do not identify the law: all runs have one N (1e+08)" in text
    assert "Compute-optimal allocation" not in text  # no usable fit allocates compute
    # Called directly, the plots skip it too (the published lines and the runs remain).
    for path in (report.plot_allocation(fits, data, tmp_path / "a.png"),
                 report.plot_loss_vs_compute(data, fits, tmp_path / "l.png")):
        assert path.read_bytes()[:8] == PNG

