"""The model card the playground shows: size, shape, training tokens, val bits per byte, losses.

A pure summary of a loaded model and its run folder (`metrics.jsonl`, read with
`slm.training.metrics`). A folder without metrics (a model copied without its run) gets a
card with the model's own numbers and no training figures.
"""

from __future__ import annotations

from typing import Any

from slm.api import LoadedModel
from slm.model import count_parameters
from slm.training.metrics import METRICS_FILE, read_metrics

MAX_CURVE_POINTS = 200  # enough for a 600-pixel plot; a long run logs one record per step


def model_card(model: LoadedModel, name: str) -> dict[str, Any]:
    """Everything the playground's card shows, as JSON-ready values."""
    c = model.config
    card: dict[str, Any] = {
        "name": name,
        "parameters": count_parameters(model.model),
        "d_model": c.d_model,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "context_len": c.context_len,
        "vocab_size": c.vocab_size,
        "chat": model.chat_template is not None,
        "training_tokens": None,
        "val_bpb": None,
        "train_curve": [],
        "val_curve": [],
    }
    path = model.folder / METRICS_FILE if model.folder else None
    if path is None or not path.is_file():
        return card
    records = read_metrics(path)
    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    bpb = [r["val_bpb"] for r in records if r.get("val_bpb") is not None]
    card["training_tokens"] = records[-1].get("tokens") if records else None
    card["val_bpb"] = bpb[-1] if bpb else None
    card["train_curve"] = thin(train, MAX_CURVE_POINTS)
    card["val_curve"] = thin(val, MAX_CURVE_POINTS)
    return card


def thin(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most `limit` points, evenly spaced, always keeping the last.

    >>> thin([(i, i) for i in range(10)], 4)
    [(0, 0), (3, 3), (6, 6), (9, 9)]
    """
    if len(points) <= limit:
        return points
    stride = -(-(len(points) - 1) // (limit - 1))  # ceil: never more than `limit` points
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]
