"""slm.training.muon: the orthogonalized update, its AdamW half, and `--optimizer muon` runs
that learn and resume exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from slm import checkpoint
from slm.training.loop import TrainRequest, train
from slm.training.muon import EMBEDDING_DECAY_SCALE, Muon, muon_groups, orthogonalize
from slm.training.schedule import muon_momentum_at

FAST = {"threads": 1, "compile": "off", "sample_tokens": 0, "batch_size": 8, "eval_every": 10}


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (48, 48)])
def test_orthogonalize_keeps_the_directions_and_evens_the_scales(shape) -> None:
    torch.manual_seed(0)
    rank = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], rank))
    v, _ = torch.linalg.qr(torch.randn(shape[1], rank))
    g = u @ torch.diag(torch.logspace(0, 2, rank)) @ v.T  # singular values 1 to 100
    o = orthogonalize(g)
    assert o.shape == g.shape
    singular = torch.linalg.svdvals(o)
    assert singular.min() > 0.6 and singular.max() < 1.25  # evened out, from 1:100
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vt  # the exact orthogonal factor: same directions, every scale 1
    cosine = (o * polar).sum() / (o.norm() * polar.norm())
    assert cosine > 0.95


def test_under_bf16_the_orthogonalization_runs_in_bf16_and_lands_as_fp32_does() -> None:
    from slm.config import ModelConfig, TrainConfig, preset
    from slm.model import GPT
    from slm.training.optimizer import make_optimizer

    model, cpu = GPT(ModelConfig(**preset("tiny"))), torch.device("cpu")
    assert make_optimizer(model, TrainConfig(), cpu).ns_dtype == torch.float32
    assert make_optimizer(model, TrainConfig(), cpu, torch.bfloat16).ns_dtype == torch.bfloat16
    assert make_optimizer(model, TrainConfig(), cpu, torch.float16).ns_dtype == torch.float32
    torch.manual_seed(0)
    g = torch.randn(4, 96, 32)
    full, half = orthogonalize(g), orthogonalize(g.bfloat16())
    assert half.dtype == torch.bfloat16
    # bf16's 8-bit mantissa moves each entry by about 1%, not the update's direction
    cosine = (full * half.float()).sum() / (full.norm() * half.float().norm())
    assert cosine > 0.995
    singular = torch.linalg.svdvals(half.float())
    assert singular.min() > 0.6 and singular.max() < 1.25


def test_its_adamw_half_matches_torchs_adamw() -> None:
    torch.manual_seed(0)
    ours, theirs = torch.nn.Parameter(torch.randn(5, 7)), None
    theirs = torch.nn.Parameter(ours.detach().clone())
    group = {"muon": False, "weight_decay": 0.1}
    a = Muon([{"params": [ours], **group}], lr=1e-2, betas=(0.9, 0.95))
    b = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    for _ in range(5):
        grad = torch.randn(5, 7)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_groups_put_the_hidden_matrices_under_muon_and_the_rest_under_adamw() -> None:
    from slm.config import ModelConfig, preset
    from slm.model import GPT

    model = GPT(ModelConfig(**preset("tiny")))
    hidden, embedding, gains = muon_groups(model, lr=2e-3, muon_lr=0.02, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("layers.") and p.dim() == 2 for p in hidden["params"])
    assert [names[id(p)] for p in embedding["params"]] == ["tok_emb.weight"]
    assert all(p.dim() == 1 for p in gains["params"]) and gains["weight_decay"] == 0
    assert hidden["muon"] and hidden["lr_scale"] == pytest.approx(10)
    # the same shrink a step as AdamW's matrices: lr x decay
    assert hidden["lr_scale"] * 2e-3 * hidden["weight_decay"] == pytest.approx(2e-3 * 0.1)
    assert embedding["weight_decay"] == pytest.approx(0.1 * EMBEDDING_DECAY_SCALE)
    assert EMBEDDING_DECAY_SCALE > 1  # the embedding decays faster than the hidden matrices
    n_params = sum(len(g["params"]) for g in (hidden, embedding, gains))
    assert n_params == len(list(model.parameters()))


def _run(prepared: Path, out: Path, **overrides) -> Path:
    settings = {**FAST, "optimizer": "muon", **overrides}
    request = TrainRequest(data=[str(prepared)], out=str(out), preset="tiny", overrides=settings)
    return train(request).run_dir


def _losses(run_dir: Path, key: str = "train_loss") -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


def test_a_muon_run_learns_and_uses_its_own_rate(prepared, tmp_path) -> None:
    run_dir = _run(prepared, tmp_path / "run", max_steps=60, eval_every=30)
    val = _losses(run_dir, "val_loss")
    vocab = json.loads((run_dir / "config.json").read_text())["vocab_size"]
    assert val[-1] < val[0] < math.log(vocab)
    state = checkpoint.load_train_state(run_dir)
    groups = state["optimizer"]["param_groups"]
    assert [g["muon"] for g in groups] == [True, False, False]
    settings = json.loads((run_dir / "train_config.json").read_text())
    ratio = settings["muon_lr"] / settings["lr"]  # lr 0 was resolved to Muon's default
    assert settings["lr"] > 0 and groups[0]["lr"] == pytest.approx(ratio * groups[1]["lr"])
    # The momentum follows its warmup: set for the 60th step (index 59), 0.87 of 0.85 -> 0.95.
    assert groups[0]["momentum"] == pytest.approx(muon_momentum_at(59)) == pytest.approx(0.87)


def test_a_resumed_muon_run_ends_where_an_uninterrupted_one_does(prepared, tmp_path) -> None:
    straight = _run(prepared, tmp_path / "a", max_steps=20)
    stopped = _run(prepared, tmp_path / "b", max_steps=20, stop_after=7)
    train(TrainRequest(resume=str(stopped), overrides={}))
    assert _losses(stopped) == _losses(straight)
    a = checkpoint.load_model(straight).state_dict()
    b = checkpoint.load_model(stopped).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_saved_before_the_optimizer_setting_resumes_with_adamw(prepared, tmp_path) -> None:
    # Such a run trained with AdamW; resuming it under the new default would load AdamW's
    # state into Muon. Its train_config.json has no "optimizer": it resumes as AdamW.
    run_dir = _run(prepared, tmp_path / "old", optimizer="adamw", max_steps=8, stop_after=3)
    config_file = run_dir / "train_config.json"
    saved = json.loads(config_file.read_text())
    del saved["optimizer"], saved["muon_lr"]
    config_file.write_text(json.dumps(saved))
    train(TrainRequest(resume=str(run_dir), overrides={}))
    assert len(_losses(run_dir)) == 8
    groups = checkpoint.load_train_state(run_dir)["optimizer"]["param_groups"]
    assert "muon" not in groups[0]  # torch's AdamW groups
