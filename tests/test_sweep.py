"""popsynth sweep: the sweep file is checked before anything runs, folder names, a tiny sweep on a
2-worker LocalCluster (table against each run's summary.json, reuse on rerun, a failing
configuration recorded), and resume of an interrupted configuration."""

import json
import math
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from popsynth.errors import PopsynthError  # noqa: E402
from popsynth.run import RunConfig, run  # noqa: E402
from popsynth.sweep import (Configuration, finished_summary, folder_name, load_sweep, main, parse_sweep,  # noqa: E402
                            read_table, run_configuration, run_sweep, summary_row)

FIXED = {"mode": "joint", "starts": 3, "draws": 2, "steps": 4}


def _sweep(grid=None, fixed=None, **tables):
    return parse_sweep({"fixed": dict(FIXED if fixed is None else fixed), "grid": grid or {}, **tables}, "t.toml")


def _error(fn, *args):
    with pytest.raises(PopsynthError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("doc, expect", [
    ({"grid": {"spec_sett": [1]}}, ["[grid]", "spec_sett", "allowed keys", "spec_set"]),
    ({"fixed": {"stars": 3}}, ["[fixed]", "stars", "allowed keys"]),
    ({"grid": {"spectral_model": ["a19", "nope"]}}, ["spectral_model", "'nope'", "a19-incident-cutoff", "transmitted"]),
    ({"grid": {"spec_set": [1, 7]}}, ["spec_set", "7", "[1, 2, 3, 4, 5]"]),
    ({"grid": {"mode": ["a19", "fast"]}}, ["mode", "'fast'", "posterior", "joint", "cxb"]),
    ({"grid": {"seed": 3}}, ["[grid] seed", "non-empty list", "seed = ["]),
    ({"grid": {"seed": []}}, ["[grid] seed", "non-empty list"]),
    ({"grid": {"seed": [0, 0]}}, ["[grid] seed", "twice"]),
    ({"grid": {"starts": ["100"]}}, ["[grid] starts", "'100'", "an integer"]),
    ({"grid": {"no-ct": ["yes"]}}, ["no_ct", "true or false"]),
    ({"fixed": {"starts": 3}, "grid": {"starts": [1, 2]}}, ["starts", "also in [fixed]"]),
    ({"fixed": {"out": "x"}}, ["'out'", "cannot be set per run"]),
    ({"fixed": {"resume": "x"}}, ["'resume'", "cannot be set per run"]),
    ({"starts": 3}, ["unknown table or key 'starts'", "[fixed] or [grid]"]),
    ({"sweep": {"workers": 0}}, ["[sweep] workers", ">= 1"]),
    ({"sweep": {"cores": 2}}, ["unknown key 'cores' in [sweep]", "out, workers"]),
    ({"grid": {"device": ["cpu", "tpu:0"]}}, ["device", "tpu:0", "cuda"]),
])
def test_bad_sweep_file_is_one_line_naming_the_key(doc, expect):
    msg = _error(parse_sweep, doc, "t.toml")
    assert msg.startswith("t.toml")
    for e in expect:
        assert e in msg, (e, msg)


def test_bad_combination_names_the_configuration(tmp_path):
    s = _sweep({"counts": ["none"], "no_ct": [True, False]})
    msg = _error(s.configurations, tmp_path)
    assert "configuration counts='none', no_ct=True" in msg and "`mode` joint needs" in msg
    msg = _error(_sweep({"chains": [2, 1]}).configurations, tmp_path)
    assert "configuration chains=1" in msg and "`chains` must be an integer in 2..64" in msg
    msg = _error(_sweep({"draws": [2, 20000]}, fixed={}).configurations, tmp_path)
    assert "configuration draws=20000: --draws 20000 is above the limit of 10000" in msg


def test_sweep_file_errors_from_disk(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\nseed = [0]\n")
    assert "not valid TOML" in _error(load_sweep, bad)
    assert "not found" in _error(load_sweep, tmp_path / "missing.toml")
    missing_table = tmp_path / "torus.toml"
    missing_table.write_text('[grid]\ntorus_table = ["nope.fits"]\n')
    msg = _error(load_sweep(missing_table).configurations, tmp_path)
    assert "torus table" in msg and str(tmp_path / "nope.fits") in msg  # relative to the sweep file


def test_folder_names_are_readable_and_do_not_depend_on_order():
    assert folder_name({"spec_set": 1, "spectral_model": "a19"}) == "spec_set-1__spectral_model-a19"
    assert folder_name({"spectral_model": "a19", "spec_set": 1}) == "spec_set-1__spectral_model-a19"
    assert folder_name({"sys_floor": 0.03, "weight_prior": 1.0}) == "sys_floor-0.03__weight_prior-1"
    assert folder_name({"counts": ("a", "b"), "use_ct": False}) == "counts-a+b__use_ct-false"
    assert folder_name({"counts": ()}) == "counts-none"
    assert folder_name({"torus_table": "/data/tables/torus1006.fits"}) == "torus_table-torus1006"
    assert folder_name({"device": "cuda:1 x"}) == "device-cuda_1_x"
    assert folder_name({}) == "run"


def test_configurations_product_order_defaults_and_collisions(tmp_path):
    s = _sweep({"spectral-model": ["a19", "transmitted"], "spec_set": [5, 1]}, fixed={"starts": 3})
    confs = s.configurations(tmp_path)
    assert [c.name for c in confs] == ["spec_set-5__spectral_model-a19", "spec_set-1__spectral_model-a19",
                                      "spec_set-5__spectral_model-transmitted", "spec_set-1__spectral_model-transmitted"]
    assert confs[3].config.spec_set == 1 and confs[3].config.spectral_model == "transmitted"
    assert confs[0].config.out == str(tmp_path / confs[0].name) and confs[0].config.progress is False
    a19 = _sweep({"mode": ["a19", "joint"]}, fixed={"loss": "chi2"}).configurations(tmp_path)
    assert (a19[0].config.optimizer, a19[0].config.loss, a19[0].config.weight_prior) == ("gd", "chi2", 0.0)
    assert (a19[1].config.optimizer, a19[1].config.weight_prior) == ("lm", 1.0)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "t.fits").write_text("x")
    clash = _sweep({"torus_table": [str(tmp_path / "a" / "t.fits"), str(tmp_path / "b" / "t.fits")]})
    assert "share the folder name 'torus_table-t'" in _error(clash.configurations, tmp_path)


@pytest.mark.parametrize("key", ["chi2_at_median", "neg2_loglike_at_median"])  # today's and older summaries
def test_summary_row_of_a_posterior_run(key):
    s = {"mode": "posterior", "cxb_chi2_at_median": 6.0, "cxb_points": 74, "constraints_chi2_at_median": 9.0,
         "constraints_points": 56,
         key: {"chandra_cosmos": 1.0, "rxte": 2.0, "swift_bat": 3.0, "bat105": 4.0, "ct:nustar": 5.0},
         "ct_fraction_z0.1": {"median": 0.5, "p16": 0.4, "p84": 0.6, "mode": 0.55},
         "ct_fraction_z1.0": {"median": 0.52, "p16": 0.45, "p84": 0.61}}
    r = summary_row(s)
    assert (r["chi2_cxb_chandra_cosmos"], r["chi2_cxb_rxte"], r["chi2_cxb_swift_bat"]) == (1.0, 2.0, 3.0)
    assert (r["chi2_cxb_total"], r["chi2_counts"], r["chi2_ct"], r["chi2_constraints_total"]) == (6.0, 4.0, 5.0, 9.0)
    assert (r["ct_fraction_z0.1_p16"], r["ct_fraction_z1.0_p84"], r["fit_point"]) == (0.4, 0.61, "posterior median")
    cxb_only = summary_row({"mode": "cxb", "chi2_cxb": {"rxte": 2.0}, "chi2_total": 2.0, "n_points": {"rxte": 34}})
    assert math.isnan(cxb_only["chi2_counts"]) and math.isnan(cxb_only["chi2_constraints_total"])
    assert cxb_only["cxb_points"] == 34 and math.isnan(cxb_only["chi2_cxb_swift_bat"])


SWEEP_TOML = """\
[fixed]
draws = 2
steps = 4
chains = 2
warmup = 10
samples = 10
[grid]
mode = ["joint", "posterior"]
starts = [3, 10000000]   # 10 million starts: valid, but more memory than the worker has (the failing configuration)
"""
NAMES = ["starts-3__mode-joint", "starts-10000000__mode-joint", "starts-3__mode-posterior",
         "starts-10000000__mode-posterior"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    from popsynth.run import available_memory, estimate_memory

    need = estimate_memory(RunConfig(starts=10_000_000, draws=2, mode="joint"))["host"]
    avail = available_memory()[0]
    if avail is None or avail > need:  # the failing configuration would run (or might)
        pytest.skip("the memory of this machine is unknown or enough for 10 million starts")
    d = tmp_path_factory.mktemp("sweep")
    (d / "tiny.toml").write_text(SWEEP_TOML)
    lines = []
    res = run_sweep(load_sweep(d / "tiny.toml"), d / "out", workers=2, log=lines.append)
    return d, res, lines


def test_tiny_sweep_table_matches_each_run(tiny_sweep):
    d, res, lines = tiny_sweep
    t = read_table(d / "out" / "sweep.ecsv")
    assert len(t) == 4 and res.n_run == 4 and res.n_reused == 0 and res.n_failed == 2
    assert list(t["name"]) == NAMES
    assert list(t["mode"]) == ["joint", "joint", "posterior", "posterior"] and list(t["starts"]) == [3, 10_000_000] * 2
    assert t.meta["fixed"] == {"draws": 2, "steps": 4, "chains": 2, "warmup": 10, "samples": 10}
    assert t.meta["grid"] == {"mode": ["joint", "posterior"], "starts": [3, 10_000_000]}
    done = {row["mode"]: row for row in t if row["status"] == "done"}
    assert sorted(done) == ["joint", "posterior"]
    for mode, row in done.items():
        s = json.loads((Path(row["out"]) / "summary.json").read_text())
        assert s["mode"] == mode and s["n_starts"] == 3 and s["spectra"]["n_draws"] == 2
        if mode == "joint":  # the selected start
            per, cxb_total, cons_total, fit_point = s["chi2_cxb"], s["chi2_total"], s["chi2_constraints_total"], \
                "selected start"
            cons = s["chi2_constraints"]
        else:  # the posterior-median prediction
            per = {k: v for k, v in s["chi2_at_median"].items() if k in ("chandra_cosmos", "rxte", "swift_bat")}
            cons = {k: v for k, v in s["chi2_at_median"].items() if k not in per}
            cxb_total, cons_total, fit_point = s["cxb_chi2_at_median"], s["constraints_chi2_at_median"], \
                "posterior median"
        assert sorted(per) == ["chandra_cosmos", "rxte", "swift_bat"]
        for name, chi in per.items():
            assert row[f"chi2_cxb_{name}"] == chi
        assert row["chi2_cxb_total"] == cxb_total and row["cxb_points"] == 74 and row["fit_point"] == fit_point
        assert row["chi2_ct"] == pytest.approx(sum(v for k, v in cons.items() if k.startswith("ct:")), rel=1e-15)
        assert row["chi2_counts"] == pytest.approx(sum(v for k, v in cons.items() if not k.startswith("ct:")), rel=1e-15)
        assert row["chi2_constraints_total"] == cons_total
        assert row["chi2_counts"] + row["chi2_ct"] == pytest.approx(row["chi2_constraints_total"], rel=1e-12)
        for z in ("0.1", "1.0"):
            for q in ("median", "p16", "p84"):
                assert row[f"ct_fraction_z{z}_{q}"] == s[f"ct_fraction_z{z}"][q]
        assert row["wall_seconds"] == s["wall_seconds"]
        assert json.loads((Path(row["out"]) / "sweep_config.json").read_text())["mode"] == mode
    assert any("failed" in ln for ln in lines) and any("done in" in ln for ln in lines)
    if res.figure_path is not None:
        assert res.figure_path.stat().st_size > 10_000


def test_failing_configuration_is_recorded_not_fatal(tiny_sweep):
    d, _, _ = tiny_sweep
    t = read_table(d / "out" / "sweep.ecsv")
    failed = [row for row in t if row["status"] == "failed"]
    assert [row["name"] for row in failed] == [NAMES[1], NAMES[3]]
    for row in failed:
        assert "`starts` 10000000 and `draws` 2 need about" in row["error"] and "of memory" in row["error"]
        assert math.isnan(row["chi2_cxb_total"]) and math.isnan(row["ct_fraction_z0.1_median"])
        assert finished_summary(row["out"]) is None
        assert "PopsynthError" in (Path(row["out"]) / "sweep.log").read_text()


def test_rerun_reuses_finished_configurations(tiny_sweep):
    d, _, _ = tiny_sweep
    t0 = read_table(d / "out" / "sweep.ecsv")
    done = [Path(row["out"]) for row in t0 if row["status"] == "done"]
    before = {p: {f.name: f.stat().st_mtime_ns for f in p.iterdir()} for p in done}
    logs = {p: (p / "sweep.log").read_text() for p in done}
    res = run_sweep(load_sweep(d / "tiny.toml"), d / "out", workers=2, figure=False, log=lambda *a: None)
    assert res.n_reused == 2 and res.n_run == 2 and res.n_failed == 2  # only the failed ones ran again
    t1 = read_table(d / "out" / "sweep.ecsv")
    assert list(t1["status"]) == ["reused", "failed", "reused", "failed"]
    for p in done:  # nothing in a finished folder was touched
        assert {f.name: f.stat().st_mtime_ns for f in p.iterdir()} == before[p]
        assert (p / "sweep.log").read_text() == logs[p]
    for a, b in zip(t0, t1):
        if a["status"] == "done":
            assert a["chi2_cxb_total"] == b["chi2_cxb_total"] and a["out"] == b["out"]


def test_changed_fixed_options_are_refused_before_running(tiny_sweep, tmp_path):
    d, _, _ = tiny_sweep
    changed = tmp_path / "changed.toml"
    changed.write_text(SWEEP_TOML.replace("steps = 4", "steps = 5"))
    msg = _error(run_sweep, load_sweep(changed), d / "out")
    assert "holds a run of other settings" in msg and "steps 4 -> 5" in msg
    assert main([str(changed), "--out", str(d / "out"), "--dry-run"]) == 2


def test_dry_run_lists_states(tiny_sweep, capsys):
    d, _, _ = tiny_sweep
    assert main([str(d / "tiny.toml"), "--out", str(d / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "finished   " + str(d / "out" / NAMES[0]) in out and "finished   " + str(d / "out" / NAMES[2]) in out
    assert "unfinished " + str(d / "out" / NAMES[1]) in out and "4 configurations" in out


def test_interrupted_configuration_resumes_and_damaged_checkpoint_restarts(tmp_path):
    from popsynth.io import load_checkpoint

    cfg = RunConfig(out=str(tmp_path / "a"), mode="cxb", starts=3, draws=2, steps=6, rtol=0.0, progress=False)
    # an interrupted configuration: a checkpoint at step 3 (of 6) and no summary
    run(RunConfig(**{**vars(cfg), "steps": 3}), log=lambda *a: None)
    (tmp_path / "a" / "summary.json").unlink()
    partial = load_checkpoint(tmp_path / "a")["history"]
    res = run_configuration(cfg.to_dict())
    assert res["status"] == "done" and res["resumed"] and res["summary"]["steps_done"] == 6
    history = load_checkpoint(tmp_path / "a")["history"]
    assert len(history) == 6 and history[:3] == partial  # continued, not started again
    assert "resuming from" in (tmp_path / "a" / "sweep.log").read_text()
    # a damaged checkpoint: the configuration starts again cleanly, to the same answer
    (tmp_path / "a" / "summary.json").unlink()
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    again = run_configuration(cfg.to_dict())
    assert again["status"] == "done" and not again["resumed"]
    assert again["summary"]["chi2_total"] == pytest.approx(res["summary"]["chi2_total"], rel=1e-12)
    assert "cannot be resumed" in (tmp_path / "a" / "sweep.log").read_text()
    assert Configuration("a", {}, cfg).folder == tmp_path / "a"


def test_unknown_folder_contents_are_refused(tmp_path):
    (tmp_path / "out" / "seed-0").mkdir(parents=True)
    (tmp_path / "out" / "seed-0" / "notes.txt").write_text("mine")
    msg = _error(run_sweep, _sweep({"seed": [0]}), tmp_path / "out")
    assert "did not write" in msg and "seed-0" in msg


def test_cli_reports_bad_file_on_one_line(tmp_path, capsys):
    p = tmp_path / "s.toml"
    p.write_text(textwrap.dedent("""\
        [grid]
        spectral_model = ["a19", "pexmon"]
    """))
    assert main([str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "spectral_model" in err and "'pexmon'" in err and "transmitted" in err
    p.write_text("[grid]\nseed = [0]\n")
    assert main([str(p), "--workers", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--workers must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
