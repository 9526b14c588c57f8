"""Training-curve figure from a run's metrics file (JSON lines)."""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # figures without pyplot: no backend is chosen or changed


def read_metrics(path: Path) -> list[dict]:
    """The records of a JSON-lines metrics file (empty if it does not exist). A last
    line cut short (the process was killed while writing it) is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not a JSON record") from None
    return records


def plot_training_curve(metrics_path: Path, png_path: Path) -> None:
    """Loss and mean energies per step, validation loss per epoch, in one PNG."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_energy = fig.subplots(1, 2)
    if train:
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], lw=0.8, label="train loss")
        ax_energy.plot(steps, [r["e_data"] for r in train], lw=0.8, label="E data")
        ax_energy.plot(steps, [r["e_sample"] for r in train], lw=0.8, label="E sample")
    if val:
        ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_energy.set_xlabel("step")
    ax_energy.set_ylabel("mean energy H")
    for ax in (ax_loss, ax_energy):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
