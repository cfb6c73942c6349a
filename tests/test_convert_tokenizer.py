"""Tokenizer parity: llama.cpp (reading our GGUF) tokenizes ≥200 tricky strings exactly like the HF tokenizer, for
every tokenizer kind; the stored chat template renders like HF's apply_chat_template.

SentencePiece repos of the Llama family ship a tokenizer.json whose normalizer is Prepend("▁") + Replace(" ", "▁"):
"▁" before every piece of text between special tokens, exactly as sentencepiece run per piece and llama.cpp
(add_space_prefix) do. transformers 5 uses that file as-is for model types it maps to its generic backend (mistral,
phi3), so those must equal llama.cpp outright. For model_type llama it rebuilds LlamaTokenizer with a Metaspace
pre-tokenizer from tokenizer_config.json's `legacy`, and Llama 2 says `"legacy": false`: prepend_scheme="first" puts
no "▁" after a special token, and a leading space merges into the prefix (" a" -> "▁a", where sentencepiece gives
"▁▁a"). Where that HF tokenizer disagrees, llama.cpp must equal the reference (sentencepiece for plain strings; HF
loaded with legacy=True, i.e. the repo's own tokenizer.json behaviour, for chat text), and the disagreement is
reported as a warning, not hidden.

Qwen2's tokenizer.json normalizes input to Unicode NFC; llama.cpp has no NFC step for BPE vocabularies (no GGUF key
can ask for one), so a decomposed string such as "e\u0301" tokenizes differently. For those strings llama.cpp must
equal HF once the text is NFC-normalized first (what a caller of llama.cpp has to do), and they are reported.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
import warnings

import pytest

from tests import corpus
from tests.convert_helpers import converted, hf_tokenizer, open_llama
from tests.factory import build_model

pytest.importorskip("llama_cpp")

# tokenizer kind -> the architecture whose fixture carries it
KINDS = {
    "bpe-llama3": "llama",
    "bpe-qwen2": "qwen2",
    "spm-llama2": "llama",
    "spm-mistral": "mistral",
    "spm-phi3": "phi3",
    "spm-gemma": "gemma2",
    "bpe-granite": "granite",
    "bpe-o200k": "phi4mini",
    "bpe-lfm2": "lfm2",
}
# Architectures whose family tokenizer is one of the kinds above: the corpus once more through their own GGUF.
ARCH_CASES = {"bpe-llama3@smollm3": ("bpe-llama3", "smollm3"), "bpe-llama3@olmo2": ("bpe-llama3", "olmo2"),
              "spm-gemma@gemma3": ("spm-gemma", "gemma3"), "bpe-qwen2@qwen3moe": ("bpe-qwen2", "qwen3moe"),
              "spm-mistral@mixtral": ("spm-mistral", "mixtral")}

CONVERSATIONS = {
    "with_system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello. 你好"},
        {"role": "user", "content": "  What's 2+2?\n"},
    ],
    "without_system": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue 🙂"},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green."},
        {"role": "user", "content": "Thanks"},
    ],
}


def _gguf_for(kind: str, arch: str | None = None):
    arch = arch or KINDS[kind]
    return build_model(arch, tokenizer=kind), converted(arch, "f32", tokenizer=kind)


@pytest.mark.parametrize("case", [*KINDS, *ARCH_CASES])
def test_tokenizer_parity(case):
    kind, arch = ARCH_CASES.get(case, (case, None))
    model_dir, gguf_path = _gguf_for(kind, arch)
    hf = hf_tokenizer(model_dir)
    llm = open_llama(gguf_path, vocab_only=True)
    strings = corpus.tricky_strings()
    assert len(strings) >= 200

    sp = None
    if kind.startswith("spm"):
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    add_bos = bool(hf("")["input_ids"]) and hf("")["input_ids"][0] == hf.bos_token_id

    normalizer = json.loads((model_dir / "tokenizer.json").read_text()).get("normalizer") or {}
    nfc = normalizer.get("type") == "NFC"

    mismatches, hf_vs_sp, needs_nfc = [], [], []
    for text in strings:
        want = hf(text)["input_ids"]
        got = llm.tokenize(text.encode(), add_bos=True, special=True)
        if got == want:
            continue
        if nfc and unicodedata.normalize("NFC", text) != text:
            if llm.tokenize(unicodedata.normalize("NFC", text).encode(), add_bos=True, special=True) == want:
                needs_nfc.append(text)
                continue
        if sp is not None:
            reference = ([hf.bos_token_id] if add_bos else []) + sp.encode(text)
            if got == reference:
                hf_vs_sp.append(text)
                continue
        mismatches.append((text, want, got))
    llm.close()

    if hf_vs_sp:
        warnings.warn(f"{kind}: transformers disagrees with sentencepiece on {len(hf_vs_sp)}/{len(strings)} strings "
                      f"(llama.cpp equals sentencepiece on all of them): {hf_vs_sp[:8]!r}")
    if needs_nfc:
        warnings.warn(f"{kind}: llama.cpp applies no NFC normalization; {len(needs_nfc)} strings match HF only after "
                      f"NFC-normalizing the input: {needs_nfc!r}")
    same = len(strings) - len(mismatches) - len(hf_vs_sp) - len(needs_nfc)
    print(f"{case}: {len(strings)} strings, {same} == HF, {len(hf_vs_sp)} == sentencepiece where HF differs, "
          f"{len(needs_nfc)} == HF after NFC, {len(mismatches)} mismatches")
    assert not mismatches, f"{kind}: {len(mismatches)} strings tokenize differently, first: {mismatches[0]!r}"
    # Only transformers' rebuilt Metaspace pipeline may differ from sentencepiece; the repos' own tokenizer.json may not.
    assert not hf_vs_sp or _metaspace_scheme(model_dir) is not None, \
        f"{kind}: HF runs the repo's tokenizer.json yet differs from sentencepiece on {hf_vs_sp[:4]!r}"


def _metaspace_scheme(model_dir) -> str | None:
    """prepend_scheme of the Metaspace pre-tokenizer transformers 5 rebuilt the tokenizer with (LlamaTokenizer,
    from tokenizer_config.json's `legacy`); None when it runs the repo's tokenizer.json pipeline."""
    from tokenizers.pre_tokenizers import Metaspace

    pre = hf_tokenizer(model_dir).backend_tokenizer.pre_tokenizer
    return pre.prepend_scheme if isinstance(pre, Metaspace) else None


def _rendered(tokenizer, messages) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # Gemma refuses a system turn; the eval prompts fold it into the first user turn
        from runtime.generate import merge_system

        return tokenizer.apply_chat_template(merge_system(messages), tokenize=False)


@pytest.mark.parametrize("kind", KINDS)
def test_chat_token_parity(kind):
    """The rendered conversations (special tokens, template whitespace, text after special tokens) give the same ids
    in llama.cpp as in HF; for legacy=false SPM repos, the same ids as HF with legacy=True (see the module doc)."""
    from transformers import AutoTokenizer

    model_dir, gguf_path = _gguf_for(kind)
    hf = hf_tokenizer(model_dir)
    legacy_false = _metaspace_scheme(model_dir) == "first"
    reference = AutoTokenizer.from_pretrained(str(model_dir), legacy=True) if legacy_false else hf
    llm = open_llama(gguf_path, vocab_only=True)
    differ_from_hf = 0
    for name, messages in CONVERSATIONS.items():
        text = _rendered(hf, messages)
        got = llm.tokenize(text.encode(), add_bos=False, special=True)
        want = reference.encode(text, add_special_tokens=False)
        assert got == want, f"{kind}/{name}: llama.cpp {got[:12]} != HF {want[:12]}"
        differ_from_hf += got != hf.encode(text, add_special_tokens=False)
    llm.close()
    if differ_from_hf:
        warnings.warn(f"{kind}: tokenizer_config.json says legacy=false, so transformers 5 puts no '▁' after special "
                      f"tokens; llama.cpp (like the repo's tokenizer.json and sentencepiece) does: {differ_from_hf}/"
                      f"{len(CONVERSATIONS)} conversations tokenize differently from HF as configured")
    assert legacy_false or not differ_from_hf


def test_phi3_name_carries_llama_cpp_rstrip_rule(tmp_path):
    """llama.cpp strips whitespace after Phi-3's chat tokens only when general.name says phi3: a Phi-3 fine-tune in a
    folder named 'merged' still gets the rule (and tokenizes '<|user|>\nHi' like HF); a folder named phi3-* holding
    another tokenizer is warned about."""
    from convert import convert_model

    merged = tmp_path / "merged"
    shutil.copytree(build_model("phi3", tokenizer="spm-phi3"), merged)
    gguf_path = convert_model(merged, tmp_path / "merged.gguf", outtype="f32")
    llm = open_llama(gguf_path, vocab_only=True)
    assert "phi3" in llm.metadata["general.name"].lower()
    text = "<|user|>\nHi there<|end|>\n<|assistant|>\n"
    got = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.close()
    hf = hf_tokenizer(merged)
    assert got == hf.encode(text, add_special_tokens=False)
    assert "<0x0A>" not in hf.convert_ids_to_tokens(got)  # every "\n" here follows a token that strips it

    other = tmp_path / "phi3-but-mistral"
    shutil.copytree(build_model("mistral", tokenizer="spm-mistral"), other)
    with pytest.warns(UserWarning, match="Phi-3 rule"):
        convert_model(other, tmp_path / "other.gguf", outtype="f32")


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_chat_template_parity(kind, conversation):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model_dir, gguf_path = _gguf_for(kind)
    hf = hf_tokenizer(model_dir)
    llm = open_llama(gguf_path, vocab_only=True)
    template = llm.metadata["tokenizer.chat_template"]
    bos = llm.detokenize([llm.token_bos()], special=True).decode() if llm.token_bos() >= 0 else ""
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    llm.close()
    assert eos == hf.eos_token
    if hf.bos_token is not None:
        assert bos == hf.bos_token

    messages = CONVERSATIONS[conversation]
    for add_generation_prompt in (True, False):
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                        add_generation_prompt=add_generation_prompt)
        try:
            want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as hf_error:  # e.g. Gemma's template rejects a system message: both sides must refuse
            with pytest.raises(Exception):
                formatter(messages=messages)
            assert "system" in str(hf_error).lower() or "alternate" in str(hf_error).lower()
            continue
        assert formatter(messages=messages).prompt == want


@pytest.mark.parametrize("kind", KINDS)
def test_end_of_turn_stops_generation(kind):
    """The token the chat template puts after an assistant reply is end-of-generation for llama.cpp, so a chat
    completion stops there instead of running on (the classic 'wrong EOS' failure)."""
    import llama_cpp

    model_dir, gguf_path = _gguf_for(kind)
    hf = hf_tokenizer(model_dir)
    marker = "REPLYTEXT"
    rendered = hf.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                      tokenize=False)
    suffix = rendered.split(marker, 1)[1].lstrip()
    llm = open_llama(gguf_path, vocab_only=True)
    first = llm.tokenize(suffix.encode(), add_bos=False, special=True)[0]
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    is_eog = llama_cpp.llama_vocab_is_eog(vocab, first)
    text = llm.detokenize([first], special=True).decode()
    llm.close()
    assert is_eog, f"{kind}: {text!r} ends an assistant turn but llama.cpp would not stop there"
