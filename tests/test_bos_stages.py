"""The BOS decision (does llama.cpp put BOS before a prompt, and which) and the ids fed are the same at every stage
the pipeline writes: base, adapter, merged folder, the GGUFs converted from base and merged, and the adapter GGUF
served on the base GGUF.

The decision is `convert.vocab.special.bos_llama_cpp_adds`: tokenizer_config.json's add_bos_token, else whether
tokenizer.json's post-processor adds BOS. transformers 5's save_pretrained drops add_bos_token, and merge copies
the tokenizer `edgeft train` saved with the adapter (it does when it adds the ChatML tokens), so a base whose two
places disagree trained on one answer while its merged GGUF served the other, until training wrote the decision
into the adapter's tokenizer_config.json (and merge refused an adapter whose tokenizer decides otherwise). Nor does
save_pretrained write tokenizer.model, so a SentencePiece base's merged folder could not be converted until training
copied it. Each case trains one tiny step, merges and converts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from convert.common.errors import EdgeftError
from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, toy_data, write_jsonl

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")

CONVERSATION = [{"role": "user", "content": "What colour is the box?"}, {"role": "assistant", "content": "Blue."}]


@dataclass(frozen=True)
class Base:
    keep_template: bool  # the Llama-3 template, which writes {{ bos_token }}; else ChatML, whose tokens training adds
    add_bos: bool | None  # tokenizer_config.json's add_bos_token; None: not stated
    post_processor_adds: bool = True  # tokenizer.json's post-processor puts BOS before a sequence
    tokenizer: str = "bpe-llama3"
    bos: str | None = "<|begin_of_text|>"  # the BOS llama.cpp should put before a prompt

    def build(self, folder: Path) -> Path:
        base = folder / "base"
        # No spare embedding rows (vocab_size == the tokenizer's length): the ChatML tokens training adds grow the
        # vocabulary, in training and in merge.
        shutil.copytree(build_model("llama", tokenizer=self.tokenizer), base)
        config = json.loads((base / "tokenizer_config.json").read_text())
        config.pop("add_bos_token", None)
        if self.add_bos is not None:
            config["add_bos_token"] = self.add_bos
        if not self.keep_template:
            config.pop("chat_template", None)
            (base / "chat_template.jinja").unlink()
        (base / "tokenizer_config.json").write_text(json.dumps(config))
        if not self.post_processor_adds:
            tokenizer = json.loads((base / "tokenizer.json").read_text())
            tokenizer["post_processor"] = None
            (base / "tokenizer.json").write_text(json.dumps(tokenizer))
        return base


CASES = {
    "template writes BOS, add_bos": Base(keep_template=True, add_bos=True),
    "template writes none, add_bos": Base(keep_template=False, add_bos=True),
    "no add_bos": Base(keep_template=False, add_bos=False, post_processor_adds=False, bos=None),
    "add_bos false, post-processor adds BOS": Base(keep_template=False, add_bos=False, bos=None),
    "add_bos true, post-processor adds none": Base(keep_template=False, add_bos=True, post_processor_adds=False),
    "SentencePiece, add_bos not stated": Base(keep_template=False, add_bos=None, tokenizer="spm-llama2", bos="<s>"),
}


def _gguf_bos(gguf: Path) -> str | None:
    """The BOS llama.cpp itself puts before a prompt with this GGUF (None: none)."""
    import llama_cpp

    from runtime.generate import token_text
    from runtime.load import open_gguf

    llm = open_gguf(gguf, vocab_only=True)
    try:
        adds = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
        return token_text(llm, llm.token_bos()) if adds else None
    finally:
        llm.close()


def _gguf_bos_id(gguf: Path) -> int:
    from runtime.load import open_gguf

    llm = open_gguf(gguf, vocab_only=True)
    try:
        return llm.token_bos()
    finally:
        llm.close()


def _fed_ids(gguf: Path) -> list[int]:
    from runtime.generate import prompt_tokens, render_chat
    from runtime.load import open_gguf

    llm = open_gguf(gguf, vocab_only=True)
    try:
        return prompt_tokens(llm, render_chat(llm, CONVERSATION, add_generation_prompt=False))
    finally:
        llm.close()


def _trained_ids(folder: Path, data: Path) -> list[int]:
    """The ids training feeds for CONVERSATION with the tokenizer of `folder` (a base, or a merged model trained on)."""
    from edgeft.train.batches import tokenize_conversations
    from edgeft.train.model import load_tokenizer
    from edgeft.train.recipe import Recipe

    tok = load_tokenizer(folder, Recipe())
    [example] = tokenize_conversations(data, tok.tokenizer, tok.chat_template, max_len=512)
    return example["input_ids"]


@pytest.mark.parametrize("case", list(CASES))
def test_bos_decision_and_fed_ids_agree_at_every_stage(case, tmp_path):
    from convert import convert_model
    from convert.lora import convert_lora
    from convert.vocab.special import bos_llama_cpp_adds
    from edgeft.merge import merge_adapter
    from edgeft.train import train

    spec = CASES[case]
    base = spec.build(tmp_path)
    train_path, _ = toy_data(tmp_path / "data", n_train=4)
    data = write_jsonl(tmp_path / "one.jsonl", [{"messages": CONVERSATION}])
    adapter = train(base, train_path, tmp_path / "adapter", config=dict(TINY_RECIPE, method="lora"), max_steps=1,
                    progress=False)
    merged = merge_adapter(base, adapter, tmp_path / "merged", nf4_report=False)
    base_gguf = convert_model(base, tmp_path / "base.gguf", outtype="f32")
    merged_gguf = convert_model(merged, tmp_path / "merged.gguf", outtype="f32")

    expected = spec.bos
    decisions = {"base": bos_llama_cpp_adds(base), "merged": bos_llama_cpp_adds(merged),
                 "base GGUF": _gguf_bos(base_gguf), "merged GGUF": _gguf_bos(merged_gguf)}
    saves_tokenizer = (adapter / "tokenizer_config.json").is_file()
    assert saves_tokenizer == (not spec.keep_template)  # ChatML tokens added: the adapter carries its tokenizer
    if saves_tokenizer:
        decisions["adapter"] = bos_llama_cpp_adds(adapter)
        vocab_sizes = [json.loads((folder / "config.json").read_text())["vocab_size"] for folder in (base, merged)]
        assert vocab_sizes[1] == vocab_sizes[0] + 2  # the two ChatML tokens grew the vocabulary
    assert decisions == dict.fromkeys(decisions, expected)

    trained = _trained_ids(base, data)
    fed = {"merged GGUF": _fed_ids(merged_gguf), "training on merged": _trained_ids(merged, data)}
    # The adapter GGUF route (refused for trained token rows, so only without ChatML): an adapter GGUF has no
    # vocabulary, llama.cpp serves it with the base GGUF's, BOS included.
    if spec.keep_template:
        convert_lora(adapter, tmp_path / "adapter.gguf", base_dir=base)
        fed["base GGUF (+ adapter GGUF)"] = _fed_ids(base_gguf)
    assert fed == dict.fromkeys(fed, trained)
    bos_id = _gguf_bos_id(base_gguf)
    assert trained.count(bos_id) == int(expected is not None) and (trained[0] == bos_id) == (expected is not None)


def test_merge_refuses_an_adapter_tokenizer_that_decides_another_bos(tmp_path):
    """An adapter saved before training wrote add_bos_token into its tokenizer (transformers 5 drops it): its
    post-processor adds BOS, the base said add_bos_token false and training fed none. Merge says so in one line,
    and merges once the adapter's tokenizer_config.json says what the line asks."""
    from convert.vocab.special import bos_llama_cpp_adds
    from edgeft.merge import merge_adapter
    from edgeft.train import train

    base = CASES["add_bos false, post-processor adds BOS"].build(tmp_path)
    train_path, _ = toy_data(tmp_path / "data", n_train=4)
    adapter = train(base, train_path, tmp_path / "adapter", config=dict(TINY_RECIPE, method="lora"), max_steps=1,
                    progress=False)
    saved = adapter / "tokenizer_config.json"
    config = json.loads(saved.read_text())
    assert config["add_bos_token"] is False
    saved.write_text(json.dumps({k: v for k, v in config.items() if k != "add_bos_token"}))
    bos = "<|begin_of_text|>"
    assert bos_llama_cpp_adds(adapter) == bos and bos_llama_cpp_adds(base) is None
    with pytest.raises(EdgeftError) as refused:
        merge_adapter(base, adapter, tmp_path / "merged", nf4_report=False)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{saved}: llama.cpp would put BOS '{bos}' before a prompt")
    assert f"but no BOS with the base {base}'s, which training fed" in message
    assert message.endswith('set "add_bos_token": false there, or train again')
    assert not (tmp_path / "merged").exists()

    saved.write_text(json.dumps(config))
    assert bos_llama_cpp_adds(merge_adapter(base, adapter, tmp_path / "merged", nf4_report=False)) is None
