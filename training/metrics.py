"""Training metrics: one JSON line per optimizer step, safe across resumes, and the loss-curve plot."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, lines after the restored step are dropped (no duplicates)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep only the records of steps <= ``step`` (what a resumed run has not yet redone)."""
        kept = [r for r in self.read() if r["step"] <= step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_losses(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "training loss") -> Path:
    """Loss, reconstruction and alignment per step (alignment on its own axis: it is orders smaller)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (ax_recon, ax_align) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_recon.plot(steps, [r["loss"] for r in records], label="total", lw=1)
    ax_recon.plot(steps, [r["recon"] for r in records], label="reconstruction", lw=1)
    ax_recon.set(xlabel="step", ylabel="loss", title=title)
    ax_recon.legend()
    ax_align.plot(steps, [r["align"] for r in records], color="tab:green", lw=1)
    ax_align.set(xlabel="step", ylabel="alignment loss", yscale="log", title="alignment to the teacher")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
