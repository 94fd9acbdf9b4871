"""Tests for popsynth.spectra.xspec_table, popsynth.io.ogip and popsynth.spectra.external_torus (OGIP/92-009 XSPEC table models).

Every table is written by the test itself into tmp_path: an additive cut-off power law with
PhoIndex on a linear grid and Ecut on a logarithmic grid, integrated over each bin by
Gauss-Legendre quadrature (exact to ~1e-13 for these smooth bins), and a multiplicative
photo-absorption table exp(-N_H sigma(E)) with sigma ~ E^-3.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from astropy.io import fits

from popsynth.errors import PopsynthError
from popsynth.io.ogip import read_table_model, write_table_model
from popsynth.spectra.external_torus import ExternalTorus
from popsynth.spectra.xspec_table import TableModel

F64 = torch.float64

GAMMAS = np.array([1.4, 1.6, 1.8, 2.0, 2.2, 2.4, 2.6])  # linear interpolation (METHOD=0)
ECUTS = np.array([20.0, 40.0, 80.0, 160.0, 320.0, 640.0])  # logarithmic (METHOD=1)
EDGES = np.geomspace(0.5, 200.0, 301)  # 300 tabulated bins, keV
NH_GRID = np.array([0.01, 0.1, 1.0, 10.0, 100.0])  # 1e22 cm^-2, METHOD=1


def photon_density(e, gamma, ecut):
    """N(E) = E^-Gamma exp(-E/Ecut): photons cm^-2 s^-1 keV^-1 at 1 keV normalisation."""
    return e ** (-gamma) * np.exp(-e / ecut)


_GL_X, _GL_W = np.polynomial.legendre.leggauss(12)


def integrate(a, b, gamma, ecut):
    """Integral of N(E) over [a, b] (arrays), Gauss-Legendre in ln E per interval."""
    a = np.asarray(a, dtype=float)[..., None]
    b = np.asarray(b, dtype=float)[..., None]
    la, lb = np.log(a), np.log(b)
    le = 0.5 * (lb + la) + 0.5 * (lb - la) * _GL_X
    e = np.exp(le)
    return np.sum(_GL_W * photon_density(e, gamma, ecut) * e, axis=-1) * 0.5 * (lb - la)[..., 0]


def powerlaw_spectra():
    lo, hi = EDGES[:-1], EDGES[1:]
    s = np.empty((GAMMAS.size, ECUTS.size, lo.size))
    for i, g in enumerate(GAMMAS):
        for j, ec in enumerate(ECUTS):
            s[i, j] = integrate(lo, hi, g, ec)
    return s


@pytest.fixture(scope="module")
def pl_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "cutoffpl.fits"
    write_table_model(
        path,
        "cutoffpl",
        ["PhoIndex", "Ecut"],
        [GAMMAS, ECUTS],
        [False, True],
        EDGES[:-1],
        EDGES[1:],
        powerlaw_spectra(),
        kind="add",
        redshift=True,
        precision="double",
        param_initial=[1.9, 100.0],
    )
    return path


@pytest.fixture(scope="module")
def pl(pl_file):
    return read_table_model(pl_file)


def absorption_factors(nh, edges=EDGES):
    ec = np.sqrt(edges[:-1] * edges[1:])
    return np.exp(-np.asarray(nh)[..., None] * ec ** -3.0)


# ------------------------------------------------------------------------ round trip


def test_round_trip_double_exact(pl_file, pl):
    assert isinstance(pl, TableModel)
    assert pl.name == "cutoffpl" and pl.kind == "add" and pl.has_redshift
    assert pl.param_names == ["PhoIndex", "Ecut"]
    assert pl.param_log == [False, True]
    assert torch.equal(pl.param_grids[0], torch.tensor(GAMMAS, dtype=F64))
    assert torch.equal(pl.param_grids[1], torch.tensor(ECUTS, dtype=F64))
    assert torch.equal(pl.energy_lo, torch.tensor(EDGES[:-1], dtype=F64))
    assert torch.equal(pl.energy_hi, torch.tensor(EDGES[1:], dtype=F64))
    assert pl.spectra.shape == (7, 6, 300) and pl.spectra.dtype == F64
    assert torch.equal(pl.spectra, torch.tensor(powerlaw_spectra(), dtype=F64))
    assert pl.param_initial == [1.9, 100.0]
    assert pl.param_min == [1.4, 20.0] and pl.param_max == [2.6, 640.0]
    assert pl.param_bottom == [1.4, 20.0] and pl.param_top == [2.6, 640.0]
    # the file is a standard OGIP table: keywords and column layout
    with fits.open(pl_file) as h:
        assert h[0].header["HDUCLAS1"] == "XSPEC TABLE MODEL"
        assert h[0].header["ADDMODEL"] is True and h[0].header["REDSHIFT"] is True
        assert h["PARAMETERS"].header["NINTPARM"] == 2
        assert h["PARAMETERS"].header["NADDPARM"] == 0
        assert list(h["PARAMETERS"].data["METHOD"]) == [0, 1]
        assert list(h["PARAMETERS"].data["NUMBVALS"]) == [7, 6]
        assert h["SPECTRA"].data["INTPSPEC"].shape == (42, 300)


def test_round_trip_single_precision(tmp_path):
    spec = powerlaw_spectra()
    path = write_table_model(
        tmp_path / "single.fits", "pl32", ["PhoIndex", "Ecut"], [GAMMAS, ECUTS],
        [False, True], EDGES[:-1], EDGES[1:], spec,
    )
    with fits.open(path) as h:
        assert h["SPECTRA"].columns["INTPSPEC"].format == "300E"
        assert h["PARAMETERS"].columns["VALUE"].format.endswith("E")
    t = read_table_model(path)
    np.testing.assert_array_equal(t.spectra.numpy(), spec.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(t.param_grids[0].numpy(), GAMMAS, rtol=1e-7)
    # a float64 parameter value at a float32 grid edge is not "out of range"
    out = t.evaluate({"PhoIndex": 2.6, "Ecut": 640.0})
    np.testing.assert_allclose(out.numpy(), spec[-1, -1], rtol=1e-6)


# ------------------------------------------------------------------------ ordering


def test_ordering_last_parameter_fastest(tmp_path):
    """Each spectrum encodes its own indices; the file must list them last-index-fastest."""
    g1, g2, g3 = np.array([1.0, 2.0]), np.array([10.0, 20.0, 30.0]), np.array([0.1, 0.2, 0.3, 0.4])
    n_e = 4
    spec = np.zeros((2, 3, 4, n_e))
    for i in range(2):
        for j in range(3):
            for k in range(4):
                spec[i, j, k] = [100 * i + 10 * j + k, g1[i], g2[j], g3[k]]
    path = write_table_model(
        tmp_path / "order.fits", "order", ["a", "b", "c"], [g1, g2, g3], [False, False, False],
        np.arange(1.0, 5.0), np.arange(2.0, 6.0), spec, precision="double",
    )
    with fits.open(path) as h:
        rows = h["SPECTRA"].data
        for r in range(24):
            i, j, k = r // 12, (r // 4) % 3, r % 4  # memo: (1,1),(1,2),(1,3),(2,1),...
            assert rows["INTPSPEC"][r][0] == 100 * i + 10 * j + k
            np.testing.assert_array_equal(rows["PARAMVAL"][r], [g1[i], g2[j], g3[k]])
    t = read_table_model(path)
    for i in range(2):
        for j in range(3):
            for k in range(4):
                assert t.spectra[i, j, k, 0] == 100 * i + 10 * j + k
                out = t.evaluate({"a": g1[i], "b": g2[j], "c": g3[k]})
                np.testing.assert_array_equal(out.numpy(), spec[i, j, k])


def _write_by_hand(path, rows_order=None, paramval_override=None, numbvals=(3, 3),
                   drop_ext=None, drop_col=None, value_vla=False):
    """An OGIP table built with astropy directly (not with write_table_model), spectra in
    the memo's explicit example order (1,1),(1,2),(1,3),(2,1),...,(3,3)."""
    p1, p2 = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])
    combos = [(a, b) for a in range(3) for b in range(3)]  # memo's order
    if rows_order is not None:
        combos = [combos[r] for r in rows_order]
    pv = np.array([[p1[a], p2[b]] for a, b in combos], dtype=np.float32)
    if paramval_override is not None:
        pv = paramval_override
    intp = np.array([[10 * (a + 1) + (b + 1), 1.0] for a, b in combos], dtype=np.float32)
    prim = fits.PrimaryHDU()
    prim.header["MODLNAME"] = "byhand"
    prim.header["MODLUNIT"] = "photons/cm^2/s"
    prim.header["REDSHIFT"] = False
    prim.header["ADDMODEL"] = True
    if value_vla:
        vcol = fits.Column("VALUE", "PE()", array=np.array([p1, p2], dtype=object))
    else:
        vcol = fits.Column("VALUE", "3E", array=np.array([p1, p2]))
    pcols = [
        fits.Column("NAME", "12A", array=np.array(["p1", "p2"])),
        fits.Column("METHOD", "J", array=np.array([0, 0])),
        fits.Column("INITIAL", "E", array=np.array([2.0, 2.0])),
        fits.Column("DELTA", "E", array=np.array([0.1, 0.1])),
        fits.Column("MINIMUM", "E", array=np.array([1.0, 1.0])),
        fits.Column("BOTTOM", "E", array=np.array([1.0, 1.0])),
        fits.Column("TOP", "E", array=np.array([3.0, 3.0])),
        fits.Column("MAXIMUM", "E", array=np.array([3.0, 3.0])),
        fits.Column("NUMBVALS", "J", array=np.array(numbvals)),
        vcol,
    ]
    if drop_col:
        pcols = [c for c in pcols if c.name != drop_col]
    hp = fits.BinTableHDU.from_columns(pcols, name="PARAMETERS")
    hp.header["NINTPARM"] = 2
    hp.header["NADDPARM"] = 0
    he = fits.BinTableHDU.from_columns(
        [fits.Column("ENERG_LO", "E", array=np.array([1.0, 2.0])),
         fits.Column("ENERG_HI", "E", array=np.array([2.0, 3.0]))],
        name="ENERGIES",
    )
    hs = fits.BinTableHDU.from_columns(
        [fits.Column("PARAMVAL", "2E", array=pv), fits.Column("INTPSPEC", "2E", array=intp)],
        name="SPECTRA",
    )
    hdus = [prim] + [h for h in (hp, he, hs) if h.name != drop_ext]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def test_ordering_matches_memo_example_file(tmp_path):
    t = read_table_model(_write_by_hand(tmp_path / "memo.fits"))
    for a in range(3):
        for b in range(3):
            assert float(t.spectra[a, b, 0]) == 10 * (a + 1) + (b + 1)
    # interpolation between nodes, by hand: p1=1.5, p2=2.25 -> bilinear on codes 11..33
    out = t.evaluate({"p1": 1.5, "p2": 2.25})
    expect = 0.5 * 0.75 * 12 + 0.5 * 0.25 * 13 + 0.5 * 0.75 * 22 + 0.5 * 0.25 * 23
    assert float(out[0]) == pytest.approx(expect, rel=1e-12)


def test_variable_length_value_column(tmp_path):
    t = read_table_model(_write_by_hand(tmp_path / "vla.fits", value_vla=True))
    assert t.param_grids[1].tolist() == [1.0, 2.0, 3.0]
    assert float(t.spectra[2, 0, 0]) == 31


def test_permuted_rows_are_reordered_by_paramval(tmp_path):
    perm = [4, 0, 8, 1, 7, 2, 6, 3, 5]
    path = _write_by_hand(tmp_path / "perm.fits", rows_order=perm)
    with pytest.warns(UserWarning, match="not in OGIP order"):
        t = read_table_model(path)
    for a in range(3):
        for b in range(3):
            assert float(t.spectra[a, b, 0]) == 10 * (a + 1) + (b + 1)
    # trusting the row order (as XSPEC does) gives the permuted table, without complaint
    t2 = read_table_model(path, check_paramval=False)
    assert float(t2.spectra[0, 0, 0]) == 10 * 2 + 2  # row 0 holds combo 4 = (2,2)


def test_bad_paramval_raises(tmp_path):
    pv = np.full((9, 2), 1.0, dtype=np.float32)
    pv[3, 1] = 7.5
    with pytest.raises(PopsynthError, match="PARAMVAL"):
        read_table_model(_write_by_hand(tmp_path / "badpv.fits", paramval_override=pv))


# ------------------------------------------------------------------------ interpolation


def test_grid_nodes_reproduce_stored_spectra_exactly(pl):
    for i, g in enumerate(pl.param_grids[0].tolist()):
        for j, ec in enumerate(pl.param_grids[1].tolist()):
            out = pl.evaluate({"PhoIndex": g, "Ecut": ec})
            assert torch.equal(out, pl.spectra[i, j])
    # the same through the rebinning path (table's own edges, z = 0): equal to rounding
    out = pl.evaluate({"PhoIndex": 2.0, "Ecut": 80.0}, energy_edges_keV=torch.tensor(EDGES))
    torch.testing.assert_close(out, pl.spectra[3, 2], rtol=1e-12, atol=0)


def test_linear_and_log_interpolation_by_hand(pl):
    s = pl.spectra
    # PhoIndex (METHOD=0) halfway in the linear variable between 1.8 and 2.0 at Ecut = 80
    out = pl.evaluate({"PhoIndex": 1.9, "Ecut": 80.0})
    torch.testing.assert_close(out, 0.5 * s[2, 2] + 0.5 * s[3, 2], rtol=1e-12, atol=0)
    # Ecut (METHOD=1): 40*sqrt(2) is halfway in ln Ecut between 40 and 80 (not halfway in Ecut)
    ec = 40.0 * math.sqrt(2.0)
    out = pl.evaluate({"PhoIndex": 2.0, "Ecut": ec})
    torch.testing.assert_close(out, 0.5 * s[3, 1] + 0.5 * s[3, 2], rtol=1e-12, atol=0)
    # general point: weights computed by hand
    g, ec = 1.65, 100.0
    tg = (g - 1.6) / 0.2
    te = math.log(ec / 80.0) / math.log(160.0 / 80.0)
    expect = ((1 - tg) * (1 - te) * s[1, 2] + (1 - tg) * te * s[1, 3]
              + tg * (1 - te) * s[2, 2] + tg * te * s[2, 3])
    out = pl.evaluate({"PhoIndex": g, "Ecut": ec})
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=0)
    # ... and that the linear-in-Ecut weight would give a measurably different answer
    tl = (ec - 80.0) / 80.0
    wrong = ((1 - tg) * (1 - tl) * s[1, 2] + (1 - tg) * tl * s[1, 3]
             + tg * (1 - tl) * s[2, 2] + tg * tl * s[2, 3])
    assert float(((wrong - expect).abs() / expect).max()) > 1e-3


def test_interpolation_error_small_against_truth(pl):
    """Between nodes the table approximates the true cut-off power law (sanity check)."""
    lo, hi = EDGES[:-1], EDGES[1:]
    out = pl.evaluate({"PhoIndex": 2.0, "Ecut": 113.0}).numpy()
    truth = integrate(lo, hi, 2.0, 113.0)
    sel = hi < 100  # E < Ecut: log-Ecut interpolation of exp(-E/Ecut) is good to ~1%
    assert np.max(np.abs(out[sel] / truth[sel] - 1)) < 0.015


def test_case_insensitive_names_and_defaults(pl):
    a = pl.evaluate({"phoindex": 2.0, "ECUT": 80.0})
    torch.testing.assert_close(a, pl.spectra[3, 2], rtol=0, atol=0)
    with pytest.raises(PopsynthError, match=r"needs values for parameter\(s\) \['Ecut'\]") as e:
        pl.evaluate({"PhoIndex": 2.0})
    assert "PhoIndex" in str(e.value) and "use_defaults" in str(e.value)
    out = pl.evaluate({"PhoIndex": 2.0}, use_defaults=True)  # Ecut INITIAL = 100
    torch.testing.assert_close(out, pl.evaluate({"PhoIndex": 2.0, "Ecut": 100.0}))
    with pytest.raises(PopsynthError, match="no parameter"):
        pl.evaluate({"PhoIndex": 2.0, "Ecut": 80.0, "z": 0.1})


# ------------------------------------------------------------------------ out of range


def test_out_of_range_raise_and_clamp(pl):
    with pytest.raises(PopsynthError) as e:
        pl.evaluate({"PhoIndex": 3.1, "Ecut": 80.0})
    msg = str(e.value)
    assert "PhoIndex" in msg and "3.1" in msg and "[1.4, 2.6]" in msg and "clamp" in msg
    with pytest.raises(PopsynthError, match=r"Ecut.*5.*\[20, 640\]"):
        pl.evaluate({"PhoIndex": 2.0, "Ecut": 5.0})
    with pytest.warns(UserWarning, match=r"parameter 'PhoIndex' = 3.1 is outside the grid "
                      r"\[1.4, 2.6\].*clamped"):
        out = pl.evaluate({"PhoIndex": 3.1, "Ecut": 80.0}, out_of_range="clamp")
    torch.testing.assert_close(out, pl.spectra[-1, 2], rtol=0, atol=0)
    assert float(out.min()) > 0  # never silently zero
    with pytest.warns(UserWarning, match="Ecut"):
        out = pl.evaluate({"PhoIndex": 2.0, "Ecut": 1e4}, out_of_range="clamp")
    torch.testing.assert_close(out, pl.spectra[3, -1], rtol=0, atol=0)
    # batched: the message counts the offending values
    with pytest.raises(PopsynthError, match=r"2 of 3 values"):
        pl.evaluate({"PhoIndex": torch.tensor([1.0, 2.0, 2.9]), "Ecut": 80.0})
    with pytest.raises(PopsynthError, match="out_of_range"):
        pl.evaluate({"PhoIndex": 2.0, "Ecut": 80.0}, out_of_range="zero")


# ------------------------------------------------------------------------ redshift, rebin


def test_redshift_exact_on_aligned_edges(pl):
    """Observed edges = table edges/(1+z): each observed bin is one rest bin, divided by 1+z."""
    z = 0.7
    edges = torch.tensor(EDGES / (1 + z), dtype=F64)
    out = pl.evaluate({"PhoIndex": 1.8, "Ecut": 160.0}, edges, redshift=z)
    torch.testing.assert_close(out, pl.spectra[2, 3] / (1 + z), rtol=1e-10, atol=0)


def test_redshift_matches_analytic_integral(pl):
    z = 1.3
    obs = np.geomspace(0.3, 80.0, 16)  # coarse observed bins, all inside 0.5-200 keV rest
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fully inside the table: no coverage warning
        out = pl.evaluate({"PhoIndex": 2.2, "Ecut": 40.0}, torch.tensor(obs), redshift=z).numpy()
    truth = integrate(obs[:-1] * (1 + z), obs[1:] * (1 + z), 2.2, 40.0) / (1 + z)
    # only the flat-bin approximation at the two partial rest bins of each observed bin
    np.testing.assert_allclose(out, truth, rtol=2e-3)
    # and the convention matters far above that tolerance
    no_dilation = integrate(obs[:-1] * (1 + z), obs[1:] * (1 + z), 2.2, 40.0)
    unshifted = integrate(obs[:-1], obs[1:], 2.2, 40.0)
    assert np.all(np.abs(out / no_dilation - 1) > 0.5)
    assert np.all(np.abs(out / unshifted - 1) > 0.5)


def test_rebin_conserves_photons(pl):
    rng = np.random.default_rng(1)
    inner = np.sort(rng.uniform(0.5, 200.0, 37))
    edges = torch.tensor(np.concatenate([[0.5], inner, [200.0]]))
    params = {"PhoIndex": 1.75, "Ecut": 222.0}
    native = pl.evaluate(params)
    out = pl.evaluate(params, edges)
    assert out.shape == (38,)
    assert float(out.sum()) == pytest.approx(float(native.sum()), rel=1e-12)
    # with redshift: everything observed in [0.5, 200]/(1+z) is the total over 1+z
    z = 0.4
    out_z = pl.evaluate(params, edges / (1 + z), redshift=z)
    assert float(out_z.sum()) == pytest.approx(float(native.sum()) / (1 + z), rel=1e-12)
    # finer sub-binning of one table bin splits it by width (flat-topped bins)
    e = torch.tensor([EDGES[10], 0.25 * EDGES[10] + 0.75 * EDGES[11], EDGES[11]])
    split = pl.evaluate(params, e)
    torch.testing.assert_close(split, native[10] * torch.tensor([0.75, 0.25], dtype=F64),
                               rtol=1e-12, atol=0)


def test_energy_outside_table_warns_and_is_zero_for_additive(pl):
    edges = torch.tensor([0.1, 0.2, 0.5, 1.0, 300.0, 400.0])
    with pytest.warns(UserWarning, match=r"0.5-200 keV only.*below 0.5 keV and above 200 keV"):
        out = pl.evaluate({"PhoIndex": 2.0, "Ecut": 80.0}, edges)
    assert out[0] == 0 and out[1] == 0 and out[-1] == 0
    assert float(out[3]) == pytest.approx(float(pl.evaluate({"PhoIndex": 2.0, "Ecut": 80.0},
                                                            torch.tensor([1.0, 200.0]))[0]))


# ------------------------------------------------------------------------ multiplicative


@pytest.fixture(scope="module")
def absorber(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "abs.fits"
    write_table_model(path, "absorb", ["nH"], [NH_GRID], [True], EDGES[:-1], EDGES[1:],
                      absorption_factors(NH_GRID), kind="mul", precision="double")
    return read_table_model(path)


def test_multiplicative_table(absorber):
    assert absorber.kind == "mul"
    for i, nh in enumerate(NH_GRID):
        torch.testing.assert_close(absorber.evaluate({"nH": nh}),
                                   torch.tensor(absorption_factors(nh)), rtol=0, atol=0)
    # between nodes: linear in log nH between 1 and 10 at nH = sqrt(10)
    out = absorber.evaluate({"nH": math.sqrt(10.0)})
    f1, f10 = absorption_factors(1.0), absorption_factors(10.0)
    np.testing.assert_allclose(out.numpy(), 0.5 * f1 + 0.5 * f10, rtol=1e-12)
    # rebinning is a width-weighted bin average
    e = torch.tensor([EDGES[0], EDGES[2]])
    w = np.diff(EDGES[:3])
    expect = (absorption_factors(1.0)[:2] * w).sum() / w.sum()
    assert float(absorber.evaluate({"nH": 1.0}, e)[0]) == pytest.approx(expect, rel=1e-12)
    # outside the tabulated energies: factor 1 (XSPEC mtable default), with a warning
    with pytest.warns(UserWarning, match="factor 1 below / 1 above"):
        out = absorber.evaluate({"nH": 1.0}, torch.tensor([0.1, 0.2, 250.0, 300.0]))
    inside = (absorption_factors(1.0) * np.diff(EDGES)).sum()
    middle = (1.0 * (0.5 - 0.2) + inside + 1.0 * (250.0 - 200.0)) / (250.0 - 0.2)
    np.testing.assert_allclose(out.numpy(), [1.0, middle, 1.0], rtol=1e-12)
    # redshift only shifts multiplicative tables (no 1/(1+z))
    z = 1.0
    out = absorber.evaluate({"nH": 10.0}, torch.tensor(EDGES / (1 + z)), redshift=z)
    np.testing.assert_allclose(out.numpy(), absorption_factors(10.0), rtol=1e-10)


def test_loelimit_hielimit(tmp_path):
    path = write_table_model(tmp_path / "lim.fits", "lim", ["nH"], [NH_GRID], [True],
                             EDGES[:-1], EDGES[1:], absorption_factors(NH_GRID), kind="mul",
                             lo_elimit=0.0, hi_elimit=0.5)
    t = read_table_model(path)
    assert (t.lo_elimit, t.hi_elimit) == (0.0, 0.5)
    with pytest.warns(UserWarning, match="factor 0 below / 0.5 above"):
        out = t.evaluate({"nH": 1.0}, torch.tensor([0.1, 0.4, 300.0, 400.0]))
    assert float(out[0]) == 0.0 and float(out[2]) == 0.5


def test_exponential_table_interpolates_the_exponent(tmp_path):
    """etable of x = nH sigma(E) with METHOD=0: exp(-x) is exact between nodes."""
    ec = np.sqrt(EDGES[:-1] * EDGES[1:])
    grid = np.array([0.0, 1.0, 2.0, 5.0])
    path = write_table_model(tmp_path / "etab.fits", "eabs", ["nH"], [grid], [False],
                             EDGES[:-1], EDGES[1:], grid[:, None] * ec ** -3.0, kind="exp",
                             precision="double")
    t = read_table_model(path)
    assert t.kind == "exp"  # from the POPSKIND keyword; ADDMODEL=F in the file
    with fits.open(path) as h:
        assert h[0].header["ADDMODEL"] is False
    out = t.evaluate({"nH": 3.3})
    np.testing.assert_allclose(out.numpy(), np.exp(-3.3 * ec ** -3.0), rtol=1e-12)
    # rebinning averages the exponent, then exponentiates; outside: exponent 0 -> factor 1
    e = torch.tensor([0.2, 0.3, EDGES[0], EDGES[2]])
    with pytest.warns(UserWarning, match="exponent 0 below"):
        out = t.evaluate({"nH": 3.3}, e)
    w = np.diff(EDGES[:3])
    x_avg = (3.3 * ec[:2] ** -3.0 * w).sum() / w.sum()
    np.testing.assert_allclose(out.numpy(), [1.0, 1.0, np.exp(-x_avg)], rtol=1e-12)
    # the same file read as an mtable returns the raw tabulated values
    m = read_table_model(path, kind="mul")
    np.testing.assert_allclose(m.evaluate({"nH": 3.3}).numpy(), 3.3 * ec ** -3.0, rtol=1e-12)
    with pytest.raises(PopsynthError, match="ADDMODEL=F"):
        read_table_model(path, kind="add")


def test_additional_parameters(tmp_path):
    spec = powerlaw_spectra()
    add = np.stack([np.ones_like(spec), 2.0 * np.ones_like(spec)], axis=-2)  # [7, 6, 2, n_e]
    path = write_table_model(tmp_path / "addp.fits", "addp", ["PhoIndex", "Ecut"],
                             [GAMMAS, ECUTS], [False, True], EDGES[:-1], EDGES[1:], spec,
                             add_param_names=["c1", "c2"], add_spectra=add, precision="double")
    t = read_table_model(path)
    assert t.add_param_names == ["c1", "c2"]
    out = t.evaluate({"PhoIndex": 2.0, "Ecut": 80.0, "c1": 0.5, "c2": 0.25})
    torch.testing.assert_close(out, t.spectra[3, 2] + 1.0, rtol=1e-14, atol=0)


# ------------------------------------------------------------------------ batch, gradients


def test_batched_equals_loop(pl):
    g = torch.tensor([1.45, 1.9, 2.0, 2.55, 1.6], dtype=F64)
    ec = torch.tensor([25.0, 100.0, 80.0, 600.0, 33.3], dtype=F64)
    z = torch.tensor([0.0, 0.5, 1.0, 2.0, 0.1], dtype=F64)
    edges = torch.tensor(np.geomspace(0.1, 60.0, 25))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # observed 0.1 keV lies below the table at z = 0
        batched = pl.evaluate({"PhoIndex": g, "Ecut": ec}, edges, redshift=z)
        assert batched.shape == (5, 24)
        for b in range(5):
            single = pl.evaluate({"PhoIndex": float(g[b]), "Ecut": float(ec[b])}, edges,
                                 redshift=float(z[b]))
            torch.testing.assert_close(batched[b], single, rtol=1e-13, atol=0)
    # native bins, one parameter batched, the other scalar
    nb = pl.evaluate({"PhoIndex": g, "Ecut": 80.0})
    assert nb.shape == (5, 300)
    torch.testing.assert_close(nb[3], pl.evaluate({"PhoIndex": 2.55, "Ecut": 80.0}))


def test_gradients_match_finite_differences(pl):
    edges = torch.tensor(np.geomspace(1.0, 50.0, 9))
    weights = torch.linspace(1.0, 2.0, 8, dtype=F64)

    def f(g, ec, z):
        return (pl.evaluate({"PhoIndex": g, "Ecut": ec}, edges, redshift=z) * weights).sum()

    g = torch.tensor(1.93, dtype=F64, requires_grad=True)
    ec = torch.tensor(111.0, dtype=F64, requires_grad=True)
    z = torch.tensor(0.37, dtype=F64, requires_grad=True)
    f(g, ec, z).backward()
    for name, x, h in (("PhoIndex", g, 1e-6), ("Ecut", ec, 1e-4), ("z", z, 1e-7)):
        vals = {"g": 1.93, "ec": 111.0, "z": 0.37}
        key = {"PhoIndex": "g", "Ecut": "ec", "z": "z"}[name]
        up, dn = dict(vals), dict(vals)
        up[key] += h
        dn[key] -= h
        fd = (float(f(*(torch.tensor(up[k], dtype=F64) for k in ("g", "ec", "z"))))
              - float(f(*(torch.tensor(dn[k], dtype=F64) for k in ("g", "ec", "z"))))) / (2 * h)
        assert float(x.grad) == pytest.approx(fd, rel=1e-5), name
        assert float(x.grad) != 0.0
    # batched parameters get per-element gradients
    gb = torch.tensor([1.5, 2.1], dtype=F64, requires_grad=True)
    pl.evaluate({"PhoIndex": gb, "Ecut": 80.0}).sum().backward()
    assert gb.grad.shape == (2,) and bool((gb.grad < 0).all())


# ------------------------------------------------------------------------ malformed files


def test_malformed_files_raise(tmp_path):
    with pytest.raises(PopsynthError, match="not found"):
        read_table_model(tmp_path / "nope.fits")
    txt = tmp_path / "notfits.fits"
    txt.write_text("this is not a FITS file\n" * 10)
    with pytest.raises(PopsynthError, match="not a readable FITS"):
        read_table_model(txt)
    with pytest.raises(PopsynthError, match="no ENERGIES extension"):
        read_table_model(_write_by_hand(tmp_path / "noen.fits", drop_ext="ENERGIES"))
    with pytest.raises(PopsynthError, match="no SPECTRA extension"):
        read_table_model(_write_by_hand(tmp_path / "nosp.fits", drop_ext="SPECTRA"))
    with pytest.raises(PopsynthError, match="no column METHOD"):
        read_table_model(_write_by_hand(tmp_path / "nometh.fits", drop_col="METHOD"))
    with pytest.raises(PopsynthError, match=r"SPECTRA has 9 rows but NUMBVALS .* 6 points"):
        read_table_model(_write_by_hand(tmp_path / "numb.fits", numbvals=(3, 2)))
    with pytest.raises(PopsynthError, match="NUMBVALS=4 but VALUE holds 3"):
        read_table_model(_write_by_hand(tmp_path / "numb4.fits", numbvals=(4, 3)))


def test_writer_validates(tmp_path):
    with pytest.raises(PopsynthError, match="not strictly increasing"):
        write_table_model(tmp_path / "x.fits", "x", ["a"], [[1.0, 1.0]], [False],
                          [1.0], [2.0], np.ones((2, 1)))
    with pytest.raises(PopsynthError, match="METHOD=1"):
        write_table_model(tmp_path / "x.fits", "x", ["a"], [[0.0, 1.0]], [True],
                          [1.0], [2.0], np.ones((2, 1)))
    with pytest.raises(PopsynthError, match="spectra hold"):
        write_table_model(tmp_path / "x.fits", "x", ["a"], [[0.0, 1.0]], [False],
                          [1.0], [2.0], np.ones((3, 1)))
    with pytest.raises(PopsynthError, match="12 characters"):
        write_table_model(tmp_path / "x.fits", "x", ["a_very_long_name"], [[0.0, 1.0]], [False],
                          [1.0], [2.0], np.ones((2, 1)))


# ------------------------------------------------------------------------ external torus


def test_external_torus_mapping(tmp_path):
    """A torus1006-like table (nH [1e22], PhoIndex, Theta_tor, Theta_inc; REDSHIFT=T) and a
    borus02-like one (logNHtor, cos(thInc)) fed from popsynth quantities."""
    nh = np.array([0.01, 1.0, 100.0, 1000.0])
    gam = np.array([1.5, 2.0, 2.5])
    tor = np.array([26.0, 60.0, 84.0])
    inc = np.array([18.2, 87.1])
    e = np.geomspace(1.0, 100.0, 21)
    rng = np.random.default_rng(0)
    spec = rng.uniform(0.5, 1.5, (4, 3, 3, 2, 20))
    p = write_table_model(tmp_path / "torus1006_like.fits", "torus", ["nH", "PhoIndex",
                          "Theta_tor", "Theta_inc"], [nh, gam, tor, inc], [True, False, False,
                          False], e[:-1], e[1:], spec, redshift=True, precision="double")
    torus = ExternalTorus(p, fixed={"Theta_tor": 60.0})
    assert torus.quantities == ["nh", "photon_index", "theta_inc"]
    assert "nH <- nh" in torus.describe_links()
    out = torus.binned(torch.tensor(e[2:10]), z=0.2, nh=3e23, photon_index=1.8, theta_inc=87.1)
    ref = torus.table.evaluate({"nH": 30.0, "PhoIndex": 1.8, "Theta_tor": 60.0,
                                "Theta_inc": 87.1}, torch.tensor(e[2:10]), redshift=0.2)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=0)
    assert ExternalTorus(p).quantities == ["nh", "photon_index", "theta_inc", "theta_tor"]
    p3 = write_table_model(tmp_path / "odd.fits", "odd", ["nH", "Zeta"], [nh, gam],
                           [True, False], e[:-1], e[1:], spec[:, :, 0, 0])
    with pytest.raises(PopsynthError, match=r"no popsynth quantity feeds .*\['Zeta'\]"):
        ExternalTorus(p3)
    assert ExternalTorus(p3, fixed={"zeta": 2.0}).quantities == ["nh"]
    with pytest.raises(PopsynthError, match=r"nH.*outside the grid"):
        torus.binned(None, nh=1e27, photon_index=1.8, theta_inc=87.1)

    lognh = np.array([22.0, 23.0, 24.0])
    cosi = np.array([0.05, 0.5, 0.95])
    spec2 = rng.uniform(0.5, 1.5, (3, 3, 20))
    p2 = write_table_model(tmp_path / "borus_like.fits", "borus", ["logNHtor", "cos(thInc)"],
                           [lognh, cosi], [False, False], e[:-1], e[1:], spec2, precision="double")
    borus = ExternalTorus(p2)
    out = borus.binned(None, nh=10 ** 23.5, theta_inc=60.0)
    ref = borus.table.evaluate({"logNHtor": 23.5, "cos(thInc)": 0.5})
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)


def test_bad_arguments(pl):
    p = {"PhoIndex": 2.0, "Ecut": 80.0}
    with pytest.raises(PopsynthError, match="strictly increasing"):
        pl.evaluate(p, torch.tensor([1.0, 3.0, 2.0]))
    with pytest.raises(PopsynthError, match="> -1"):
        pl.evaluate(p, torch.tensor([1.0, 2.0]), redshift=-1.0)
    with pytest.raises(PopsynthError, match="not finite"):
        pl.evaluate({"PhoIndex": float("nan"), "Ecut": 80.0})
    with pytest.raises(PopsynthError, match="same length"):
        pl.evaluate({"PhoIndex": torch.tensor([2.0, 2.1]), "Ecut": torch.tensor([80.0] * 3)})
