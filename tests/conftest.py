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
