"""Tests of csp_jax.data's loading: finding, downloading, parsing, caching and bad rows.

Tests `csp_jax.data.sources`, `csp_jax.data.parse`, `csp_jax.data.cache`, `csp_jax.data.datasets`,
`csp_jax.data.registry`.
"""
import csv
import gzip
import hashlib
import http.server
import threading
import time
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from csp_jax.data import datasets as data, parse, sources
from csp_jax.data.registry import DATASETS, Checksum
from helpers import perovskite_structure, write_csv

# A cubic perovskite written in a skewed (non-reduced) basis of the cubic cell.
SKEWED_LATTICE = [[3.9, 0.0, 0.0], [3.9, 3.9, 0.0], [0.0, 3.9, 3.9]]


def perovskite(lattice=SKEWED_LATTICE):
    cubic = perovskite_structure()
    return Structure(Lattice(lattice), cubic.species, cubic.cart_coords,
                     coords_are_cartesian=True, to_unit_cell=True)


def rocksalt():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def with_nan(cif, key):
    """`cif` with the value of the line starting with `key` (after stripping) set to nan."""
    lines = cif.splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip().startswith(key))
    fields = lines[i].split()
    fields[1 if key.startswith("_") else 3] = "nan"
    lines[i] = "  ".join(fields)
    return "\n".join(lines) + "\n"


@pytest.fixture
def mixed_csv(tmp_path):
    """Rows: good, broken CIF, good, NaN lattice length, 8-atom rocksalt (over a cap of 5),
    good, NaN coordinate (pymatgen cannot parse it)."""
    good = perovskite().to(fmt="cif")
    cifs = [good, "data_broken\n_cell_length_a oops\n", good, with_nan(good, "_cell_length_c"),
            rocksalt().to(fmt="cif"), good, with_nan(good, "O  O4")]
    return write_csv(tmp_path / "mixed.csv", cifs)


def test_known_splits_all_have_checksums():
    splits = sources.known_splits()
    assert set(splits) == {"perov_5", "mp_20", "mpts_52", "mp_20_biternary"}
    for dataset, names in splits.items():
        assert names == (("val", "test") if dataset == "mp_20_biternary" else ("train", "val", "test"))
        for split in names:
            blob = sources.CHECKSUMS[(dataset, split)].git_blob_sha1
            assert len(blob) == 40 and int(blob, 16) >= 0


def test_git_blob_sha1_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert sources.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_subset_indices_are_fixed_nested_and_sorted():
    first = data.subset_indices(1000, 10)
    assert np.array_equal(first, data.subset_indices(1000, 10))
    assert len(np.unique(first)) == 10 and np.all(np.diff(first) > 0)
    assert set(data.subset_indices(1000, 3)) <= set(first)
    assert not np.array_equal(first, np.arange(10))  # a shuffle, not the head of the file
    assert np.array_equal(data.subset_indices(7, 0), np.arange(7))
    assert np.array_equal(data.subset_indices(7, 50), np.arange(7))
    # skip: the crystals that limit=10 adds to limit=3, disjoint from those, together all 10
    rest = data.subset_indices(1000, 10, skip=3)
    assert len(rest) == 7 and not set(rest) & set(data.subset_indices(1000, 3))
    assert np.array_equal(np.sort(np.concatenate([data.subset_indices(1000, 3), rest])), first)
    assert np.array_equal(data.subset_indices(7, 0, skip=2), np.sort(
        np.random.default_rng(data.SUBSET_SEED).permutation(7)[2:]))
    with pytest.raises(ValueError, match="eval.skip=10 leaves none"):
        data.subset_indices(1000, 10, skip=10)


def test_load_reduces_cell_and_keeps_pymatgen_positions(tmp_path):
    structure = perovskite()
    path = write_csv(tmp_path / "one.csv", [structure.to(fmt="cif")] * 2)
    ds = data.load_csv(path, cache_dir=tmp_path / "cache")
    assert ds.species.shape == (2, 5) and ds.species.dtype == np.int32
    assert ds.positions.shape == (2, 5, 3) and ds.positions.dtype == np.float32
    assert ds.lattice.shape == (2, 3, 3) and ds.lattice.dtype == np.float32
    assert list(ds.material_ids) == ["m-0", "m-1"] and list(ds.rows) == [0, 1]
    # the skewed basis is reduced to the cubic cell, as pymatgen does it
    reduced = Structure.from_str(structure.to(fmt="cif"), fmt="cif").get_reduced_structure()
    np.testing.assert_allclose(ds.lattice[0], reduced.lattice.matrix, atol=1e-5)
    np.testing.assert_allclose(ds.positions[0], reduced.cart_coords, atol=1e-5)
    np.testing.assert_allclose(np.sort(ds.structure(0).lattice.abc), [3.9] * 3, atol=1e-5)
    assert ds.structure(1).matches(structure)
    batch = ds.crystals
    np.testing.assert_allclose(np.asarray(batch.volume), structure.volume, rtol=1e-5)
    sub = ds.subset(np.array([1]))
    assert len(sub) == 1 and sub.material_ids[0] == "m-1" and sub.max_atoms == 5


def test_bad_rows_skipped_with_one_warning(mixed_csv, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load_csv(mixed_csv, max_atoms=5, cache_dir=tmp_path / "cache", workers=1)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    message = messages[0]
    assert "\n" not in message and str(mixed_csv) in message
    assert "skipped 4 of 7 rows" in message
    assert ("reasons: 2 unparseable CIF, 1 non-finite lattice or coordinates, "
            "1 more than max_atoms atoms; first: row 1: unparseable CIF") in message
    assert list(ds.material_ids) == ["m-0", "m-2", "m-5"] and list(ds.rows) == [0, 2, 5]
    assert np.all(ds.num_atoms == 5)


def test_bad_rows_error_names_file_and_row(mixed_csv, tmp_path):
    with pytest.raises(ValueError) as info:
        data.load_csv(mixed_csv, max_atoms=5, on_bad_row="error", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{mixed_csv}: row 1: unparseable CIF")


def test_no_cap_pads_to_largest(mixed_csv, tmp_path):
    with pytest.warns(UserWarning, match="skipped 3 of 7 rows"):
        ds = data.load_csv(mixed_csv, cache_dir=tmp_path / "cache", workers=1)
    assert ds.max_atoms == 8
    assert list(ds.num_atoms) == [5, 5, 8, 5]


def test_limit_parses_only_up_to_the_first_usable_crystals(mixed_csv, tmp_path, monkeypatch):
    parsed = []
    parse_cif = parse._parse_cif
    monkeypatch.setattr(parse, "_parse_cif", lambda job: parsed.append(job) or parse_cif(job))
    with pytest.warns(UserWarning, match="skipped 1 of 3 rows"):
        ds = data.load_csv(mixed_csv, max_atoms=5, limit=2, cache_dir=tmp_path / "c", workers=1)
    assert list(ds.rows) == [0, 2] and len(parsed) == 3
    with pytest.warns(UserWarning, match="skipped 4 of 7 rows"):  # fewer usable rows than asked
        assert list(data.load_csv(mixed_csv, max_atoms=5, limit=9, cache_dir=tmp_path / "c",
                                  workers=1).rows) == [0, 2, 5]
    with pytest.raises(ValueError, match="limit must be a positive"):
        data.load_csv(mixed_csv, limit=0)


def test_cache_hit_skips_parsing_and_repeats_warning(mixed_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("CSP_JAX_CACHE", str(tmp_path / "envcache"))
    with pytest.warns(UserWarning):
        first = data.load_csv(mixed_csv, max_atoms=5, workers=1)
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1

    def no_parsing(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(data, "parse_rows", no_parsing)
    with pytest.warns(UserWarning, match="skipped 4 of 7 rows"):
        second = data.load_csv(mixed_csv, max_atoms=5)
    for name in ("species", "positions", "lattice", "material_ids", "rows"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    with pytest.raises(ValueError, match="row 1: unparseable CIF"):
        data.load_csv(mixed_csv, max_atoms=5, on_bad_row="error")
    with pytest.raises(AssertionError, match="cache miss"):  # other options, other key
        data.load_csv(mixed_csv, max_atoms=6)


def test_damaged_cache_file_is_rebuilt_not_loaded(mixed_csv, tmp_path):
    with pytest.warns(UserWarning):
        first = data.load_csv(mixed_csv, max_atoms=5, cache_dir=tmp_path / "c", workers=1)
    (cache_file,) = (tmp_path / "c").glob("*.npz")
    whole = cache_file.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"PK\x03\x04 not a zip"):
        cache_file.write_bytes(damaged)
        with pytest.warns(UserWarning, match="skipped 4 of 7 rows"):
            again = data.load_csv(mixed_csv, max_atoms=5, cache_dir=tmp_path / "c", workers=1)
        np.testing.assert_array_equal(again.positions, first.positions)
        assert cache_file.read_bytes() == whole  # rewritten whole


def test_csv_without_cif_column_is_refused(tmp_path):
    path = tmp_path / "nocif.csv"
    path.write_text(",material_id,formula\n0,m-0,SrTiO3\n")
    with pytest.raises(ValueError, match="no 'cif' column"):
        data.load_csv(path, cache_dir=tmp_path / "cache")


def test_missing_data_dir_error(monkeypatch, tmp_path):
    monkeypatch.delenv("CSP_JAX_DATA", raising=False)
    with pytest.raises(sources.MissingDataError, match="CSP_JAX_DATA"):
        sources.resolve_data_dir()
    with pytest.raises(sources.MissingDataError, match="CSP_JAX_DATA"):
        data.load_split("perov_5", "test", cache_dir=tmp_path / "cache")
    monkeypatch.setenv("CSP_JAX_DATA", str(tmp_path))
    assert sources.resolve_data_dir() == tmp_path
    with pytest.raises(sources.MissingDataError, match="perov_5/test not found") as info:
        data.load_split("perov_5", "test", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown split"):
        sources.split_path("perov_5", "training", tmp_path)


def test_finds_gzipped_split(tmp_path):
    (tmp_path / "perov_5").mkdir()
    text = write_csv(tmp_path / "plain.csv", [perovskite().to(fmt="cif")]).read_bytes()
    (tmp_path / "perov_5" / "val.csv.gz").write_bytes(gzip.compress(text))
    ds = data.load_split("perov_5", "val", tmp_path, cache_dir=tmp_path / "cache")
    assert len(ds) == 1 and ds.max_atoms == DATASETS["perov_5"].max_atoms
    found, missing = data.splits_at_hand("perov_5", tmp_path, cache_dir=tmp_path / "cache")
    assert [len(d) for d in found] == [1] and missing == ["train", "test"]


@pytest.fixture
def file_server():
    """An HTTP server on 127.0.0.1 serving `files` ({url path: bytes}); yields (base URL, files)."""
    files = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            behaviour = files.get("behaviour")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            files.setdefault("requests", []).append(self.path)
            if behaviour == "stall":
                time.sleep(2.0)
            elif behaviour == "truncate":
                body = body[: len(body) // 2]  # the connection closes short of Content-Length
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/data", files
    server.shutdown()
    server.server_close()


@pytest.fixture
def served_split(file_server, tmp_path, monkeypatch):
    """mp_20/test served as a 2-row CSV whose checksums are registered as expected."""
    base_url, files = file_server
    payload = write_csv(tmp_path / "payload.csv", [perovskite().to(fmt="cif")] * 2).read_bytes()
    files["/data/mp_20/test.csv"] = payload
    monkeypatch.setitem(sources.CHECKSUMS, ("mp_20", "test"), Checksum(
        sources.git_blob_sha1(payload), hashlib.sha256(payload).hexdigest()))
    return base_url, payload


def test_download_of_a_gzip_source_checks_both_digests(file_server, tmp_path, monkeypatch):
    """mp_20_biternary is served gzip-compressed: the git blob is the .gz file's, the
    SHA-256 the CSV text's; the file is kept as served."""
    base_url, files = file_server
    text = write_csv(tmp_path / "payload.csv", [perovskite().to(fmt="cif")] * 2).read_bytes()
    served = gzip.compress(text)
    files["/data/mp_20_biternary/test.csv.gz"] = served
    monkeypatch.setenv("CSP_JAX_DATA_URL", base_url)
    monkeypatch.setitem(sources.CHECKSUMS, ("mp_20_biternary", "test"), Checksum(
        sources.git_blob_sha1(served), hashlib.sha256(text).hexdigest()))
    ds = data.load_split("mp_20_biternary", "test", tmp_path / "data", download=True, cache_dir=tmp_path / "c")
    assert len(ds) == 2 and (tmp_path / "data" / "mp_20_biternary" / "test.csv.gz").read_bytes() == served
    monkeypatch.setitem(sources.CHECKSUMS, ("mp_20_biternary", "test"), Checksum(
        sources.git_blob_sha1(served), hashlib.sha256(served).hexdigest()))  # the wrong bytes' digest
    with pytest.raises(sources.ChecksumError):
        sources.download_split("mp_20_biternary", "test", tmp_path / "other")
    assert not (tmp_path / "other" / "mp_20_biternary" / "test.csv.gz").exists()


def test_download_into_writable_data_dir(served_split, tmp_path, monkeypatch):
    base_url, payload = served_split
    root, cache = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    with pytest.raises(sources.MissingDataError, match="enable download"):
        data.load_split("mp_20", "test", root, cache_dir=cache)
    monkeypatch.setenv("CSP_JAX_DATA_URL", base_url)
    ds = data.load_split("mp_20", "test", root, download=True, cache_dir=cache)
    assert len(ds) == 2 and ds.max_atoms == 20
    assert (root / "mp_20" / "test.csv").read_bytes() == payload
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["test.csv"]
    # found again without downloading
    assert sources.split_path("mp_20", "test", root) == root / "mp_20" / "test.csv"


def test_download_without_data_dir_goes_to_cache(served_split, tmp_path, monkeypatch):
    base_url, payload = served_split
    monkeypatch.delenv("CSP_JAX_DATA", raising=False)
    cache = tmp_path / "cache"
    path = sources.split_path("mp_20", "test", download=True, base_url=base_url, cache_dir=cache)
    assert path == cache / "data" / "mp_20" / "test.csv" and path.read_bytes() == payload
    assert sources.split_path("mp_20", "test", cache_dir=cache) == path


def test_download_falls_back_to_cache_when_data_dir_unwritable(served_split, tmp_path):
    base_url, payload = served_split
    (tmp_path / "blocker").write_text("a file, so no directory can be made below it")
    root, cache = tmp_path / "blocker" / "data", tmp_path / "cache"
    path = sources.split_path("mp_20", "test", root, download=True, base_url=base_url,
                           cache_dir=cache)
    assert path == cache / "data" / "mp_20" / "test.csv" and path.read_bytes() == payload


def test_download_checksum_mismatch_keeps_nothing(served_split, tmp_path, monkeypatch):
    base_url, payload = served_split
    monkeypatch.setitem(sources.CHECKSUMS, ("mp_20", "test"),
                        Checksum(sources.git_blob_sha1(payload + b"x")))
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(sources.ChecksumError, match="checksum mismatch") as info:
        sources.split_path("mp_20", "test", root, download=True, base_url=base_url)
    assert "\n" not in str(info.value)
    assert list(root.rglob("*")) == []


@pytest.mark.parametrize("behaviour", ["truncate", "stall"])
def test_download_cut_short_or_stalled_is_retried_then_one_line(served_split, file_server, tmp_path,
                                                                monkeypatch, behaviour):
    base_url, payload = served_split
    files = file_server[1]
    files["behaviour"] = behaviour
    monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 0.3)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(sources.MissingDataError, match="after 3 attempts") as info:
        sources.split_path("mp_20", "test", root, download=True, base_url=base_url)
    assert "\n" not in str(info.value) and len(files["requests"]) == 3
    assert list(root.rglob("*")) == []  # nothing a later run could trust
    files["behaviour"] = None  # the server recovers: the next download is whole
    path = sources.split_path("mp_20", "test", root, download=True, base_url=base_url)
    assert path.read_bytes() == payload


def test_download_http_error_is_one_line(file_server, tmp_path):
    base_url, _ = file_server
    with pytest.raises(sources.MissingDataError, match="download failed") as info:
        sources.download_split("mpts_52", "train", tmp_path, base_url=base_url)
    assert "mpts_52/train.csv" in str(info.value) and "\n" not in str(info.value)


# ---- the real benchmark files (skipped without a data directory) ----

def read_cifs(path, rows):
    """The `cif` text of the given data records, read independently of csp_jax.data."""
    csv.field_size_limit(2**31 - 1)
    with gzip.open(path, "rt", newline="") as f:
        records = list(csv.DictReader(f))
    return [records[r]["cif"] for r in rows]


@pytest.fixture(scope="session")
def perov_test(data_dir):
    """The whole split, through the session's cache (other test files load it too)."""
    return data.load_split("perov_5", "test", data_dir, on_bad_row="error")


MPTS_ROWS = 300  # the first rows of MPTS-52 val: crystals of 1 to 52 atoms, parsed in seconds


@pytest.fixture(scope="session")
def mpts_val(data_dir):
    return data.load_split("mpts_52", "val", data_dir, on_bad_row="error", limit=MPTS_ROWS)


def check_against_pymatgen(ds, rows):
    """Loaded crystals at CSV records `rows` equal pymatgen's Niggli-reduced structures."""
    for row, cif in zip(rows, read_cifs(ds.source, rows)):
        i = int(np.flatnonzero(ds.rows == row)[0])
        reduced = Structure.from_str(cif, fmt="cif").get_reduced_structure()
        n = len(reduced)
        assert ds.num_atoms[i] == n
        np.testing.assert_allclose(ds.lattice[i], reduced.lattice.matrix, atol=1e-4)
        np.testing.assert_allclose(ds.positions[i, :n], reduced.cart_coords, atol=1e-4)
        np.testing.assert_array_equal(ds.species[i, :n], [s.Z for s in reduced.species])
        # Niggli reduction is idempotent: reducing the loaded cell changes nothing
        lattice = Lattice(ds.lattice[i].astype(np.float64))
        again = lattice.get_niggli_reduced_lattice()
        np.testing.assert_allclose(again.abc, lattice.abc, rtol=1e-5)
        np.testing.assert_allclose(again.angles, lattice.angles, atol=1e-3)
        frac = ds.structure(i).frac_coords
        assert np.all(frac > -1e-5) and np.all(frac < 1 + 1e-5)


@pytest.mark.slow  # 3785 CIFs parsed when the cache is fresh: about 15 s
def test_perov_5_test_split(perov_test):
    assert len(perov_test) == 3785 and perov_test.max_atoms == 5
    assert np.all(perov_test.num_atoms == 5)
    assert len(set(perov_test.material_ids)) == 3785
    assert np.all(np.isfinite(perov_test.positions)) and np.all(perov_test.crystals.volume > 0)
    check_against_pymatgen(perov_test, [0, 1234, 3784])


@pytest.mark.slow  # 300 MPTS-52 rows parsed: about 7 s
def test_mpts_52_val_split(mpts_val):
    assert len(mpts_val) == MPTS_ROWS and mpts_val.max_atoms == 52
    assert "27,380" in DATASETS["mpts_52"].note and "5.5x" in DATASETS["mpts_52"].note
    assert mpts_val.num_atoms.max() > 40 and mpts_val.num_atoms.min() >= 1
    # padding atoms sit after the real ones
    order = np.argsort(mpts_val.species == 0, axis=1, kind="stable")
    np.testing.assert_array_equal(order, np.broadcast_to(np.arange(52), order.shape))
    big = int(mpts_val.rows[np.argmax(mpts_val.num_atoms)])
    check_against_pymatgen(mpts_val, [0, MPTS_ROWS // 2, big])


@pytest.mark.slow  # 300 MPTS-52 rows parsed (shared with the test above)
def test_select_keeps_small_cells_not_excluded_in_order(mpts_val):
    excluded = set(mpts_val.material_ids[::7].astype(str))
    small = mpts_val.select(most_atoms=20, exclude_ids=excluded)
    expected = [m for m, n in zip(mpts_val.material_ids.astype(str), mpts_val.num_atoms)
                if n <= 20 and m not in excluded]
    assert 0 < len(small) == len(expected) < len(mpts_val)
    assert small.material_ids.astype(str).tolist() == expected
    assert small.max_atoms == mpts_val.max_atoms and np.all(small.num_atoms <= 20)
    everything = mpts_val.select()
    np.testing.assert_array_equal(everything.species, mpts_val.species)


@pytest.mark.slow  # the whole Perov-5 test split parsed when the cache is fresh
def test_cached_reload_is_identical(perov_test, data_dir, monkeypatch):
    def no_parsing(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(data, "parse_rows", no_parsing)
    again = data.load_split("perov_5", "test", data_dir)
    for name in ("species", "positions", "lattice", "material_ids", "rows"):
        np.testing.assert_array_equal(getattr(again, name), getattr(perov_test, name))


def test_registry_sizes_and_checksums_match_the_files_here(data_dir):
    """Each dataset record's row count and checksums hold for every split CSV present."""
    import csv
    import hashlib
    import io

    checked = 0
    for info in DATASETS.values():
        for split, size in info.sizes.items():
            try:
                path = sources.split_path(info.name, split, data_dir)
            except FileNotFoundError:
                continue
            text = sources.read_csv_text(path)
            assert sum(1 for _ in csv.DictReader(io.StringIO(text.decode()))) == size, (info.name, split)
            served = path.read_bytes() if info.suffix == ".csv.gz" else text  # the blob of what is served
            assert sources.git_blob_sha1(served) == info.checksums[split].git_blob_sha1
            if info.checksums[split].sha256:
                assert hashlib.sha256(text).hexdigest() == info.checksums[split].sha256
            checked += 1
    assert checked >= 7  # Perov-5's three splits, MPTS-52's and MP-20 (binary + ternary)'s val and test


BITERNARY_ROWS = 400  # the first rows of each mp_20_biternary file: cells of 2 to 20 atoms


@pytest.mark.slow  # parses 400 rows of each file
@pytest.mark.parametrize("split", ["val", "test"])
def test_mp_20_biternary_split(data_dir, split):
    ds = data.load_split("mp_20_biternary", split, data_dir, on_bad_row="error", limit=BITERNARY_ROWS)
    info = DATASETS["mp_20_biternary"]
    assert info.display_name == "MP-20 (binary + ternary)" and "27,136" in info.note
    assert len(ds) == BITERNARY_ROWS and ds.max_atoms == 20
    assert ds.num_atoms.min() >= 2 and ds.num_atoms.max() <= 20 and len(np.unique(ds.num_atoms)) > 10
    elements = [len(np.unique(row[row > 0])) for row in ds.species]
    assert set(elements) == {2, 3}  # binary and ternary compounds only
    big = int(ds.rows[np.argmax(ds.num_atoms)])
    check_against_pymatgen(ds, [0, BITERNARY_ROWS // 2, big])


@pytest.mark.slow
def test_mp_20_biternary_splits_share_no_material(data_dir):
    ids = [set(data.load_split("mp_20_biternary", s, data_dir, limit=BITERNARY_ROWS).material_ids)
           for s in ("val", "test")]
    assert not ids[0] & ids[1]


@pytest.mark.slow
def test_holdout_of_the_training_split_is_fixed_and_disjoint(perov_test, data_dir):
    from csp_jax.config import DataConfig

    config = DataConfig(dataset="perov_5", train_split="test", val_split="", val_holdout=100)
    train, val = data.training_splits(config, data_dir)
    assert len(train) == len(perov_test) - 100 and len(val) == 100
    assert not set(train.material_ids) & set(val.material_ids)
    assert set(train.material_ids) | set(val.material_ids) == set(perov_test.material_ids)
    again = data.training_splits(config, data_dir)[1]
    np.testing.assert_array_equal(again.material_ids, val.material_ids)
    limited = data.training_splits(DataConfig(dataset="perov_5", train_split="test", val_split="",
                                              val_holdout=100, train_limit=50, val_limit=10), data_dir)
    np.testing.assert_array_equal(limited[0].material_ids, train.material_ids[:50])
    np.testing.assert_array_equal(limited[1].material_ids, val.material_ids[:10])
    with pytest.raises(ValueError, match="val_holdout"):
        data.training_splits(DataConfig(dataset="perov_5", train_split="test", val_split=""), data_dir)
    with pytest.raises(ValueError, match="unknown split mp_20_biternary/train"):
        data.training_splits(DataConfig(dataset="mp_20_biternary"), data_dir)
