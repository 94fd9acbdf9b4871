"""popsynth.unresolved: the flux-limited (unresolved) CXB, resolved fractions, Li et al. 2019 hardness ratios."""

import math

import numpy as np
import pytest

from popsynth.errors import PopsynthError
from popsynth.spectra.primary import KEV_ERG
from popsynth.unresolved import (LI2019_BANDS, band_photon_intensity, build_unresolved_model, hardness_ratios,
                                 li2019_measured, main, powerlaw_hr_grid)


@pytest.fixture(scope="module")
def tiny(tiny_a19_loaded):  # the session's shared tiny A19-mode run (tests/conftest.py)
    return tiny_a19_loaded, build_unresolved_model(tiny_a19_loaded)


def test_infinite_limit_recovers_run_cxb(tiny):
    """S_lim -> inf: the unresolved spectrum is the run's CXB model (AGN part) at the same energies.
    Tolerance 1e-3: the run interpolates the draw-averaged spectrum in log-log, here each draw is
    interpolated separately."""
    r, m = tiny
    prob = r.problem()
    e = prob.model.energy
    resp = m.spectrum_response(e, (0.5, 2.0), math.inf)
    np.testing.assert_allclose(resp.numpy(), prob.model.response.numpy(), rtol=1e-3, atol=1e-12)
    w = r.best_weights()
    np.testing.assert_allclose((w @ resp).numpy(), prob.model.agn(w).numpy(), rtol=1e-3)


def test_band_intensity_matches_spectrum_integral(tiny):
    """The band-flux route (band_flux_factor) equals the integral over the band of the spectrum route:
    int (E^2 dN/dE) dlnE in erg/cm2/s/sr, with and without a flux limit (tolerance 2e-3: trapezoid on
    400 points and per-draw interpolation)."""
    _, m = tiny
    band = (2.0, 8.0)
    e = np.exp(np.linspace(np.log(2.0), np.log(8.0), 400))
    for s in (math.inf, 1e-15):
        spec = m.spectrum_response(e, band, s).numpy()  # [15, nE]
        integ = np.trapezoid(spec, np.log(e), axis=-1) * KEV_ERG
        direct = m.band_response(band, band, [s])[0].numpy()
        np.testing.assert_allclose(direct, integ, rtol=2e-3)


def test_limits_and_monotonic(tiny):
    """S_lim -> 0 leaves nothing unresolved (< 1e-6 of the total at 1e-25); the resolved fraction rises
    monotonically with decreasing S_lim (selection inside cells is exact, so no steps or reversals)."""
    r, m = tiny
    w = r.weight_samples(max_samples=3)
    s = np.logspace(-25, -8, 60)
    for band in ((0.5, 2.0), (8.0, 24.0)):
        resp = m.band_response(band, band, np.concatenate([s, [np.inf]]))  # [S+1, 15]
        i = (w.double() @ resp.T).numpy()
        frac = 1 - i[:, :-1] / i[:, -1:]
        assert np.all(frac[:, 0] > 1 - 1e-6)
        assert np.all(np.diff(frac, axis=1) <= 1e-14)
        assert np.all(frac[:, -1] < 0.05)  # at 1e-8 erg/cm2/s almost nothing is resolved


def test_cell_fraction_is_exact(tiny):
    """A flux limit inside a log L cell takes the exact share of the cell's luminosity integral:
    unresolved light is continuous in S_lim (no jumps between neighbouring limits 1e-4 dex apart)."""
    _, m = tiny
    s = 10 ** np.linspace(-15.0, -14.9, 400)
    i = m.band_response((2.0, 8.0), (2.0, 8.0), s).sum(1).numpy()
    rel = np.abs(np.diff(i)) / i[:-1]
    assert rel.max() < 2e-3  # smooth: a cell-centre cut would jump by a whole cell's share


def test_redshift_split_adds_up(tiny):
    _, m = tiny
    e = np.array([1.0, 5.0, 20.0])
    full = m.spectrum_response(e, (0.5, 2.0), 1e-16)
    parts = sum(m.spectrum_response(e, (0.5, 2.0), 1e-16, zr) for zr in ((0.0, 1.0), (1.0, 2.5), (2.5, 6.0)))
    np.testing.assert_allclose(parts.numpy(), full.numpy(), rtol=1e-10)


def test_powerlaw_hardness_analytic():
    """Photon-flux HRs of an unabsorbed power law N(E) ~ E^-Gamma equal the analytic band integrals."""
    for g in (0.0, 1.4, 2.0, 3.0):
        ph = []
        for b in LI2019_BANDS:
            e = np.exp(np.linspace(np.log(b[0]), np.log(b[1]), 2000))
            ph.append(band_photon_intensity(e, e ** (2 - g), b))
        exact = [np.log(b[1] / b[0]) if g == 1 else (b[1] ** (1 - g) - b[0] ** (1 - g)) / (1 - g) for b in LI2019_BANDS]
        np.testing.assert_allclose(hardness_ratios(np.array(ph)), hardness_ratios(np.array(exact)), atol=1e-6)
    grid = powerlaw_hr_grid(gammas=(2.0,), nhs=(1e21, 1e23), zs=(1.0,), nh_gal=0.0)
    assert grid[1]["hr1"] > grid[0]["hr1"]  # more absorption, harder


def test_li2019_measured_values():
    """HRs from Li et al. 2019 Table 2 (STACK, 3.6 um): P = 10.45, 2.60, 1.12, 0.21 (1e-11 units):
    HR1 = (2.60 - 10.45) / 13.05 = -0.6015, HR2 = -0.3978, HR3 = -0.6842."""
    m = [x for x in li2019_measured() if x["field"] == "STACK" and x["ir_band"].startswith("3.6")][0]
    np.testing.assert_allclose(m["hr"], [-0.60153, -0.39785, -0.68421], atol=1e-4)
    assert 0.1 < m["err"][0] < 0.5  # Li et al.: mean HR1 error ~0.3


def test_cli_outputs_and_published_numbers(tiny, tmp_path, capsys):
    """Command line writes its files; the model's resolved fractions at the Hickox & Markevitch 2006
    CDF-N limits (77 +/- 3 % in 1-2 keV, 80 +/- 8 % in 2-8 keV, of AGN + galaxies + diffuse) are
    compared with a wide stated band: the AGN + galaxies fraction must lie within 0.6-1.0 (the tiny
    fit is not converged; the point is the order of magnitude and the bookkeeping)."""
    r, _ = tiny
    assert main([str(r.folder), "--out", str(tmp_path), "--max-samples", "2", "--no-figure"]) == 0
    import json

    s = json.loads((tmp_path / "unresolved_summary.json").read_text())
    for name in ("resolved_fraction.ecsv", "unresolved_spectrum.ecsv", "li2019_hardness.ecsv"):
        assert (tmp_path / name).exists()
    hm = [x for x in s["resolved_fraction_at_literature_limits"] if x["reference"].startswith("Hickox")]
    assert len(hm) == 2
    for x in hm:
        assert 0.6 < x["model_incl_galaxies_p50"] <= x["model_p50"] <= 1.0
    nus = [x for x in s["resolved_fraction_at_literature_limits"] if x["reference"].startswith("Harrison")][0]
    assert 0.05 < nus["model_p50"] < 0.6  # published 33-39 % (Harrison et al. 2016)
    assert set(s["li2019_hardness"]) == {"UDS", "HDFN", "EGS", "CDFS", "COSMOS", "total CXB"}
    assert main([str(r.folder), "--flux-limit", "-1", "--no-figure", "--out", str(tmp_path)]) == 2
    assert "flux limit must be" in capsys.readouterr().err


def test_bad_inputs(tiny):
    _, m = tiny
    with pytest.raises(PopsynthError, match="flux limit"):
        m.band_response((2.0, 8.0), (2.0, 8.0), [0.0])
    with pytest.raises(PopsynthError):
        m.band_response((8.0, 2.0), (2.0, 8.0), [1e-15])
