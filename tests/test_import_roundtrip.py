"""`edgeft import` is the converter run backwards: fixture -> convert (F32) -> import gives back the fixture.

For every architecture (and the variants whose hyper-parameters live in generated tensors or rope keys):
- the weights equal the original folder's exactly; gemma2's and gemma3's norms are the one exception by construction: the GGUF
  holds fl(1 + w), so w's low bits are gone and only fl(1 + w) itself can come back bit for bit;
- converting the imported folder again gives the same GGUF: every metadata key and every tensor byte;
- transformers runs the imported folder like the original (same logits), so config.json says what the GGUF means;
- the imported HF tokenizer encodes the 240-string corpus exactly as llama.cpp does with the GGUF. Where the original
  folder's own HF tokenizer disagrees with llama.cpp (documented in test_convert_tokenizer: transformers 5 rebuilds a
  legacy=false Llama tokenizer; NFC in a Qwen2 tokenizer.json that no GGUF key can carry), the import follows the GGUF,
  and every other string must encode as the original folder does.
"""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest

from convert import convert_model
from convert.importer import import_gguf
from convert.safetensors_file import SafetensorsReader
from tests import corpus
from tests.convert_helpers import CHECKPOINT_VARIANTS, PROMPT, converted, hf_logits, open_llama
from tests.factory import ARCHS, build_model

pytest.importorskip("llama_cpp")

CASES = {
    **{arch: (arch, {}) for arch in ARCHS},
    "llama-spm-llama2": ("llama", {"tokenizer": "spm-llama2"}),
    **{name: case for name, case in CHECKPOINT_VARIANTS.items() if not name.endswith("-fused")},
}

_IMPORTED: dict[str, tuple] = {}


def imported(case: str, tmp_path_factory):
    """(original folder, its F32 GGUF, the imported folder), once per test process."""
    if case not in _IMPORTED:
        arch, build_kw = CASES[case]
        gguf_path = converted(arch, "f32", **build_kw)
        out = import_gguf(gguf_path, tmp_path_factory.mktemp("imported") / case)
        _IMPORTED[case] = (build_model(arch, **build_kw), gguf_path, out)
    return _IMPORTED[case]


@pytest.mark.parametrize("case", CASES)
def test_weights_come_back_exactly(case, tmp_path_factory):
    original, _, out = imported(case, tmp_path_factory)
    config = json.loads((original / "config.json").read_text())
    theirs, ours = SafetensorsReader(original), SafetensorsReader(out)
    expected = {n for n in theirs.names() if not (n == "lm_head.weight" and config.get("tie_word_embeddings"))}
    assert set(ours.names()) == expected
    gemma_norms = []
    for name in sorted(expected):
        want, got = theirs.read(name), ours.read(name)
        assert got.shape == want.shape, name
        if config["model_type"] in ("gemma2", "gemma3_text") and name.endswith("norm.weight"):
            # fl(1 + w) is what the GGUF holds; it comes back bit for bit, w itself only to its rounding.
            assert np.array_equal(got + np.float32(1), want + np.float32(1)), name
            assert np.abs(got - want).max() <= np.spacing(np.float32(2)), name
            gemma_norms.append(float(np.abs(got - want).max()))
        else:
            assert np.array_equal(got, want), f"{case}: {name} differs by {np.abs(got - want).max():.3e}"
    if gemma_norms:
        print(f"{case}: norm weights within {max(gemma_norms):.1e} (the float32 rounding of 1 + w), all else exact")


@pytest.mark.parametrize("case", CASES)
def test_reconverting_gives_the_same_gguf(case, tmp_path_factory, tmp_path):
    from gguf import GGUFReader

    _, gguf_path, out = imported(case, tmp_path_factory)
    again = convert_model(out, tmp_path / "again.gguf", outtype="f32")
    first, second = GGUFReader(gguf_path), GGUFReader(again)
    keys = lambda reader: {k: f.contents() for k, f in reader.fields.items()}  # noqa: E731
    want, got = keys(first), keys(second)
    assert got.keys() == want.keys(), set(got) ^ set(want)
    for key in want:
        assert got[key] == want[key], f"{case}: {key} {str(want[key])[:80]} -> {str(got[key])[:80]}"
    assert [t.name for t in second.tensors] == [t.name for t in first.tensors]
    for a, b in zip(first.tensors, second.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), f"{case}: tensor {a.name}"


@pytest.mark.parametrize("case", CASES)
def test_transformers_runs_the_import_like_the_original(case, tmp_path_factory):
    from transformers import AutoTokenizer

    original, _, out = imported(case, tmp_path_factory)
    ids = AutoTokenizer.from_pretrained(str(original))(PROMPT)["input_ids"]
    want, got = hf_logits(original, ids), hf_logits(out, ids)
    # Bit-identical except gemma2/gemma3, whose norms moved by up to one float32 ulp of 1 + w (see above).
    bound = 1e-4 if CASES[case][0] in ("gemma2", "gemma3") else 0.0
    assert float(np.abs(got - want).max()) <= bound


@pytest.mark.parametrize("case", [case for case in CASES if not CASES[case][1] or "tokenizer" in CASES[case][1]])
def test_imported_tokenizer_encodes_like_llama_cpp(case, tmp_path_factory):
    from transformers import AutoTokenizer

    original, gguf_path, out = imported(case, tmp_path_factory)
    ours, theirs = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(original))
    llm = open_llama(gguf_path, vocab_only=True)
    strings = corpus.tricky_strings()
    assert len(strings) >= 240
    wrong, nfc_only, original_disagrees = [], [], []
    for text in strings:
        reference = llm.tokenize(text.encode(), add_bos=True, special=True)
        got = ours(text)["input_ids"]
        if got != reference:
            # transformers forces NFC on model_type qwen2 (its Qwen2Tokenizer), whatever tokenizer.json says.
            nfc = unicodedata.normalize("NFC", text)
            if nfc != text and got == llm.tokenize(nfc.encode(), add_bos=True, special=True):
                nfc_only.append(text)
                continue
            wrong.append((text, reference[:12], got[:12]))
        elif theirs(text)["input_ids"] != got:
            original_disagrees.append(text)
        # Decoding too, as the original folder decodes (skip_special_tokens aside: a GGUF's token types decide which
        # tokens count as special, e.g. Phi-3's </s> is a control token there, Gemma's <start_of_turn> user-defined).
        assert ours.decode(reference) == theirs.decode(reference), text
    llm.close()
    print(f"{case}: {len(strings)} strings, {len(strings) - len(wrong) - len(nfc_only)} == llama.cpp, "
          f"{len(nfc_only)} == llama.cpp after NFC, original HF folder differs from llama.cpp on "
          f"{len(original_disagrees)}")
    assert not wrong, f"{case}: {len(wrong)} strings encode differently from llama.cpp, first: {wrong[0]!r}"
    if original_disagrees:
        # Only the two documented cases may make the original folder's tokenizer disagree with llama.cpp.
        from tokenizers.pre_tokenizers import Metaspace

        legacy_false = isinstance(theirs.backend_tokenizer.pre_tokenizer, Metaspace)
        decomposed = all(unicodedata.normalize("NFC", text) != text for text in original_disagrees)
        assert legacy_false or decomposed, f"{case}: original HF differs on {original_disagrees[:4]!r}"
