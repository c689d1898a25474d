"""slm: train a small GPT-style language model on your own text, then use it.

The Python API, one function per step of the path (each imports its stage only when called,
so `import slm` and `slm --help` stay fast):

    import slm
    slm.prepare(["my_texts/"], "data/mine")                      # text -> prepared folder
    result = slm.train("data/mine", out="runs/mine", max_steps=500, log=print)
    model = slm.load("runs/mine")                                # generate, chat, score
    slm.train("more_text/", init_from="runs/mine", out="runs/tuned")   # fine-tune
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from slm.api import LoadedModel
    from slm.data.chat import ChatSummary
    from slm.data.summary import PrepareSummary
    from slm.training.loop import TrainResult
    from slm.training.progress import TrainProgress

Sources = str | os.PathLike | Sequence[str | os.PathLike]


def load(path: Any, device: str = "auto") -> LoadedModel:
    """Load a model folder for generation, chat and scoring (see `slm.api`)."""
    from slm.api import load as _load

    return _load(path, device=device)


def prepare(
    sources: Sources, out: str | os.PathLike, *, chat: bool = False, **options: Any
) -> PrepareSummary | ChatSummary:
    """`slm prepare`: text sources (or, with `chat=True`, JSONL conversations) -> a prepared
    folder at `out`. `options` are `prepare`'s keywords (`vocab_size`, `tokenizer_path`,
    `val_fraction`, `seed`, `force`, `log`, ...; with chat also `context_len`)."""
    names = _names(sources)
    if chat:
        from slm.data.chat import prepare_chat

        return prepare_chat(names, out, **options)
    from slm.data.prepare import prepare as _prepare

    return _prepare(names, out, **options)


def train(
    data: Sources = (),
    *,
    out: str | os.PathLike | None = None,
    preset: str | None = None,
    init_from: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    config_file: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: TrainProgress | None = None,
    **settings: Any,
) -> TrainResult:
    """`slm train`: train (or fine-tune with `init_from`, or resume) a model.

    `settings` are model and training settings by their names (`max_steps=500`, `lr=1e-3`,
    `d_model=256`, ...), as the CLI's flags. `log` gets messages; `progress` the loop's
    events (`slm.training.progress.TrainProgress`).
    """
    from slm.training.loop import TrainRequest
    from slm.training.loop import train as _train

    request = TrainRequest(
        data=_names(data),
        out=str(out) if out is not None else None,
        resume=str(resume) if resume is not None else None,
        config_file=str(config_file) if config_file is not None else None,
        preset=preset,
        vocab_size=vocab_size,
        init_from=str(init_from) if init_from is not None else None,
        overrides=settings,
    )
    return _train(request, log=log or (lambda _message: None), progress=progress)


def _names(sources: Sources) -> list[str]:
    if isinstance(sources, (str, os.PathLike)):
        return [str(sources)]
    return [str(s) for s in sources]


__all__ = ["__version__", "load", "prepare", "train"]
