"""slm.chat_template: ChatML rendering, the sandbox, the plain transcript, the folder file."""

from __future__ import annotations

import pytest

from slm.chat_template import CHATML, read_template, render, transcript, write_template
from slm.errors import SLMError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


def test_chatml_renders_each_turn_and_the_generation_prompt():
    text = render(CHATML, CONVERSATION[:2], add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(CHATML, CONVERSATION, add_generation_prompt=False).endswith(
        "<|im_start|>assistant\nParis.<|im_end|>\n"
    )


def test_chatml_matches_transformers_apply_chat_template(small_tokenizer_file):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(small_tokenizer_file))
    hf.chat_template = CHATML
    expected = hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert render(CHATML, CONVERSATION, add_generation_prompt=True) == expected


def test_a_template_cannot_reach_python_internals():
    with pytest.raises(SLMError, match="chat template"):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", CONVERSATION)


def test_a_template_can_refuse_a_conversation():
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    with pytest.raises(SLMError, match="user first"):
        render(template, CONVERSATION)


def test_transcript_for_base_models():
    assert transcript(CONVERSATION[1:2]) == "User: Capital of France?\nAssistant:"


def test_template_file_round_trip(tmp_path):
    assert read_template(tmp_path) is None
    write_template(tmp_path, CHATML)
    assert read_template(tmp_path) == CHATML
