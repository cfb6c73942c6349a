"""Which llama.cpp pre-tokenizer a byte-level BPE tokenizer needs, read from its own `pre_tokenizer` definition.

llama.cpp hard-codes one regex set per pre-tokenizer name (src/llama-vocab.cpp); the GGUF only names it
(`tokenizer.ggml.pre`). A wrong name still loads and silently splits text differently, and a missing one falls back
to "default" with a warning, so we recognise the definition exactly and refuse anything else.

Each tokenizer.json pre_tokenizer is reduced to a signature (a tuple of steps); the table maps signatures to names.
"""

from __future__ import annotations

from typing import Any

from convert.common.errors import EdgeftError

# The regexes exactly as Llama 3 / Qwen2 tokenizer.json files carry them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

# o200k (GPT-4o; Phi-4-mini): letters by case class with contractions attached, digits by three.
O200K_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
               r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
               r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

BYTES_ONLY = ("bytelevel", False)  # ByteLevel with use_regex=false: only maps bytes, the split came before
GPT2_BYTELEVEL = ("bytelevel", True)  # ByteLevel with use_regex=true: GPT-2's own regex

# signature -> llama.cpp pre-tokenizer name
PRETOKENIZER_TABLE: dict[tuple, str] = {
    (("split", LLAMA3_SPLIT), BYTES_ONLY): "llama-bpe",  # Llama 3 / 3.1 / 3.2
    (("split", QWEN2_SPLIT), BYTES_ONLY): "qwen2",  # Qwen2, Qwen2.5, Qwen3
    (("split", O200K_SPLIT), BYTES_ONLY): "gpt-4o",  # o200k: Phi-4-mini
    (GPT2_BYTELEVEL,): "gpt-2",  # GPT-2 style (also phi-2)
    (("digits", True), GPT2_BYTELEVEL): "smollm",  # SmolLM / SmolLM2: each digit apart, then GPT-2's regex
}

# Names llama.cpp accepts for `--pretokenizer` overrides (a subset we know the behaviour of; see llama-vocab.cpp).
KNOWN_NAMES = ("llama-bpe", "qwen2", "gpt-2", "smollm", "starcoder", "refact", "command-r", "deepseek-llm",
               "deepseek-coder", "deepseek-v3", "falcon", "mpt", "olmo", "dbrx", "smaug-bpe", "stablelm2",
               "tekken", "gpt-4o", "llama4", "default")


def _step_signature(step: dict[str, Any]) -> tuple:
    kind = step.get("type")
    if kind == "Split":
        pattern = step.get("pattern") or {}
        regex = pattern.get("Regex", pattern.get("String"))
        if step.get("behavior", "Isolated") != "Isolated" or step.get("invert"):
            return ("split-other", regex, step.get("behavior"), step.get("invert"))
        return ("split", regex)
    if kind == "ByteLevel":
        if step.get("add_prefix_space"):
            return ("bytelevel-prefix-space", bool(step.get("use_regex", True)))
        return ("bytelevel", bool(step.get("use_regex", True)))
    if kind == "Digits":
        return ("digits", bool(step.get("individual_digits")))
    return (kind or "unknown",)


def pretokenizer_signature(pre_tokenizer: dict[str, Any] | None) -> tuple:
    if not pre_tokenizer:
        return ()
    steps = pre_tokenizer["pretokenizers"] if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    return tuple(_step_signature(step) for step in steps)


def detect_pretokenizer(tokenizer_json: dict[str, Any], *, source: str, override: str | None = None) -> str:
    """llama.cpp pre-tokenizer name for this tokenizer.json; EdgeftError when unrecognised and not overridden."""
    if override:
        if override not in KNOWN_NAMES:
            raise EdgeftError(f"--pretokenizer {override!r} is not one we know; choose one of: {', '.join(KNOWN_NAMES)}")
        return override
    signature = pretokenizer_signature(tokenizer_json.get("pre_tokenizer"))
    name = PRETOKENIZER_TABLE.get(signature)
    if name is None:
        shown = "; ".join(":".join(str(x)[:60] for x in step) for step in signature) or "none"
        raise EdgeftError(
            f"{source}: pre-tokenizer not recognised ({shown}); llama.cpp would split text differently. "
            f"If you know the matching llama.cpp type, pass --pretokenizer NAME ({', '.join(KNOWN_NAMES[:4])}, ...)")
    return name


# ---- the way back (edgeft import): a name -> the tokenizer.json definition that detect_pretokenizer maps to it ----

# llama.cpp takes a pre-token that is itself in the vocabulary as one token, skipping the merges, for these names
# (llama-vocab.cpp sets ignore_merges); tokenizer.json says the same with BPE's `ignore_merges`.
IGNORE_MERGES = frozenset({"llama-bpe"})


def _step_definition(signature: tuple) -> dict[str, Any]:
    kind = signature[0]
    if kind == "split":
        return {"type": "Split", "pattern": {"Regex": signature[1]}, "behavior": "Isolated", "invert": False}
    if kind == "bytelevel":
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": signature[1]}
    if kind == "digits":
        return {"type": "Digits", "individual_digits": signature[1]}
    raise ValueError(f"no definition for pre-tokenizer step {signature!r}")  # the table holds only the kinds above


def pretokenizer_definition(name: str, *, source: str) -> dict[str, Any]:
    """tokenizer.json `pre_tokenizer` for llama.cpp pre-tokenizer `name`: PRETOKENIZER_TABLE read backwards."""
    signature = next((sig for sig, known in PRETOKENIZER_TABLE.items() if known == name), None)
    if signature is None:
        raise EdgeftError(f"{source}: pre-tokenizer {name!r} is not one edgeft can write as tokenizer.json; "
                          f"importable: {', '.join(sorted(set(PRETOKENIZER_TABLE.values())))}")
    steps = [_step_definition(step) for step in signature]
    return steps[0] if len(steps) == 1 else {"type": "Sequence", "pretokenizers": steps}
