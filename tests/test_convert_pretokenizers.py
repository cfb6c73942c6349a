"""GPT-2-style and SmolLM-style byte-level BPE (the pre-tokenizer types the fixture factory does not ship): trained
here on the spot, detected from their own definition, and tokenized by llama.cpp exactly like HF."""

from __future__ import annotations

import shutil

import pytest

from tests import corpus
from tests.convert_helpers import hf_tokenizer, open_llama
from tests.factory import build_model

pytest.importorskip("llama_cpp")


def _pre_tokenizer(kind: str):
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if kind == "gpt-2":
        return byte_level
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])


def _model_with_tokenizer(kind: str, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(kind)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.training_text(), trainer)
    model_dir = tmp_path / kind
    shutil.copytree(build_model("llama"), model_dir)  # 646 embedding rows: room for this vocabulary
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (model_dir / name).unlink(missing_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            clean_up_tokenization_spaces=False).save_pretrained(model_dir)
    return model_dir


@pytest.mark.parametrize("kind", ["gpt-2", "smollm"])
def test_bytelevel_pretokenizer_parity(kind, tmp_path):
    import gguf

    from convert import convert_model

    model_dir = _model_with_tokenizer(kind, tmp_path)
    gguf_path = convert_model(model_dir, tmp_path / f"{kind}.gguf", outtype="f32")
    assert gguf.GGUFReader(gguf_path).fields["tokenizer.ggml.pre"].contents() == kind

    hf = hf_tokenizer(model_dir)
    llm = open_llama(gguf_path, vocab_only=True)
    mismatches = []
    strings = corpus.tricky_strings()
    for text in strings:
        want = hf(text)["input_ids"]
        got = llm.tokenize(text.encode(), add_bos=True, special=True)
        if got != want:
            mismatches.append((text, want, got))
    llm.close()
    print(f"{kind}: {len(strings) - len(mismatches)}/{len(strings)} strings == HF")
    assert not mismatches, f"{kind}: {len(mismatches)} differ, first: {mismatches[0]!r}"
