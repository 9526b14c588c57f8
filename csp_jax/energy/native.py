"""The fused CPU pair convolution of the pair convolution (`fused/pair_conv.cc`), built on first use.

XLA's CPU backend splits one convolution into about 20 loops over the edges,
each a pass through memory; the fused convolution does the gathers, the gate and core
terms, the messages and their sum in one pass (and the gradient in another).
It is compiled once per machine with the C++ compiler (`$CXX`, else `c++`)
against the XLA FFI headers that jaxlib ships, cached in
`$CSP_JAX_CACHE/native` (default `~/.cache/csp_jax/native`), and registered
as two XLA FFI targets for the CPU platform. The cache folder is private to
the user (mode 700, refused when someone else owns it or can write to it); a
cached library is loaded only when its record (`<library>.json`) says it was
built from this source, by this compiler, for this jaxlib and CPU, and its
bytes still have the recorded SHA-256: anything else is rebuilt.

`available()` says whether it can be used. Without a compiler, or
with `CSP_JAX_NATIVE=0`, it is False (with one warning line in the first
case) and `csp_jax.energy.pair_conv` runs its XLA version: same numbers, slower.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

from csp_jax.files import cache_dir

SOURCE = Path(__file__).parent / "fused" / "pair_conv.cc"
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-std=c++17",
         "-shared", "-fPIC")
FORWARD_TARGET = "csp_jax_pair_conv_forward"
BACKWARD_TARGET = "csp_jax_pair_conv_backward"


def _cache_dir() -> Path:
    return cache_dir() / "native"


def _cpu_signature() -> str:
    """What `-march=native` depends on: the CPU model and its flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def _private_dir(path: Path) -> Path:
    """`path`, created with mode 700; RuntimeError when another user owns it or can write to it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise RuntimeError(f"fused-convolution cache {path} belongs to another user")
    if info.st_mode & 0o022:
        path.chmod(info.st_mode & 0o755)  # ours but group/world writable: make it private
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trusted(library: Path, fingerprint: str) -> bool:
    """Whether `library` was built from `fingerprint` (its record says so) and is intact."""
    record = library.with_suffix(".json")
    try:
        saved = json.loads(record.read_text())
        return saved["fingerprint"] == fingerprint and saved["sha256"] == _sha256(library)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build(compiler: str) -> Path:
    """Compile the fused convolution (once per source, compiler, jaxlib and CPU) and return the library."""
    include = jax.ffi.include_dir()
    version = subprocess.run([compiler, "--version"], check=False, capture_output=True, text=True).stdout
    fingerprint = hashlib.sha256("\0".join(
        [SOURCE.read_text(), compiler, version, include, jax.__version__, " ".join(FLAGS),
         _cpu_signature()]).encode()).hexdigest()
    cache = _private_dir(_cache_dir())
    library = cache / f"pair_conv-{fingerprint[:16]}.so"
    if library.exists() and _trusted(library, fingerprint):
        return library
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / library.name
        result = subprocess.run([compiler, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(built)],
                                check=False, capture_output=True, text=True)
        if result.returncode != 0 or not built.is_file():
            raise RuntimeError(f"{compiler} failed on {SOURCE.name}: {result.stderr.strip()[-500:]}")
        record = Path(tmp) / "record.json"
        record.write_text(json.dumps({"fingerprint": fingerprint, "sha256": _sha256(built)}))
        os.replace(built, library)  # atomic: concurrent builders agree on the result
        os.replace(record, library.with_suffix(".json"))
    return library


@functools.cache
def available() -> bool:
    """True when the fused convolution is built, loaded and registered (once per process)."""
    if os.environ.get("CSP_JAX_NATIVE", "1") == "0":
        return False
    compiler = _compiler()
    if compiler is None:
        warnings.warn("csp_jax: no C++ compiler found (set CXX): the pair convolution runs "
                      "without its fused CPU pair convolution (slower, same results)", stacklevel=2)
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
    except (OSError, RuntimeError) as error:
        warnings.warn(f"csp_jax: the fused CPU pair convolution is unavailable ({error}); "
                      "the pair convolution runs without it (slower, same results)", stacklevel=2)
        return False
    jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(library.CspPairConvForward),
                                platform="cpu")
    jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(library.CspPairConvBackward),
                                platform="cpu")
    return True


def active(dtype=jnp.float32) -> bool:
    """Whether the fused convolution runs for arrays of `dtype` here: float32 on the CPU, built,
    and either one device or inside `jax.shard_map` (the chain driver's programs on several
    devices: each device's program sees its own rows).

    Elsewhere with several devices the XLA version runs: the fused convolution has no
    sharding rule, so XLA's partitioner would gather a sharded batch onto every device.
    """
    per_device = jax.device_count() == 1 or bool(jax.sharding.get_abstract_mesh().manual_axes)
    return (jax.default_backend() == "cpu" and per_device and jnp.dtype(dtype) == jnp.float32
            and available())


def usable(*arrays) -> bool:
    """Whether a call on these arrays runs the fused convolution (`active` for all their dtypes)."""
    return all(a.dtype == jnp.float32 for a in arrays) and active()


def _require():
    if not available():
        raise RuntimeError("csp_jax: the fused CPU pair convolution is not available (see the warning above)")


def aggregate(p, q, u, b3, w, mask, receivers, senders):
    """Summed messages [N, d] of one crystal (vmappable).

    p, q: [N, 2d] node projections; u: [E, 2d] edge terms W3 e without their
    bias b3: [2d]; w: [E] edge weights; mask: [E] bool (False on padding);
    receivers, senders: [E] int.
    """
    _require()
    n, d = p.shape[0], p.shape[1] // 2
    call = jax.ffi.ffi_call(FORWARD_TARGET, jax.ShapeDtypeStruct((n, d), jnp.float32),
                            vmap_method="broadcast_all")
    return call(p, q, u, b3, w, mask, receivers.astype(jnp.int32), senders.astype(jnp.int32))


def aggregate_vjp(p, q, u, b3, w, mask, receivers, senders, grad_aggregated):
    """Cotangents of p, q, u and w (that of b3 is the sum of u's over edges) of `aggregate`,
    given grad_aggregated: [N, d]."""
    _require()
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (p, q, u, w))
    call = jax.ffi.ffi_call(BACKWARD_TARGET, shapes, vmap_method="broadcast_all")
    return call(p, q, u, b3, w, mask, receivers.astype(jnp.int32), senders.astype(jnp.int32),
                grad_aggregated)
