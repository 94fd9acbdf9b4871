"""popsynth.compare: figure data against hand computations, the run's summary and the engine; the
binned-XLF transcriptions against the papers' models; the command line."""

import math

import h5py
import matplotlib
import numpy as np
import pytest
import torch
from astropy.table import Table

from popsynth import compare
from popsynth.errors import PopsynthError
from popsynth.observables import counts_chi2
from popsynth.xlf import ldde_ueda14

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def a19_run(tiny_a19_run):  # the session's shared tiny A19-mode run (tests/conftest.py)
    return tiny_a19_run


@pytest.fixture(scope="module")
def loaded(tiny_a19_loaded):
    return tiny_a19_loaded


# ------------------------------------------------------------------ transcriptions
def test_ueda14_transcription_against_u14_ldde():
    """U14 binned points (Figs. 10-11) scatter about U14's own LDDE (Table 4) at the bin centre."""
    t = compare.load_binned_xlf("ueda14")
    assert len(t["phi"]) == 165 and set(t["selection"]) == {"hard", "soft"}
    # spot value, U14 hard sample, z 0.2-0.4, log L 43.23: 4.08069e-5 (-0.81e-5 / +0.99e-5) Mpc^-3 dex^-1;
    # the LDDE at z = 0.3 gives 4.205e-5, inside the 1-sigma range
    i = np.flatnonzero((t["z_lo"] == 0.2) & (t["log_l"] == 43.23) & (t["selection"] == "hard"))[0]
    assert t["phi"][i] == pytest.approx(4.08069e-5, rel=1e-12)
    model = float(ldde_ueda14(0.3, 43.23))
    assert t["phi"][i] - t["err_lo"][i] < model < t["phi"][i] + t["err_hi"][i]
    zc = 0.5 * (t["z_lo"] + t["z_hi"])
    d = np.log10(t["phi"] / ldde_ueda14(zc, t["log_l"]).numpy())
    core = (zc < 3) & (t["log_l"] > 42) & (t["log_l"] < 45)
    # measured: median |d| 0.091 dex, 95 % of the core points within 0.3 dex (a factor-10 slip would fail)
    assert np.median(np.abs(d[core])) < 0.12
    assert np.mean(np.abs(d[core]) < 0.3) > 0.9


def test_miyaji15_transcription_against_u14_ldde():
    """Miyaji et al. 2015 Table 4: bins well formed, values close to the independent U14 LDDE."""
    t = compare.load_binned_xlf("miyaji15")
    raw = Table.read(compare.binned_xlf_path("miyaji15"), format="ascii.ecsv")
    assert len(raw) == 196
    assert np.all((raw["log_l_lo"] < raw["log_l"]) & (raw["log_l"] < raw["log_l_hi"]))
    assert np.all((raw["z_lo"] < raw["z_mean"]) & (raw["z_mean"] < raw["z_hi"]))
    # Table 4 row z 0.8-1.0, log L_c 43.42: 1.39e-4 +/- 0.11e-4; U14 LDDE at z 0.897 gives 1.159e-4 (0.08 dex lower)
    i = np.flatnonzero((raw["z_lo"] == 0.8) & (raw["log_l"] == 43.42))[0]
    assert t["phi"][i] == pytest.approx(1.39e-4, rel=1e-12) and t["err_lo"][i] == pytest.approx(0.11e-4, rel=1e-12)
    assert abs(math.log10(t["phi"][i] / float(ldde_ueda14(0.897, 43.42)))) < 0.1
    d = np.log10(t["phi"] / ldde_ueda14(np.asarray(raw["z_mean"]), t["log_l"]).numpy())
    core = (np.asarray(raw["z_mean"]) < 3) & (t["log_l"] > 42) & (t["log_l"] < 45)
    assert np.median(np.abs(d[core])) < 0.12  # measured 0.083 dex
    assert np.mean(np.abs(d[core]) < 0.3) > 0.9


def test_binned_xlf_errors(tmp_path):
    with pytest.raises(PopsynthError, match="unknown binned XLF"):
        compare.load_binned_xlf("buchner15")
    with pytest.raises(PopsynthError, match="not found"):
        compare.load_binned_xlf("ueda14", data_dir=tmp_path)
    (tmp_path / "xlf_binned").mkdir()
    src = compare.binned_xlf_path("ueda14").read_text().splitlines()
    compare.binned_xlf_path("ueda14", tmp_path).write_text("\n".join(src[:-3]) + "\n")  # truncated
    with pytest.raises(PopsynthError, match="header declares"):
        compare.load_binned_xlf("ueda14", data_dir=tmp_path)


def test_binned_xlf_read_through_io_ecsv(tmp_path):
    """phi and its errors are converted to Mpc^-3 from an equivalent unit; a wrong unit or a missing
    column is a one-line error naming the file and column."""
    ref = compare.load_binned_xlf("ueda14")
    (tmp_path / "xlf_binned").mkdir()
    t = Table.read(compare.binned_xlf_path("ueda14"), format="ascii.ecsv")
    for c in ("phi", "err_lo", "err_hi"):
        t[c] = t[c].to("Gpc-3")
    t.write(compare.binned_xlf_path("ueda14", tmp_path), format="ascii.ecsv")
    got = compare.load_binned_xlf("ueda14", data_dir=tmp_path)
    for c in ("phi", "err_lo", "err_hi"):
        np.testing.assert_allclose(got[c], ref[c], rtol=1e-14)
    for c in ("z_lo", "z_hi", "log_l"):
        assert np.array_equal(got[c], ref[c])
    assert list(got["selection"]) == list(ref["selection"]) and got["label"] == ref["label"]
    t["phi"].unit = "deg2"
    t.write(compare.binned_xlf_path("ueda14", tmp_path), format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match=r"binned XLF file .*: column 'phi' has wrong unit 'deg2'") as err:
        compare.load_binned_xlf("ueda14", data_dir=tmp_path)
    assert "\n" not in str(err.value)
    t.remove_column("err_hi")
    t.write(compare.binned_xlf_path("ueda14", tmp_path), format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match=r"missing column\(s\) err_hi"):
        compare.load_binned_xlf("ueda14", data_dir=tmp_path)


def test_cxb_data_checks_the_model_table(loaded, tmp_path):
    """cxb_data reads cxb_model.ecsv through io.ecsv: columns in keV and keV^2 cm^-2 s^-1 keV^-1 sr^-1."""
    import shutil
    from types import SimpleNamespace

    d = compare.cxb_data(loaded)
    t = Table.read(loaded.folder / "cxb_model.ecsv", format="ascii.ecsv")
    assert np.array_equal(d["energy"], np.asarray(t["energy"], dtype=np.float64))
    assert np.array_equal(d["total"], np.asarray(t["total"], dtype=np.float64))
    fake = SimpleNamespace(folder=tmp_path, config=loaded.config)
    with pytest.raises(PopsynthError, match="model CXB file .*: file not found.*pass a run folder written by train.py"):
        compare.cxb_data(fake)
    shutil.copy(loaded.folder / "cxb_model.ecsv", tmp_path / "cxb_model.ecsv")
    t["energy"] = t["energy"].to("eV")
    t.write(tmp_path / "cxb_model.ecsv", format="ascii.ecsv", overwrite=True)
    np.testing.assert_allclose(compare.cxb_data(fake)["energy"], d["energy"], rtol=1e-15)
    t.remove_column("galaxies")
    t.write(tmp_path / "cxb_model.ecsv", format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match=r"missing column\(s\) galaxies"):
        compare.cxb_data(fake)


# ------------------------------------------------------------------ figure data
def _thin_sum(cube, grid, iz):
    """Hand sum over the log N_H cells of 20-24: cube [B, nz, nL, nN] -> [B, nL] at z index iz."""
    thin = torch.as_tensor((grid.lognh < 24.0) * grid.dlognh)
    return (cube[:, iz] * thin).sum(-1)


def test_xlf_is_the_cube_summed_over_nh(loaded):
    d = compare.xlf_data(loaded, z_panels=(0.1, 1.8), max_samples=None)
    grid = loaded.problem().grid
    iz = [int(np.argmin(np.abs(grid.z - z))) for z in (0.1, 1.8)]
    np.testing.assert_allclose(d["z"], grid.z[iz], rtol=0, atol=0)
    ws = loaded.weight_samples()
    cube = loaded.cubes(ws)
    for p, k in enumerate(iz):
        per = _thin_sum(cube, grid, k)  # [N, nL]
        q = torch.quantile(per, torch.tensor([0.16, 0.5, 0.84], dtype=per.dtype), dim=0).numpy()
        np.testing.assert_allclose(d["thin"]["p50"][p], q[1], rtol=1e-12)
        np.testing.assert_allclose(d["thin"]["p16"][p], q[0], rtol=1e-12)
        best = _thin_sum(loaded.cubes(loaded.best_weights()), grid, k)[0].numpy()
        np.testing.assert_allclose(d["thin"]["best"][p], best, rtol=1e-12)
        start = _thin_sum(loaded.problem().phi0[None], grid, k)[0].numpy()
        np.testing.assert_allclose(d["thin"]["start"][p], start, rtol=1e-12)
        # the stored best cube (xlf_best.h5) summed by hand
        with h5py.File(loaded.xlf_path) as f:
            stored = torch.as_tensor(f["phi"][()])
        np.testing.assert_allclose(d["thin"]["best"][p], _thin_sum(stored[None], grid, k)[0].numpy(), rtol=1e-10)
    # the starting XLF at z ~ 0.1 integrates over N_H 20-24 to the U14 LDDE (absorption function normalised to 1)
    i = int(np.argmin(np.abs(d["logl"] - 44.025)))
    assert d["thin"]["start"][0][i] == pytest.approx(float(ldde_ueda14(d["z"][0], d["logl"][i])), rel=2e-3)
    # U14 and Miyaji+15 points of the z ~ 0.1 bin are attached to the first panel
    assert set(d["binned"]["ueda14"][0]["z_lo"]) == {0.002}
    assert set(d["binned"]["miyaji15"][1]["z_lo"]) == {1.6}


def test_nh_fractions_sum_to_one_and_match_a19_absorption(loaded):
    d = compare.nh_data(loaded, l_ranges=((41.0, 43.5),), z_ranges=((0.6, 1.0), (0.1, 1.0)), max_samples=None)
    for p in d["panels"]:
        for s in ("best", "start"):
            assert p[s].sum() == pytest.approx(1.0, abs=1e-12)
    # hand computation, A19 eqs. A2-A4 at log L < 43.58 and 0.6 < z < 1: psi = 0.68 (1+z)^0.48 >= 0.850 is clipped to
    # psi_max = 0.84 at every z of the range, so the fractions are exact: per dex 20-21 0.74 (1 - psi), 21-22
    # 0.26 (1 - psi), 22-23 psi/2.3205, 23-24 1.3205 psi/2.3205, 24-25 and 25-26 0.69 psi, over their sum 1 + 1.38 psi
    psi = 0.84
    f = np.array([0.74 * (1 - psi), 0.26 * (1 - psi), psi / 2.3205, 1.3205 * psi / 2.3205, 0.69 * psi, 0.69 * psi])
    np.testing.assert_allclose(d["panels"][0]["start"], f / f.sum(), rtol=1e-10)
    # counts response against a direct sum over the cube of the best weights
    prob = loaded.problem()
    grid = prob.grid
    resp = compare.nh_counts_response(prob.phi0, grid, (41.0, 43.5), (0.1, 1.0))
    cube = loaded.cubes(loaded.best_weights())[0]
    vol = torch.as_tensor(compare._volume_weights(grid, (0.1, 1.0)))
    lsel = torch.as_tensor((grid.logl < 43.5) * grid.dlogl)
    direct = torch.einsum("zln,z,l,n->n", cube, vol, lsel, torch.as_tensor(grid.dlognh))
    np.testing.assert_allclose((loaded.best_weights() @ resp)[0].numpy(), direct.numpy(), rtol=1e-12)


def test_ct_fraction_matches_summary(loaded):
    d = compare.ct_data(loaded, max_samples=None)
    for z in (0.1, 1.0):
        i = int(np.argmin(np.abs(d["z"] - z)))
        assert d["z"][i] == pytest.approx(z, abs=1e-9)
        s = loaded.summary[f"ct_fraction_z{z:.1f}"]
        assert d["cumulative"]["p50"][i] == pytest.approx(s["median"], rel=1e-10)
        assert d["cumulative"]["p16"][i] == pytest.approx(s["p16"], rel=1e-10)
        assert d["cumulative"]["p84"][i] == pytest.approx(s["p84"], rel=1e-10)
        assert d["cumulative"]["best"][i] == pytest.approx(s["best_start"], rel=1e-10)
    assert d["z"][-1] == pytest.approx(5.0)
    assert [a["fraction"] for a in d["a19"]] == [0.50, 0.56]
    obs = {o["survey"]: o for o in d["observed"]}
    for row in loaded.summary["ct_fractions_observed_vs_model"]:
        assert obs[row["survey"]]["best"] == pytest.approx(row["model"], rel=1e-10)
        assert obs[row["survey"]]["observed"] == row["observed"]


def test_counts_model_reproduces_the_fit_chi2(loaded):
    d = compare.counts_data(loaded, max_samples=4)
    cons = loaded.problem().constraints
    assert set(d) == {n for n in cons.names if not cons.is_ct(n)}
    for name, c in d.items():
        data = cons.models[name].data
        chi2 = float(counts_chi2(torch.as_tensor(c["best"])[None], data)[0])
        assert chi2 == pytest.approx(loaded.summary["chi2_constraints"][name], rel=1e-10)
        assert np.all(c["p16"] <= c["p50"]) and np.all(c["p50"] <= c["p84"])


def test_cxb_components_add_up(loaded):
    d = compare.cxb_data(loaded)
    parts = sum(d[c] for c in compare.CXB_COMPONENTS)
    np.testing.assert_allclose(parts, d["total"], rtol=1e-12)
    assert [len(x["energy"]) for x in d["data"]] == [25, 34, 15]
    t = Table.read(loaded.folder / "cxb_model.ecsv", format="ascii.ecsv")
    np.testing.assert_array_equal(d["total"], np.asarray(t["total"]))


# ------------------------------------------------------------------ command line
def test_cli_writes_figures_and_tables(a19_run, tmp_path, capsys):
    out = tmp_path / "figs"
    assert compare.main([str(a19_run), "--out", str(out), "--max-samples", "3", "--dpi", "40"]) == 0
    for name in compare.FIGURES:
        assert (out / f"{name}.png").stat().st_size > 1000
        assert (out / f"{name}.ecsv").is_file()
    t = Table.read(out / "xlf.ecsv", format="ascii.ecsv")
    assert len(t) == len(compare.XLF_PANEL_Z) * 120 and t["thin_p50"].unit == "1 / Mpc3"
    nh = Table.read(out / "nh.ecsv", format="ascii.ecsv")
    for (lo, zl) in {(r["l_lo"], r["z_lo"]) for r in nh}:
        m = (nh["l_lo"] == lo) & (nh["z_lo"] == zl)
        assert nh["start"][m].sum() == pytest.approx(1.0, abs=1e-12)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert compare.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not found" in err and "\n" not in err
    assert compare.main([str(tmp_path), "--out", str(tmp_path / "o"), "--which", "xlf,bogus"]) == 2
    assert "no figure(s) bogus" in capsys.readouterr().err
    from popsynth.console import main as console_main

    assert console_main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
