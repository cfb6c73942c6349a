"""A config.json that contradicts its weights is refused before the GGUF is written.

llama.cpp's loader checks every tensor's shape against the hyper-parameters in the GGUF header and refuses the
file when one differs ("tensor 'blk.0.attn_q.weight' has wrong shape"), or when the layer count is not the weights'.
Those come from config.json, so a config edited by hand, or copied from another size of the model, converts
"successfully" into a GGUF nothing can load. Worse, a NaN rms_norm_eps or a negative rope_theta loads and answers
garbage, and tie_word_embeddings=true beside a trained lm_head drops the lm_head without a word. The same checks,
made here on the header about to be written: one line naming the config setting, the tensor and both shapes.
"""

from __future__ import annotations

import math
import re

from gguf import Keys

from convert.common.errors import EdgeftError

# Header key (without "{arch}.") -> the config.json setting it is written from.
SETTING_OF = {
    Keys.LLM.EMBEDDING_LENGTH: "hidden_size",
    Keys.LLM.FEED_FORWARD_LENGTH: "intermediate_size",
    Keys.Attention.HEAD_COUNT: "num_attention_heads",
    Keys.Attention.HEAD_COUNT_KV: "num_key_value_heads",
    Keys.Attention.KEY_LENGTH: "head_dim",
    Keys.Attention.VALUE_LENGTH: "head_dim",
}
EMBD, FFN = Keys.LLM.EMBEDDING_LENGTH, Keys.LLM.FEED_FORWARD_LENGTH
HEADS, KV_HEADS = Keys.Attention.HEAD_COUNT, Keys.Attention.HEAD_COUNT_KV
KEY, VALUE = Keys.Attention.KEY_LENGTH, Keys.Attention.VALUE_LENGTH

# GGUF tensor (block index dropped) -> its shape in numpy order as llama.cpp's loader expects it for the llama family:
# each dimension a product of header keys (and integers), a list of products to add, or None where any size is right
# (the vocabulary).
EXPECTED_SHAPES: dict[str, tuple] = {
    "token_embd.weight": (None, (EMBD,)),
    "output.weight": (None, (EMBD,)),
    "output_norm.weight": ((EMBD,),),
    "blk.attn_norm.weight": ((EMBD,),),
    "blk.ffn_norm.weight": ((EMBD,),),
    "blk.attn_q.weight": ((HEADS, KEY), (EMBD,)),
    "blk.attn_k.weight": ((KV_HEADS, KEY), (EMBD,)),
    "blk.attn_v.weight": ((KV_HEADS, VALUE), (EMBD,)),
    "blk.attn_output.weight": ((EMBD,), (HEADS, VALUE)),
    "blk.ffn_gate.weight": ((FFN,), (EMBD,)),
    "blk.ffn_up.weight": ((FFN,), (EMBD,)),
    "blk.ffn_down.weight": ((EMBD,), (FFN,)),
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _value(header: dict, arch: str, key: str, block: int | None):
    """The header's value for `key`; a per-layer array gives this block's (None: not written, or 0: no such part)."""
    entry = header.get(key.format(arch=arch))
    if entry is None:
        return None
    value = entry.value
    if isinstance(value, (list, tuple)):
        value = value[block] if block is not None and block < len(value) else None
    return int(value) if value else None


def _dimension(factors, header: dict, arch: str, block: int | None) -> tuple[int, str] | None:
    """(size, how the config gives it: "num_attention_heads=4 x head_dim=64"), or None when not all are known.
    `factors`: a tuple multiplied out, or a list of such tuples added up (a fused projection)."""
    if isinstance(factors, list):
        terms = [_dimension(term, header, arch, block) for term in factors]
        if any(term is None for term in terms):
            return None
        return sum(size for size, _ in terms), " + ".join(words for _, words in terms)
    size, words = 1, []
    for factor in factors:
        if isinstance(factor, int):
            size, words = size * factor, [*words, str(factor)]
            continue
        value, setting = _value(header, arch, factor, block), SETTING_OF[factor]
        if value is None and factor in (KEY, VALUE):  # not written: llama.cpp takes n_embd / n_head
            embd, heads = _value(header, arch, EMBD, block), _value(header, arch, HEADS, block)
            value, setting = (embd // heads if embd and heads else None), "hidden_size/num_attention_heads"
        if value is None:
            return None
        size, words = size * value, [*words, f"{setting}={value}"]
    return size, " x ".join(words)


def check_config_shapes(header: dict, arch: str, tensors, config_path, overrides: dict | None = None) -> None:
    """Refuse the first tensor whose shape differs from what the header (`header`: key -> GGUFValue, as the writer
    holds it) says; `tensors`: (gguf name, shape in numpy order, HF name); `overrides`: an arch's own rows of
    EXPECTED_SHAPES (Phi-3's fused gate and up are one ffn_up of twice the width)."""
    expected_shapes = {**EXPECTED_SHAPES, **(overrides or {})}
    for gguf_name, shape, hf_name in tensors:
        match = _BLOCK.match(gguf_name)
        block = int(match.group(1)) if match else None
        rows = expected_shapes.get(_BLOCK.sub("blk.", gguf_name))
        if rows is None or len(rows) != len(shape):
            continue
        expected, said = [], []
        for factors, size in zip(rows, shape):
            dimension = None if factors is None else _dimension(factors, header, arch, block)
            expected.append(size if dimension is None else dimension[0])
            if dimension is not None and dimension[0] != size:
                said.append(dimension[1] if factors in ((EMBD,), (FFN,)) else f"{dimension[1]} = {dimension[0]}")
        if said:
            raise EdgeftError(f"{config_path}: {' and '.join(said)} does not fit tensor {hf_name or gguf_name}, whose "
                              f"shape is {list(shape)} where that config gives {expected}; the config and the weights "
                              "are not the same model's: fix config.json (or use the model's own)")


# Header numbers llama.cpp divides by, or takes powers of: the config setting each comes from; each must be above 0.
POSITIVE = {Keys.LLM.CONTEXT_LENGTH: "max_position_embeddings", Keys.Rope.FREQ_BASE: "rope_theta",
            Keys.Attention.LAYERNORM_RMS_EPS: "rms_norm_eps", Keys.Attention.LAYERNORM_EPS: "layer_norm_eps"}


def check_header_numbers(header: dict, arch: str, config_path) -> None:
    """Every number of the model's hyper-parameters (the "{arch}." keys) finite, and the POSITIVE ones above 0."""
    positive = {key.format(arch=arch): setting for key, setting in POSITIVE.items()}
    for key, entry in header.items():
        if not key.startswith(f"{arch}."):
            continue
        values = entry.value if isinstance(entry.value, (list, tuple)) else [entry.value]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value) or (key in positive and value <= 0):
                wanted = "a number above 0" if key in positive else "a finite number"
                raise EdgeftError(f"{config_path}: {positive.get(key, key)}={value} is not {wanted}; a GGUF with it "
                                  "loads and answers garbage: fix config.json")


def check_block_count(header: dict, arch: str, tensors, config_path) -> None:
    """The layers the header declares are the layers the weights hold."""
    declared = _value(header, arch, Keys.LLM.BLOCK_COUNT, None)
    held = sorted({int(match.group(1)) for name, _, _ in tensors if (match := _BLOCK.match(name))})
    if declared is not None and held and held != list(range(declared)):
        shown = f"0..{held[-1]}" if held == list(range(len(held))) else ", ".join(map(str, held[:8]))
        raise EdgeftError(f"{config_path}: num_hidden_layers={declared} does not fit the weights, which hold layers "
                          f"{shown} ({len(held)} layers); fix config.json (or use the model's own)")


def check_tied_output(arch_obj, reader, config_path, rows: int = 8) -> None:
    """tie_word_embeddings=true drops lm_head.weight (the output is the embedding); refuse when the weights hold an
    lm_head that is not the embedding. The first rows decide: a tied copy saved twice is equal there too."""
    names = set(reader.names())
    if not arch_obj.tied_embeddings or "lm_head.weight" not in names:
        return
    embedding = next((name for name in names if arch_obj.gguf_tensor_name(name) == "token_embd.weight"), None)
    if embedding is None or tuple(reader.shape(embedding)) != tuple(reader.shape("lm_head.weight")):
        same = False
    else:
        count = min(rows, reader.shape(embedding)[0])
        same = bool((reader.read_rows(embedding, 0, count) == reader.read_rows("lm_head.weight", 0, count)).all())
    if not same:
        raise EdgeftError(f"{config_path}: tie_word_embeddings=true, but the weights hold an lm_head.weight that is "
                          f"not the embedding {embedding}; the GGUF would drop it: set tie_word_embeddings to false")
