"""Chat fine-tuning: conversations become tokens with a loss mask, only the assistant's tokens
carry loss, bad lines are reported, and a tiny model learns to answer; `slm chat` keeps the
conversation."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slm
from slm.chat_template import CHATML, render
from slm.cli.chat import run_chat
from slm.cli.main import main
from slm.config import SampleConfig
from slm.data.chat import encode_conversation, prepare_chat
from slm.data.prepared import ChatBatchSampler, load_prepared
from slm.errors import SLMError
from slm.tokenizer.bpe import Tokenizer

FAST = {"device": "cpu", "dtype": "float32", "compile": "off", "sample_tokens": 0, "threads": 1}
CAPITALS = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Cuba": "Havana",
}


def _question(country: str) -> str:
    return f"What is the capital of {country}?"


def _answer(country: str) -> str:
    return f"The capital of {country} is {CAPITALS[country]}."


def _write_conversations(path: Path, n: int, bad_lines: list[str] = ()) -> Path:
    rng = random.Random(0)
    lines = []
    for i in range(n):
        country = rng.choice(list(CAPITALS))
        messages = [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": _question(country)},
            {"role": "assistant", "content": _answer(country)},
        ][i % 2 :]  # half with a system message, half without
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join([*lines, *bad_lines]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus_dir) -> Path:
    out = tmp_path_factory.mktemp("base") / "run"
    # context 128: a conversation in this small vocabulary is ~100 tokens
    settings = {**FAST, "max_steps": 30, "batch_size": 8, "eval_every": 30, "context_len": 128}
    return slm.train(str(corpus_dir), out=out, preset="tiny", vocab_size=300, **settings).run_dir


@pytest.fixture(scope="module")
def chat_data(base_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chat")
    source = _write_conversations(folder / "chat.jsonl", 200)
    tokenizer = str(base_run / "tokenizer.json")
    out = folder / "data"
    prepare_chat([str(source)], out, tokenizer_path=tokenizer, context_len=128, val_fraction=0.1)
    return out


# --------------------------------------------------------------------------- tokens and mask


def test_conversation_tokens_are_the_rendered_template_and_the_mask_is_the_assistants(
    small_tokenizer_file,
):
    tokenizer = Tokenizer.from_file(small_tokenizer_file).with_chat_tokens()
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi 👋 there\r\n"},
        {"role": "assistant", "content": " Hello, friend."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Farewell!"},
    ]
    ids, mask = encode_conversation(tokenizer, messages)
    assert tokenizer.decode(ids) == "<|endoftext|>" + render(CHATML, messages, False)
    learned = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert learned == " Hello, friend.<|im_end|>Farewell!<|im_end|>"


def test_bad_lines_are_reported_by_number_and_the_rest_is_used(base_run, tmp_path):
    bad = [
        "not json",
        json.dumps({"messages": [{"content": "no role"}]}),
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": " "}]}),
        json.dumps({"text": "no messages"}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "user", "content": "long " * 200}, _long_answer()]}),
    ]
    source = _write_conversations(tmp_path / "chat.jsonl", 20, bad)
    summary = prepare_chat(
        [str(source)],
        tmp_path / "out",
        tokenizer_path=str(base_run / "tokenizer.json"),
        context_len=128,
    )
    reasons = {s.line: s.reason for s in summary.skipped}
    assert sorted(reasons) == list(range(21, 28))
    assert "not JSON" in reasons[21] and "no role" in reasons[22]
    assert "unknown role 'robot'" in reasons[23] and "empty content" in reasons[24]
    assert "messages" in reasons[25] and "no assistant turn" in reasons[26]
    assert "longer than the context" in reasons[27]
    assert sum(summary.conversations.values()) == 20
    assert "line 23: message 1 has an unknown role 'robot'" in summary.format()


def _long_answer() -> dict[str, str]:
    return {"role": "assistant", "content": "yes"}


def test_a_file_with_nothing_usable_is_one_clear_error(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text("nope\n{}\n", encoding="utf-8")
    code = main(["prepare", "--chat", str(source), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "usable conversations" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_chat_tokens_are_added_after_the_base_vocabulary(base_run, chat_data):
    base = Tokenizer.from_file(base_run / "tokenizer.json")
    chat = Tokenizer.from_file(chat_data / "tokenizer.json")
    assert chat.vocab_size == base.vocab_size + 2
    assert base.same_base(chat)
    assert chat.specials["<|im_start|>"] == base.vocab_size
    sample = "The capital of Peru is Lima."
    assert chat.encode(sample) == base.encode(sample)


# --------------------------------------------------------------------------- loss


def test_batches_start_at_conversations_and_only_assistant_tokens_carry_loss(chat_data, base_run):
    data = load_prepared(chat_data)
    tokens, mask, index = data.tokens("train"), data.mask("train"), data.conversations("train")
    sampler = ChatBatchSampler(tokens, mask, index, batch_size=8, context_len=128, seed=0)
    x, y = sampler.next_batch()
    tokenizer = Tokenizer.from_file(chat_data / "tokenizer.json")
    assert (x[:, 0] == tokenizer.eot_id).all()  # every window starts a conversation
    # The gradient reaches the logits only where the target is the assistant's.
    model = slm.load(base_run, device="cpu").model
    from slm.training.finetune import grow_vocab

    model = grow_vocab(model, tokenizer.vocab_size).train()
    logits = model(x).detach().requires_grad_(True)
    F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, y != -100)
    learned = [tokenizer.decode(row[row != -100].tolist()) for row in y]
    assert all(text.startswith("The capital of ") for text in learned)
    assert all("<|im_start|>" not in text and "Answer in one" not in text for text in learned)


def test_grown_embedding_rows_start_at_the_mean(base_run):
    from slm.training.finetune import grow_vocab

    model = slm.load(base_run, device="cpu").model
    grown = grow_vocab(model, model.config.vocab_size + 2)
    old = model.tok_emb.weight.detach()
    new = grown.tok_emb.weight.detach()
    assert torch.equal(new[: len(old)], old)
    assert torch.allclose(new[len(old) :], old.mean(0).expand(2, -1))


# --------------------------------------------------------------------------- learning to answer


@pytest.fixture(scope="module")
def chat_run(base_run, chat_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chat_run") / "run"
    settings = {**FAST, "max_steps": 400, "batch_size": 8, "lr": 3e-3, "eval_every": 200}
    return slm.train(str(chat_data), init_from=base_run, out=out, **settings).run_dir


def test_a_chat_tuned_model_answers_held_in_questions(chat_run):
    model = slm.load(chat_run, device="cpu")
    assert model.chat_template == CHATML
    correct = 0
    for country in CAPITALS:
        messages = [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": _question(country)},
        ]
        reply = model.chat(messages, temperature=0, max_new_tokens=30)
        correct += reply == _answer(country)
    print(f"chat accuracy: {correct}/{len(CAPITALS)}")
    assert correct / len(CAPITALS) >= 0.75


def test_the_reply_ends_at_the_end_of_the_assistant_turn(chat_run):
    model = slm.load(chat_run, device="cpu")
    generation = model.chat_generation([{"role": "user", "content": _question("Peru")}], None)
    for _ in generation:
        pass
    completion = generation.result.completions[0]
    assert completion.finish_reason == "stop"
    assert completion.new_tokens < SampleConfig().max_new_tokens


def test_slm_chat_keeps_the_conversation(chat_run):
    model = slm.load(chat_run, device="cpu")
    prompts = iter([_question("Japan"), _question("Cuba"), "/reset", _question("Egypt")])
    seen: list[list[dict[str, str]]] = []
    real_chat_prompt = model.chat_prompt

    def spy(messages, max_new_tokens=200):
        seen.append([dict(m) for m in messages])
        return real_chat_prompt(messages, max_new_tokens)

    model.chat_prompt = spy

    def fake_input(_prompt: str) -> str:
        try:
            return next(prompts)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    settings = SampleConfig(temperature=0, max_new_tokens=30)
    assert run_chat(model, settings, out, input_fn=fake_input) == 0
    assert "Tokyo" in out.getvalue() and "Havana" in out.getvalue()
    assert [m["role"] for m in seen[1]] == ["user", "assistant", "user"]
    assert seen[1][0]["content"] == _question("Japan") and "Tokyo" in seen[1][1]["content"]
    assert seen[2] == [{"role": "user", "content": _question("Egypt")}]  # /reset forgot it


def test_old_turns_are_dropped_whole_to_fit_the_context(chat_run):
    model = slm.load(chat_run, device="cpu")
    messages = [{"role": "system", "content": "Answer in one sentence."}]
    for country in CAPITALS:
        messages += [
            {"role": "user", "content": _question(country)},
            {"role": "assistant", "content": _answer(country)},
        ]
    messages.append({"role": "user", "content": _question("Peru")})
    prompt = model.chat_prompt(messages, max_new_tokens=20)
    assert len(model.tokenizer.encode(prompt)) <= model.config.context_len - 20
    assert prompt.startswith("<|endoftext|><|im_start|>system\nAnswer in one sentence.")
    assert prompt.endswith(f"{_question('Peru')}<|im_end|>\n<|im_start|>assistant\n")
    kept = prompt.split("<|im_start|>")[2:]
    assert kept[0].startswith("user\n")  # the first kept turn is whole: it starts with the user


def test_a_base_model_chats_through_a_plain_transcript(base_run):
    model = slm.load(base_run, device="cpu")
    assert model.chat_template is None
    prompt = model.chat_prompt([{"role": "user", "content": "Hello"}])
    assert prompt == "User: Hello\nAssistant:"


def test_chat_data_without_a_base_tokenizer_trains_its_own(tmp_path):
    source = _write_conversations(tmp_path / "chat.jsonl", 30)
    summary = slm.prepare(source, tmp_path / "out", chat=True, vocab_size=300)
    assert summary.tokenizer_trained
    assert Tokenizer.from_file(tmp_path / "out" / "tokenizer.json").has_chat_tokens
    meta = load_prepared(tmp_path / "out").meta
    assert meta["kind"] == "chat"
    assert np.asarray(load_prepared(tmp_path / "out").mask("train")).sum() > 0


def test_unknown_option_names_fail_loudly(tmp_path):
    source = _write_conversations(tmp_path / "chat.jsonl", 5)
    with pytest.raises(TypeError):
        slm.prepare(source, tmp_path / "out", chat=True, text_field="x")
    with pytest.raises(SLMError):
        prepare_chat([str(tmp_path / "missing.jsonl")], tmp_path / "o2")
