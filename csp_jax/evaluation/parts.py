"""A folder of an evaluation's saved parts (sampled batches, relaxed crystals), so that a stopped
evaluation continues where it stopped with `resume`, and only with the settings it began with."""
from __future__ import annotations

import json
from pathlib import Path

from csp_jax.distributed import barrier, is_main
from csp_jax.files import write_atomic

SETTINGS_FILE = "settings.json"


def refuse_without_resume(folder: Path, resume: bool, what: str) -> None:
    """FileExistsError (naming `what` it holds) when `folder` exists and `resume` is off."""
    if folder.is_dir() and not resume:
        raise FileExistsError(f"{folder} holds {what}: add --resume to continue it, or delete it to "
                              f"start again")


def open_parts(folder: Path, settings: dict, resume: bool, what: str) -> None:
    """Claim `folder` for parts written with `settings` (JSON-able).

    An existing folder is an error without `resume` (FileExistsError naming `what` it holds),
    and with other settings (ValueError); every process checks before the main one creates
    the folder and writes the settings.
    """
    settings_path = folder / SETTINGS_FILE
    refuse_without_resume(folder, resume, what)
    if resume and settings_path.is_file() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(f"--resume: {settings_path} was written with other settings "
                         f"({settings_path.read_text().strip()}); use the same options or delete it")
    barrier(f"{folder.name} checked")
    if is_main():
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(settings_path, json.dumps(settings))
