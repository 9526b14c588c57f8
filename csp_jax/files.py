"""Files on disk: the cache root every cache lives under, and atomic writes.

`cache_dir()` is `$CSP_JAX_CACHE`, else `~/.cache/csp_jax` (also when the
variable is set but empty); the XLA programs (`xla/`), the native kernel
(`native/`), parsed datasets and downloads (`data/`) all live below it.
`write_atomic` writes so that a process killed at any moment leaves the old
file or the new one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

CACHE_ENV = "CSP_JAX_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: `override` if given, else `$CSP_JAX_CACHE`, else ~/.cache/csp_jax."""
    chosen = override if override is not None else os.environ.get(CACHE_ENV)
    return Path(chosen or "~/.cache/csp_jax").expanduser()


def write_atomic(target: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `target` through a temporary file in the same folder and a rename:
    readers never see a half-written file, and a failed write leaves no temporary file."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
