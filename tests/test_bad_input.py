"""Bad input at the public entry points: one `error:` line and exit status 1, or a counted skip.

Generated bad inputs go through the `csp-jax` command (in-process `cli.main`)
and the dataset loader. Each outcome is counted; the test prints the counts and
requires every case to end cleanly: a command exits with status 1 and writes
exactly one line, starting `error:` and naming the input; a bad dataset row is
skipped and counted (or named, with `on_bad_row="error"`). A Python traceback
or a silently accepted bad value fails the test.

Tests `csp_jax.cli` (every sub-command), `csp_jax.errors`, and `csp_jax.data.parse` /
`csp_jax.data.datasets` (bad rows, bad CSV files).
"""
import importlib
import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
from pymatgen.core import Structure

from csp_jax import cli
from csp_jax.data import datasets as data
from helpers import REPO, perovskite_structure, write_csv

PRETRAINED = REPO / "csp_jax" / "pretrained" / "perov5"
OLD_RUN = REPO / "tests" / "fixtures" / "run_before_layout"


def good_cif():
    return perovskite_structure().to(fmt="cif")


def with_cell(cif, **values):
    """`cif` with cell parameters replaced, e.g. with_cell(cif, length_a="nan")."""
    for name, value in values.items():
        cif = re.sub(rf"^(_cell_{name}\s+)\S+", rf"\g<1>{value}", cif, flags=re.M)
    return cif


def with_site(cif, label, xyz=None, symbol=None):
    """`cif` with the atom-site line `label` (Sr0, Ti1, O2, O3, O4) given other fractional
    coordinates `xyz` (three strings) or another element symbol (as symbol and label)."""
    lines = cif.splitlines()
    found = False
    for i, line in enumerate(lines):
        fields = line.split()
        if len(fields) >= 7 and fields[1] == label:
            found = True
            if symbol is not None:
                fields[0:2] = symbol, f"{symbol}1"
            if xyz is not None:
                fields[3:6] = xyz
            lines[i] = "  ".join(fields)
    assert found, label
    return "\n".join(lines) + "\n"


def bad_cifs():
    """(what is wrong, CIF text) pairs that no loader may accept."""
    cif = good_cif()
    cases = [(f"truncated at {f:.0%}", cif[: int(f * cif.index("_atom_site_occupancy"))])
             for f in np.linspace(0.1, 1.0, 10)]
    cases += [(f"NaN {name}", with_cell(cif, **{name: "nan"}))
              for name in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta",
                           "angle_gamma")]
    cases += [("NaN coordinate", with_site(cif, "Ti1", xyz=("nan", "0.5", "0.5"))),
              ("inf coordinate", with_site(cif, "Ti1", xyz=("0.5", "inf", "0.5")))]
    cases += [(f"zero-volume cell {v}", with_cell(cif, **v)) for v in (
        {"length_c": "0"}, {"length_a": "0.0"}, {"angle_gamma": "180"}, {"angle_alpha": "0"},
        {"angle_alpha": "60", "angle_beta": "60", "angle_gamma": "120"}, {"length_b": "1e-9"})]
    cases += [("overlapping atoms", with_site(cif, "O2", xyz=("0.02", "0", "0"))),
              ("atom on another", with_site(cif, "O2", xyz=("0", "0", "0"))),
              ("atoms 0.4 A apart", with_site(cif, "O2", xyz=("0.5", "0.5", "0.4"))),
              ("tiny cell", with_cell(cif, length_a="0.3", length_b="0.3", length_c="0.3")),
              ("oversized cell", with_cell(cif, length_a="900", length_b="900", length_c="900")),
              ("600-atom cell", Structure.from_str(cif, fmt="cif").make_supercell(
                  [5, 5, 5], in_place=False).to(fmt="cif"))]
    cases += [(f"unknown element {s}", with_site(cif, "Ti1", symbol=s))
              for s in ("Xx", "Q", "Ab", "Zz")]
    cases += [("empty", ""), ("blank", "   \n"), ("no data block", "hello\n"),
              ("json", json.dumps({"cif": cif})), ("xyz", "5\nSrTiO3\nSr 0 0 0\n"),
              ("binary", "\x00\x01\x02 data_x"), ("header only", cif[: cif.index("loop_")])]
    return cases


class Tally:
    """Outcome counts of the bad inputs tried."""

    def __init__(self):
        self.counts = Counter()
        self.failures = []

    def record(self, outcome: str, case: str, detail: str = "") -> None:
        self.counts[outcome] += 1
        if outcome not in ("clean error", "counted skip"):
            self.failures.append(f"{case}: {outcome} {detail}".strip())

    def report(self, what: str, capsys) -> None:
        """Print the counts past pytest's capture (they show in CI logs), then check them."""
        tried = sum(self.counts.values())
        with capsys.disabled():
            print(f"\n{what}: inputs tried {tried}, clean errors {self.counts['clean error']}, "
                  f"counted skips {self.counts['counted skip']}, "
                  f"tracebacks {self.counts['traceback']}, accepted {self.counts['accepted']}, "
                  f"unclear {self.counts['unclear error']}")
        assert not self.failures, "\n".join(self.failures)


def test_bad_dataset_rows_are_skipped_and_counted_or_named(tmp_path, capsys):
    cases = bad_cifs()
    tally = Tally()
    path = write_csv(tmp_path / "rows.csv", [good_cif()] + [cif for _, cif in cases])
    with pytest.warns(UserWarning, match=rf"skipped {len(cases)} of {len(cases) + 1} rows"):
        loaded = data.load_csv(path, max_atoms=20, cache=False, workers=1)
    assert list(loaded.rows) == [0]  # the good row alone is kept
    for row, (case, cif) in enumerate(cases, start=1):
        path = write_csv(tmp_path / f"row{row}.csv", [good_cif(), cif])
        try:
            data.load_csv(path, max_atoms=20, on_bad_row="error", cache=False, workers=1)
            tally.record("accepted", case)
        except ValueError as err:
            message = str(err)
            clean = "\n" not in message and str(path) in message and "row 1:" in message
            tally.record("counted skip" if clean else "unclear error", case, message)
        except Exception as err:  # noqa: BLE001 - any other exception is a defect
            tally.record("traceback", case, repr(err))
    tally.report("dataset rows", capsys)
    assert sum(tally.counts.values()) == len(cases) >= 40


class Accepted(Exception):
    """Raised in place of the work (chains, training) a command starts once its input is accepted."""


@pytest.fixture
def no_work(monkeypatch):
    """Commands stop with `Accepted` where they would start sampling or training."""
    def accepted(*args, **kwargs):
        raise Accepted

    for module, name in (("csp_jax.predict", "sample_rows"),
                         ("csp_jax.evaluation.evaluate", "sample_rows"),
                         ("csp_jax.evaluation.displacement", "grow_until_no_overflow"),
                         ("csp_jax.training.loop", "run_step")):
        monkeypatch.setattr(importlib.import_module(module), name, accepted)


def run_cli(argv, capsys):
    """(exit status, stderr lines, raised exception or None) of `csp-jax argv`; status 0
    when the command got as far as its work (`Accepted`)."""
    try:
        status = cli.main(argv)
        raised = None
    except SystemExit as exit_:
        status, raised = exit_.code, None
    except Accepted:
        status, raised = 0, None
    except Exception as err:  # noqa: BLE001 - counted as a traceback
        status, raised = None, err
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.strip()], raised


def check_cli(tally, case, argv, capsys, names=None, says=None):
    """One `error:` line naming `names` (any case) and containing `says` (as written), status 1."""
    status, lines, raised = run_cli(argv, capsys)
    if raised is not None:
        tally.record("traceback", case, repr(raised))
    elif status == 0:
        tally.record("accepted", case)
    elif status == 1 and len(lines) == 1 and lines[0].startswith("error: ") and (
            names is None or names.lower() in lines[0].lower()) and (says is None or says in lines[0]):
        tally.record("clean error", case)
    else:
        tally.record("unclear error", case, f"status {status}: {lines}")


BAD_FORMULAS = ["Xx2O3", "Sr0.5TiO3", "", " ", "Sr101Ti100O299", "srtio3", "SrTiO₃", "Sr(TiO3",
                "123", "Sr-TiO3", "Og2O", "Uue", "SrTiO3)", "H999999Li", "Sr2.5O", "Q", "[]",
                "Sr;TiO3", "Sr TiO3 O-"]
BAD_OVERRIDES = ["train.batch_size=0", "train.batch_size=-4", "train.batch_size=abc",
                 "train.batch_size=1.5", "train.learning_rate=nan", "train.learning_rate=-1e-3",
                 "train.learning_rate=inf", "sampler.num_steps=0", "sampler.step_size_start=-0.5",
                 "sampler.temperature_end=0", "data.geometric_q=1.5", "data.expand_from=atoms", "sampler.segment_length=0",
                 "model.rho0=0", "model.features=0", "neighbors.max_images=-1",
                 "neighbors.edge_factor=nan", "data.max_atoms=0", "data.train_limit=-1",
                 "eval.num_samples=0", "eval.match_timeout=-1", "train.b1=1",
                 "train.regularization=-0.1", "train.nope=1", "nope.batch_size=1",
                 "batch_size=1", "train.batch_size", "train.num_epochs=", "model.rho0=0.05x",
                 "eval.limit=-5", "sampler.num_steps=1e3", "train.keep_checkpoints=-1"]
BAD_OPTIONS = {
    "predict": [["--num-samples", "0"], ["--num-samples", "-1"], ["--num-samples", "abc"],
                ["--num-samples", "2.5"], ["--batch-size", "0"], ["--num-atoms", "0"],
                ["--num-atoms", "7"], ["--num-atoms", "500"], ["--formula-units", "-1"], ["--seed", "-1"],
                ["--num-atoms", "5", "--formula-units", "1"], ["--set", "eval.ranking=vote"],
                ["--set", "relax.fmax=0"], ["--set", "relax.candidates=some"], ["--refine", "chgnet"],
                ["--relax", "--set", "relax.refine_window=-1"], ["--relax", "--refine", "nope"]],
    "evaluate": [["--limit", "-1"], ["--skip", "-1"], ["--limit", "3", "--skip", "3"], ["--refine", "chgnet"],
                 ["--relax", "--refine", "nope"], ["--timeout", "nan"], ["--timeout", "0"], ["--timeout", "-1"],
                 ["--workers", "0"], ["--num-samples", "0"], ["--batch-size", "-2"],
                 ["--data-dir", "/nonexistent/data"], ["--split", "nope"], ["--dataset", "nope"],
                 ["--max-cell-atoms", "-1"], ["--exclude", "mp_20_biternary"], ["--exclude", "nope/val"],
                 ["--exclude", "perov_5/nope"], ["--set", "eval.num_samples=0"],
                 ["--set", "sampler.kernel=nope"], ["--set", "sampler.kernel=no_such_module:kernel"],
                 ["--set", "model.energy=nope"]],
    "displacement": [["--sigma", "-0.1"], ["--sigma", "inf"], ["--num-draws", "0"],
                     ["--num-crystals", "0"], ["--num-crystals", "x"], ["--set", "displacement.sigma=0"]],
}


def test_bad_command_lines_give_one_error_line(capsys, tmp_path, data_dir, monkeypatch, no_work):
    monkeypatch.setenv("CSP_JAX_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    tally = Tally()
    for formula in BAD_FORMULAS:
        check_cli(tally, f"formula {formula!r}", ["predict", "--checkpoint", str(PRETRAINED),
                                                  "--formula", formula, "--out", "p"], capsys)
    for item in BAD_OVERRIDES:
        check_cli(tally, f"--set {item}", ["--config", "test", "--set", item, "--out", "t"],
                  capsys, names=item.split("=")[0])
    for command, options in BAD_OPTIONS.items():
        extra = ["--formula", "SrTiO3"] if command == "predict" else []
        for option in options:
            check_cli(tally, f"{command} {' '.join(option)}",
                      [command, "--checkpoint", str(PRETRAINED), *extra, *option,
                       "--out", "o"], capsys)
    for argv, says in ((["--config", "nope"], "unknown config 'nope'"),
                       (["--config", "test", "--set", "sampler.num_stepz=3"],
                        "unknown config key 'sampler.num_stepz'"),
                       (["--config", "test", "--set", "sampler.num_steps=abc"],
                        "bad value for sampler.num_steps"),
                       (["predict", "--checkpoint", "/nonexistent", "--formula", "SrTiO3"],
                        "not a csp_jax run directory"),
                       (["--config", "test", "--max-steps", "0"], None),
                       (["--config", "test", "--resume", "--out", "missing"], None), (["frobnicate"], None),
                       (["evaluate"], None), (["predict", "--checkpoint", str(PRETRAINED)], None)):
        check_cli(tally, " ".join(argv), argv, capsys, says=says)
    tally.report("command lines", capsys)
    assert not list(tmp_path.iterdir())  # nothing was written for a refused command
    assert sum(tally.counts.values()) >= 93


def run_dirs(tmp_path):
    """(what is wrong, run directory) pairs no command may load."""
    tmp_path.mkdir()
    cases = [("missing", tmp_path / "missing"), ("a file", tmp_path / "file"),
             ("empty", tmp_path / "empty")]
    (tmp_path / "file").write_text("not a run")
    (tmp_path / "empty").mkdir()

    def exported(name, config_text=None, variables=None):
        folder = tmp_path / name
        shutil.copytree(PRETRAINED, folder)
        if config_text is not None:
            (folder / "config.json").write_text(config_text)
        if variables is not None:
            (folder / "variables.npz").write_bytes(variables)
        return folder

    config = json.loads((PRETRAINED / "config.json").read_text())
    bigger = json.loads(json.dumps(config))
    bigger["model"]["features"] = 64
    unknown = json.loads(json.dumps(config))
    unknown["train"]["nope"] = 1
    negative = json.loads(json.dumps(config))
    negative["eval"]["batch_size"] = -1
    wrong_type = json.loads(json.dumps(config))
    wrong_type["model"]["features"] = "32"
    cases += [("garbage config", exported("garbage", "{not json")),
              ("empty config", exported("empty_config", "")),
              ("config of a list", exported("list_config", "[1, 2]")),
              ("unknown key", exported("unknown", json.dumps(unknown))),
              ("negative batch size", exported("negative", json.dumps(negative))),
              ("string for an int", exported("wrong_type", json.dumps(wrong_type))),
              ("other model size", exported("bigger", json.dumps(bigger))),
              ("truncated variables", exported("truncated", variables=(
                  PRETRAINED / "variables.npz").read_bytes()[:1000])),
              ("empty variables", exported("no_variables", variables=b""))]
    old = tmp_path / "old_bigger"
    shutil.copytree(OLD_RUN, old)
    old_config = json.loads((old / "config.json").read_text())
    old_config["model"]["features"] = 16
    (old / "config.json").write_text(json.dumps(old_config))
    no_checkpoints = tmp_path / "no_checkpoints"
    no_checkpoints.mkdir()
    shutil.copy(OLD_RUN / "config.json", no_checkpoints)
    cases += [("orbax checkpoint of another size", old), ("no checkpoints", no_checkpoints)]
    return cases


def test_bad_run_directories_give_one_error_line(capsys, tmp_path, data_dir, monkeypatch,
                                                 no_work):
    monkeypatch.setenv("CSP_JAX_DATA", str(data_dir))
    tally = Tally()
    for case, folder in run_dirs(tmp_path / "runs"):
        for command, extra in (("predict", ["--formula", "SrTiO3", "--num-samples", "1"]),
                               ("evaluate", ["--limit", "1", "--num-samples", "1"]),
                               ("displacement", ["--num-crystals", "1", "--num-draws", "2"])):
            check_cli(tally, f"{command} on {case}",
                      [command, "--checkpoint", str(folder), *extra, "--out",
                       str(tmp_path / "out")], capsys, names=str(folder))
    tally.report("run directories", capsys)
    assert not (tmp_path / "out").exists()
    assert sum(tally.counts.values()) >= 40


def test_bad_csv_files_give_one_error_line(tmp_path, capsys):
    tally = Tally()
    files = {"empty file": b"", "header only": b",material_id,cif\n",
             "wrong header": b"id,structure\n0,x\n", "no header": b"0,m-0,data_x\n",
             "binary": bytes(range(256)), "bad gzip": b"\x1f\x8b\x08garbage"}
    for case, content in files.items():
        path = tmp_path / ("bad.csv.gz" if case == "bad gzip" else f"{case.replace(' ', '_')}.csv")
        path.write_bytes(content)
        try:
            data.load_csv(path, cache=False, workers=1)
            tally.record("accepted", case)
        except (ValueError, OSError) as err:
            message = str(err)
            clean = "\n" not in message and path.name in message
            tally.record("clean error" if clean else "unclear error", case, message)
        except Exception as err:  # noqa: BLE001 - any other exception is a defect
            tally.record("traceback", case, repr(err))
    tally.report("CSV files", capsys)
