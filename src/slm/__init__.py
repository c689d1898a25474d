"""slm: train a small GPT-style language model on your own text, then use it.

The package root stays light (no torch import) so that `slm --help` starts fast;
`slm.load` imports the heavy parts only when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from slm.api import LoadedModel


def load(path: Any, device: str = "auto") -> LoadedModel:
    """Load a run (model) folder for generation and scoring (see `slm.api`)."""
    from slm.api import load as _load

    return _load(path, device=device)


__all__ = ["__version__", "load"]
