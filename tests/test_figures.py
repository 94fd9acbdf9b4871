"""A19 Figures 1-4 and 7 from the spectral library (popsynth.figures): data checks and plot smoke tests.

The data tests need no matplotlib; the plotting tests are skipped when it is not installed.
"""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from popsynth import figures as F
from popsynth.errors import PopsynthError
from popsynth.spectra.table import spectra_per_draw

MPC_CM = 3.0856775814913673e24


@pytest.fixture(scope="module")
def d1():
    return F.fig1_data()


@pytest.fixture(scope="module")
def d2():
    return F.fig2_data()


@pytest.fixture(scope="module")
def d3():
    return F.fig3_data()


@pytest.fixture(scope="module")
def d4():
    return F.fig4_data()


@pytest.fixture(scope="module")
def d7():
    return F.fig7_data(n_draws=16)


def at(energy, y, e):
    """y at the grid point nearest to e keV (last axis)."""
    return y[..., int(np.argmin(np.abs(np.asarray(energy) - e)))]


# ------------------------------------------------------------------------------------------
# single spectra
# ------------------------------------------------------------------------------------------
def test_component_sums_and_primary_normalisation():
    s = F.component_spectra([21.0, 23.0], gamma=1.8, refl=[0.83, 0.37])
    np.testing.assert_allclose(s["torus"], s["transmitted"] + s["reprocessed"], rtol=1e-14)
    np.testing.assert_allclose(s["total"], s["scattered"] + s["torus"] + s["reflection"], rtol=1e-14)
    np.testing.assert_allclose(s["scattered"], 0.01 * s["primary"], rtol=1e-14)
    # primary: L(2-10) = 1 erg/s (photons s^-1 keV^-1 per erg/s -> E^2 N * keV->erg)
    lum = F.band_luminosity(s["energy"], F.to_e_l_e(s["energy"], s["primary"], 0.0))
    np.testing.assert_allclose(lum, 1.0, rtol=1e-5)
    assert s["refl"].tolist() == [0.83, 0.37]
    np.testing.assert_array_equal(F.a19_reflection([21.9, 22.0]), [0.83, 0.37])


@pytest.mark.parametrize("kw", [dict(log_nh=19.0), dict(log_nh=23.0, gamma=0.5), dict(log_nh=23.0, refl=-1.0),
                                dict(log_nh=23.0, theta_tor=90.0), dict(log_nh=23.0, fscatt=2.0),
                                dict(log_nh=[21.0, 23.0], gamma=[1.8, 1.9, 2.0]), dict(log_nh=23.0, line_sigma=0.0)])
def test_bad_parameters_raise(kw):
    with pytest.raises(PopsynthError):
        F.component_spectra(**kw)


# ------------------------------------------------------------------------------------------
# Figure 1: observed frame
# ------------------------------------------------------------------------------------------
def test_fig1_observed_frame_conversion(d1):
    z, dl = d1["z"], d1["d_l_cm"]
    # H0 = 70, Om = 0.3: d_L(0.002) = 8.579 Mpc, d_L(1) = 6607.7 Mpc (Wright 2006 calculator)
    np.testing.assert_allclose(dl[:2] / MPC_CM, [8.579, 6607.7], rtol=1e-3)
    np.testing.assert_allclose(d1["energy"], d1["energy_rest"][None] / (1 + z[:, None]), rtol=1e-15)
    # at the same rest energy, E_obs^2 N_obs scales as 1/d_L^2 exactly (the (1+z)^2 cancels)
    ratio = d1["total"][0] / d1["total"][1]
    np.testing.assert_allclose(ratio, (dl[1] / dl[0]) ** 2, rtol=1e-12)
    assert 5.7 < math.log10((dl[1] / dl[0]) ** 2) < 5.85  # A19: "six orders of magnitude lower"
    # energy: integral E_obs N_obs dE_obs = L_bol / (4 pi d_L^2), L_bol over the rest-frame grid
    spec = F.component_spectra(23.0, refl=0.37)
    lbol = np.trapezoid(F.to_e_l_e(spec["energy"], spec["total"][0], 44.0), np.log(spec["energy"]))
    for i in range(z.size):
        fobs = np.trapezoid(d1["total"][i], np.log(d1["energy"][i])) * 1.602176634e-9
        np.testing.assert_allclose(fobs, lbol / (4 * math.pi * dl[i] ** 2), rtol=1e-12)


def test_fig1_band_fluxes_and_components(d1):
    # observed Swift/BAT 14-195 keV flux drops by 5.89 dex from z = 0.002 to z = 1 (2-10 keV: 5.54 dex,
    # the z = 1 band sees less absorbed rest-frame 4-20 keV); measured, with 0.05 dex margins
    bat = [F.band_luminosity(d1["energy"][i], d1["total"][i], 14.0, 195.0) for i in range(2)]
    soft = [F.band_luminosity(d1["energy"][i], d1["total"][i], 2.0, 10.0) for i in range(2)]
    assert 5.84 < math.log10(bat[0] / bat[1]) < 5.94
    assert 5.49 < math.log10(soft[0] / soft[1]) < 5.59
    # z = 0.002, 2-10 keV flux of L = 1e44 at 8.58 Mpc through 1e23: 3.8 keV cm^-2 s^-1 (measured)
    assert 3.6 < soft[0] < 4.0
    # the scattered light dominates below 1 keV (observed) for log N_H = 23 at z = 0.002
    e = d1["energy"][0]
    assert at(e, d1["scattered"][0], 0.5) > 0.99 * at(e, d1["total"][0], 0.5)
    assert set(d1["bands"]) == {"Chandra", "XMM-Newton", "NuSTAR", "Swift/BAT"}
    np.testing.assert_array_equal(d1["bands"]["NuSTAR"], [3.0, 79.0])
    assert d1["params"]["refl"] == 0.37


def test_fig1_bad_redshift():
    with pytest.raises(PopsynthError):
        F.fig1_data(z=(0.0, 1.0))


# ------------------------------------------------------------------------------------------
# Figures 2-4: rest frame
# ------------------------------------------------------------------------------------------
def test_fig2_absorption_and_compton_hump(d2):
    e = d2["energy"]
    for k in F.COMPONENT_KEYS:
        assert np.all(np.isfinite(d2[k])) and np.all(d2[k] >= 0)
    np.testing.assert_array_equal(d2["refl"], [0.83, 0.37, 0.37])
    tot3, tot30 = at(e, d2["total"], 3.0), at(e, d2["total"], 30.0)
    # 3 keV: log N_H 25 leaves only the scattered 1 % (measured 0.0099 of log N_H 21)
    assert 0.009 < tot3[2] / tot3[0] < 0.011
    np.testing.assert_allclose(tot3[2], at(e, d2["scattered"][2], 3.0), rtol=1e-4)  # reprocessed: 1.2e-5
    # log N_H 23: the total at 3 keV is 0.22 of log N_H 21 (measured 0.218)
    assert 0.20 < tot3[1] / tot3[0] < 0.24
    # 30 keV, log N_H 25: reflection and torus reprocessing carry > 99 % of the non-scattered light,
    # the transmitted beam 0.2 %
    refl, trans, repr_ = (at(e, d2[k][2], 30.0) for k in ("reflection", "transmitted", "reprocessed"))
    assert (refl + repr_) / (tot30[2] - at(e, d2["scattered"][2], 30.0)) > 0.99
    assert trans / tot30[2] < 0.005
    # the Compton-thick total at 30 keV is 0.15 of the unabsorbed one (measured 0.148)
    assert 0.13 < tot30[2] / tot30[0] < 0.17


def test_fig3_band_luminosity_and_slopes(d3):
    e = d3["energy"]
    np.testing.assert_allclose(F.band_luminosity(e, d3["primary"]), 1e44, rtol=1e-5)
    # log N_H 23: 58-60 % of the intrinsic 2-10 keV luminosity comes out (measured 0.564-0.603)
    lum = F.band_luminosity(e, d3["total"]) / 1e44
    assert np.all((lum > 0.55) & (lum < 0.62)) and np.all(np.diff(lum) < 0)
    # higher Gamma, steeper decline above 10 keV (A19 section 2)
    slope = at(e, d3["total"], 100.0) / at(e, d3["total"], 10.0)
    assert np.all(np.diff(slope) < 0)


def test_fig3_unabsorbed_2_10_kev_luminosity():
    d = F.fig3_data(log_nh=20.0)
    e = d["energy"]
    lum = {k: F.band_luminosity(e, d[k]) / 1e44 for k in ("total", "reflection", "scattered", "transmitted")}
    # total = L (1 + f_scatt + reflection) minus a little absorption: reflection (R 0.83) adds 6.9-7.7 %
    assert np.all((lum["reflection"] > 0.065) & (lum["reflection"] < 0.080))
    np.testing.assert_allclose(lum["scattered"], 0.01, rtol=1e-5)
    assert np.all((lum["transmitted"] > 0.998) & (lum["transmitted"] < 1.0))
    assert np.all((lum["total"] > 1.07) & (lum["total"] < 1.09))


def test_fig4_reflection_linear_in_r(d4):
    m = d4["reflection"][1] > 0
    np.testing.assert_allclose(d4["reflection"][2][m] / d4["reflection"][1][m], 2.0 / 0.83, rtol=1e-10)
    np.testing.assert_allclose(d4["reflection"][0][m] / d4["reflection"][1][m], 0.37 / 0.83, rtol=1e-10)
    np.testing.assert_array_equal(d4["reflection"][1] > 0, d4["reflection"][2] > 0)
    np.testing.assert_array_equal(d4["torus"][0], d4["torus"][2])  # the torus does not depend on R
    # R = 2 lifts the 30 keV total by 2.1x over R = 0.37 (measured 2.10)
    e = d4["energy"]
    r = at(e, d4["total"][2], 30.0) / at(e, d4["total"][0], 30.0)
    assert 2.0 < r < 2.2


# ------------------------------------------------------------------------------------------
# Figure 7: spectral sets
# ------------------------------------------------------------------------------------------
def test_fig7_sets(d7):
    assert d7["sets"].tolist() == [1, 2, 3, 4, 5]
    assert d7["classes"].tolist() == ["unabsorbed", "compton_thin", "compton_thick"]
    np.testing.assert_array_equal(d7["log_nh"], [21.0, 23.0, 25.0])
    for k in ("total", "reflection", "torus", "scattered", "total_p16", "total_p84"):
        assert d7[k].shape == (5, 3, d7["energy"].size)
        assert np.all(np.isfinite(d7[k]))
    assert np.all(d7["total"] > 0)
    for k in ("reflection", "torus", "scattered"):
        assert np.all(d7[k] >= 0)
    # spectral set 4 (E_cut 128 keV) is softer above 100 keV than set 2 (200 keV), in every class
    e = d7["energy"]
    assert np.all(at(e, d7["total"][3], 150.0) < at(e, d7["total"][1], 150.0))
    assert np.all(d7["total_p16"] <= d7["total_p84"])
    np.testing.assert_allclose(d7["total"], d7["scattered"] + d7["torus"] + d7["reflection"], rtol=1e-13)
    # sets 2 and 3 share the unobscured distributions, and differ for obscured AGN
    np.testing.assert_allclose(d7["total"][1, 0], d7["total"][2, 0], rtol=1e-13)
    assert np.max(np.abs(d7["total"][1, 1] / d7["total"][2, 1] - 1)) > 0.05
    # the mean total is the draw average of spectra_per_draw with the same components
    comps = list(F._components(F.PLOT_LINE_SIGMA))
    ref = spectra_per_draw(5, d7["log_nh"], n_draws=16, seed=0, components=comps).mean(0).numpy()
    np.testing.assert_allclose(d7["total"][4], F.to_e_l_e(d7["energy"], ref, 44.0), rtol=1e-12)


def test_fig7_bad_input():
    with pytest.raises(PopsynthError):
        F.fig7_data(sets=(6,), n_draws=2)
    with pytest.raises(PopsynthError):
        F.fig7_data(classes=("mildly_absorbed",), n_draws=2)
    with pytest.raises(PopsynthError):
        F.fig7_data(classes=("a", "b"), log_nh=[21.0], n_draws=2)


# ------------------------------------------------------------------------------------------
# matplotlib: optional
# ------------------------------------------------------------------------------------------
def test_module_imports_without_matplotlib_and_plotting_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    spec = importlib.util.spec_from_file_location("popsynth._figures_nompl", Path(F.__file__))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # no module-level matplotlib import
    with pytest.raises(PopsynthError, match=r'pip install -e "\.\[plots\]"'):
        mod.plot_figure(2, {"figure": 2})
    assert F.main(["--out", str(tmp_path / "figs"), "--which", "2"]) == 2
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_plot_smoke(tmp_path, d1, d2, d7):
    pytest.importorskip("matplotlib")
    for n, d in ((1, d1), (2, d2), (7, d7)):  # figures 3 and 4 share figure 2's code (fig4: test_main_writes_files)
        fig = F.plot_figure(n, d)
        path = tmp_path / f"fig{n}.png"
        fig.savefig(path, dpi=40)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and "keV" in ax.get_xlabel()
    with pytest.raises(PopsynthError):
        F.plot_figure(3, d2)  # data of another figure
    with pytest.raises(PopsynthError):
        F.plot_figure(5)
    with pytest.raises(PopsynthError):
        F.plot_figure(1, d1, ax=[ax])  # figure 1 needs two axes for three redshifts


def test_main_writes_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs"
    assert F.main(["--out", str(out), "--which", "4", "--format", "pdf", "--dpi", "40"]) == 0
    assert (out / "fig4.pdf").read_bytes()[:4] == b"%PDF"
    assert F.main(["--out", str(out), "--which", "5"]) == 2
    assert "no figure 5" in capsys.readouterr().err
