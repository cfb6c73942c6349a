"""The assistant-only label mask, per chat-template family, against hand-written expectations.

For every family: the token ids equal HF's `apply_chat_template(tokenize=True)`, the trained text is exactly the
assistant content plus its end-of-turn marker, no token of a user or system turn is trained and every token of an
assistant turn is.
"""

from __future__ import annotations

import pytest

from edgeft.data.masking import IGNORE_INDEX, build_example, load_tokenizer
from edgeft.data.templates import CHATML_TEMPLATE, render_chat, special_tokens_of
from convert.common.errors import EdgeftError
from tests.factory import build_tokenizer

TWO_TURNS = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "Six, of course."},
]
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}] + TWO_TURNS

# kind -> the exact trained text of TWO_TURNS (the same with a system prompt, where the template accepts one).
EXPECTED_TRAINED = {
    "bpe-qwen2": ["It is 4.<|im_end|>", "Six, of course.<|im_end|>"],  # ChatML
    "bpe-llama3": ["It is 4.<|eot_id|>", "Six, of course.<|eot_id|>"],
    "spm-mistral": ["It is 4.</s>", "Six, of course.</s>"],  # [INST] ... [/INST]answer</s>
    # Llama 2 writes " answer </s>": the "▁It" token carries the template's space and is the model's to produce.
    "spm-llama2": [" It is 4. </s>", " Six, of course. </s>"],
    # Phi-3's <|end|> is rstrip=True: the token itself covers the newline after it. The eos Phi-3 appends after
    # the last turn is not trained.
    "spm-phi3": ["It is 4.<|end|>\n", "Six, of course.<|end|>\n"],
    "spm-gemma": ["It is 4.<end_of_turn>", "Six, of course.<end_of_turn>"],
}
REJECTS_SYSTEM = {"spm-gemma"}


@pytest.fixture(scope="module")
def tokenizers():
    return {kind: load_tokenizer(build_tokenizer(kind)) for kind in EXPECTED_TRAINED}


def trained_text(tokenizer, text: str, labels: list[int]) -> list[str]:
    """The rendered text under the trained tokens, as contiguous runs."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    runs: list[list[int]] = []
    for (start, end), label in zip(offsets, labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][1] >= start:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [text[start:end] for start, end in runs]


def content_spans(text: str, messages) -> list[tuple[str, int, int]]:
    """(role, start, end) of every message's content in the rendered text, found left to right."""
    spans, cursor = [], 0
    for message in messages:
        content = message["content"].strip()
        start = text.index(content, cursor)
        spans.append((message["role"], start, start + len(content)))
        cursor = start + len(content)
    return spans


def assert_mask_invariants(tokenizer, messages, example):
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for role, lo, hi in content_spans(text, messages):
        inside = [label for (start, end), label in zip(offsets, example["labels"]) if start < hi and end > lo]
        assert inside, f"no token for the {role} turn"
        if role == "assistant":
            assert IGNORE_INDEX not in inside, "an assistant token is not trained"
        else:
            assert set(inside) == {IGNORE_INDEX}, f"a {role} token is trained"


def chat(*contents: str) -> list[dict]:
    """A conversation of user and assistant turns in turn, the user first."""
    return [{"role": ("user", "assistant")[i % 2], "content": content} for i, content in enumerate(contents)]


def reference_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.parametrize("kind", list(EXPECTED_TRAINED))
@pytest.mark.parametrize("with_system", [False, True])
def test_exact_mask_per_template_family(tokenizers, kind, with_system):
    tokenizer = tokenizers[kind]
    messages = WITH_SYSTEM if with_system else TWO_TURNS
    if with_system and kind in REJECTS_SYSTEM:
        with pytest.raises(EdgeftError, match=r"train.jsonl:4: .*System role not supported"):
            build_example(messages, tokenizer, where="train.jsonl:4")
        return
    example = build_example(messages, tokenizer)
    assert example["input_ids"] == reference_ids(tokenizer, messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert render_chat(tokenizer.chat_template, messages, special_tokens=special_tokens_of(tokenizer)) == text
    assert trained_text(tokenizer, text, example["labels"]) == EXPECTED_TRAINED[kind]
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example["labels"], example["input_ids"]))
    assert_mask_invariants(tokenizer, messages, example)


@pytest.mark.parametrize("kind", ["bpe-llama3", "spm-gemma", "bpe-qwen2"])
def test_trimmed_and_repeated_content(tokenizers, kind):
    """Templates that trim content (Llama 3, Gemma) and answers that repeat the user's words."""
    tokenizer = tokenizers[kind]
    messages = chat("Say hello", "  hello \n", "hello", "hello")
    example = build_example(messages, tokenizer)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    runs = trained_text(tokenizer, text, example["labels"])
    end_of_turn = {"bpe-llama3": "<|eot_id|>", "spm-gemma": "<end_of_turn>", "bpe-qwen2": "<|im_end|>"}[kind]
    trimmed = kind != "bpe-qwen2"
    assert runs == [("hello" if trimmed else "  hello \n") + end_of_turn, "hello" + end_of_turn]
    assert_mask_invariants(tokenizer, messages, example)


def test_single_turn_and_explicit_template(tokenizers):
    tokenizer = tokenizers["bpe-qwen2"]
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    example = build_example(messages, tokenizer, chat_template=CHATML_TEMPLATE)
    text = render_chat(CHATML_TEMPLATE, messages)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    assert trained_text(tokenizer, text, example["labels"]) == ["A<|im_end|>"]


def test_template_that_drops_the_answer_is_an_error_naming_the_example(tokenizers):
    drops_answers = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}\n{% endif %}{% endfor %}"
    with pytest.raises(EdgeftError, match=r"^data.jsonl:12: assistant turn 1 does not appear"):
        build_example(TWO_TURNS[:2], tokenizers["bpe-qwen2"], chat_template=drops_answers, where="data.jsonl:12")


def test_no_assistant_turn_is_an_error(tokenizers):
    with pytest.raises(EdgeftError, match="nothing would be trained"):
        build_example(TWO_TURNS[:1], tokenizers["bpe-qwen2"])


def test_max_len_truncates_and_refuses_an_empty_mask(tokenizers):
    tokenizer = tokenizers["bpe-qwen2"]
    full = build_example(TWO_TURNS, tokenizer)
    first_trained = next(i for i, label in enumerate(full["labels"]) if label != IGNORE_INDEX)
    cut = build_example(TWO_TURNS, tokenizer, max_len=first_trained + 2)
    assert cut["input_ids"] == full["input_ids"][: first_trained + 2]
    assert cut["labels"] == full["labels"][: first_trained + 2]
    with pytest.raises(EdgeftError, match="past max_len"):
        build_example(TWO_TURNS, tokenizer, max_len=first_trained, where="x.jsonl:1")


def test_model_dir_is_accepted_as_tokenizer():
    example = build_example(TWO_TURNS, build_tokenizer("bpe-qwen2"))
    assert any(label != IGNORE_INDEX for label in example["labels"])


# The same templates with transformers' {% generation %} markers around what should be trained: HF's own
# assistant mask (return_assistant_tokens_mask) is then the reference for ours, computed without the markers.
MARKED_TEMPLATES = {
    "bpe-qwen2": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
    ),
    "bpe-llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    ),
}


@pytest.mark.parametrize("kind", list(MARKED_TEMPLATES))
@pytest.mark.parametrize("messages", [TWO_TURNS, WITH_SYSTEM], ids=["no-system", "system"])
def test_mask_equals_hf_generation_marker_mask(tokenizers, kind, messages):
    tokenizer = tokenizers[kind]
    template = MARKED_TEMPLATES[kind]
    reference = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    example = build_example(messages, tokenizer, chat_template=template)
    assert example["input_ids"] == list(reference["input_ids"])
    assert [label != IGNORE_INDEX for label in example["labels"]] == [bool(m) for m in reference["assistant_masks"]]


# Mistral v0.3 style: the system prompt goes into the *last* user turn, so prefix renders differ from the full
# render and the span search must fall back to scanning the text.
MISTRAL_V3_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.last or loop.index0 == loop_messages|length - 2 %}{% if system_message is defined %}"
    "{{ '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}"
    "{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_system_prompt_moved_to_the_last_user_turn(tokenizers):
    tokenizer = tokenizers["spm-mistral"]
    example = build_example(WITH_SYSTEM, tokenizer, chat_template=MISTRAL_V3_TEMPLATE)
    text = render_chat(MISTRAL_V3_TEMPLATE, WITH_SYSTEM, special_tokens=special_tokens_of(tokenizer))
    assert text.index("Be brief.") > text.index("It is 4.")  # the system prompt sits after the first answer
    assert trained_text(tokenizer, text, example["labels"]) == [" It is 4.</s>", " Six, of course.</s>"]


@pytest.mark.parametrize("kind", ["bpe-qwen2", "spm-gemma", "spm-phi3"])
def test_unicode_and_literal_special_text(tokenizers, kind):
    """Byte-fallback pieces of one character share its offsets; every one of them must be trained."""
    tokenizer = tokenizers[kind]
    messages = chat("Écris « bonjour » 😀 日本語?", "Ça va 😀 日本語 — très bien.")
    example = build_example(messages, tokenizer)
    assert example["input_ids"] == reference_ids(tokenizer, messages)
    assert_mask_invariants(tokenizer, messages, example)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert trained_text(tokenizer, text, example["labels"])[0].startswith("Ça va 😀 日本語 — très bien.")
