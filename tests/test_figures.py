"""Data behind the A19 Figures 1-4 and 7 (popsynth.figures); plotting only when matplotlib is present."""

import numpy as np
import pytest

from popsynth import figures as f
from popsynth.cosmology import distance_tables


def _at(energy, y, e):
    return y[..., int(np.argmin(np.abs(energy - e)))]


def test_fig2_absorption_sequence():
    """A19 Fig. 2: the total at 3 keV drops by orders of magnitude from log N_H 21 to 25, while
    at 30 keV the Compton-thick source keeps its reprocessed light (reflection + torus)."""
    d = f.fig2_data()
    e, tot = d["energy"], d["total"]
    assert _at(e, tot[2], 3.0) < 0.03 * _at(e, tot[0], 3.0)
    assert _at(e, tot[2], 30.0) > 0.1 * _at(e, tot[0], 30.0)
    ct = 2
    assert _at(e, d["reflection"][ct] + d["reprocessed"][ct], 30.0) > _at(e, d["transmitted"][ct], 30.0)
    for k in ("scattered", "transmitted", "reprocessed", "reflection", "total"):
        assert np.all(np.isfinite(d[k])) and np.all(d[k] >= 0)
    np.testing.assert_allclose(d["total"], d["scattered"] + d["torus"] + d["reflection"], rtol=1e-12)


def test_fig3_luminosity_normalisation():
    """Every spectrum has intrinsic L(2-10) = 1e44 erg/s; the observed 2-10 keV luminosity of the
    log N_H 23 total is below it (absorption) but above half of it (reflection and scattering add)."""
    d = f.fig3_data()
    lum_primary = f.band_luminosity(d["energy"], d["primary"])
    np.testing.assert_allclose(lum_primary, 1e44, rtol=2e-3)
    lum_total = f.band_luminosity(d["energy"], d["total"])
    assert np.all((lum_total > 0.5e44) & (lum_total < 1e44))


def test_fig4_reflection_scales_with_r():
    d = f.fig4_data()
    ratio = d["reflection"][2] / np.where(d["reflection"][1] > 0, d["reflection"][1], np.nan)
    good = np.isfinite(ratio)
    np.testing.assert_allclose(ratio[good], 2.0 / 0.83, rtol=1e-10)
    np.testing.assert_allclose(d["torus"][0], d["torus"][2], rtol=1e-12)


def test_fig1_redshift_dimming():
    """A19 Fig. 1 caption: at z = 1 the observed flux is ~six orders of magnitude below z = 0.002.
    The peak of E^2 N scales as (1+z)^2 / d_L^2 times the rest-frame shape (the same energy-flux
    integral over L / 4 pi d_L^2)."""
    d = f.fig1_data()
    dl = distance_tables(np.array([0.002, 1.0, 3.0]))["d_l_cm"].numpy()
    np.testing.assert_allclose(d["d_l_cm"], dl, rtol=1e-9)
    peak = d["total"].max(-1)
    assert 5.0 < np.log10(peak[0] / peak[1]) < 7.0
    # energy-flux integral of the total over its rest-frame band = L_band / (4 pi d_L^2)
    flux = [np.trapezoid(d["total"][i] / d["energy"][i], d["energy"][i]) for i in range(3)]
    np.testing.assert_allclose(np.array(flux) * dl ** 2, flux[0] * dl[0] ** 2, rtol=1e-6)
    assert set(d["bands"]) >= {"Chandra", "NuSTAR"}


def test_fig7_five_sets():
    d = f.fig7_data(n_draws=8)
    assert list(d["sets"]) == [1, 2, 3, 4, 5] and d["total"].shape[:2] == (5, 3)
    assert np.all(np.isfinite(d["total"])) and np.all(d["total"] >= 0)
    # spectral set 4 (E_cut 128 keV) is softer above 100 keV than set 2 (200 keV)
    e = d["energy"]
    assert _at(e, d["total"][3, 0], 150.0) < _at(e, d["total"][1, 0], 150.0)


def test_plot_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    assert f.main(["--out", str(tmp_path), "--which", "2"]) == 0
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
