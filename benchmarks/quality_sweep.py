"""Quality per training token: seed-2.5m on the built-in corpus, one change at a time.

    python benchmarks/quality_sweep.py --variants baseline muon --seeds 1 2 --tokens 5e6
    python benchmarks/quality_sweep.py --table        # the table of every run so far
    python benchmarks/quality_sweep.py --speed --variants baseline "default + batch 8"

Each run trains from scratch on the built-in corpus (prepared once, `--data`), stops after a
fixed number of training tokens, and is scored on every token of the held-out plays (the
split `slm bench --quality` uses), so a figure depends on what a change does to each token's
worth of learning, not on how busy the machine was. Wall time and tokens/s are recorded
beside it (they do depend on the machine). Results are appended to
benchmarks/results/quality-sweep.jsonl, one line per run; `--table` summarizes them per
variant: mean bits per byte over the seeds, and the spread (max - min).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results" / "quality-sweep.jsonl"
CURRENT_DATA = Path()  # the prepared corpus of the run in progress, for patches that read it

# Each variant is the settings it changes (the CLI's flag names, as `slm.train` keywords).
# "baseline" is `slm train` as it ships; the others change one thing from the recipe that
# shipped before warmup-stable-decay (MUON_COSINE), so rows measured then and now compare.
MUON_COSINE = {
    "optimizer": "muon",
    "lr": 2e-3,
    "lr_schedule": "cosine",
    "min_lr_ratio": 0.1,
    "qk_norm": False,
    "beta2": 0.95,  # every recipe before 2026-12-07 ran at 0.95; under Muon 0.999 after it
}
COMBINED = {**MUON_COSINE, "lr_schedule": "wsd", "min_lr_ratio": 0.0, "lr": 6e-3, "qk_norm": True}
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "adamw": {**MUON_COSINE, "optimizer": "adamw"},  # the default before Muon
    "muon": MUON_COSINE,  # the default before warmup-stable-decay
    "muon lr 0.04": {**MUON_COSINE, "muon_lr": 0.04},
    "muon lr 0.01": {**MUON_COSINE, "muon_lr": 0.01},
    "batch 8": {**MUON_COSINE, "batch_size": 8},
    "batch 32": {**MUON_COSINE, "batch_size": 32},
    "no weight decay": {**MUON_COSINE, "weight_decay": 0.0},
    "min lr 0": {**MUON_COSINE, "min_lr_ratio": 0.0},
    "6 layers x 160": {**MUON_COSINE, "n_layers": 6, "d_model": 160, "n_heads": 5},
    "3 layers x 224": {**MUON_COSINE, "n_layers": 3, "d_model": 224, "n_heads": 4},
    "adam lr 6e-3": {**MUON_COSINE, "lr": 6e-3},  # under Muon: only the embedding and gains
    "warmup 30": {**MUON_COSINE, "warmup_steps": 30},
    "context 128 x batch 32": {**MUON_COSINE, "context_len": 128, "batch_size": 32},
    "wsd": {**MUON_COSINE, "lr_schedule": "wsd", "min_lr_ratio": 0.0},
    "wsd + adam lr 6e-3": {**MUON_COSINE, "lr_schedule": "wsd", "min_lr_ratio": 0.0, "lr": 6e-3},
    "wsd + adam lr 1e-2": {**MUON_COSINE, "lr_schedule": "wsd", "min_lr_ratio": 0.0, "lr": 1e-2},
    # Rows of "qk-norm" before 2026-12 came from a patch of apply_rope, the same maths.
    "qk-norm": {**MUON_COSINE, "qk_norm": True},
    # Changes with no flag (yet): a patch of slm's code for the run, below.
    "zero-init projections": {**MUON_COSINE, "_patch": "zero_init"},
    "relu2 mlp": {**MUON_COSINE, "_patch": "relu2"},
    "dropout 0.1": {**MUON_COSINE, "_patch": "dropout"},
    # The three that won, together: `slm train` as it ships since 2026-12. Its rows before
    # 2026-12-07 drew window starts at random; since, the sampler goes in epochs.
    "qk-norm + wsd + adam lr 6e-3": COMBINED,
    "qk-norm + wsd + adam lr 6e-3 + dropout 0.1": {**COMBINED, "_patch": "dropout"},
    # One change at a time on top of the shipping default (2026-12-06).
    "default + batch 8": {**COMBINED, "batch_size": 8},
    "default + context 128 x batch 32": {**COMBINED, "context_len": 128, "batch_size": 32},
    "default + context 128 x batch 16": {**COMBINED, "context_len": 128, "batch_size": 16},
    "default + muon lr 0.03": {**COMBINED, "muon_lr": 0.03},
    "default + decay over 50%": {**COMBINED, "_patch": "decay_half"},
    "default + untied head": {**COMBINED, "_patch": "untied"},
    "default + weight decay 0.3": {**COMBINED, "weight_decay": 0.3},
    "default + muon momentum 0.9": {**COMBINED, "_patch": "momentum_09"},
    # Epochs became the sampler's way on 2026-12-07 (the rows before came from a patch that
    # drew the same windows); "random starts" is the sampler before, for the record.
    "default + epoch shuffle": COMBINED,
    "default + random starts": {**COMBINED, "_patch": "random_starts"},
    # On top of the default with epochs (2026-12-07; zero-init and 6 heads ran before the
    # 1 - sqrt decay, momentum 0.98 after it).
    "epochs + zero-init projections": {**COMBINED, "_patch": "zero_init"},
    "epochs + 6 heads of 32": {**COMBINED, "n_heads": 6},
    "epochs + muon momentum 0.98": {**COMBINED, "_patch": "momentum_098"},
    # The 1 - sqrt decay became the default on 2026-12-07 (its rows came from a patch of the
    # same maths); "linear decay" is the straight line before.
    "epochs + 1-sqrt decay": COMBINED,
    "epochs + linear decay": {**COMBINED, "_patch": "linear_decay"},
    # On top of epochs and the 1 - sqrt decay (2026-12-07).
    "1-sqrt + q/k/v and gate/up apart": {**COMBINED, "_patch": "split_blocks"},
    "1-sqrt + adam lr 1e-2": {**COMBINED, "lr": 1e-2},
    "1-sqrt + warmup 30": {**COMBINED, "warmup_steps": 30},
    "1-sqrt + no weight decay": {**COMBINED, "weight_decay": 0.0},
    "1-sqrt + weight decay 0.2": {**COMBINED, "weight_decay": 0.2},
    "1-sqrt + qk-norm gains": {**COMBINED, "_patch": "qk_gains"},
    "1-sqrt + adam beta1 0.8": {**COMBINED, "beta1": 0.8},
    "1-sqrt + muon lr 0.015": {**COMBINED, "muon_lr": 0.015},
    "1-sqrt + 2 heads of 96": {**COMBINED, "n_heads": 2},
    "1-sqrt + context 512 x batch 8": {**COMBINED, "context_len": 512, "batch_size": 8},
    "1-sqrt + bpe dropout 0.1, 2 epochs": {**COMBINED, "_patch": "bpe_dropout_2"},
    "1-sqrt + attention scale x1.5": {**COMBINED, "_patch": "attention_scale_15"},
    "1-sqrt + batch 8": {**COMBINED, "batch_size": 8},
    # With --data from `slm prepare --vocab-size 2048`: the embedding's 0.39 M parameters
    # freed go to a fifth layer (2.6 M in all, as many multiply-adds a token).
    "1-sqrt + vocab 2048 x 5 layers": {**COMBINED, "n_layers": 5},
    "1-sqrt + decay over 50%": {**COMBINED, "_patch": "decay_half"},
    "1-sqrt + warmup 200": {**COMBINED, "warmup_steps": 200},
    # With --data from `slm prepare --vocab-size 8192`: the embedding doubles to 1.57 M, so
    # one layer goes (2.9 M parameters in all).
    "1-sqrt + vocab 8192 x 3 layers": {**COMBINED, "n_layers": 3},
    "1-sqrt + rope theta 1000": {**COMBINED, "rope_theta": 1000.0},
    "1-sqrt + rope theta 100000": {**COMBINED, "rope_theta": 100000.0},
    # 2026-12-07, a third session: the open ReLU² question on top of the default, and more
    "1-sqrt + relu2 mlp": {**COMBINED, "_patch": "relu2"},
    "1-sqrt + batch 32": {**COMBINED, "batch_size": 32},
    "1-sqrt + adam beta2 0.99": {**COMBINED, "beta2": 0.99},
    "1-sqrt + adam beta2 0.999": {**COMBINED, "beta2": 0.999},  # kept: the default from here
    "1-sqrt + no gradient clipping": {**COMBINED, "grad_clip": 0.0},
    "1-sqrt + weight decay 0.05": {**COMBINED, "weight_decay": 0.05},
    # In bf16 autocast (a processor with AVX512-BF16): Muon's orthogonalization in fp32 (as
    # before 2026-12-07) against bf16, the training precision (the default from then).
    "bf16, muon in fp32": {"dtype": "bfloat16", "_patch": "ns_fp32"},
    # Rows of "bf16" (the default, in bf16) ran before the embedding's decay went to 3x and
    # Muon's momentum to a warmup (the fourth session); "bf16 + embedding decay 0.3 + muon
    # momentum warmup" is the default since, by patches on the code before it. Rows of it
    # from before label smoothing became the default (the sixth session) ran without it:
    # "bf16 + no label smoothing" is that recipe now.
    "bf16": {"dtype": "bfloat16"},
    # On top of the default with beta2 0.999 (Δ against "bf16"): does AdamW's optimum move?
    "bf16 + adam beta2 0.9999": {"dtype": "bfloat16", "beta2": 0.9999},
    "bf16 + adam lr 1e-2": {"dtype": "bfloat16", "lr": 1e-2},
    "bf16 + adam beta1 0.95": {"dtype": "bfloat16", "beta1": 0.95},
    "bf16 + embedding rms-normed": {"dtype": "bfloat16", "_patch": "embedding_norm"},
    "bf16 + no decay on the embedding": {"dtype": "bfloat16", "_patch": "embedding_no_decay"},
    "bf16 + embedding decay 0.3": {"dtype": "bfloat16", "_patch": "embedding_decay_03"},
    "bf16 + embedding decay 1.0": {"dtype": "bfloat16", "_patch": "embedding_decay_1"},
    "bf16 + embedding decay 0.3 + muon momentum warmup": {
        "dtype": "bfloat16",
        "_patch": "embedding_decay_03_momentum_warmup",
    },
    # On top of the fourth session's default (the code since it, no patch for what it kept).
    "bf16 + embedding's decay 0.5 instead of 0.3": {
        "dtype": "bfloat16",
        "_patch": "embedding_decay_05",
    },
    "bf16 + hidden matrices' decay 0.05, embedding's 0.3": {
        "dtype": "bfloat16",
        "weight_decay": 0.05,
        "_patch": "embedding_decay_03",
    },
    "bf16 + muon momentum warmup": {"dtype": "bfloat16", "_patch": "momentum_warmup"},
    "bf16 + context 128 x batch 32": {"dtype": "bfloat16", "context_len": 128, "batch_size": 32},
    "bf16 + batch 8 for the first 400 steps": {"dtype": "bfloat16", "_patch": "batch_ramp_400"},
    # A fifth session, on top of the fourth's default.
    "bf16 + normuon": {"dtype": "bfloat16", "_patch": "normuon"},
    "bf16 + cautious weight decay": {"dtype": "bfloat16", "_patch": "cautious_decay"},
    "bf16 + no gradient clipping": {"dtype": "bfloat16", "grad_clip": 0.0},
    "bf16 + muon momentum warmup over 600 steps": {
        "dtype": "bfloat16",
        "_patch": "momentum_warmup_600",
    },
    "bf16 + muon momentum from 0.75": {"dtype": "bfloat16", "_patch": "momentum_from_075"},
    # As many weights in three layers as in four: the MLP 768 wide instead of 512.
    "bf16 + 3 layers, mlp 768": {"dtype": "bfloat16", "n_layers": 3, "d_ff": 768},
    "bf16 + weight decay 0.15": {"dtype": "bfloat16", "weight_decay": 0.15},
    "bf16 + weight decay 0.2": {"dtype": "bfloat16", "weight_decay": 0.2},
    # One key/value head for the three query heads; the weights saved go to the MLP.
    "bf16 + 1 key/value head, mlp 608": {"dtype": "bfloat16", "n_kv_heads": 1, "d_ff": 608},
    "bf16 + norm gains held at one": {"dtype": "bfloat16", "_patch": "gains_frozen"},
    "bf16 + norm gains at a third of the rate": {"dtype": "bfloat16", "_patch": "gains_third"},
    "bf16 + norm gains held at one, embedding's decay 0.1": {
        "dtype": "bfloat16",
        "_patch": "gains_frozen_embedding_decay_01",
    },
    "bf16 + q/k/v shifted one token": {"dtype": "bfloat16", "_patch": "qkv_shift"},
    "bf16 + q/k/v shifted one and two tokens": {"dtype": "bfloat16", "_patch": "qkv_shift_2"},
    "bf16 + k/v shifted one token": {"dtype": "bfloat16", "_patch": "kv_shift"},
    "bf16 + k shifted one token": {"dtype": "bfloat16", "_patch": "k_shift"},
    # Label smoothing was screened as a patch of the loss while the default had none; it is
    # a setting now (`--label-smoothing`), so these rows mean what they did then.
    "bf16 + label smoothing 0.02": {"dtype": "bfloat16", "label_smoothing": 0.02},
    "bf16 + label smoothing 0.05": {"dtype": "bfloat16", "label_smoothing": 0.05},
    "bf16 + label smoothing 0.1": {"dtype": "bfloat16", "label_smoothing": 0.1},
    "bf16 + no label smoothing": {"dtype": "bfloat16", "label_smoothing": 0.0},
    "bf16 + value residual": {"dtype": "bfloat16", "_patch": "value_residual"},
    "bf16 + embedding smeared one token": {"dtype": "bfloat16", "_patch": "smear"},
}


# Screening patches: each changes one thing in slm for the duration of a run and returns
# the function that undoes it. A change that wins becomes a setting of slm itself; these
# keep the ones that lost measurable.
def _patch_zero_init() -> Callable[[], None]:
    """Residual projections (attention out, MLP down) start at zero: each block starts as
    the identity, and Muon's first updates set their scale."""
    from slm import model

    original = model.GPT.reset_parameters

    def reset(self: Any) -> None:
        original(self)
        for name, param in self.named_parameters():
            if name.endswith(("out.weight", "down.weight")):
                torch.nn.init.zeros_(param)

    model.GPT.reset_parameters = reset
    return lambda: setattr(model.GPT, "reset_parameters", original)


def _patch_relu2() -> Callable[[], None]:
    """A plain MLP, down(relu(up(x))^2), as wide as SwiGLU's parameters allow (3/2 d_ff)."""
    from slm import model

    init, forward = model.SwiGLU.__init__, model.SwiGLU.forward

    def new_init(self: Any, config: Any) -> None:
        torch.nn.Module.__init__(self)
        self.d_ff = 3 * config.d_ff // 2
        self.gate_up = torch.nn.Linear(config.d_model, self.d_ff, bias=False)
        self.down = torch.nn.Linear(self.d_ff, config.d_model, bias=False)

    def new_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.gate_up(x)).square())

    model.SwiGLU.__init__, model.SwiGLU.forward = new_init, new_forward

    def undo() -> None:
        model.SwiGLU.__init__, model.SwiGLU.forward = init, forward

    return undo


def _patch_ns_fp32() -> Callable[[], None]:
    """Muon's Newton-Schulz products in fp32 whatever the training precision."""
    from slm.training import muon

    init = muon.Muon.__init__

    def new_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "ns_dtype": torch.float32})

    muon.Muon.__init__ = new_init
    return lambda: setattr(muon.Muon, "__init__", init)


def _patch_dropout() -> Callable[[], None]:
    """Dropout 0.1 on each block's two residual branches while training: against memorizing
    a corpus that a run passes over several times."""
    from slm import model

    forward = model.Block.forward

    def new_forward(self: Any, x: torch.Tensor, cos: Any, sin: Any, cache: Any) -> torch.Tensor:
        drop = torch.nn.functional.dropout
        x = x + drop(self.attn(self.attn_norm(x), cos, sin, cache), 0.1, self.training)
        return x + drop(self.mlp(self.mlp_norm(x)), 0.1, self.training)

    model.Block.forward = new_forward
    return lambda: setattr(model.Block, "forward", forward)


def _patch_decay_half() -> Callable[[], None]:
    """Warmup-stable-decay that falls over the last half of the budget instead of 30%."""
    from slm.training import schedule

    before = schedule.DECAY_FRACTION
    schedule.DECAY_FRACTION = 0.5
    return lambda: setattr(schedule, "DECAY_FRACTION", before)


def _patch_untied() -> Callable[[], None]:
    """The output head as its own matrix instead of the embedding's transpose (+0.79 M
    parameters at vocabulary 4096 and width 192: over the preset's budget, measured to
    know what tying costs). Training and scoring only: no cache, every position."""
    from slm import model

    init, forward = model.GPT.__init__, model.GPT.forward

    def new_init(self: Any, config: Any) -> None:
        init(self, config)
        self.head = torch.nn.Linear(config.d_model, config.vocab_size, bias=False)
        torch.nn.init.normal_(self.head.weight, std=0.02)

    def new_forward(self: Any, idx: torch.Tensor, cache: Any = None, last_only: bool = False):
        assert cache is None and not last_only, "the untied screen trains and scores only"
        T = idx.shape[1]
        x = self.tok_emb(idx)
        for block in self.layers:
            x = block(x, self.rope_cos[:T], self.rope_sin[:T], None)
        return self.head(self.norm(x))

    model.GPT.__init__, model.GPT.forward = new_init, new_forward

    def undo() -> None:
        model.GPT.__init__, model.GPT.forward = init, forward

    return undo


def _patch_momentum(momentum: float) -> Callable[[], None]:
    """Muon's momentum at `momentum` instead of 0.95: a shorter or longer memory of past
    gradients."""
    from slm.training import muon

    init = muon.Muon.__init__

    def new_init(self: Any, groups: Any, lr: float, **kwargs: Any) -> None:
        init(self, groups, lr, **{**kwargs, "momentum": momentum})

    muon.Muon.__init__ = new_init
    return lambda: setattr(muon.Muon, "__init__", init)


def _patch_random_starts() -> Callable[[], None]:
    """Every window start drawn at random, with replacement: the sampler before epochs."""
    import numpy as np

    from slm.data import prepared

    next_batch = prepared.BatchSampler.next_batch

    def new_next_batch(self: Any) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - self.context_len
        every = torch.randint(high, (self.batch_size * self.world_size,), generator=self.generator)
        starts = every[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()
        windows = np.stack([self.tokens[s : s + self.context_len + 1] for s in starts])
        block = torch.from_numpy(windows.astype(np.int64))
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()

    prepared.BatchSampler.next_batch = new_next_batch
    return lambda: setattr(prepared.BatchSampler, "next_batch", next_batch)


def _patch_bpe_dropout(rate: float, epochs: int) -> Callable[[], None]:
    """The training text re-encoded each epoch with BPE dropout (each merge skipped at `rate`).

    A regularizer for a run that sees its text several times: every epoch cuts the same words
    into different pieces. Only the first `epochs` epochs (0: all) are re-encoded; the ones
    after train on the tokens as prepared, which the held-out plays are scored in. The
    tokenizer's dropout draws are not seeded, so two runs of one seed differ a little more.
    """
    import numpy as np
    from tokenizers import Tokenizer

    from slm.data import prepared

    data = prepared.load_prepared(CURRENT_DATA)
    tokenizer = Tokenizer.from_file(str(data.tokenizer_path))
    eot = int(data.meta["eot_id"])
    clean = data.tokens("train")
    cuts = [*np.flatnonzero(clean == eot).tolist(), len(clean)]
    docs = [tokenizer.decode(clean[a + 1 : b].tolist()) for a, b in itertools.pairwise(cuts)]
    tokenizer.model.dropout = rate
    new_epoch = prepared.BatchSampler._new_epoch

    def new_new_epoch(self: Any) -> None:
        if not hasattr(self, "_epochs_done"):
            self._epochs_done, self._train = 0, len(self.tokens) == len(clean)
        if self._train and (epochs == 0 or self._epochs_done < epochs):
            ids = [[eot, *e.ids] for e in tokenizer.encode_batch(docs)]
            self.tokens = np.array([t for doc in ids for t in doc], dtype=clean.dtype)
        elif self._train:
            self.tokens = clean
        self._epochs_done += 1
        new_epoch(self)

    prepared.BatchSampler._new_epoch = new_new_epoch
    return lambda: setattr(prepared.BatchSampler, "_new_epoch", new_epoch)


def _patch_attention_scale(factor: float) -> Callable[[], None]:
    """Attention scores at `factor` / sqrt(head_dim) instead of 1 / sqrt(head_dim).

    Under QK-norm without gains a score lies within ±sqrt(head_dim) (±8 for heads of 64), so
    the scale sets how sharp a head can be. A fixed factor exports as q_norm gains of `factor`.
    """
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention

    def scaled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return sdpa(q, k, v, scale=factor / math.sqrt(q.shape[-1]), **kwargs)

    F.scaled_dot_product_attention = scaled
    return lambda: setattr(F, "scaled_dot_product_attention", sdpa)


def _patch_linear_decay() -> Callable[[], None]:
    """Warmup-stable-decay falling in a straight line: the decay before 2026-12-07."""
    from slm.training import loop, schedule

    lr_at = loop.lr_at

    def new_lr_at(step: int, progress: float, cfg: Any, warmup_steps: int) -> float:
        done = max(0.0, 1 - (1 - progress) / schedule.DECAY_FRACTION)
        if done == 0 or cfg.lr_schedule != "wsd":
            return lr_at(step, progress, cfg, warmup_steps)  # the warmup and the peak
        return cfg.lr * (1 - done)  # the default's floor is zero

    loop.lr_at = new_lr_at
    return lambda: setattr(loop, "lr_at", lr_at)


def _patch_split_blocks() -> Callable[[], None]:
    """Muon orthogonalizes the query, key and value blocks of each fused `qkv` matrix apart,
    and the gate and up blocks of `gate_up`, as if they were separate matrices (the blocks are
    told apart by shape, which holds for seed-2.5m: qkv is 3 x 192 rows, gate_up 2 x 512)."""
    from slm.training import muon

    muon_step = muon.Muon._muon

    def new_muon(self: Any, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        for p in params:
            update = self.nesterov_update(p, group["momentum"])
            rows, cols = p.shape
            blocks = 3 if rows == 3 * cols else 2 if rows > cols else 1  # qkv, gate_up, other
            pieces = update.float().reshape(blocks, rows // blocks, cols)
            orthogonal = muon.orthogonalize(pieces).reshape(rows, cols)
            scale = muon.update_scale(rows // blocks, cols)
            p.add_(orthogonal.to(p.dtype), alpha=-group["lr"] * scale)

    muon.Muon._muon = new_muon
    return lambda: setattr(muon.Muon, "_muon", muon_step)


def _attend(
    attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: Any, sin: Any, **gains: Any
) -> torch.Tensor:
    """slm's attention from q, k and v (B, T, heads * head_dim) on, for training and scoring
    with as many key/value heads as heads: heads apart, QK-norm (with `q_gain` / `k_gain`
    where given), rotary positions, causal attention, the output projection. The screens
    that change what comes before it share it."""
    import torch.nn.functional as F

    from slm import model

    B, T, d = q.shape
    q, k, v = (t.view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2) for t in (q, k, v))
    q = F.rms_norm(q, (attn.head_dim,), weight=gains.get("q_gain"), eps=attn.eps)
    k = F.rms_norm(k, (attn.head_dim,), weight=gains.get("k_gain"), eps=attn.eps)
    q, k = model.apply_rope(q, cos, sin), model.apply_rope(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.out(y.transpose(1, 2).reshape(B, T, d))


def _patch_qk_gains() -> Callable[[], None]:
    """QK-norm with a learned gain per channel of a head, shared by the heads (as Qwen3's
    q_norm and k_norm): each channel's share of the attention logits can grow or shrink.
    The forward below is the training path only, for as many key/value heads as heads."""
    from slm import model

    init, forward = model.Attention.__init__, model.Attention.forward

    def new_init(self: Any, config: Any, layer: int) -> None:
        init(self, config, layer)
        self.q_gain = torch.nn.Parameter(torch.ones(config.head_dim))
        self.k_gain = torch.nn.Parameter(torch.ones(config.head_dim))

    def new_forward(self: Any, x: torch.Tensor, cos: Any, sin: Any, cache: Any = None) -> Any:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return _attend(self, q, k, v, cos, sin, q_gain=self.q_gain, k_gain=self.k_gain)

    model.Attention.__init__, model.Attention.forward = new_init, new_forward

    def undo() -> None:
        model.Attention.__init__, model.Attention.forward = init, forward

    return undo


def _patch_embedding_norm() -> Callable[[], None]:
    """Each token's embedding scaled to unit RMS (no gain) where it enters the residual
    stream; the output head still reads the raw embedding. At init the rows have RMS 0.02,
    so the blocks' outputs swamp the token's own identity within the first steps. Exports as
    an untied model: the input table is the normalized embedding, a function of the weights."""
    import torch.nn.functional as F

    from slm import model

    init = model.GPT.__init__

    def new_init(self: Any, config: Any) -> None:
        init(self, config)
        emb = self.tok_emb
        emb.forward = lambda idx: F.rms_norm(F.embedding(idx, emb.weight), (config.d_model,))

    model.GPT.__init__ = new_init
    return lambda: setattr(model.GPT, "__init__", init)


def _patch_embedding_decay(decay: float) -> Callable[[], None]:
    """Weight decay `decay` on the (tied) embedding under Muon instead of --weight-decay's
    0.1; the hidden matrices keep theirs."""
    from slm.training import muon, optimizer

    groups = muon.muon_groups

    def new_groups(*args: Any, **kwargs: Any) -> list:
        result = groups(*args, **kwargs)
        result[1]["weight_decay"] = decay  # hidden, embedding, gains
        return result

    optimizer.muon_groups = new_groups  # the name make_optimizer calls
    return lambda: setattr(optimizer, "muon_groups", groups)


def _patch_momentum_warmup() -> Callable[[], None]:
    """Muon's momentum rises from 0.85 to 0.95 over the first 300 steps: a short memory
    while the gradients turn fast at the start."""
    from slm.training import muon

    step = muon.Muon.step

    def new_step(self: Any, closure: Any = None) -> None:
        self._steps = getattr(self, "_steps", 0) + 1
        for group in self.param_groups:
            group["momentum"] = 0.85 + 0.10 * min(1.0, self._steps / 300)
        step(self, closure)

    muon.Muon.step = new_step
    return lambda: setattr(muon.Muon, "step", step)


def _patch_batch_ramp(steps: int) -> Callable[[], None]:
    """For the first `steps` steps, each step is two updates of half the batch: as many
    tokens a step (so the budget and the schedule stay as they are), twice the updates while
    the model is far from a minimum and a small batch's noise costs little."""
    from slm.training import loop

    dynamic = torch._dynamo.config.automatic_dynamic_shapes
    torch._dynamo.config.automatic_dynamic_shapes = False  # a static graph per batch size
    step = loop.Run._step

    def new_step(self: Any, lr: float) -> float:
        if self.step >= steps:
            return step(self, lr)
        full = self.sampler.batch_size
        self.sampler.batch_size = full // 2
        try:
            return (step(self, lr) + step(self, lr)) / 2
        finally:
            self.sampler.batch_size = full

    loop.Run._step = new_step

    def undo() -> None:
        loop.Run._step = step
        torch._dynamo.config.automatic_dynamic_shapes = dynamic

    return undo


def _patch_normuon(beta2: float = 0.95) -> Callable[[], None]:
    """After the orthogonalization, each output row of the update is divided by the root of
    a running mean of its own squares (one number a row, an Adam second moment per neuron),
    then the whole update is scaled back to the orthogonal one's size. A tall matrix's
    orthogonal update gives its rows unequal sizes; this evens them out over time."""
    from slm.training import muon

    muon_step = muon.Muon._muon

    def new_muon(self: Any, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        by_shape: dict[torch.Size, list[torch.Tensor]] = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        for shape, same in by_shape.items():
            updates = [self.nesterov_update(p, group["momentum"]) for p in same]
            orthogonal = muon.orthogonalize(torch.stack(updates).to(self.ns_dtype)).float()
            scale = muon.update_scale(shape[0], shape[1])
            for p, update in zip(same, orthogonal, strict=True):
                state = self.state[p]
                rows = update.square().mean(dim=1, keepdim=True)
                if "row_sq" not in state:
                    state["row_sq"] = torch.zeros_like(rows)
                    state["row_steps"] = 0
                state["row_sq"].lerp_(rows, 1 - beta2)
                state["row_steps"] += 1
                second = state["row_sq"] / (1 - beta2 ** state["row_steps"])
                normed = update / (second.sqrt() + 1e-8)
                normed.mul_(update.norm() / normed.norm().clamp_min(1e-12))
                p.add_(normed.to(p.dtype), alpha=-group["lr"] * scale)

    muon.Muon._muon = new_muon
    return lambda: setattr(muon.Muon, "_muon", muon_step)


def _patch_cautious_decay() -> Callable[[], None]:
    """Weight decay only where it and the step pull the same way: an entry shrinks when its
    update also moves it towards zero, and is left alone when the gradient wants it larger.
    The step runs without decay; each entry's decay (of its value before the step, as the
    decoupled decay it replaces) is then applied where the step moved it towards zero."""
    from slm.training import muon

    step = muon.Muon.step

    @torch.no_grad()
    def new_step(self: Any, closure: Any = None) -> None:
        decays = [group["weight_decay"] for group in self.param_groups]
        before = {
            p: p.detach().clone()
            for group in self.param_groups
            if group["weight_decay"]
            for p in group["params"]
            if p.grad is not None
        }
        for group in self.param_groups:
            group["weight_decay"] = 0.0
        try:
            step(self, closure)
        finally:
            for group, decay in zip(self.param_groups, decays, strict=True):
                group["weight_decay"] = decay
        for group in self.param_groups:
            for p in group["params"]:
                if p in before:
                    old = before[p]
                    agree = (old * (old - p)) > 0  # the step moved the entry towards zero
                    p.sub_(old * agree, alpha=group["lr"] * group["weight_decay"])

    muon.Muon.step = new_step
    return lambda: setattr(muon.Muon, "step", step)


def _patch_momentum_schedule(start: float, steps: int) -> Callable[[], None]:
    """Muon's momentum warmup from `start` (instead of 0.85) over `steps` steps (instead of
    300), to 0.95 as before."""
    from slm.training import schedule

    before = schedule.MUON_MOMENTUM, schedule.MUON_MOMENTUM_WARMUP
    schedule.MUON_MOMENTUM, schedule.MUON_MOMENTUM_WARMUP = (start, 0.95), steps

    def undo() -> None:
        schedule.MUON_MOMENTUM, schedule.MUON_MOMENTUM_WARMUP = before

    return undo


def _patch_gains_rate(scale: float, embedding_decay: float | None = None) -> Callable[[], None]:
    """The norm gains under Muon's AdamW at `scale` times its rate (0: held at one, as a norm
    without a gain; the export still writes them, all ones); the embedding's decay at
    `embedding_decay` where given."""
    from slm.training import muon, optimizer

    groups = muon.muon_groups

    def new_groups(*args: Any, **kwargs: Any) -> list:
        result = groups(*args, **kwargs)
        result[2]["lr_scale"] = scale  # hidden, embedding, gains
        if embedding_decay is not None:
            result[1]["weight_decay"] = embedding_decay
        return result

    optimizer.muon_groups = new_groups  # the name make_optimizer calls
    return lambda: setattr(optimizer, "muon_groups", groups)


def _shift(x: torch.Tensor, by: int = 1) -> torch.Tensor:
    """(B, T, C) -> the same with each position holding the one `by` before it (zeros first)."""
    return torch.nn.functional.pad(x, (0, 0, by, 0))[:, : x.shape[1]]


def _patch_qkv_shift(taps: int = 1, which: str = "qkv") -> Callable[[], None]:
    """Each channel of q, k and v adds a learned share of the same channel one token back
    (a causal convolution after the projection, per channel, `taps` tokens back, starting at
    zero): a key or value can carry the previous tokens' identity without a layer spent on
    it. The model's first layer turns its attention nearly off (norm gain 0.017), a sign that
    attention on single-token embeddings does little. `which` of q, k and v are shifted; a
    key that carries the token before it is what an induction head matches on (a name said
    earlier in the scene predicts what followed it then). Training and scoring only."""
    from slm import model

    init, forward = model.Attention.__init__, model.Attention.forward

    def new_init(self: Any, config: Any, layer: int) -> None:
        init(self, config, layer)
        width = self.qkv.out_features
        # Vectors, one a tap, so that the optimizer trains them as it does the norm gains.
        self.shift_mix = torch.nn.ParameterList(torch.zeros(width) for _ in range(taps))
        d = self.n_heads * self.head_dim
        mask = torch.cat([torch.full((d,), float(part in which)) for part in "qkv"])
        self.register_buffer("shift_mask", mask, persistent=False)

    def new_forward(self: Any, x: torch.Tensor, cos: Any, sin: Any, cache: Any = None) -> Any:
        assert cache is None, "the shift screen trains and scores only"
        qkv = self.qkv(x)
        mixed = qkv
        for tap in range(taps):
            # In the projection's precision: an fp32 vector would lift the whole of q, k
            # and v to fp32 under bf16 autocast (and attention with them).
            mix = (self.shift_mix[tap] * self.shift_mask).to(qkv.dtype)
            mixed = mixed + mix * _shift(qkv, tap + 1)
        return _attend(self, *mixed.chunk(3, dim=-1), cos, sin)

    model.Attention.__init__, model.Attention.forward = new_init, new_forward

    def undo() -> None:
        model.Attention.__init__, model.Attention.forward = init, forward

    return undo


def _patch_value_residual() -> Callable[[], None]:
    """Each layer's values mix in the first layer's, v = a*v + b*v_first (a from 1, b from
    0, learned per layer): later layers read token identities straight from the embedding.
    Training and scoring only."""
    import torch.nn.functional as F

    from slm import model

    init, forward = model.GPT.__init__, model.GPT.forward

    def new_init(self: Any, config: Any) -> None:
        init(self, config)
        self.v_own = torch.nn.Parameter(torch.ones(config.n_layers))
        self.v_first = torch.nn.Parameter(torch.zeros(config.n_layers))

    def attend(attn: Any, x: torch.Tensor, cos: Any, sin: Any, v_first: Any, a: Any, b: Any):
        q, k, v = attn.qkv(x).chunk(3, dim=-1)
        if v_first is None:
            v_first = v
        else:
            v = a * v + b * v_first
        return _attend(attn, q, k, v, cos, sin), v_first

    def new_forward(self: Any, idx: torch.Tensor, cache: Any = None, last_only: bool = False):
        assert cache is None, "the value-residual screen trains and scores only"
        T = idx.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x, v_first = self.tok_emb(idx), None
        for i, block in enumerate(self.layers):
            y, v_first = attend(
                block.attn, block.attn_norm(x), cos, sin, v_first, self.v_own[i], self.v_first[i]
            )
            x = x + y
            x = x + block.mlp(block.mlp_norm(x))
        if last_only:
            x = x[:, -1:]
        return F.linear(self.norm(x), self.tok_emb.weight)

    model.GPT.__init__, model.GPT.forward = new_init, new_forward

    def undo() -> None:
        model.GPT.__init__, model.GPT.forward = init, forward

    return undo


def _patch_smear() -> Callable[[], None]:
    """Each token's embedding adds a learned per-channel share of the previous token's
    (from zero) before the first layer: a bigram's worth of context for free."""
    from slm import model

    init = model.GPT.__init__

    def new_init(self: Any, config: Any) -> None:
        init(self, config)
        emb = self.tok_emb
        emb.smear = torch.nn.Parameter(torch.zeros(config.d_model))

        def forward(idx: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.embedding(idx, emb.weight)
            return x + emb.smear * _shift(x)

        emb.forward = forward

    model.GPT.__init__ = new_init
    return lambda: setattr(model.GPT, "__init__", init)


def _patches(*patches: Callable[[], Callable[[], None]]) -> Callable[[], None]:
    """Several patches at once; undone in reverse order."""
    undos = [patch() for patch in patches]

    def undo() -> None:
        for each in reversed(undos):
            each()

    return undo


PATCHES = {
    "qkv_shift": _patch_qkv_shift,
    "qkv_shift_2": partial(_patch_qkv_shift, 2),
    "kv_shift": partial(_patch_qkv_shift, 1, "kv"),
    "k_shift": partial(_patch_qkv_shift, 1, "k"),
    "value_residual": _patch_value_residual,
    "smear": _patch_smear,
    "gains_frozen_embedding_decay_01": partial(_patch_gains_rate, 0.0, 0.1),
    "gains_frozen": partial(_patch_gains_rate, 0.0),
    "gains_third": partial(_patch_gains_rate, 1 / 3),
    "momentum_warmup_600": partial(_patch_momentum_schedule, 0.85, 600),
    "momentum_from_075": partial(_patch_momentum_schedule, 0.75, 300),
    "normuon": _patch_normuon,
    "cautious_decay": _patch_cautious_decay,
    "batch_ramp_400": partial(_patch_batch_ramp, 400),
    "embedding_norm": _patch_embedding_norm,
    "embedding_no_decay": partial(_patch_embedding_decay, 0.0),
    "embedding_decay_03": partial(_patch_embedding_decay, 0.3),
    "embedding_decay_1": partial(_patch_embedding_decay, 1.0),
    "embedding_decay_05": partial(_patch_embedding_decay, 0.5),
    "embedding_decay_03_momentum_warmup": partial(
        _patches, partial(_patch_embedding_decay, 0.3), _patch_momentum_warmup
    ),
    "momentum_warmup": _patch_momentum_warmup,
    "qk_gains": _patch_qk_gains,
    "split_blocks": _patch_split_blocks,
    "linear_decay": _patch_linear_decay,
    "random_starts": _patch_random_starts,
    "momentum_09": partial(_patch_momentum, 0.9),
    "momentum_098": partial(_patch_momentum, 0.98),
    "decay_half": _patch_decay_half,
    "untied": _patch_untied,
    "dropout": _patch_dropout,
    "zero_init": _patch_zero_init,
    "relu2": _patch_relu2,
    "ns_fp32": _patch_ns_fp32,
    "bpe_dropout_2": partial(_patch_bpe_dropout, 0.1, 2),
    "attention_scale_15": partial(_patch_attention_scale, 1.5),
}


# The patches that change only the model (its classes' __init__ and forward): `--speed` can
# time these beside the others.
MODEL_PATCHES = {
    "qkv_shift",
    "qkv_shift_2",
    "kv_shift",
    "k_shift",
    "value_residual",
    "smear",
    "qk_gains",
    "embedding_norm",
    "untied",
    "dropout",
    "zero_init",
    "relu2",
}


def run_one(name: str, seed: int, tokens: int, data: Path, work: Path) -> dict[str, Any]:
    import slm
    from slm import checkpoint
    from slm.bench.suite import machine_info
    from slm.data import prepared
    from slm.evaluate import evaluate_model

    global CURRENT_DATA
    CURRENT_DATA = data
    run_dir = work / f"{name.replace(' ', '_').replace(',', '')}-{seed}"
    settings = dict(VARIANTS[name])
    patch = settings.pop("_patch", None)
    undo = PATCHES[patch]() if patch else (lambda: None)
    try:
        start = time.perf_counter()
        result = slm.train(
            [str(data)],
            out=run_dir,
            seed=seed,
            max_tokens=tokens,
            sample_tokens=0,
            eval_every=10**9,  # one evaluation, at the end
            **settings,
        )
        wall_s = time.perf_counter() - start
        val = evaluate_model(run_dir, [], split="val")
    finally:
        undo()
    # Training speed as the median of the steps' own rates: a pause (another job, a stopped
    # process) stretches a few steps and the wall time, not the median.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "train_loss" in r and "tokens_per_s" in r]
    # The last steps' training loss in bits per byte, beside the validation figure: the gap
    # between them is how much a run over several epochs has begun to memorize.
    losses = [r["train_loss"] for r in records if "train_loss" in r][-50:]
    bytes_per_token = val.bytes / val.tokens  # the held-out rate stands in for the training one
    return {
        "variant": name,
        "settings": VARIANTS[name],
        "seed": seed,
        "vocab_size": prepared.load_prepared(data).vocab_size,
        "tokens": result.tokens,
        "steps": result.step,
        "bpb": val.bpb,
        "train_bpb_tail": round(statistics.mean(losses) / math.log(2) / bytes_per_token, 4),
        "wall_s": round(wall_s, 1),
        "tokens_per_s": round(statistics.median(rates)),
        "processor": machine_info()["processor"],
        "dtype": checkpoint.load_train_state(run_dir)["dtype"],
        "date": time.strftime("%Y-%m-%d"),
    }


def speed(names: list[str], rounds: int = 5, steps: int = 4) -> str:
    """Each variant's training step (`slm train`'s own, compiled), interleaved in one run.

    What a change costs per token, so its figure at a fixed token count can be turned into
    one at a fixed time: tokens/s, and the ratio to the first variant round by round. Each
    variant runs in its own precision (fp32 unless it sets one). A patched variant's model
    is built under its patch and keeps the patched forwards as its own (`_pin_forwards`),
    so it runs beside the others; a patch to the optimizer is not carried over that way,
    so those are refused.
    """
    from slm.bench.measure import interleaved_rates, rates_table
    from slm.bench.suite import train_step
    from slm.config import PRESETS, ModelConfig, TrainConfig, split_settings
    from slm.model import GPT

    # Each variant keeps its own static-shape kernels, as in a run of its own: without
    # this, the second shape of the same loss function recompiles it for any shape.
    torch._dynamo.config.automatic_dynamic_shapes = False
    runs: dict[str, tuple[Callable[[], None], int]] = {}
    for name in names:
        settings = dict(VARIANTS[name])
        patch = settings.pop("_patch", None)
        if patch and patch not in MODEL_PATCHES:
            raise SystemExit(f"--speed cannot carry {name!r}'s optimizer patch over")
        dtype = getattr(torch, settings.pop("dtype", "float32"))
        model_settings, train_settings = split_settings(settings)
        model_cfg = ModelConfig(**{**PRESETS["seed-2.5m"], **model_settings})
        cfg = TrainConfig(**train_settings)
        torch.manual_seed(0)
        undo = PATCHES[patch]() if patch else (lambda: None)
        try:
            model = _pin_forwards(GPT(model_cfg))
        finally:
            undo()
        step = train_step(model, cfg, dtype, compile_it=True)
        data = torch.randint(0, model_cfg.vocab_size, (cfg.batch_size, model_cfg.context_len + 1))
        runs[name] = (
            partial(step, data[:, :-1].contiguous(), data[:, 1:].contiguous()),
            cfg.batch_size * model_cfg.context_len,
        )
        for _ in range(3):  # compile and settle
            runs[name][0]()
    return rates_table(interleaved_rates(runs, rounds, steps), names[0], "change")


def _pin_forwards(model: torch.nn.Module) -> torch.nn.Module:
    """Each module's forward as its class has it now, set on the module itself: a model
    built under a patch keeps the patched forwards once the patch is undone."""
    import types

    for module in model.modules():
        if "forward" not in vars(module):
            module.forward = types.MethodType(type(module).forward, module)
    return model


def table(rows: list[dict[str, Any]]) -> str:
    """Mean and spread of bits per byte per change, token budget and processor, over seeds.

    Seeds do not pool across processors: the same recipe and seed can come out apart on
    two machines (Muon at 5 M tokens, seed 1: 1.915 and 1.885), since rounding differs and a
    run amplifies it like a change of seed; a change is compared on the machine it ran on.
    """
    by_variant: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["variant"], f"{row['tokens'] / 1e6:.1f}", row.get("processor", "?"))
        by_variant.setdefault(key, []).append(row)
    lines = [
        "| change | tokens | seeds | val bpb (mean) | spread | tokens/s (median, processor) |",
        "|---|---|---|---|---|---|",
    ]
    for runs in by_variant.values():
        bpbs = [r["bpb"] for r in runs]
        rates: dict[str, list[float]] = {}
        for r in runs:
            if r.get("tokens_per_s"):
                rates.setdefault(r.get("processor", "?"), []).append(r["tokens_per_s"])
        speed = "; ".join(f"{statistics.median(v):,.0f} ({k})" for k, v in rates.items())
        seeds = ", ".join(str(r["seed"]) for r in runs)
        lines.append(
            f"| {runs[0]['variant']} | {runs[0]['tokens'] / 1e6:.1f} M | {seeds} "
            f"| {statistics.mean(bpbs):.4f} | {max(bpbs) - min(bpbs):.4f} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["baseline"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--tokens", type=float, default=5e6)
    parser.add_argument("--data", help="a prepared built-in corpus (default: prepared here)")
    parser.add_argument("--table", action="store_true", help="summarize the runs so far")
    parser.add_argument(
        "--speed", action="store_true", help="time each variant's training step, interleaved"
    )
    args = parser.parse_args()
    if args.speed:
        from slm.bench.suite import machine_info
        from slm.device import set_threads

        set_threads(0)
        print(f"{machine_info()['processor']}, {torch.get_num_threads()} threads, ", end="")
        print(time.strftime("%Y-%m-%d") + "\n")
        print(speed(args.variants), end="")
        return 0
    if args.table:
        rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line]
        print(table(rows), end="")
        return 0
    import slm

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            slm.prepare([], data)
        for name in args.variants:
            for seed in args.seeds:
                row = run_one(name, seed, int(args.tokens), data, Path(tmp))
                print(json.dumps(row), flush=True)
                if row["tokens"] < args.tokens:  # stopped early (Ctrl-C, SIGTERM): no figure
                    return 130
                RESULTS.parent.mkdir(exist_ok=True)
                with RESULTS.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
