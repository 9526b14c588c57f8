"""experiments/swaps.py: the species swaps of a true structure that a matcher tells apart."""
import importlib.util
from pathlib import Path

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

SPEC = importlib.util.spec_from_file_location(
    "swaps", Path(__file__).resolve().parents[1] / "experiments" / "swaps.py")
swaps = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(swaps)


def test_perovskite_swaps_and_which_are_cation_swaps():
    srtio3 = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                       [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    matcher = StructureMatcher(**swaps.MATCHER_KWARGS)
    found = swaps.distinct_swaps(srtio3, matcher)
    assert len(found) == 7  # Sr-Ti, Sr-O x 3, Ti-O x 3: none is the truth again
    assert [both for _, both in found].count(True) == 1  # only Sr-Ti leaves O alone
    assert not any(matcher.fit(srtio3, s) for s, _ in found)


def test_a_swap_that_is_the_same_crystal_is_left_out():
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # CsCl-type cell
    assert swaps.distinct_swaps(nacl, StructureMatcher(**swaps.MATCHER_KWARGS)) == []
