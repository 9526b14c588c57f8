"""Shared test fixtures: the data directory and float64 switching.

What the tests share besides fixtures (the repository path `REPO`, the SrTiO3
and random crystal builders, the CSV writer) is in `helpers.py`; the stand-in
energy of the MALA and chain driver tests in `sampler_stand_ins.py`. Which
files test which module: `README.md` here.

The session keeps XLA compilations in `$CSP_JAX_CACHE/xla`, as the `csp-jax`
command does, so tests that build the same programs compile them once.
"""
import os
from pathlib import Path

import jax
import pytest

from csp_jax.sampling.driver import enable_compilation_cache
from helpers import REPO

enable_compilation_cache()


def find_data_dir():
    """$CSP_JAX_DATA if set, else ../shared/data beside the checkout, else None."""
    env = os.environ.get("CSP_JAX_DATA")
    if env:
        return Path(env)
    default = REPO.parent / "shared" / "data"
    return default if default.is_dir() else None


@pytest.fixture(scope="session")
def data_dir():
    path = find_data_dir()
    if path is None or not path.is_dir():
        pytest.skip("no data directory: set CSP_JAX_DATA or place shared/data beside the checkout")
    return path


@pytest.fixture
def x64():
    """The test runs with float64 enabled (`pytestmark = pytest.mark.usefixtures("x64")`)."""
    with jax.enable_x64(True):
        yield
