"""End-to-end: train.py outputs, resume, XLF export/loader, and one-line errors for bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from popsynth.cli import main
from popsynth.errors import PopsynthError
from popsynth.io import load_checkpoint, load_xlf
from popsynth.paths import data_dir
from popsynth.run import RunConfig, run

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(starts=6, draws=4, progress=False, mode="a19")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = run(RunConfig(out=str(out), steps=40, **SMALL), log=lambda *a: None)
    return out, summary


def test_outputs_and_summary(small_run):
    out, s = small_run
    for name in ("checkpoint.pt", "xlf_best.h5", "xlf_best_a19.npy", "cxb_model.ecsv", "summary.json"):
        assert (out / name).exists(), name
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("spec_set", "n_starts", "n_converged", "chi2_cxb", "reduced_chi2_cxb", "ct_fraction_z0.1",
                "ct_fraction_z1.0", "wall_seconds", "files"):
        assert key in on_disk
    assert on_disk["spec_set"] == 5 and on_disk["n_starts"] == 6
    assert set(on_disk["chi2_cxb"]) == {"chandra_cosmos", "rxte", "swift_bat"}
    assert on_disk["n_points"] == {"chandra_cosmos": 25, "rxte": 34, "swift_bat": 15}
    assert on_disk["reduced_chi2_cxb"] == pytest.approx(sum(on_disk["chi2_cxb"].values()) / (74 - 15))
    for z in ("0.1", "1.0"):
        c = on_disk[f"ct_fraction_z{z}"]
        assert 0 < c["p16"] <= c["median"] <= c["p84"] < 1
    assert np.load(out / "xlf_best_a19.npy").shape == (119, 150, 80)


def test_a19_mode_selects_by_counts_and_ct_fractions(small_run):
    """A19 sec. 4: among the CXB-converged starts, the selected one has the lowest counts +
    CT-fraction chi^2; the summary reports every constraint and observed vs model CT fractions."""
    import h5py

    from popsynth.constraints import DEFAULT_COUNTS, Constraints
    from popsynth.grid import Grid
    from popsynth.spectra.cache import build_spectral_table
    from popsynth.xlf import build_phi0

    out, s = small_run
    assert s["mode"] == "a19" and "counts" in s["selection"]
    assert set(DEFAULT_COUNTS) <= set(s["chi2_constraints"])
    assert {c["survey"] for c in s["ct_fractions_observed_vs_model"]} >= {"Swift/BAT 70-month", "NuSTAR UDS"}
    for c in s["ct_fractions_observed_vs_model"]:
        assert 0 < c["model"] < 1 and 0 < c["observed"] < 1
    assert s["chi2_constraints_total"] == pytest.approx(sum(s["chi2_constraints"].values()))
    with h5py.File(out / "xlf_best.h5") as f:
        w = torch.as_tensor(f["weights_all_starts"][()])
        conv = torch.as_tensor(f["converged"][()])
    grid = Grid()
    table = build_spectral_table(5, grid.lognh_edges, n_draws=SMALL["draws"])
    cons = Constraints(grid, build_phi0(grid), table)
    tot = cons.total(w)
    torch.testing.assert_close((cons.residuals(w) ** 2).sum(-1), tot)  # the joint loss is the same chi^2
    assert s["best_start"] == int(torch.argmin(torch.where(conv, tot, torch.full_like(tot, float("inf")))))
    assert s["chi2_constraints_total"] == pytest.approx(float(tot[s["best_start"]]), rel=1e-9)


def test_joint_mode_fits_the_constraints_better(tmp_path, small_run):
    """One loss over CXB + counts + CT fractions: the constraints' chi^2 drops against the
    CXB-only training of the A19 mode (same starts and seed)."""
    _, s_a19 = small_run
    s = run(RunConfig(out=str(tmp_path), steps=40, **{**SMALL, "mode": "joint"}), log=lambda *a: None)
    assert s["mode"] == "joint"
    assert s["chi2_constraints_total"] < 0.5 * s_a19["chi2_constraints_total"]


def test_cxb_mode_has_no_constraints(tmp_path):
    s = run(RunConfig(out=str(tmp_path), steps=5, **{**SMALL, "mode": "cxb"}), log=lambda *a: None)
    assert "chi2_constraints" not in s and s["selection"].startswith("lowest CXB")


def test_xlf_export_roundtrip(small_run):
    out, s = small_run
    xlf = load_xlf(out / "xlf_best.h5")
    assert xlf.cube.shape == (119, 120, 60)
    # at cell centres the interpolator returns the stored cube
    iz, il, inn = 30, 50, 35
    assert xlf(xlf.z[iz], xlf.logl[il], xlf.lognh[inn]) == pytest.approx(xlf.cube[iz, il, inn], rel=1e-12)
    # piecewise constant in log N_H inside a cell, linear in z between nodes
    assert xlf(xlf.z[iz], xlf.logl[il], xlf.lognh_edges[inn] + 0.01) == pytest.approx(xlf.cube[iz, il, inn], rel=1e-12)
    zm = 0.5 * (xlf.z[iz] + xlf.z[iz + 1])
    assert xlf(zm, xlf.logl[il], xlf.lognh[inn]) == pytest.approx(0.5 * (xlf.cube[iz, il, inn] + xlf.cube[iz + 1, il, inn]))
    w = json.loads(xlf.attrs["weights"])
    assert len(w) == 15 and xlf.attrs["spec_set"] == 5
    assert json.loads(xlf.attrs["cosmology"]) == {"H0": 70.0, "Om0": 0.3, "flat": True}
    with pytest.raises(PopsynthError, match="outside the cube"):
        xlf(0.5, 48.0, 22.0)
    assert xlf(0.5, 48.0, 22.0, outside="zero") == 0.0


def test_cxb_table_components_sum(small_run):
    from astropy.table import Table

    out, _ = small_run
    t = Table.read(out / "cxb_model.ecsv", format="ascii.ecsv")
    parts = t["agn_unabsorbed"] + t["agn_compton_thin"] + t["agn_compton_thick"] + t["galaxies"]
    np.testing.assert_allclose(t["total"], parts, rtol=1e-12)
    assert str(t["energy"].unit) == "keV"


def test_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    quiet = dict(log=lambda *x: None)
    full = run(RunConfig(out=str(a), steps=12, rtol=0.0, **SMALL), **quiet)
    run(RunConfig(out=str(b), steps=5, rtol=0.0, **SMALL), **quiet)
    assert load_checkpoint(b)["step"] == 5
    resumed = run(RunConfig(steps=12), resume=str(b), **quiet)
    assert resumed["steps_done"] == 12
    wa = torch.load(a / "checkpoint.pt", weights_only=True)["opt_state"]["u"]
    wb = torch.load(b / "checkpoint.pt", weights_only=True)["opt_state"]["u"]
    torch.testing.assert_close(wa, wb, rtol=0, atol=0)
    assert full["chi2_total"] == pytest.approx(resumed["chi2_total"], rel=1e-12)


def test_reproducible_with_seed(tmp_path):
    quiet = dict(log=lambda *x: None)
    s1 = run(RunConfig(out=str(tmp_path / "1"), steps=5, seed=3, **SMALL), **quiet)
    s2 = run(RunConfig(out=str(tmp_path / "2"), steps=5, seed=3, **SMALL), **quiet)
    assert s1["best_weights"] == s2["best_weights"]


def _cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_cli_unknown_spectral_set(capsys):
    rc, err = _cli(["--spec-set", "7"], capsys)
    assert rc == 2 and len(err) == 1 and "unknown spectral set '7'" in err[0] and "--spec-set 1, 2, 3, 4 or 5" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_not_available(capsys):
    rc, err = _cli(["--device", "cuda"], capsys)
    assert rc == 2 and len(err) == 1 and "no CUDA" in err[0] and "--device cpu" in err[0]


def test_cli_unknown_device(capsys):
    rc, err = _cli(["--device", "tpu7"], capsys)
    assert rc == 2 and len(err) == 1 and "unknown device" in err[0]


def _copy_data(tmp_path):
    d = tmp_path / "data"
    shutil.copytree(data_dir() / "cxb", d / "cxb")
    (d / "greens").symlink_to(data_dir() / "greens")  # the Monte Carlo tables are read, never changed
    (d / "counts").symlink_to(data_dir() / "counts")
    return d


def test_cli_missing_data_file(tmp_path, capsys, monkeypatch):
    d = _copy_data(tmp_path)
    (d / "cxb" / "rxte_revnivtsev2003.ecsv").unlink()
    monkeypatch.setenv("POPSYNTH_DATA", str(d))
    rc, err = _cli(["--out", str(tmp_path / "o"), "--quiet", "--starts", "2", "--draws", "2"], capsys)
    assert rc == 2 and len(err) == 1 and "rxte" in err[0] and "not found" in err[0].lower()


def test_cli_malformed_data_file(tmp_path, capsys, monkeypatch):
    d = _copy_data(tmp_path)
    p = d / "cxb" / "swift_bat_ajello2008.ecsv"
    p.write_text(p.read_text().replace("intensity", "intensty"))
    monkeypatch.setenv("POPSYNTH_DATA", str(d))
    rc, err = _cli(["--out", str(tmp_path / "o"), "--quiet", "--starts", "2", "--draws", "2"], capsys)
    assert rc == 2 and len(err) == 1 and "swift_bat" in err[0]


def test_cli_corrupt_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x02garbage-not-a-checkpoint")
    rc, err = _cli(["--resume", str(run_dir)], capsys)
    assert rc == 2 and len(err) == 1 and "corrupt" in err[0] and "new run" in err[0]
    torch.save({"hello": 1}, run_dir / "checkpoint.pt")
    rc, err = _cli(["--resume", str(run_dir)], capsys)
    assert rc == 2 and len(err) == 1 and "not a popsynth checkpoint" in err[0]


def test_cli_non_finite_fit_keeps_checkpoint(tmp_path, capsys, monkeypatch):
    """A loss that turns non-finite mid-fit stops the run with one line naming --lr, and the
    checkpoint keeps the last finite state. The divergence is simulated (one start's loss
    becomes inf from the third step): --lr is now limited to each optimiser's working range,
    where the default data never overflow."""
    from popsynth.fit import GradientDescent

    real_step, calls = GradientDescent.step, []

    def diverging(self, state, residual_fn, **kw):  # active=, info= of the fit loop
        new, loss = real_step(self, state, residual_fn, **kw)
        calls.append(1)
        if len(calls) >= 3:
            loss = loss.clone()
            loss[1] = float("inf")
        return new, loss

    monkeypatch.setattr(GradientDescent, "step", diverging)
    out = tmp_path / "nan"
    rc, err = _cli(["--out", str(out), "--quiet", "--starts", "3", "--draws", "2", "--optimizer", "gd",
                    "--steps", "50", "--loss", "a19", "--weight-prior", "0", "--mode", "cxb"], capsys)
    assert rc == 2 and len(err) == 1 and "non-finite loss at step 3 in start(s) [1]" in err[0] and "--lr" in err[0]
    assert "the last finite state (step 2) is in the checkpoint" in err[0]
    ck = load_checkpoint(out)
    assert ck["step"] == 2 and torch.isfinite(ck["opt_state"]["w"]).all()


def test_cli_bad_numbers(capsys):
    for args, text in ((["--starts", "0"], "--starts"), (["--sys-floor", "2"], "--sys-floor"),
                       (["--loss", "l1"], "unknown loss"), (["--optimizer", "sgd"], "unknown optimizer")):
        rc, err = _cli(args, capsys)
        assert rc == 2 and len(err) == 1 and text in err[0]


def test_cli_bad_mode_and_counts(tmp_path, capsys):
    rc, err = _cli(["--mode", "best"], capsys)
    assert rc == 2 and len(err) == 1 and "unknown mode 'best'" in err[0] and "--mode posterior or a19 or joint or cxb" in err[0]
    rc, err = _cli(["--counts", "chandra_deep", "--quiet", "--starts", "2", "--draws", "2", "--steps", "1",
                    "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and "unknown counts table" in err[0] and "bat105" in err[0]


def test_train_py_help():
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0
    for flag in ("--spec-set", "--starts", "--steps", "--lr", "--optimizer", "--loss", "--seed", "--device", "--out", "--resume"):
        assert flag in r.stdout


def test_posterior_mode_end_to_end(tmp_path):
    """--mode posterior (the default): mode by LM, NUTS chains, outputs with intervals and percentile cubes."""
    from popsynth.io import load_xlf

    cfg = RunConfig(out=str(tmp_path), starts=4, draws=4, steps=30, chains=2, warmup=30, samples=40, progress=False)
    assert cfg.mode == "posterior"
    s = run(cfg, log=lambda *a: None)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["mode"] == "posterior" and on_disk["sampler"]["chains"] == 2
    assert on_disk["sampler"]["samples_per_chain"] == 40 and len(on_disk["sampler"]["r_hat"]) == 15
    for name, q in on_disk["block_weights"].items():
        assert 0 < q["p16"] <= q["median"] <= q["p84"], name
    for z in ("0.1", "1.0"):
        c = on_disk[f"ct_fraction_z{z}"]
        assert 0 < c["p16"] < c["median"] < c["p84"] < 1  # a non-zero interval
        for lmin in ("42", "43"):
            b = on_disk[f"ct_fraction_z{z}_by_min_logl"][lmin]
            assert 0 <= b["p16"] <= b["median"] <= b["p84"] <= 1
    names = {"chandra_cosmos", "rxte", "swift_bat", "bat105_agn_differential_14_195keV"}
    for key in ("chi2_at_median", "chi2_at_best_sample", "chi2_at_median_weights"):
        assert names <= set(on_disk[key])
        group = key.replace("chi2_", "cxb_chi2_")
        assert on_disk[group] == pytest.approx(sum(on_disk[key][n] for n in ("chandra_cosmos", "rxte", "swift_bat")))
    # each CXB instrument's normalisation is free with the default 10 % prior; its posterior is reported
    for n in ("chandra_cosmos", "rxte", "swift_bat"):
        c = on_disk["cxb_normalisations"][n]
        assert c["prior_sigma"] == 0.1 and 0.5 < c["p16"] < c["median"] < c["p84"] < 1.5
    assert len(on_disk["ct_fractions_observed_vs_model"]) == 4
    lo, mid, hi = (load_xlf(tmp_path / "xlf_best.h5", q).cube for q in ("p16", "p50", "p84"))
    assert np.all(lo <= mid + 1e-300) and np.all(mid <= hi + 1e-300) and np.any(hi > lo)
    from astropy.table import Table

    t = Table.read(tmp_path / "cxb_model.ecsv")
    assert np.all(t["total_p16"] <= t["total_p50"]) and np.all(t["total_p50"] <= t["total_p84"])
    with pytest.raises(PopsynthError, match="unknown cube"):
        load_xlf(tmp_path / "xlf_best.h5", "p99")
    assert s["sampler"]["r_hat_max"] > 0


def test_a19_procedure_defaults_at_the_cli():
    """--mode a19 means A19's procedure as written: gd on w, eq. B3 cost, no prior (unless overridden)."""
    from popsynth.cli import _given, _new_config, build_parser

    cfg = _new_config(_given(build_parser().parse_args(["--mode", "a19"])))
    assert (cfg.optimizer, cfg.loss, cfg.weight_prior, cfg.starts, cfg.init_range) == ("gd", "a19", 0.0, 100, (0.3, 5.0))
    cfg = _new_config(_given(build_parser().parse_args(["--mode", "a19", "--optimizer", "lm"])))
    assert cfg.optimizer == "lm"
    assert _new_config({}).mode == "posterior"


def test_starting_xlf_option_and_literature_rows(tmp_path, capsys):
    """--xlf a15 starts from the Aird et al. 2015 LADE; every run reports A19 Table 5's literature
    rows (each starting XLF, unfitted, under the run's spectra), with A19's totals beside them."""
    s = run(RunConfig(out=str(tmp_path), steps=3, xlf="a15", **{**SMALL, "mode": "cxb"}), log=lambda *a: None)
    assert s["xlf_start"] == "a15"
    rows = s["literature_rows"]
    assert set(rows) == {"u14", "a15"}
    for r in rows.values():
        assert r["total"] == pytest.approx(r["chandra_cosmos"] + r["rxte"] + r["swift_bat"])
        assert r["total"] > 0
    from popsynth.run import format_table

    text = format_table(s)
    assert "A15" in text and "153.8" in text and "308.2" in text  # A19 Table 5 totals for U14 and A15
    rc, err = _cli(["--xlf", "b15"], capsys)
    assert rc == 2 and len(err) == 1 and "unknown starting XLF 'b15'" in err[0] and "--xlf u14 or a15" in err[0]
