"""Hardening of train.py (issue 10): bad input ends with ONE line "error: <what>; <what to do>"
on stderr and exit code 2, before any set-up; checkpoints are loaded safely and checked;
output folders are checked and locked; Ctrl-C says what is on disk.

Most tests never reach the set-up (milliseconds). The few that run a fit use ``fast_setup``,
which builds the tiny problem of ``--draws 2 --mode cxb`` once per module and hands it to
every run instead of building it again.
"""

import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import popsynth.resources as resources_module
import popsynth.run as run_module
from popsynth.cli import flag_text, main
from popsynth.errors import PopsynthError
from popsynth.fit import Convergence, initial_weights, make_optimizer
from popsynth.io import CHECKPOINT_FORMAT, LOCK_NAME, RunLock, XLFCube, atomic_write, current_umask, save_checkpoint
from popsynth.run import RunConfig

TINY = ["--starts", "2", "--draws", "2", "--steps", "2", "--mode", "cxb", "--quiet"]


def _cli(args, capsys):
    """Run main(args); returns (exit code, stderr lines, stdout)."""
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.err.strip().splitlines(), cap.out


def _one_error(rc, err, *texts):
    assert rc == 2, (rc, err)
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    for t in texts:
        assert t in err[0], (t, err[0])


@pytest.fixture(scope="module")
def tiny_problem():
    cfg = RunConfig(starts=2, draws=2, mode="cxb", progress=False)
    return run_module.build_problem(cfg, torch.device("cpu"), log=lambda *a: None)


@pytest.fixture
def fast_setup(tiny_problem, monkeypatch):
    """run() gets the prebuilt tiny problem instead of building one (valid for TINY flags)."""
    def prebuilt(cfg, device, log=print):
        assert cfg.mode == "cxb" and cfg.draws == 2 and cfg.spec_set == 5
        return tiny_problem

    monkeypatch.setattr(run_module, "build_problem", prebuilt)


def _payload(folder, starts=2, optimizer="lm"):
    """A checkpoint payload as run() writes it, without running a fit."""
    cfg = RunConfig(starts=starts, draws=2, mode="cxb", steps=2, optimizer=optimizer, out=str(folder), progress=False)
    w0 = initial_weights(starts, 15, 0)
    return {"config": cfg.to_dict(), "step": 1, "opt_state": make_optimizer(optimizer).init(w0),
            "conv_state": Convergence().init(torch.ones(starts, dtype=torch.float64)), "w0": w0,
            "history": [[1, 1.0, 1.0]], "finished": False, "wall_seconds": 0.5}


def _write_checkpoint(folder, payload=None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "checkpoint.pt", payload if payload is not None else _payload(folder))
    return folder


# ----------------------------------------------------------------------------- checkpoints
class _Evil:
    """Unpickling this creates a marker file: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_crafted_checkpoint_is_refused_without_running_code(tmp_path, capsys, writer):
    marker = tmp_path / "marker"
    d = tmp_path / "run"
    d.mkdir()
    payload = {**_payload(d), "format": CHECKPOINT_FORMAT, "evil": _Evil(marker)}
    if writer == "torch":
        torch.save(payload, d / "checkpoint.pt")
    else:
        (d / "checkpoint.pt").write_bytes(pickle.dumps(payload, protocol=4))
    rc, err, _ = _cli(["--resume", d], capsys)
    _one_error(rc, err, f"checkpoint {d / 'checkpoint.pt'} holds", "refused to load it (unpickling it could run code)",
               "resume only from a checkpoint.pt written by train.py")
    assert not marker.exists()


def test_real_checkpoint_loads_with_weights_only(tmp_path):
    """What run() writes (dicts, lists, tensors, numbers, strings, None) is within torch's
    weights_only allow-list, so a resumed run needs nothing unsafe."""
    d = _write_checkpoint(tmp_path / "r")
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["config"]["starts"] == 2
    ckpt, cfg, folder = run_module.load_resume(d)
    assert cfg.starts == 2 and cfg.out == str(d) and folder == d


def _drop(key):
    def f(p):
        del p[key]
    return f


def _set(path, value):
    def f(p):
        obj = p
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value(obj[path[-1]]) if callable(value) else value
    return f


TAMPER = [
    (_drop("w0"), "lacks 'w0'"),
    (_drop("conv_state"), "lacks 'conv_state'"),
    (_set(["step"], "five"), "'step' must be an integer >= 0, got 'five'"),
    (_set(["step"], -3), "'step' must be an integer >= 0, got -3"),
    (_set(["opt_state"], [1, 2]), "'opt_state' must be a non-empty dict of tensors, got list"),
    (_set(["opt_state", "u"], [[1.0] * 15] * 2), "'opt_state['u']' must be a tensor, got list"),
    (_set(["opt_state", "u"], lambda t: t[:1]), "opt_state['u'] has shape [1, 15] and dtype float64, expected shape [2, 15]"),
    (_set(["opt_state", "u"], lambda t: t.float()), "opt_state['u'] has shape [2, 15] and dtype float32, expected shape [2, 15] and dtype float64"),
    (_set(["opt_state", "u"], lambda t: t * float("nan")), "opt_state['u'] holds non-finite values"),
    (_set(["opt_state", "m"], torch.zeros(2, 15, dtype=torch.float64)), "opt_state has unexpected m (expected lam, u)"),
    (lambda p: p["opt_state"].pop("lam"), "opt_state lacks lam"),
    (_set(["conv_state", "count"], lambda t: t.double()), "conv_state['count'] has shape [2] and dtype float64, expected shape [2] and dtype int64"),
    (_set(["w0"], lambda t: t[:, :14]), "w0 has shape [2, 14] and dtype float64, expected shape [2, 15]"),
    (_set(["w0"], lambda t: -t), "w0 holds non-positive weights"),
    (_set(["history"], "long"), "'history' must be a list of [step, best loss, median loss] entries"),
    (_set(["finished"], "yes"), "'finished' must be true or false"),
    (_set(["config", "colour"], "blue"), "config has unknown field(s) colour"),
    (_set(["config", "starts"], "2"), "config: field 'starts' must be int, got str '2'"),
    (_set(["config", "starts"], True), "config: field 'starts' must be int, got bool True"),
    (_set(["config", "lr"], "fast"), "config: field 'lr' must be float or null, got str 'fast'"),
    (_set(["config", "counts"], [1, 2]), "config: field 'counts' must be a list of str"),
    (_set(["config", "optimizer"], "sgd"), "stored setting invalid (unknown optimizer 'sgd')"),
    (_set(["config", "starts"], 0), "stored setting invalid (--starts must be >= 1, got 0)"),
    (_set(["config"], "starts=2"), "'config' must be a dict of settings, got str"),
    (lambda p: p["config"].pop("starts"), "config lacks field(s) starts"),
]


@pytest.mark.parametrize("tamper,text", TAMPER, ids=[t for _, t in TAMPER])
def test_tampered_checkpoint_is_one_line_error(tmp_path, capsys, tamper, text):
    d = tmp_path / "r"
    payload = _payload(d)
    tamper(payload)
    _write_checkpoint(d, payload)
    rc, err, _ = _cli(["--resume", d], capsys)
    _one_error(rc, err, f"checkpoint {d / 'checkpoint.pt'}", text)


# ----------------------------------------------------------------------------- --out
def test_out_is_an_existing_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    rc, err, _ = _cli(["--out", f] + TINY, capsys)
    _one_error(rc, err, f"output folder {f} is an existing file, not a folder", "pass --out a folder")
    assert f.read_text() == "x"


def test_out_below_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    rc, err, _ = _cli(["--out", f / "sub" / "run"] + TINY, capsys)
    _one_error(rc, err, f"output folder {f / 'sub' / 'run'} cannot be created: {f} is a file",
               "pass --out a path whose parents are folders")


def _deny_writes_in(monkeypatch, folder):
    """Simulate a read-only folder: creating a file in it fails with EACCES (as root, permission
    bits would not stop the write, so the OS cannot be asked to refuse it)."""
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve() == Path(folder).resolve():
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_out_read_only_folder_simulated(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_writes_in(monkeypatch, ro)
    rc, err, _ = _cli(["--out", ro] + TINY, capsys)
    _one_error(rc, err, f"output folder {ro} is not writable (Permission denied)", "pass --out a folder you can write to")
    rc, err, _ = _cli(["--out", ro / "new"] + TINY, capsys)
    _one_error(rc, err, f"output folder {ro / 'new'} cannot be created: {ro} is not writable (Permission denied)")
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores permission bits, so chmod cannot make a folder read-only; "
                           "test_out_read_only_folder_simulated covers the case")
def test_out_read_only_folder_real(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err, _ = _cli(["--out", ro] + TINY, capsys)
        _one_error(rc, err, f"output folder {ro} is not writable")
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- memory and bounds
def test_too_many_starts_states_estimate_and_available(capsys):
    rc, err, _ = _cli(["--starts", "1000000000"], capsys)
    _one_error(rc, err, "--starts 1000000000 is above the limit of 10000000", "TB of memory (estimate: set-up",
               "state of the starts", "use fewer --starts or --draws")
    assert "is available" in err[0] or "available memory is unknown" in err[0]


def test_too_many_draws_states_estimate(capsys):
    rc, err, _ = _cli(["--draws", "100000"], capsys)
    _one_error(rc, err, "--draws 100000 is above the limit of 10000", "GB of memory", "spectral draws",
               "use fewer --starts or --draws")


def test_memory_estimate_against_available(capsys, monkeypatch):
    monkeypatch.setattr(resources_module, "available_memory", lambda device: (2.0e9, "test"))
    rc, err, _ = _cli(["--draws", "2000", "--starts", "100"], capsys)
    _one_error(rc, err, "--starts 100 and --draws 2000 need about", "but only 2.0 GB is available (test)",
               "use fewer starts or draws: --draws ", "or fewer (with --starts 100) fit here")
    rc, err, _ = _cli(["--starts", "5000000", "--mode", "joint"], capsys)
    _one_error(rc, err, "--starts 5000000 and --draws 64 need about", "or fewer (with --draws 64) fit here")


def test_memory_estimate_scales_and_splits_on_cuda():
    small = run_module.estimate_memory(RunConfig(starts=100, draws=64))
    assert 1.0e9 < small["host"] < 2.0e9 and small["device"] == 0  # measured peak ~1.4 GB
    big = run_module.estimate_memory(RunConfig(starts=100, draws=100000))
    assert big["draws"] > 57e9  # the per-draw table alone is 57.6 GB
    many = run_module.estimate_memory(RunConfig(starts=1_000_000_000))
    assert many["starts"] > 15 * 8 * 1e9  # at least the weights
    gpu = run_module.estimate_memory(RunConfig(starts=10_000, draws=64), "cuda")
    assert gpu["device"] > gpu["starts"] and gpu["host"] < small["host"] + 1


def test_available_memory_reads_the_machine():
    avail, source = run_module.available_memory("cpu")
    if avail is not None:
        assert avail > 0 and source


def test_steps_upper_bound(capsys):
    rc, err, _ = _cli(["--steps", "10000000"], capsys)
    _one_error(rc, err, "--steps must be <= 1000000, got 10000000")


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("seed", ["99999999999999999999", str(2 ** 63), "-1"])
def test_seed_range(capsys, seed):
    rc, err, _ = _cli(["--seed", seed], capsys)
    _one_error(rc, err, f"--seed must be in 0 .. 2**63 - 1, got {seed}", "pass e.g. --seed 0")


@pytest.mark.parametrize("opt,lr,text", [
    ("lm", "inf", "learning rate --lr must be finite and > 0, got inf; pass --lr between 1e-08 and 1e+06 for --optimizer lm"),
    ("lm", "nan", "learning rate --lr must be finite and > 0, got nan"),
    ("lm", "0", "learning rate --lr must be finite and > 0, got 0.0"),
    ("lm", "-1", "learning rate --lr must be finite and > 0, got -1.0"),
    ("lm", "1e300", "learning rate --lr 1e+300 is outside the working range of --optimizer lm, 1e-08 to 1e+06"),
    ("adam", "1e6", "learning rate --lr 1e+06 is outside the working range of --optimizer adam, 1e-05 to 1"),
    ("gd", "1e10", "learning rate --lr 1e+10 is outside the working range of --optimizer gd, 1e-10 to 0.1"),
])
def test_lr_must_be_finite_and_in_the_optimizer_range(capsys, opt, lr, text):
    rc, err, _ = _cli(["--optimizer", opt, "--lr", lr], capsys)
    _one_error(rc, err, text)


def test_help_states_lr_ranges(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("lm: initial damping of the Levenberg-Marquardt steps, 1e-08 to 1e+06",
                 "adam: step in ln w per iteration, 1e-05 to 1", "gd: step on w per unit gradient, 1e-10 to 0.1",
                 "0 to 2**63-1", "finite, >= 0"):
        assert text in out, text


@pytest.mark.parametrize("flag,value,text", [
    ("--weight-prior", "nan", "--weight-prior must be a finite number, got nan"),
    ("--weight-prior", "-1", "--weight-prior must be >= 0 dex, got -1.0"),
    ("--sys-floor", "inf", "--sys-floor must be a finite number, got inf"),
    ("--sys-floor", "nan", "--sys-floor must be a finite number, got nan"),
    ("--counts-weight", "nan", "--counts-weight must be a finite number, got nan"),
    ("--counts-weight", "-2", "--counts-weight must be >= 0, got -2.0"),
    ("--ct-weight", "inf", "--ct-weight must be a finite number, got inf"),
    ("--ct-weight", "-1", "--ct-weight must be >= 0, got -1.0"),
])
def test_float_flags_are_finite_and_in_range(capsys, flag, value, text):
    rc, err, _ = _cli([flag, value], capsys)
    _one_error(rc, err, text)
    assert "--lr" not in err[0] and "checkpoint" not in err[0]


def test_non_finite_start_loss_does_not_point_at_a_checkpoint():
    with pytest.raises(PopsynthError) as exc:
        run_module._check_finite(torch.tensor([1.0, float("nan")]), 0, None)
    msg = str(exc.value)
    assert "non-finite loss at the starting weights of start(s) [1]" in msg and "nothing was written" in msg
    assert "checkpoint" not in msg


def test_run_that_cannot_move_warns(tmp_path, capsys, fast_setup):
    rc = main(["--out", str(tmp_path / "o"), "--optimizer", "gd", "--lr", "1e-10", "--loss", "a19"] + TINY)
    cap = capsys.readouterr()
    assert rc == 0
    warn = [line for line in cap.err.splitlines() if line.startswith("warning: ")]
    assert len(warn) == 1 and "no start lowered its loss by more than 0.1 % in 2 steps of --optimizer gd" in warn[0]
    assert "the weights hardly moved" in warn[0] and "try --lr within 1e-10-0.1" in warn[0]
    # summary.json keeps the library's words (settings named by parameter); train.py prints them as flags
    stored = json.loads((tmp_path / "o" / "summary.json").read_text())["warnings"]
    assert len(stored) == 1 and "steps of `optimizer` gd" in stored[0] and "try `lr` within 1e-10-0.1" in stored[0]
    assert flag_text(stored[0]) == warn[0][len("warning: "):]


# ----------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_setup_of_a_new_run(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "build_problem", interrupted)
    out = tmp_path / "o"
    rc, err, _ = _cli(["--out", out] + TINY, capsys)
    assert rc == 130 and len(err) == 1
    assert err[0] == ("interrupted during the set-up, before the first checkpoint: nothing of this run was saved; "
                      "rerun the same command to start again")
    assert not (out / "checkpoint.pt").exists() and not (out / LOCK_NAME).exists()


def test_ctrl_c_during_setup_of_a_resumed_run(tmp_path, capsys, monkeypatch):
    d = _write_checkpoint(tmp_path / "r")
    monkeypatch.setattr(run_module, "build_problem", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    rc, err, _ = _cli(["--resume", d], capsys)
    assert rc == 130 and len(err) == 1
    assert err[0] == (f"interrupted during the set-up, before a new checkpoint was written: {d}/checkpoint.pt is "
                      f"unchanged (step 1); continue with: python train.py --resume {d}")
    assert not (d / LOCK_NAME).exists()


def test_ctrl_c_before_run_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_module, "check_resources", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    rc, err, _ = _cli(["--out", tmp_path / "o"] + TINY, capsys)
    assert rc == 130 and err == ["interrupted before the set-up finished; nothing was saved; rerun the same command to start again"]


def test_ctrl_c_during_the_fit_names_the_saved_step(tmp_path, capsys, monkeypatch, fast_setup):
    class StopAt21(run_module.tqdm):
        def update(self, n=1):
            self.done = getattr(self, "done", 0) + n
            if self.done == 21:
                raise KeyboardInterrupt
            return super().update(n)

    monkeypatch.setattr(run_module, "tqdm", StopAt21)
    out = tmp_path / "o"
    rc, err, _ = _cli(["--out", out, "--starts", "2", "--draws", "2", "--mode", "cxb", "--quiet", "--optimizer", "gd",
                       "--loss", "a19", "--steps", "40"], capsys)
    assert rc == 130 and len(err) == 1
    assert err[0] == (f"interrupted during the fit: steps up to 20 are saved in {out}/checkpoint.pt; "
                      f"continue with: python train.py --resume {out}")
    assert not (out / LOCK_NAME).exists()


def test_ctrl_c_while_writing_outputs(tmp_path, capsys, monkeypatch, fast_setup):
    monkeypatch.setattr(run_module, "write_outputs", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "o"
    rc, err, _ = _cli(["--out", out] + TINY, capsys)
    assert rc == 130 and len(err) == 1
    assert err[0].startswith("interrupted while writing outputs: the finished fit (step 2) is in "
                             f"{out}/checkpoint.pt")
    assert err[0].endswith(f"write them again with: python train.py --resume {out}")


# ----------------------------------------------------------------------------- resume
def test_resume_refuses_conflicting_flags(tmp_path, capsys):
    d = _write_checkpoint(tmp_path / "r")
    rc, err, _ = _cli(["--resume", d, "--spec-set", "3", "--starts", "5", "--optimizer", "gd"], capsys)
    _one_error(rc, err, f"--resume {d}: --spec-set 3 (stored spec_set 5), --starts 5 (stored starts 2), "
                        "--optimizer gd (stored optimizer lm) differ from the settings stored in its checkpoint",
               "drop them to continue that run as stored (only --steps, --device, --quiet may change on resume)")
    rc, err, _ = _cli(["--resume", d, "--out", tmp_path / "elsewhere"], capsys)
    _one_error(rc, err, f"--out {tmp_path / 'elsewhere'} (the run's folder is {d}) differs")
    rc, err, _ = _cli(["--resume", d, "--no-ct", "--lr", "0.5"], capsys)
    _one_error(rc, err, "--no-ct (stored use_ct True)", "--lr 0.5 (stored lr 0.01)")


def test_resume_applies_safe_flags_and_accepts_matching_ones(tmp_path, capsys, fast_setup):
    out = tmp_path / "o"
    assert main(["--out", str(out)] + TINY) == 0
    capsys.readouterr()
    rc, err, stdout = _cli(["--resume", out, "--steps", "5", "--device", "cpu", "--starts", "2", "--mode", "cxb",
                            "--lr", "0.01"], capsys)
    assert rc == 0, err
    assert "resume: applying --steps 5 (stored steps 2)" in stdout
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["config"]["steps"] == 5 and ck["step"] <= 5
    rc, err, _ = _cli(["--resume", out, "--steps", "0"], capsys)
    _one_error(rc, err, "--steps must be >= 1, got 0")


# ----------------------------------------------------------------------------- lock
def test_second_run_on_the_same_out_is_refused_and_stale_lock_taken_over(tmp_path, capsys, fast_setup):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from popsynth.io import RunLock; RunLock(sys.argv[1]).acquire(); "
                               "print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, err, _ = _cli(["--out", out] + TINY, capsys)
        _one_error(rc, err, f"another run (PID {holder.pid} on host {socket.gethostname()}, started ",
                   f"is using the output folder {out} (lock file {out / LOCK_NAME})",
                   "wait for it to finish or pass a different --out")
        assert not (out / "checkpoint.pt").exists()
    finally:
        holder.kill()  # dies without removing its lock file: a stale lock
        holder.wait()
    assert (out / LOCK_NAME).exists()
    rc, err, stdout = _cli(["--out", out] + TINY, capsys)
    assert rc == 0, err
    assert f"note: took over the stale lock {out / LOCK_NAME} of PID {holder.pid}" in stdout and "has ended" in stdout
    assert not (out / LOCK_NAME).exists() and (out / "summary.json").exists()


def test_lock_in_the_same_process_and_removed_on_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    with RunLock(out):
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        rc, err, _ = _cli(["--out", out] + TINY, capsys)
        _one_error(rc, err, f"another run (PID {os.getpid()}")
    assert not (out / LOCK_NAME).exists()

    def broken(*a, **k):
        raise PopsynthError("set-up failed", "fix it")

    monkeypatch.setattr(run_module, "build_problem", broken)
    rc, err, _ = _cli(["--out", out] + TINY, capsys)
    _one_error(rc, err, "set-up failed; fix it")
    assert not (out / LOCK_NAME).exists()


def test_lock_without_fcntl_uses_pid_liveness(tmp_path, capsys):
    """The fallback where fcntl is missing: a lock naming a live PID on this host refuses; a
    dead PID is taken over with a note."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_NAME
    notes = []
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    lk = RunLock(tmp_path, log=notes.append)._acquire_excl()
    assert "took over the stale lock" in notes[0] and f"PID {dead.pid}" in notes[0]
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    lk.release()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    with pytest.raises(PopsynthError, match=f"another run \\(PID {os.getpid()}"):
        RunLock(tmp_path)._acquire_excl()
    lock.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere.example", "started": "then"}))
    with pytest.raises(PopsynthError, match="on host elsewhere.example"):
        RunLock(tmp_path)._acquire_excl()


# ----------------------------------------------------------------------------- data files
def test_truncated_cxb_file_is_refused_before_setup(tmp_path, capsys, monkeypatch):
    import shutil

    from popsynth.paths import data_dir

    d = tmp_path / "data"
    shutil.copytree(data_dir() / "cxb", d / "cxb")
    (d / "counts").symlink_to(data_dir() / "counts")
    (d / "greens").symlink_to(data_dir() / "greens")
    p = d / "cxb" / "rxte_revnivtsev2003.ecsv"
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:-3]))  # cut at a row boundary: still valid ECSV
    monkeypatch.setenv("POPSYNTH_DATA", str(d))
    monkeypatch.setattr(run_module, "build_problem", lambda *a, **k: pytest.fail("set-up must not start"))
    rc, err, _ = _cli(["--out", tmp_path / "o"] + TINY, capsys)
    _one_error(rc, err, f"CXB file {p}: the header declares n_points: 45 but the file has 42 rows (truncated",
               "restore the file")


# ----------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        atomic_write(tmp_path / "f.txt", lambda tmp: Path(tmp).write_text("x"))
        save_checkpoint(tmp_path / "checkpoint.pt", _payload(tmp_path))
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == mode


# ----------------------------------------------------------------------------- XLF interpolator
def _cube():
    z = np.array([0.0, 1.0, 2.0])
    logl_edges, lognh_edges = np.array([41.0, 42.0, 43.0]), np.array([20.0, 21.0, 22.0])
    logl, lognh = 0.5 * (logl_edges[1:] + logl_edges[:-1]), 0.5 * (lognh_edges[1:] + lognh_edges[:-1])
    cube = np.arange(12, dtype=float).reshape(3, 2, 2) + 1
    return XLFCube(cube, z, logl, logl_edges, lognh, lognh_edges, {})


def test_xlf_outside_choices():
    x = _cube()
    with pytest.raises(PopsynthError, match="outside='clampp' is not a known choice; pass outside= one of 'raise', 'zero', 'clamp'"):
        x(0.5, 41.5, 20.5, outside="clampp")
    with pytest.raises(PopsynthError, match="not a known choice"):
        x(0.5, 41.5, 20.5, outside=None)
    with pytest.raises(PopsynthError, match="1 point\\(s\\) outside the cube"):
        x([0.5, 3.0], 41.5, 20.5)
    assert x(3.0, 41.5, 20.5, outside="zero") == 0.0
    # clamp: the value at the nearest edge of the grid
    assert x(3.0, 41.5, 20.5, outside="clamp") == pytest.approx(x(2.0, 41.5, 20.5))
    assert x(1.0, 40.0, 27.0, outside="clamp") == pytest.approx(x(1.0, 41.0, 21.9))
    assert x(1.0, 41.5, 20.5, outside="clamp") == pytest.approx(x(1.0, 41.5, 20.5))


def test_default_output_folder_follows_the_spectral_set():
    """RunConfig derives its default folder from the spectral set (library and CLI alike)."""
    from popsynth.cli import _given, _new_config, build_parser
    from popsynth.run import RunConfig

    assert RunConfig(spec_set=1).out == "checkpoints/spec-set-1"
    assert RunConfig().out == "checkpoints/spec-set-5"
    assert RunConfig(spec_set=2, out="x").out == "x"
    assert _new_config(_given(build_parser().parse_args(["--spec-set", "3"]))).out == "checkpoints/spec-set-3"


def test_progress_bar_on_a_pipe_is_short(tmp_path):
    """The fit's progress (tqdm) on a non-terminal stream: a start and an end line with the step
    count and the status text, not one line per step; a disabled bar writes nothing."""
    import io

    from popsynth.run import fit_progress

    s = io.StringIO()
    p = fit_progress(500, "fit set 5", stream=s)
    for i in range(1, 501):
        p.set_postfix_str(f"best loss {i}", refresh=False)
        p.update(1)
    p.close()
    text = s.getvalue()
    assert "fit set 5 500/500 (100%)" in text and "best loss 500" in text
    assert text.count("fit set 5") <= 12
    quiet = io.StringIO()
    q = fit_progress(10, "x", enabled=False, stream=quiet)
    q.set_postfix_str("y")
    q.update(5)
    q.close()
    assert quiet.getvalue() == ""


def test_model_flag_dispatches(capsys):
    """--model blocks is train.py's own fit; --model physical hands the other options to
    'popsynth physical' (its own checks); anything else is a one-line error."""
    from popsynth.cli import main

    assert main(["--model", "tensor"]) == 2
    assert "unknown model 'tensor'" in capsys.readouterr().err
    assert main(["--model", "blocks", "--spec-set", "9"]) == 2
    assert "unknown spectral set" in capsys.readouterr().err
    assert main(["--model=physical", "--spec-set", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


# ----------------------------------------------------------------------------- parameters vs flags
def test_flag_text_names_flags_for_settings():
    """Library messages name settings in backticks; train.py prints them as its flags."""
    assert flag_text("`starts` must be >= 1, got 0; pass e.g. `seed` 0") == "--starts must be >= 1, got 0; pass e.g. --seed 0"
    assert flag_text("drop `counts` none / `use_ct=False`, or use `mode` cxb") == "drop --counts none / --no-ct, or use --mode cxb"
    assert flag_text("`sys_floor`, `spectral_model`, `resume`, `out`") == "--sys-floor, --spectral-model, --resume, --out"
    assert flag_text("`spectra_seed` must be in 0 .. 2**63 - 1") == "`spectra_seed` must be in 0 .. 2**63 - 1"  # no flag


@pytest.mark.parametrize("changes,text", [
    ({"starts": 0}, "`starts` must be >= 1, got 0; pass a positive number of starts"),
    ({"seed": -1}, "`seed` must be in 0 .. 2**63 - 1, got -1; pass e.g. `seed` 0"),
    ({"weight_prior": float("nan")}, "`weight_prior` must be a finite number, got nan; pass a finite `weight_prior`"),
    ({"chains": 1}, "`chains` must be an integer in 2..64, got 1; pass e.g. `chains` 4"),
    ({"mode": "best"}, "unknown mode 'best'; use `mode` posterior or a19 or joint or cxb"),
    ({"galaxies": "x"}, "unknown galaxy model 'x'; use `galaxies` a19 or sfr or none"),
    ({"xlf": "b15"}, "unknown starting XLF 'b15'; use `xlf` u14 or a15"),
    ({"mode": "joint", "counts": (), "use_ct": False},
     "`mode` joint needs at least one counts or CT constraint; drop `counts` none / `use_ct=False`, or use `mode` cxb"),
])
def test_validate_names_the_setting(changes, text):
    with pytest.raises(PopsynthError) as exc:
        RunConfig(**changes).validate()
    assert str(exc.value) == text


def test_parser_is_made_from_the_config_and_the_registries(capsys):
    """Every flag sets a RunConfig field (FLAGS derived from the options); the allowed names in
    --help come from the registries; a name not allowed is the library's one-line error."""
    import dataclasses

    from popsynth.cli import FLAGS, build_parser
    from popsynth.config import RunConfig as Config
    from popsynth.config import choices
    from popsynth.spectra.sets import SPECTRAL_SETS

    fields = {f.name for f in dataclasses.fields(Config)}
    assert {fld for _, fld in FLAGS.values()} <= fields and len(FLAGS) == 29
    assert FLAGS["no_ct"] == ("--no-ct", "use_ct") and FLAGS["spec_set"] == ("--spec-set", "spec_set")
    assert choices("spec_set") == tuple(sorted(SPECTRAL_SETS)) and choices("optimizer") == ("lm", "adam", "gd")
    text = build_parser().format_help()
    for shown in ("{1,2,3,4,5}", "{lm,adam,gd}", "{chi2,a19}", "{posterior,a19,joint,cxb}", "{u14,a15}"):
        assert shown in text, shown
    with pytest.raises(PopsynthError, match="unknown loss 'l1'; use `loss` chi2 or a19"):
        build_parser().parse_args(["--loss", "l1"])
    args = build_parser().parse_args(["--spec-set", "3", "--starts", "7", "--lr", "0.5"])
    assert (args.spec_set, args.starts, args.lr) == ("3", 7, 0.5)
    rc, err, _ = _cli(["--absorption", "x"], capsys)
    _one_error(rc, err, "unknown absorption function 'x'; use --absorption a19 or u14")


def test_run_config_resolves_its_spectral_set():
    from popsynth.spectra.sets import SPECTRAL_SETS

    assert RunConfig(spec_set=3).spectral_set is SPECTRAL_SETS[3]
    with pytest.raises(PopsynthError, match="unknown spectral set '9'"):
        RunConfig(spec_set=9).spectral_set
