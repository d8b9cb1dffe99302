"""Test-wide settings: keep the embedding cache and numba cache away from the user's home."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    old = os.environ.get("REELPACK_CACHE")
    os.environ["REELPACK_CACHE"] = str(tmp_path_factory.mktemp("reelpack-cache"))
    yield
    if old is None:
        os.environ.pop("REELPACK_CACHE", None)
    else:
        os.environ["REELPACK_CACHE"] = old
