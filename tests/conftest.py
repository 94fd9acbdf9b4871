import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Spectral tables built by tests go to a temporary cache, never the repository's cache/."""
    d = tmp_path_factory.mktemp("popsynth-cache")
    old = os.environ.get("POPSYNTH_CACHE")
    os.environ["POPSYNTH_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("POPSYNTH_CACHE", None)
    else:
        os.environ["POPSYNTH_CACHE"] = old


# Tiny finished runs shared by the product tests (results, compare, bhad, unresolved, forecast,
# mock): built once per session, read-only for the tests (their outputs go to tmp_path).
def _tiny_run(tmp_path_factory, name, **kw):
    from popsynth.run import RunConfig, run

    out = tmp_path_factory.mktemp(name)
    run(RunConfig(out=str(out), draws=4, steps=20, progress=False, **kw), log=lambda *a, **k: None)
    return out


def _loaded(folder):
    """A run read back (popsynth.results.load_run) with its set-up built."""
    from popsynth.results import load_run

    r = load_run(folder)
    r.problem()
    return r


@pytest.fixture(scope="session")
def tiny_a19_run(tmp_path_factory):
    """Folder of an A19-mode run: 6 starts, 4 spectral draws, 20 steps."""
    return _tiny_run(tmp_path_factory, "tiny_a19", starts=6, mode="a19")


@pytest.fixture(scope="session")
def tiny_a19_loaded(tiny_a19_run):
    return _loaded(tiny_a19_run)


@pytest.fixture(scope="session")
def tiny_joint_run(tmp_path_factory):
    """Folder of a joint-mode run: 4 starts, 4 spectral draws, 20 steps."""
    return _tiny_run(tmp_path_factory, "tiny_joint", starts=4, mode="joint")


@pytest.fixture(scope="session")
def tiny_joint_loaded(tiny_joint_run):
    return _loaded(tiny_joint_run)
