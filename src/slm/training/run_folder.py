"""Run folders before the loop starts: where a new run goes, its data, what a resume may change.

A run folder is a model folder (`slm.checkpoint` owns its weights, configs and train state)
plus `run.json`, the run record: which prepared data the run trains on, precisely enough to
notice if it changes under a resume. This module

- picks the folder of a new run, and clears one left by a start that never reached its first
  checkpoint, so that retrying the same command works;
- holds the folder for one process at a time (`RunGuard`: a lock file with the owner's pid,
  stale locks of dead processes cleared) and removes a folder it created when the run fails
  before its first checkpoint;
- finds the data of a new run (a prepared folder as is, anything else prepared into the run
  folder by `slm.data.prepare`) and fills the folder: tokenizer, configs and the run record;
- refuses a resume that could not continue exactly: weights and train state from different
  steps, data that changed, or flags that would change the maths of the run.

Building the model and optimizer and running the steps is `slm.training.loop`'s job.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from slm import checkpoint
from slm.chat_template import CHAT_TEMPLATE_FILE
from slm.config import DEFAULT_PRESET, ModelConfig, TrainConfig
from slm.data.prepare import prepare
from slm.data.prepared import PreparedData, is_prepared, load_prepared
from slm.errors import EXIT_USAGE, SLMError
from slm.fileio import read_json, write_json

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# Flags that may change when resuming: they do not alter the maths of the run.
RESUMABLE_OVERRIDES = {
    "device",
    "threads",
    "eval_every",
    "save_every",
    "stop_after",
    "compile",
    "sample_tokens",
    "wandb",
    "tensorboard",
}


# --------------------------------------------------------------------------- a new run


class RunGuard:
    """One process's hold on a run folder, for the length of a `with` block.

    It takes the folder's lock (`.lock`, holding the owner's pid and host) so that two
    `slm train` processes never write to one folder; a lock whose process is gone (killed,
    crashed) is stale and taken over. If the block fails before the run's first checkpoint
    and this process created the folder, the folder goes too: a failed start leaves nothing
    behind (a folder it did not create is never removed).
    """

    def __init__(self) -> None:
        self.path: Path | None = None
        self.created = False
        self._locked = False

    def new(self, out: str | None, preset_name: str | None) -> Path:
        target = Path(out) if out else None
        # slm made the folder if it did not exist, or if it held only an earlier failed start
        made_by_slm = target is None or not target.exists() or _failed_start(target)
        self.path = new_run_dir(out, preset_name)
        self.created = made_by_slm
        self._lock()
        return self.path

    def existing(self, run_dir: Path) -> Path:
        if not run_dir.is_dir():
            raise SLMError(f"cannot resume: {run_dir} is not a folder", exit_code=EXIT_USAGE)
        self.path = run_dir
        self._lock()
        return run_dir

    def _lock(self) -> None:
        assert self.path is not None
        lock = self.path / LOCK_FILE
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = lock_owner(self.path)
                if owner is not None:
                    raise SLMError(
                        f"run folder {self.path} is in use by process {owner} on this machine",
                        hint="wait for that run to end, or stop it (kill PID saves and exits)",
                    ) from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self._locked = True
            return
        raise SLMError(f"could not lock run folder {self.path}")

    def __enter__(self) -> RunGuard:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.path is None:
            return
        if self._locked:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        started = (self.path / checkpoint.TRAIN_STATE_FILE).exists()
        if exc_type is not None and self.created and not started:
            shutil.rmtree(self.path, ignore_errors=True)


def lock_owner(run_dir: Path) -> int | None:
    """The pid of the live process that holds `run_dir`, or None if no live one does."""
    try:
        pid_text, host = (run_dir / LOCK_FILE).read_text(encoding="utf-8").split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname() or pid == os.getpid():
        return None if pid == os.getpid() else pid  # another machine's: assume it is alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by another user
    return pid


def new_run_dir(out: str | None, preset_name: str | None) -> Path:
    """The folder for a new run: `--out`, or a new timestamped folder under runs/.

    A folder left by a start that never reached its first checkpoint (a run record but no
    train state) is cleared and reused, so retrying the same command works, unless a live
    process holds it.
    """
    if out:
        run_dir = Path(out)
        if run_dir.exists() and not run_dir.is_dir():
            raise SLMError(f"--out {run_dir} is a file, not a folder", exit_code=EXIT_USAGE)
        if run_dir.is_dir() and (owner := lock_owner(run_dir)) is not None:
            raise SLMError(
                f"run folder {run_dir} is in use by process {owner}",
                hint="choose another --out, or wait for that run to end",
                exit_code=EXIT_USAGE,
            )
        if _failed_start(run_dir):
            shutil.rmtree(run_dir)
        if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            raise SLMError(
                f"run folder {run_dir} already exists and is not empty",
                hint=f"continue it with `slm train --resume {run_dir}` or choose another --out",
                exit_code=EXIT_USAGE,
            )
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{preset_name or DEFAULT_PRESET}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _failed_start(run_dir: Path) -> bool:
    return (run_dir / RUN_FILE).is_file() and not (run_dir / checkpoint.TRAIN_STATE_FILE).exists()


def resolve_data(
    sources: list[str],
    run_dir: Path,
    vocab_size: int,
    log: Callable[[str], None],
    tokenizer_path: str | None = None,
) -> PreparedData:
    """A prepared folder is used as is; anything else is prepared into the run folder
    (with `tokenizer_path`, a fine-tune's source tokenizer, instead of a new one)."""
    if len(sources) == 1 and is_prepared(sources[0]):
        return load_prepared(sources[0])
    what = ", ".join(sources) if sources else "the built-in Shakespeare corpus"
    log(f"preparing {what} into {run_dir / 'data'}")
    summary = prepare(
        sources, run_dir / "data", vocab_size=vocab_size, tokenizer_path=tokenizer_path, log=log
    )
    log(summary.format())
    return load_prepared(run_dir / "data")


def fill_run_dir(
    run_dir: Path,
    data: PreparedData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    init_from: dict[str, Any] | None = None,
) -> None:
    """What a new run folder holds before its first checkpoint: the tokenizer, the chat
    template of chat data, data statistics (a run folder is a model folder), both configs
    and the run record (with the source model of a fine-tune)."""
    if data.tokenizer_path.resolve() != (run_dir / checkpoint.TOKENIZER_FILE).resolve():
        shutil.copyfile(data.tokenizer_path, run_dir / checkpoint.TOKENIZER_FILE)
        shutil.copyfile(data.folder / checkpoint.META_FILE, run_dir / checkpoint.META_FILE)
    template = data.folder / CHAT_TEMPLATE_FILE
    if template.is_file() and template.resolve() != (run_dir / CHAT_TEMPLATE_FILE).resolve():
        shutil.copyfile(template, run_dir / CHAT_TEMPLATE_FILE)
    checkpoint.save_config(run_dir, model_cfg)
    write_json(run_dir / checkpoint.TRAIN_CONFIG_FILE, train_cfg.to_dict())
    record = _run_record(data)
    if init_from:
        record["init_from"] = init_from
    write_json(run_dir / RUN_FILE, record)


def _run_record(data: PreparedData) -> dict[str, Any]:
    """Which data the run trains on, precisely enough to notice if it changes under a resume."""
    return {
        "format_version": 1,
        "data": str(data.folder.resolve()),
        "tokenizer_sha256": data.meta.get("tokenizer_sha256"),
        "train_tokens": data.meta["splits"]["train"]["tokens"],
    }


# --------------------------------------------------------------------------- resume


def check_resume_point(run_dir: Path, state: dict[str, Any]) -> None:
    """The weights and the train state must come from the same step to resume exactly."""
    if state.get("step") != _weights_step(run_dir):
        raise SLMError(
            f"{run_dir}: weights and train state are from different steps",
            hint="the last checkpoint was cut short; resume is not possible",
        )


def resumed_train_config(
    run_dir: Path, overrides: dict[str, Any], saved_model: dict[str, Any], new_inputs: bool
) -> TrainConfig:
    """The saved train settings with the flags a resume may change (`RESUMABLE_OVERRIDES`).

    `new_inputs` is whether the command also named data, a preset or a config file: a
    resumed run keeps those it began with, so any of them is refused like a changed flag.
    """
    saved = read_json(run_dir / checkpoint.TRAIN_CONFIG_FILE, "train config")
    # Runs from before a setting existed trained with what it was then.
    saved.setdefault("optimizer", "adamw")
    saved.setdefault("lr_schedule", "cosine")
    saved.setdefault("label_smoothing", 0.0)
    changed = {
        k: v
        for k, v in overrides.items()
        if (k in saved and saved[k] != v) or (k in saved_model and saved_model[k] != v)
    }
    refused = sorted(set(changed) - RESUMABLE_OVERRIDES)
    if refused or new_inputs:
        raise SLMError(
            "a resumed run keeps its data, model and schedule",
            hint="drop " + (", ".join(_flags(refused)) or "DATA/--preset/--config"),
            exit_code=EXIT_USAGE,
        )
    # --stop-after belongs to one invocation: a resumed run finishes its schedule.
    return TrainConfig.from_dict({**saved, "stop_after": 0, **changed})


def recorded_data(run_dir: Path) -> PreparedData:
    """The data a run began with, refused if it changed since (a resume must see the same)."""
    run_info = read_json(run_dir / RUN_FILE, "run record")
    if not is_prepared(run_info["data"]):
        raise SLMError(
            f"cannot resume {run_dir}: its data is gone from {run_info['data']}",
            hint="put the prepared folder back there (resume needs the data the run began "
            "with), or start a new run from this one with --init-from",
        )
    data = load_prepared(run_info["data"])
    _check_same_data(run_info, data)
    return data


def _check_same_data(run_info: dict[str, Any], data: PreparedData) -> None:
    now = _run_record(data)
    for key in ("tokenizer_sha256", "train_tokens"):
        if key in run_info and run_info[key] != now[key]:
            raise SLMError(
                f"cannot resume: the data in {data.folder} changed since the run started ({key})",
                hint="resume needs the data the run began with; start a new run instead",
            )


def _flags(names: list[str]) -> list[str]:
    return ["--" + name.replace("_", "-") for name in names]


def _weights_step(run_dir: Path) -> int | None:
    from safetensors import safe_open

    with safe_open(str(run_dir / checkpoint.WEIGHTS_FILE), framework="pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None
