"""One-line error messages for the edges (command line, loaders, checkpoints)."""
from __future__ import annotations


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """The message on one line, cut to `limit` characters (None: whole).

    An OSError that names a file reads "<file>: <reason>"; an error without a
    message reads as its type's name.
    """
    if isinstance(error, OSError) and error.filename:
        text = f"{error.filename}: {error.strerror or error}"
    elif isinstance(error, BaseException):
        text = str(error) or type(error).__name__
    else:
        text = error
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
