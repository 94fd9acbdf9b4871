"""The package installs from a wheel and runs outside the repository, data files included.

Builds a wheel from a copy of the source (so the repository gets no build/ folder), installs it
with ``pip install --no-deps --target`` into a temporary folder (the dependencies come from the
running environment), and runs a tiny fit in a subprocess from a temporary working folder with
``POPSYNTH_CACHE`` in a temporary folder too.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# the data files the wheel must carry: every table the library reads, and the READMEs
DATA_GLOBS = ("*/*.ecsv", "*/*.h5", "*/README.md")


def _setuptools_ok() -> bool:
    try:
        return int(version("setuptools").split(".")[0]) >= 77  # pyproject's build-system.requires
    except Exception:
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not _setuptools_ok():
        pytest.skip("building the wheel here needs setuptools >= 77 in the environment (no build isolation)")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("popsynth", "data"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("popsynth-*.whl")
    return whl


def test_wheel_carries_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "popsynth").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules and modules <= names, sorted(modules - names)
    data = {("popsynth/_data/" + p.relative_to(REPO / "data").as_posix())
            for g in DATA_GLOBS for p in (REPO / "data").glob(g)}
    assert "popsynth/_data/greens/torus.h5" in data and "popsynth/_data/cxb/rxte_revnivtsev2003.ecsv" in data
    assert data <= names, sorted(data - names)
    assert not any(n.startswith(("data/", "tests/", "checkpoints/")) for n in names)


SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path

    import popsynth
    from popsynth.paths import cache_dir, data_dir

    target, repo, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    pkg = Path(popsynth.__file__).resolve().parent
    assert pkg.is_relative_to(target) and not pkg.is_relative_to(repo), pkg
    assert data_dir() == pkg / "_data", data_dir()
    assert cache_dir() == Path(os.environ["POPSYNTH_CACHE"]), cache_dir()

    from popsynth.data.cxb import load_cxb
    from popsynth.mc import load_greens

    cxb = load_cxb()
    torus, slab = load_greens("torus"), load_greens("slab")
    from popsynth import cli

    rc = cli.main(["--starts", "2", "--draws", "2", "--steps", "2", "--mode", "cxb", "--quiet", "--out", str(out)])
    print(json.dumps({"rc": rc, "n_cxb": [len(d.energy) for d in cxb], "kinds": [torus.kind, slab.kind],
                      "data_dir": str(data_dir()), "cache": sorted(p.name for p in cache_dir().rglob("*.pt"))}))
""")


def test_installed_wheel_runs_a_fit_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "popsynth" / "_data" / "greens" / "torus.h5").is_file()
    work, cache, out = tmp_path / "work", tmp_path / "cache", tmp_path / "out"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("POPSYNTH_DATA", "PYTHONPATH")}
    env.update(POPSYNTH_CACHE=str(cache), PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(target), str(REPO), str(out)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0, r.stderr[-3000:]
    assert res["kinds"] == ["torus", "slab"] and len(res["n_cxb"]) == 3 and min(res["n_cxb"]) > 0
    assert Path(res["data_dir"]) == target / "popsynth" / "_data"
    # the spectral table and the three starting cubes (run.starting_cube), all in POPSYNTH_CACHE
    assert [c.split("-")[0] for c in res["cache"]] == ["a15", "set5", "u14", "u14"], res["cache"]
    for name in ("checkpoint.pt", "xlf_best.h5", "xlf_best_a19.npy", "cxb_model.ecsv", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary and isinstance(summary, dict)
    assert list(work.iterdir()) == []  # nothing written to the working folder
