"""The README's Python examples run as written (in order, in one namespace).

Tests `README.md`.
"""
import re

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # the README's examples


def python_blocks():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run(data_dir, monkeypatch):
    monkeypatch.setenv("CSP_JAX_DATA", str(data_dir))
    blocks = python_blocks()
    assert len(blocks) >= 3
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert len(namespace["test"]) == 3785
    assert namespace["energies"].shape == (2,)
    assert namespace["dh_dx"].shape == (8, 3) and namespace["dh_dl"].shape == (3, 3)
    assert namespace["result"].states.crystal.lattice.shape == (4, 3, 3)
