"""`slm export`: each export checked by the tool that consumes it. transformers loads the hf
folder (logits, greedy tokens, token ids); llama.cpp (through llama-cpp-python, when it is
installed) runs the GGUF file (token ids, greedy text, logits per dtype)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slm.cli.main import main

# Emoji (with a skin-tone modifier), CJK, CRLF, tabs, leading and repeated spaces, digits,
# accents and slm's special token written in the text.
VARIED_TEXT = (
    "  Leading spaces, then CRLF\r\nand a tab\there. 中文字符 and 日本語; emoji 🎉👍🏽!\n"
    "Numbers 12345 and 3.14, accents café naïve, <|endoftext|> then more   text.\n"
)


def _sharpen(model_dir: Path, seed: int = 0) -> Path:
    """Redraw the weights wider than the training init, so logits spread over several units
    and greedy decoding does not repeat one token: a stricter test of both consumers."""
    from slm import checkpoint

    model = checkpoint.load_model(model_dir)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.25)
    checkpoint.save_weights(model_dir, model)
    return model_dir


# QK-norm (the default) exports as Qwen3 / llama.cpp's qwen3, without it as Llama / llama.
@pytest.fixture(scope="module", params=[True, False], ids=["qk-norm", "llama"])
def model_dir(make_model_dir, make_corpus_text, request) -> Path:
    text = make_corpus_text(3000) + VARIED_TEXT
    return _sharpen(make_model_dir(text, context_len=96, qk_norm=request.param))


def _qk_norm(model_dir: Path) -> bool:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["qk_norm"]


@pytest.fixture(scope="module")
def hf_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slm.export.hf import export_hf

    return export_hf(model_dir, tmp_path_factory.mktemp("export") / "hf").path


def _slm(folder: Path):
    import slm

    return slm.load(folder, device="cpu")


# --------------------------------------------------------------------------- hf


def test_hf_folder_has_the_files_transformers_and_the_hub_expect(model_dir: Path, hf_dir: Path):
    names = {p.name for p in hf_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
    } <= names
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    expected = "Qwen3ForCausalLM" if _qk_norm(model_dir) else "LlamaForCausalLM"
    assert config["architectures"] == [expected] and config["tie_word_embeddings"]
    card = (hf_dir / "README.md").read_text(encoding="utf-8")
    assert "AutoModelForCausalLM" in card and "parameters" in card


def test_transformers_gives_slm_logits_and_greedy_tokens(model_dir: Path, hf_dir: Path):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ours = _slm(model_dir)
    ids = torch.randint(
        0, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        diff = (ours.model(ids) - theirs(ids).logits).abs().max().item()
    assert diff < 1e-4

    prompt = ours.tokenizer.encode("The king")
    greedy = ours.complete("The king", max_new_tokens=50, temperature=0.0, ignore_eot=True)
    # slm never samples the pad token, nor <|endoftext|> with ignore_eot: ban both in HF too.
    banned = [[ours.tokenizer.pad_id], [ours.tokenizer.eot_id]]
    out = theirs.generate(
        torch.tensor([prompt]),
        max_new_tokens=50,
        do_sample=False,
        eos_token_id=None,
        bad_words_ids=banned,
    )
    tokens = list(greedy.completions[0].tokens)
    assert tokens == out[0, len(prompt) :].tolist()
    assert len(set(tokens)) > 5  # a real continuation, not one token repeated


def test_transformers_tokenizer_gives_slm_ids(model_dir: Path, hf_dir: Path):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = _slm(model_dir).tokenizer
    ids = theirs(VARIED_TEXT)["input_ids"]
    assert ids == ours.encode(VARIED_TEXT)
    assert theirs.decode(ids) == VARIED_TEXT


def test_round_trip_slm_hf_slm_keeps_the_logits_exactly(model_dir: Path, hf_dir: Path):
    before, after = _slm(model_dir), _slm(hf_dir)
    ids = torch.randint(0, before.config.vocab_size, (1, 50))
    with torch.no_grad():
        assert torch.equal(before.model(ids), after.model(ids))
    assert before.config == after.config
    assert after.tokenizer.encode(VARIED_TEXT) == before.tokenizer.encode(VARIED_TEXT)


def test_a_chat_model_exports_its_template_and_stops_at_im_end(make_corpus_text, tmp_path: Path):
    from slm import checkpoint
    from slm.chat_template import CHAT_TOKENS, CHATML, IM_END, write_template
    from slm.config import ModelConfig
    from slm.export.hf import export_hf
    from slm.model import GPT
    from slm.tokenizer.bpe import Tokenizer

    folder = tmp_path / "chat"
    tokenizer = Tokenizer.train([make_corpus_text(500)], vocab_size=300)
    tokenizer.hf.add_special_tokens(list(CHAT_TOKENS))
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_len=32, d_model=32, n_layers=1, n_heads=2
    )
    checkpoint.save_model(folder, GPT(config))
    tokenizer.save(folder / checkpoint.TOKENIZER_FILE)
    write_template(folder, CHATML)

    out = export_hf(folder, tmp_path / "hf").path
    tok_config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_config["chat_template"] == CHATML and tok_config["eos_token"] == IM_END
    gen = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
    assert gen["eos_token_id"] == [tokenizer.hf.token_to_id(IM_END), tokenizer.eot_id]

    transformers = pytest.importorskip("transformers")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Hi"}]
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------- gguf


@pytest.fixture(scope="module")
def gguf_files(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("gguf")
    from slm.export.gguf import GGUF_DTYPES, export_gguf

    folder = tmp_path_factory.mktemp("gguf")
    return {d: export_gguf(model_dir, folder / f"m-{d}.gguf", d).path for d in GGUF_DTYPES}


def test_gguf_holds_slm_vocabulary_and_weights_in_llama_order(
    model_dir: Path, gguf_files: dict[str, Path]
):
    """What the writer put in, read back with gguf's reader (llama.cpp runs it below)."""
    import gguf

    from slm.export.gguf import interleave_rope_rows

    reader = gguf.GGUFReader(gguf_files["f32"])
    field = reader.get_field
    qk_norm = _qk_norm(model_dir)
    assert field("general.architecture").contents() == ("qwen3" if qk_norm else "llama")
    assert field("tokenizer.ggml.pre").contents() == "gpt-2"
    ours = _slm(model_dir)
    vocab = ours.tokenizer.hf.get_vocab()
    tokens = field("tokenizer.ggml.tokens").contents()
    assert all(tokens[i] == t for t, i in vocab.items())
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    c = ours.config
    q = ours.model.layers[0].attn.qkv.weight[: c.d_model]
    # llama.cpp's llama rotates adjacent pairs (rows reordered); its qwen3 rotates halves.
    assert torch.equal(
        tensors["blk.0.attn_q.weight"], q if qk_norm else interleave_rope_rows(q, c.n_heads)
    )
    assert ("blk.0.attn_q_norm.weight" in tensors) == qk_norm
    assert torch.equal(tensors["token_embd.weight"], ours.model.tok_emb.weight)
    sizes = {d: p.stat().st_size for d, p in gguf_files.items()}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


def _llama_cpp(path: Path, n_ctx: int):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (see .ci/run)"
    )
    # An f32 KV cache (type 0): llama.cpp's default f16 cache alone moves logits by ~0.01.
    return llama_cpp.Llama(
        str(path),
        n_ctx=n_ctx,
        n_threads=1,
        logits_all=True,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )


def test_llama_cpp_tokenizes_like_slm(model_dir: Path, gguf_files: dict[str, Path]):
    llm = _llama_cpp(gguf_files["f32"], 96)
    ids = llm.tokenize(VARIED_TEXT.encode("utf-8"), add_bos=False, special=True)
    assert ids == _slm(model_dir).tokenizer.encode(VARIED_TEXT)
    assert llm.detokenize(ids, special=True).decode("utf-8") == VARIED_TEXT


def llama_cpp_logits(llm, ids: list[int]) -> torch.Tensor:
    """llama.cpp's logits (T, vocab) for `ids` as one sequence."""
    llm.reset()
    llm.eval(ids)
    return torch.tensor(llm.scores[: len(ids)])


# max |logit difference| against slm on the sharpened test model (logits span 12, std 1.4),
# measured with llama.cpp 0.3.36's AVX2 build at 8e-6 / 0.015 / 0.42: q8_0 rounds the
# activations to 8 bits too. The bounds leave room for other CPUs' kernels.
LOGIT_TOLERANCE = {"f32": 1e-4, "f16": 0.05, "q8_0": 1.0}


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_logits_agree_with_slm(model_dir: Path, gguf_files: dict[str, Path], dtype):
    llm = _llama_cpp(gguf_files[dtype], 96)
    ours = _slm(model_dir)
    ids = torch.randint(0, 300, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        expected = ours.model(torch.tensor([ids]))[0]
    diff = (llama_cpp_logits(llm, ids) - expected[:, : llm.n_vocab()]).abs().max().item()
    assert diff < LOGIT_TOLERANCE[dtype]


def test_llama_cpp_greedy_continuation_matches_slm(model_dir: Path, gguf_files: dict[str, Path]):
    llm = _llama_cpp(gguf_files["f32"], 96)
    ours = _slm(model_dir)
    prompt = ours.tokenizer.encode("The king")
    greedy = ours.complete("The king", max_new_tokens=40, temperature=0.0, ignore_eot=True)
    banned = [ours.tokenizer.pad_id, ours.tokenizer.eot_id]  # as slm with ignore_eot
    llm.reset()
    llm.eval(prompt)
    theirs = []
    for _ in range(40):
        logits = torch.tensor(llm.scores[llm.n_tokens - 1])
        logits[banned] = -float("inf")
        token = int(logits.argmax())
        theirs.append(token)
        llm.eval([token])
    assert theirs == list(greedy.completions[0].tokens)


# --------------------------------------------------------------------------- the command


def test_export_command_reports_and_refuses_in_one_line(model_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(model_dir), "--format", "hf", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and "MB" in captured.err

    cases = [
        (["export", str(model_dir), "--format", "hf", "--out", str(out)], 2, "--force"),
        (["export", str(tmp_path / "none"), "--format", "hf", "--out", str(tmp_path / "x")], 1,
         "not found"),
        (["export", str(model_dir), "--format", "gguf", "--out", str(tmp_path / "m.gguf"),
          "--dtype", "q4_k"], 2, "q8_0"),
        (["export", str(model_dir), "--format", "hf", "--out", str(tmp_path / "y"),
          "--dtype", "f16"], 2, "f32 only"),
    ]  # fmt: skip
    for argv, code, says in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert main(["export", str(model_dir), "--format", "hf", "--out", str(out), "--force"]) == 0
