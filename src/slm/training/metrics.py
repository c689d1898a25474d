"""Training metrics on disk: `metrics.jsonl` (one JSON object per line) and `loss.png`.

Kept apart from the loop so the loop reads as the algorithm. The JSONL file is appended to
as training runs (a log), and cut back to the resumed step when a run resumes, so an
interrupted-and-resumed run logs exactly the lines an uninterrupted one would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slm.errors import SLMError
from slm.fileio import atomic_path, write_text

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Appends records to metrics.jsonl and forwards them to optional trackers."""

    def __init__(
        self,
        run_dir: Path,
        wandb: bool = False,
        tensorboard: bool = False,
        run_config: dict[str, Any] | None = None,
    ):
        self.path = run_dir / METRICS_FILE
        self.records: list[dict[str, Any]] = read_metrics(self.path) if self.path.exists() else []
        self._file = None
        self._wandb = _start_wandb(run_dir, run_config or {}) if wandb else None
        self._tensorboard = _start_tensorboard(run_dir) if tensorboard else None

    def truncate_after(self, step: int) -> None:
        """Forget records past `step` (written after the checkpoint we resume from)."""
        self.records = [r for r in self.records if r["step"] <= step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - a log kept open
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (crash mid-write) is dropped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_losses(records: list[dict[str, Any]], target: Path) -> None:
    """Loss and validation bits per byte against tokens seen, written atomically as a PNG.

    Left: the training loss per step (faint), smoothed (solid) and the validation loss.
    Right: validation bits per byte, the figure that compares across tokenizers.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    bpb = [(r["tokens"], r["val_bpb"]) for r in records if "val_bpb" in r]
    fig, axes = plt.subplots(1, 2 if bpb else 1, figsize=(11 if bpb else 7, 4.2), dpi=110)
    ax = axes[0] if bpb else axes
    if train:
        xs, ys = zip(*train, strict=False)
        ax.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        ax.plot(xs, smooth(list(ys)), color="tab:blue", linewidth=1.6, label="train (smoothed)")
    if val:
        xs, ys = zip(*val, strict=False)
        ax.plot(xs, ys, "o-", color="tab:orange", linewidth=1.6, markersize=4, label="validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    if bpb:
        xs, ys = zip(*bpb, strict=False)
        axes[1].plot(xs, ys, "o-", color="tab:green", linewidth=1.6, markersize=4)
        axes[1].set_xlabel("tokens seen")
        axes[1].set_ylabel("validation bits per byte")
        axes[1].set_title(f"last: {ys[-1]:.3f} bits/byte", fontsize=10)
        axes[1].grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def smooth(values: list[float]) -> list[float]:
    """A centred moving average: each point is the mean of a window around it, shrunk to stay
    symmetric at the ends. Unlike a moving average of the past, it does not lag behind a
    falling loss (on a straight line it is exact); the window is 1/25 of the run, at most
    101 steps, so the curve keeps the run's shape.

    >>> smooth([1.0, 2.0, 3.0, 4.0, 5.0])
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    half = min(50, len(values) // 50)
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    out = []
    for i in range(len(values)):
        h = min(half, i, len(values) - 1 - i)
        out.append((sums[i + h + 1] - sums[i - h]) / (2 * h + 1))
    return out


def _start_wandb(run_dir: Path, run_config: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise SLMError("--wandb needs the wandb package", hint="pip install wandb") from exc
    return wandb.init(project="slm", name=run_dir.name, dir=str(run_dir), config=run_config)


def _start_tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise SLMError(
            "--tensorboard needs the tensorboard package", hint="pip install tensorboard"
        ) from exc
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
