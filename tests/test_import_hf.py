"""Reading a transformers Llama folder as an slm model (`slm.hf_llama`): transformers is the
oracle for the logits; what slm's model cannot hold is refused with the feature named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from slm.errors import SLMError
from slm.hf_llama import from_hf_config

transformers = pytest.importorskip("transformers")

TEXT = " Hello  world\r\nCJK 中文 and emoji 🎉👍🏽\n\tleading spaces   end"


def _byte_level_tokenizer(specials: list[str], pre_tokenizer=None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator([TEXT * 20, "the king and the queen " * 50], trainer=trainer)
    return hf


# The shape of the random models below: grouped-query heads, tied embeddings, Llama's
# `<s>` (0) and `</s>` (1) as specials.
SMALL_SHAPE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=1,
)


@pytest.fixture(scope="module")
def hf_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LlamaForCausalLM (grouped-query heads) saved by transformers, with a
    byte-level BPE tokenizer whose specials are Llama's `<s>` and `</s>`, not slm's."""
    folder = tmp_path_factory.mktemp("hf_llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SMALL_SHAPE)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    _byte_level_tokenizer(["<s>", "</s>"]).save(str(folder / "tokenizer.json"))
    return folder


def _hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(ids).logits


def test_an_hf_llama_folder_loads_with_transformers_logits(hf_llama_dir: Path):
    import slm

    loaded = slm.load(hf_llama_dir, device="cpu")
    assert loaded.config.n_kv_heads == 2 and loaded.config.vocab_size == 320
    assert loaded.tokenizer.eot_id == 1  # `</s>`, from the config
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded.model(ids)
    assert (ours - _hf_logits(hf_llama_dir, ids)).abs().max() < 1e-4


def _qwen3_dir(folder: Path, gain: float) -> Path:
    """A random Qwen3ForCausalLM (a Llama with QK-norm), its query/key norm gains at `gain`."""
    torch.manual_seed(0)
    config = transformers.Qwen3Config(**SMALL_SHAPE, head_dim=16)
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.fill_(gain)
    model.save_pretrained(folder)
    _byte_level_tokenizer(["<s>", "</s>"]).save(str(folder / "tokenizer.json"))
    return folder


def test_a_qwen3_folder_with_unit_qk_gains_loads_as_qk_norm(tmp_path: Path):
    """slm's QK-norm exports as Qwen3 with gains of one; such a folder reads back exactly,
    and one with learned gains (which slm's model has no place for) is refused."""
    import slm

    folder = _qwen3_dir(tmp_path / "qwen3", gain=1.0)
    loaded = slm.load(folder, device="cpu")
    assert loaded.config.qk_norm and loaded.config.n_kv_heads == 2
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded.model(ids)
    assert (ours - _hf_logits(folder, ids)).abs().max() < 1e-4
    with pytest.raises(SLMError, match="learned query/key norm gains"):
        slm.load(_qwen3_dir(tmp_path / "gains", gain=1.5), device="cpu")


def test_generate_and_eval_accept_an_hf_folder(hf_llama_dir: Path, tmp_path: Path, capsys):
    from slm.cli.main import main

    flags = ["--temperature", "0", "--max-new-tokens", "5", "--ignore-eot"]
    assert main(["generate", str(hf_llama_dir), "the king", *flags]) == 0
    assert capsys.readouterr().out.strip()
    text = tmp_path / "held_out.txt"
    text.write_text(TEXT * 3, encoding="utf-8")
    assert main(["eval", str(hf_llama_dir), str(text), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bpb"] > 0 and result["bytes"] == 3 * len(TEXT.encode("utf-8"))


def test_greedy_tokens_match_transformers(hf_llama_dir: Path):
    import slm

    loaded = slm.load(hf_llama_dir, device="cpu")
    prompt = loaded.tokenizer.encode("the king")
    ours = loaded.complete("the king", max_new_tokens=12, temperature=0.0, ignore_eot=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_llama_dir).eval()
    theirs = model.generate(  # slm bans the pad (here also the end) token, as ignore_eot does
        torch.tensor([prompt]),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        bad_words_ids=[[loaded.tokenizer.pad_id]],
    )
    assert list(ours.completions[0].tokens) == theirs[0, len(prompt) :].tolist()


def _edited_copy(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dst


BASE = {
    "model_type": "llama",
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "tie_word_embeddings": True,
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling"),
        ({"attention_bias": True}, "attention biases"),
        ({"mlp_bias": True}, "MLP biases"),
        ({"hidden_act": "gelu"}, "activation 'gelu'"),
        ({"tie_word_embeddings": False}, "untied output head"),
        ({"model_type": "mistral"}, "model_type 'mistral'"),
        ({"head_dim": 32}, "head_dim 32"),
        ({"model_type": "qwen3", "use_sliding_window": True}, "sliding-window attention"),
    ],
)
def test_a_config_slm_cannot_hold_is_refused_by_name(change: dict, named: str):
    with pytest.raises(SLMError, match=named):
        from_hf_config({**BASE, **change})


def test_a_sentencepiece_tokenizer_is_refused(hf_llama_dir: Path, tmp_path: Path):
    import slm

    no_json = tmp_path / "spm"
    shutil.copytree(hf_llama_dir, no_json)
    (no_json / "tokenizer.json").unlink()
    (no_json / "tokenizer.model").write_bytes(b"\0")
    with pytest.raises(SLMError, match="sentencepiece"):
        slm.load(no_json, device="cpu")

    from tokenizers import pre_tokenizers

    metaspace = tmp_path / "metaspace"
    shutil.copytree(hf_llama_dir, metaspace)
    _byte_level_tokenizer(["<s>", "</s>"], pre_tokenizers.Metaspace()).save(
        str(metaspace / "tokenizer.json")
    )
    with pytest.raises(SLMError, match="not byte-level BPE"):
        slm.load(metaspace, device="cpu")


def test_pickled_weights_and_a_refused_config_fail_as_one_line(
    hf_llama_dir: Path, tmp_path: Path, capsys
):
    from slm.cli.main import main

    pickled = tmp_path / "pickled"
    shutil.copytree(hf_llama_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    assert main(["generate", str(pickled), "x"]) == 1
    assert "pytorch_model.bin" in capsys.readouterr().err

    scaled = _edited_copy(hf_llama_dir, tmp_path / "scaled", rope_scaling={"factor": 2.0})
    assert main(["eval", str(scaled), str(scaled / "config.json")]) == 1
    err = capsys.readouterr().err
    assert "rope scaling" in err and "Traceback" not in err
