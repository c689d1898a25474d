"""Typed settings: the model's shape, the training recipe, sampling, presets and validation.

No torch here, so the CLI can build and check a config (and print `--help`) before the heavy
imports. Precedence is defaults < preset < `--config file` < flags (`train.resolve_settings`
layers them); unknown keys are usage errors with a did-you-mean hint. What the settings
drive lives elsewhere: the model in `model.py`, the loop in `train.py`, the draw in
`sampling.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from slm.errors import EXIT_USAGE, SLMError

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "bfloat16"]


def _usage_error(message: str, hint: str | None = None) -> SLMError:
    return SLMError(message, hint=hint, exit_code=EXIT_USAGE)


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-style decoder. Saved as `config.json` beside the weights."""

    vocab_size: int = 4096
    context_len: int = 256
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 3
    n_kv_heads: int = 0  # 0 means "same as n_heads" (plain multi-head attention)
    d_ff: int = 0  # 0 means "about 8/3 * d_model, rounded up to a multiple of 64" (SwiGLU)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Queries and keys at unit RMS per head: 0.06-0.07 bits/byte at 2 M tokens (benchmarks).
    qk_norm: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        # Resolve the "auto" zeros first so the saved config.json is explicit.
        if self.n_kv_heads == 0:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.d_ff == 0:
            object.__setattr__(self, "d_ff", _swiglu_width(self.d_model))
        self._validate()

    def _validate(self) -> None:
        for name in ("vocab_size", "context_len", "d_model", "n_layers", "n_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise _usage_error(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise _usage_error(
                f"--d-model {self.d_model} is not divisible by --n-heads {self.n_heads}",
                hint="each head gets d_model / n_heads dimensions",
            )
        if (self.d_model // self.n_heads) % 2:
            raise _usage_error(
                f"head size d_model/n_heads = {self.d_model // self.n_heads} must be even "
                "(rotary embeddings rotate pairs of dimensions)"
            )
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise _usage_error(
                f"--n-heads {self.n_heads} must be a multiple of --n-kv-heads {self.n_kv_heads}"
            )
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise _usage_error("--rope-theta and --norm-eps must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        return cls(**_known_fields(cls, data, source))


def _swiglu_width(d_model: int) -> int:
    """8/3 * d_model keeps SwiGLU's three matrices at the parameter cost of a 4x GELU MLP."""
    return 64 * -(-(8 * d_model) // (3 * 64))


# Each preset has a reason. seed-2.5m is the tutorial's model done right (width 192, 3 heads,
# context 256 ~ 2.5M parameters); tiny keeps tests fast; the rest scale up ~4x at a time.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, context_len=64, d_model=64, n_layers=2, n_heads=4),
    "seed-2.5m": dict(vocab_size=4096, context_len=256, d_model=192, n_layers=4, n_heads=3),
    "small": dict(vocab_size=4096, context_len=512, d_model=384, n_layers=5, n_heads=6),
    "medium": dict(vocab_size=8192, context_len=512, d_model=512, n_layers=8, n_heads=8),
    "124m": dict(vocab_size=50304, context_len=1024, d_model=768, n_layers=12, n_heads=12),
}
DEFAULT_PRESET = "seed-2.5m"


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise _usage_error(f"unknown preset {name!r}", hint=_did_you_mean(name, PRESETS))
    return dict(PRESETS[name])


# AdamW's peak rate when --lr is not given. Under Muon, AdamW trains only the embedding (also
# the output head) and the norm gains, which learn best at 3x the rate that suits AdamW alone
# (0.016-0.027 bits per byte at 2 M tokens: benchmarks/README.md, "Quality per training token").
DEFAULT_LR = {"adamw": 2e-3, "muon": 6e-3}

# AdamW's second-moment decay when none is given. Under Muon, AdamW trains only the embedding
# (also the output head) and the norm gains, and a long memory of their squared gradients
# trains them much better: 0.999 instead of 0.95 gave 0.029-0.037 bits per byte at 5 M tokens
# on two seeds, 0.99 half of that (benchmarks/README.md). AdamW alone keeps 0.95, measured with it.
DEFAULT_BETA2 = {"adamw": 0.95, "muon": 0.999}


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Saved with the run as `train_config.json`."""

    batch_size: int = 16
    tokens_per_step: int = 0  # 0: one batch per optimizer step; more: gradient accumulation
    optimizer: Literal["adamw", "muon"] = "muon"  # 0.023 bits/byte better: benchmarks/README
    lr: float = 0.0  # AdamW's peak rate; 0: DEFAULT_LR for the optimizer
    muon_lr: float = 0.02  # with --optimizer muon: the hidden matrices' peak rate
    # Warmup-stable-decay to zero: 0.031-0.037 bits/byte better than a cosine to a tenth at 2 M
    # tokens, while a cosine to zero was 0.020 worse (benchmarks/README.md).
    lr_schedule: Literal["cosine", "wsd"] = "wsd"
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.0  # AdamW's second-moment decay; 0: DEFAULT_BETA2 for the optimizer
    grad_clip: float = 1.0
    # Each target trains towards 98%, the rest spread over the vocabulary: 0.010-0.013 bits per
    # byte at 5 M tokens over two seeds, 0.05 a little less (benchmarks/README.md). A run
    # over several epochs grows too sure of its training text for text it has not seen.
    label_smoothing: float = 0.02
    max_steps: int = 0
    max_tokens: int = 0
    max_time: str = ""  # wall clock, e.g. "10m"; the schedule is fitted to it
    epochs: float = 0.0
    stop_after: int = 0  # stop cleanly after this many steps, as an interruption would
    eval_every: int = 250
    eval_tokens: int = 65536
    save_every: str = ""  # steps ("500") or a time ("5m"); default: at every evaluation
    sample_tokens: int = 48
    seed: int = 1337
    device: Device = "auto"
    dtype: DType = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    threads: int = 0  # 0: as many as the cores available to this process
    wandb: bool = False
    tensorboard: bool = False
    init_from: str = ""  # the model folder a fine-tune started from (set by --init-from)

    def __post_init__(self) -> None:
        _check_types(self)  # holds device, dtype and compile to their choices too
        positive = ("batch_size", "eval_every", "eval_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise _usage_error(f"--{_flag(name)} must be at least 1")
        nonnegative = (
            "max_steps",
            "max_tokens",
            "stop_after",
            "warmup_steps",
            "tokens_per_step",
            "threads",
        )
        for name in nonnegative:
            if getattr(self, name) < 0:
                raise _usage_error(f"--{_flag(name)} must not be negative")
        if self.lr == 0:  # resolved here, so train_config.json records the rate used
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        if self.beta2 == 0:  # as the rate: train_config.json records the value used
            object.__setattr__(self, "beta2", DEFAULT_BETA2[self.optimizer])
        if not 0 < self.beta2 < 1 or not 0 <= self.beta1 < 1:
            raise _usage_error("beta1 must be in [0, 1) and beta2 in (0, 1)")
        if self.lr < 0:
            raise _usage_error(f"--lr must be positive, got {self.lr}")
        if self.muon_lr <= 0:
            raise _usage_error(f"--muon-lr must be positive, got {self.muon_lr}")
        if not 0 <= self.label_smoothing < 1:
            raise _usage_error("--label-smoothing must be at least 0 and below 1")
        if not 0 <= self.min_lr_ratio <= 1:
            raise _usage_error("--min-lr-ratio must be between 0 and 1")
        if self.epochs < 0:
            raise _usage_error("--epochs must not be negative")
        if self.max_time:
            parse_duration(self.max_time, "--max-time")
        if self.save_every:
            parse_every(self.save_every)

    @property
    def has_budget(self) -> bool:
        return bool(self.max_steps or self.max_tokens or self.max_time or self.epochs)

    @property
    def max_time_s(self) -> float:
        return parse_duration(self.max_time, "--max-time") if self.max_time else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        return cls(**_known_fields(cls, data, source))


def _check_types(config: Any) -> None:
    """Hold each field of a config dataclass to its annotated type; store ints as floats.

    Flags arrive typed by argparse, but a `--config` file can say `lr = "1e-3"` or
    `batch_size = 2.5`, which would otherwise fail later as a TypeError deep in training.
    bool is an int subclass in Python; here it is not a number (`n_layers = true` is a slip).
    """
    hints = get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        expected = hints[f.name]
        flag = f"--{_flag(f.name)}"
        if get_origin(expected) is Literal:
            choices = get_args(expected)
            if not isinstance(value, str) or value not in choices:
                raise _usage_error(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
        elif expected is bool:
            if not isinstance(value, bool):
                raise _usage_error(f"{flag} must be true or false, got {value!r}")
        elif expected is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _usage_error(f"{flag} must be a whole number, got {value!r}")
        elif expected is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _usage_error(f"{flag} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise _usage_error(f"{flag} must be a finite number, got {value!r}")
            object.__setattr__(config, f.name, float(value))
        elif expected is str:
            if not isinstance(value, str):
                raise _usage_error(
                    f"{flag} must be text, got {value!r}",
                    hint=f'in a config file, quote it: {f.name} = "{value}"',
                )
        else:  # a new field type needs a rule here
            raise AssertionError(f"no type check for {f.name}: {expected!r}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$")
_UNIT_S = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def parse_duration(text: str | float, flag: str = "duration") -> float:
    """Seconds in a duration such as "90", "30s", "5m", "1.5h".

    >>> parse_duration("5m")
    300.0
    """
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if not match:
            raise _usage_error(
                f"{flag}: cannot read {text!r} as a duration", hint='use e.g. "30s", "5m"'
            )
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    # Zero would mean "no time at all", yet 0 elsewhere means "no limit": refuse the ambiguity.
    if not seconds > 0:
        raise _usage_error(f"{flag} must be a positive duration, got {text!r}")
    return seconds


def parse_every(text: str) -> tuple[Literal["steps", "seconds"], float]:
    """`--save-every`: a bare number is steps, a number with a unit is a time.

    >>> parse_every("500"), parse_every("5m")
    (('steps', 500.0), ('seconds', 300.0))
    """
    if text.strip().isdigit():
        steps = int(text)
        if steps < 1:
            raise _usage_error("--save-every must be at least 1 step")
        return "steps", float(steps)
    return "seconds", parse_duration(text, "--save-every")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _did_you_mean(name: str, choices: Any) -> str | None:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(choices)}"


def _known_fields(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        raise _usage_error(f"unknown setting {key!r} in {source}", hint=_did_you_mean(key, names))
    return dict(data)


MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig))
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON settings file into one flat dict of field -> value.

    Keys may be flat or grouped under `[model]` / `[train]`; `preset = "small"` is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise _usage_error(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else _toml_loads(text)
    except ValueError as exc:  # JSON, TOML and UTF-8 decoding errors are all ValueErrors
        raise _usage_error(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise _usage_error(
            f"config file {path} must hold an object of settings, not a {type(raw).__name__}",
            hint='e.g. {"preset": "tiny", "lr": 0.001}',
        )
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("model", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    allowed = set(MODEL_FIELDS) | set(TRAIN_FIELDS) | {"preset"}
    for key in flat:
        if key not in allowed:
            raise _usage_error(
                f"unknown setting {key!r} in {path}", hint=_did_you_mean(key, sorted(allowed))
            )
    return flat


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the backport, a dependency there
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one flat settings dict into (model fields, train fields)."""
    unknown = [k for k in settings if k not in MODEL_FIELDS and k not in TRAIN_FIELDS]
    if unknown:
        raise _usage_error(
            f"unknown setting {unknown[0]!r}",
            hint=_did_you_mean(unknown[0], [*MODEL_FIELDS, *TRAIN_FIELDS]),
        )
    model = {k: v for k, v in settings.items() if k in MODEL_FIELDS}
    train = {k: v for k, v in settings.items() if k in TRAIN_FIELDS}
    return model, train


# --------------------------------------------------------------------------- sampling settings


MAX_NUM_SAMPLES = 1024  # a batch this size of even a tiny model is far past any sensible use


@dataclass(frozen=True)
class SampleConfig:
    """How to generate: length, randomness, truncation, batch and stop conditions."""

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 50  # 0: off
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.0  # 0: off; else drop tokens below min_p * p(most likely token)
    repetition_penalty: float = 1.0  # 1.0: off; >1 discourages tokens already in the context
    seed: int | None = None  # None: a fresh random seed each time
    num_samples: int = 1
    stop: tuple[str, ...] = ()  # stop strings; the stop string itself is not returned
    ignore_eot: bool = False  # keep going past <|endoftext|> (benchmarks want a fixed length)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        _check_int("max_new_tokens", self.max_new_tokens, low=1)
        _check_number("temperature", self.temperature, "must be 0 (greedy) or more", low=0.0)
        _check_int("top_k", self.top_k, low=0)
        _check_number("top_p", self.top_p, "must be in (0, 1]", low=0.0, high=1.0, open_low=True)
        _check_number("min_p", self.min_p, "must be in [0, 1]", low=0.0, high=1.0)
        _check_number(
            "repetition_penalty",
            self.repetition_penalty,
            "must be positive",
            low=0.0,
            open_low=True,
        )
        if self.seed is not None:
            _check_int("seed", self.seed, low=0)
        _check_int("num_samples", self.num_samples, low=1, high=MAX_NUM_SAMPLES)
        for text in self.stop:
            if not isinstance(text, str) or not text:
                raise _usage_error(f"--stop strings must be non-empty text, got {text!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sample_config(base: SampleConfig | None = None, **overrides: Any) -> SampleConfig:
    """`base` (or the defaults) with `overrides` applied; an unknown name is a usage error.

    >>> sample_config(temperature=0).greedy
    True
    """
    base = base or SampleConfig()
    names = [f.name for f in dataclasses.fields(SampleConfig)]
    for key in overrides:
        if key not in names:
            hint = _did_you_mean(key, names)
            raise _usage_error(f"unknown generation setting {key!r}", hint=hint)
    return dataclasses.replace(base, **overrides)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _usage_error(f"--{_flag(name)} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _usage_error(f"--{_flag(name)} must be {limit}, got {value}")


def _check_number(
    name: str,
    value: Any,
    rule: str,
    low: float,
    high: float | None = None,
    open_low: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _usage_error(f"--{_flag(name)} must be a number, got {value!r}")
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high) or math.isinf(value):
        raise _usage_error(f"--{_flag(name)} {rule}, got {value}")
