"""One chat-parity check for `edgeft eval --hf` and the release (runtime.chat_parity), and what it says about BOS.

Each GGUF here is the Llama-3-tokenizer fixture (add_bos_token true) converted with one template edit, so the only
difference between the cases is where BOS comes from. The reference for "what inference feeds" is llama.cpp's chat
path: common/chat.cpp strips a leading BOS text when add_bos_token is set and the server then tokenizes with
add_special=true; `runtime.generate.prompt_tokens` does the same, which the first test checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from convert.common.errors import EdgeftError
from tests.factory import build_model
from tests.factory_tokenizers import CHATML_TEMPLATE, LLAMA3_TEMPLATE

pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

CONVERSATION = [{"role": "user", "content": " Hi  there"}, {"role": "assistant", "content": "Hello."}]
NO_BOS = LLAMA3_TEMPLATE.replace("{{ bos_token }}", "")


def _variant(tmp_path: Path, template: str, *, add_bos: bool | None = None) -> tuple[Path, Path]:
    """A copy of the llama fixture with `template` (and add_bos_token) in both template places, and its GGUF."""
    from convert import convert_model

    folder = tmp_path / "model"
    shutil.copytree(build_model("llama"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    if add_bos is not None:
        config["add_bos_token"] = add_bos
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(template)
    return folder, convert_model(folder, tmp_path / "model.gguf", outtype="f32")


def _both_loops(folder: Path, gguf: Path) -> tuple[dict, str | None]:
    """The eval's figures and the release's verdict (None when it passes, else its one line)."""
    from edgeft.release.parity import check_chat_parity
    from runtime.parity import check_parity

    evaluated = check_parity(gguf, folder, [CONVERSATION])
    try:
        check_chat_parity(gguf, folder, trained_template=None, conversations=[CONVERSATION])
    except EdgeftError as refused:
        return evaluated, str(refused)
    return evaluated, None


def _llama_server_ids(gguf: Path, text: str) -> list[int]:
    """What llama-server feeds for a rendered chat (common/chat.cpp, then tokenize with add_special=true)."""
    import llama_cpp

    from runtime.generate import token_text
    from runtime.load import open_gguf

    llm = open_gguf(gguf, vocab_only=True)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
    bos_text = token_text(llm, llm.token_bos())
    if add_bos and text.startswith(bos_text):
        text = text[len(bos_text):]
    ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    llm.close()
    return ids


@pytest.mark.parametrize("template", [LLAMA3_TEMPLATE, NO_BOS, "\n" + LLAMA3_TEMPLATE])
def test_the_ids_compared_are_the_ones_llama_server_feeds(template, tmp_path):
    from runtime.generate import prompt_tokens, render_chat
    from runtime.load import open_gguf

    _, gguf = _variant(tmp_path, template)
    llm = open_gguf(gguf, vocab_only=True)
    text = render_chat(llm, CONVERSATION, add_generation_prompt=False)
    ours = prompt_tokens(llm, text)
    naive = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    llm.close()
    assert ours == _llama_server_ids(gguf, text)
    if template == LLAMA3_TEMPLATE:  # only a naive tokenize doubles the template's own BOS; no chat path does
        assert naive[:2] == [ours[0]] * 2 and ours[1] != ours[0]


def test_template_writing_bos_with_add_bos_is_parity(tmp_path):
    """Template writes BOS first, GGUF adds BOS: one BOS at inference, as in training. Both loops pass."""
    evaluated, refused = _both_loops(*_variant(tmp_path, LLAMA3_TEMPLATE))
    assert refused is None
    assert evaluated["ok"] and evaluated["n"] == 1 and evaluated["token_matches"] == 1 and evaluated["first"] is None


def test_no_bos_anywhere_is_parity(tmp_path):
    evaluated, refused = _both_loops(*_variant(tmp_path, NO_BOS, add_bos=False))
    assert refused is None and evaluated["ok"]


def test_a_bos_llama_cpp_adds_is_fed_by_training_too(tmp_path):
    """Template writes no BOS, GGUF says add_bos_token (TinyLlama/Zephyr): llama-server and edgeft's runtime feed
    one, and training (`runtime.hf_tokenizer.chat_ids`, the HF side here) feeds it too: parity."""
    evaluated, refused = _both_loops(*_variant(tmp_path, NO_BOS))
    assert refused is None
    assert evaluated["ok"] and evaluated["token_matches"] == 1 and evaluated["first"] is None


def test_a_bos_llama_cpp_adds_and_the_hf_folder_does_not_fails_both_loops(tmp_path):
    """The GGUF adds BOS but the HF folder says add_bos_token false (the GGUF came from another folder): training on
    that folder never feeds the BOS llama.cpp does."""
    folder, gguf = _variant(tmp_path, NO_BOS)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"add_bos_token": False}))
    evaluated, refused = _both_loops(folder, gguf)
    assert not evaluated["ok"] and evaluated["template_matches"] == 1 and evaluated["token_matches"] == 0
    assert evaluated["mismatched"] == 1 and evaluated["mismatches"][0]["bos"]["kind"] == "adds BOS"
    first = evaluated["first"]
    assert "\n" not in first and first.startswith("'conversation 0': llama.cpp puts BOS '<|begin_of_text|>'")
    assert "first differing token at position 0: HF ['<|start_header_id|>']" in first
    assert refused is not None and "\n" not in refused
    assert "'one turn, no system, generation prompt': llama.cpp puts BOS" in refused


def test_a_double_bos_is_named_as_one(tmp_path):
    """A newline before {{ bos_token }}: llama.cpp cannot strip the template's BOS and adds its own: two BOS."""
    evaluated, refused = _both_loops(*_variant(tmp_path, "\n" + LLAMA3_TEMPLATE))
    entry = evaluated["mismatches"][0]
    assert entry["bos"] == {"token": "<|begin_of_text|>", "kind": "double BOS", "template_bos_at": 2}
    # Training would feed the same two BOS (it refuses the template instead): the ids agree, the finding stands.
    assert "tokens" not in entry and evaluated["token_matches"] == 0 and evaluated["mismatched"] == 1
    assert evaluated["first"].startswith("'conversation 0': double BOS")
    assert refused is not None and "double BOS" in refused


def test_a_template_difference_is_counted_per_example_and_named(tmp_path):
    """The GGUF embeds ChatML, the HF folder says Llama 3: text differs; the eval counts the example once (its
    whole form and its prompt form both differ), the release counts each case."""
    from runtime.chat_parity import chat_cases, compare_chat, describe_mismatch
    from runtime.parity import check_parity

    folder, gguf = _variant(tmp_path, CHATML_TEMPLATE)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = LLAMA3_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(LLAMA3_TEMPLATE)
    evaluated = check_parity(gguf, folder, [CONVERSATION, CONVERSATION])
    assert evaluated["n"] == 2 and evaluated["mismatched"] == 2 and evaluated["template_matches"] == 0
    assert [m["example"] for m in evaluated["mismatches"]] == [0, 0, 1, 1]
    assert "tokenizer" not in evaluated["mismatches"][0]  # same text, same ids: the template alone differs
    first = evaluated["first"]
    # Both begin "<|"; llama.cpp's own BOS in front of ChatML matches the Llama-3 template's, then ids part.
    assert first.startswith("'conversation 0': the chat template renders differently from char 2")
    assert "first differing token at position 1: HF ['<|start_header_id|>']" in first and "\n" not in first

    from transformers import AutoTokenizer

    released = compare_chat(gguf, AutoTokenizer.from_pretrained(str(folder)), chat_cases([CONVERSATION]))
    assert released["n"] == len(chat_cases([CONVERSATION])) == released["mismatched"]
    assert released["first"] == describe_mismatch(released["mismatches"][0])


TRAINING_CASES = {"template writes BOS, add_bos": (LLAMA3_TEMPLATE, None),
                  "template writes none, add_bos": (NO_BOS, None),
                  "no add_bos": (NO_BOS, False)}


def _training_tokenizer(folder: Path):
    from edgeft.train.model import load_tokenizer
    from edgeft.train.recipe import Recipe

    return load_tokenizer(folder, Recipe())


@pytest.mark.parametrize("case", list(TRAINING_CASES))
def test_training_feeds_the_ids_llama_cpp_feeds(case, tmp_path):
    """Training's batch for a conversation is what llama.cpp feeds for its prompt (prompt_tokens of the GGUF's
    rendering with the generation prompt, BOS as llama-server puts it) followed by the answer, and only the answer
    is trained; the data check's count and the imatrix's calibration ids are the same ids."""
    from edgeft.data.check import token_lengths
    from edgeft.data.templates import render_chat as render_hf
    from edgeft.data.templates import special_tokens_of
    from edgeft.imatrix import _render_token_ids
    from edgeft.train.batches import tokenize_conversations
    from runtime.generate import prompt_tokens, render_chat
    from runtime.load import open_gguf

    template, add_bos = TRAINING_CASES[case]
    folder, gguf = _variant(tmp_path, template, add_bos=add_bos)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    tok = _training_tokenizer(folder)
    [example] = tokenize_conversations(data, tok.tokenizer, tok.chat_template, max_len=512)

    llm = open_gguf(gguf, vocab_only=True)
    prompt = prompt_tokens(llm, render_chat(llm, CONVERSATION[:1], add_generation_prompt=True))
    whole = prompt_tokens(llm, render_chat(llm, CONVERSATION, add_generation_prompt=False))
    answer = llm.tokenize(b"Hello.<|eot_id|>", add_bos=False, special=True)
    bos = llm.token_bos()
    llm.close()
    assert example["input_ids"] == whole == prompt + answer
    assert example["labels"] == [-100] * len(prompt) + answer
    assert whole.count(bos) == (0 if add_bos is False else 1) and (add_bos is False or whole[0] == bos)

    text = render_hf(tok.chat_template, CONVERSATION, special_tokens=special_tokens_of(tok.tokenizer))
    assert token_lengths(tok.tokenizer, [text]) == [len(whole)]
    assert _render_token_ids([{"messages": CONVERSATION}], tok.tokenizer, tok.chat_template, 512) == [whole]


def test_training_refuses_a_template_llama_cpp_would_feed_two_bos(tmp_path):
    from edgeft.data.masking import build_example

    folder, _ = _variant(tmp_path, "\n" + LLAMA3_TEMPLATE)
    tok = _training_tokenizer(folder)
    with pytest.raises(EdgeftError, match="double BOS") as refused:
        build_example(CONVERSATION, tok.tokenizer, tok.chat_template, where="train.jsonl:1")
    assert "\n" not in str(refused.value) and str(refused.value).startswith("train.jsonl:1: double BOS")
