"""The merge's plan: check a LoRA adapter against the base it merges into (names, shapes, tied head, added tokens)
and lay out every output tensor per shard, before a byte is written. `edgeft.merge` then writes the plan.

Checks name the first tensor that does not fit in the base's own tensor order, so the message is stable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.adapter_file import Adapter
from convert.safetensors_file import FLOAT_DTYPES, SafetensorsFile, SafetensorsReader
from convert.common.jsonl import check_input_file
from convert.common.errors import EdgeftError

CONFIG_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
HEAD = "lm_head.weight"


@dataclass
class TensorJob:
    name: str  # output tensor name
    source: str  # base tensor it starts from (differs when untying lm_head from tied embeddings)
    out_dtype: str
    out_shape: tuple[int, ...]


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    check_input_file(path, "pass the base model's HF folder with --base", missing="no config.json")
    return json.loads(path.read_text())


def _mismatch(adapter: Adapter, what: str) -> EdgeftError:
    trained_on = adapter.base_model or "an unknown base"
    return EdgeftError(f"{adapter.path}: {what}; this adapter was trained on another base ({trained_on}); "
                       "pass the base it was trained on with --base")


def _same_arrays(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, tuple):
        return all(_same_arrays(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _fold_tied_head(adapter: Adapter, embed: str) -> None:
    """peft saves a tied model's lm_head copies (resized weight, trained token rows) next to the embedding's; when
    they are the same data, the head simply follows the embedding and the merged model stays tied."""
    if HEAD in adapter.pairs or embed in adapter.pairs:
        return
    if _same_arrays(adapter.full.get(HEAD), adapter.full.get(embed)) or HEAD not in adapter.full:
        if _same_arrays(adapter.token_rows.get(HEAD), adapter.token_rows.get(embed)) or HEAD not in adapter.token_rows:
            adapter.full.pop(HEAD, None)
            adapter.token_rows.pop(HEAD, None)


def _use_checkpoint_names(adapter: Adapter, base_dir: Path, names) -> None:
    """Pairs saved under transformers' in-memory names that the checkpoint spells otherwise (Mixtral's router) are
    re-keyed by the architecture's tensor table; an architecture the converter does not know keeps the names."""
    from convert.arch import load_architecture

    try:
        arch = load_architecture(base_dir)
    except EdgeftError:
        return
    adapter.rename_pairs(lambda name: arch.checkpoint_name(name, names))


def _refuse_quantized(base_dir: Path, config: dict) -> None:
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise EdgeftError(f"{base_dir}: the base is a {method} checkpoint; merge high: pass the original "
                          "full-precision (bf16/f16/f32) model with --base")


def _untie_from(adapter: Adapter, weight_map: dict[str, str]) -> str | None:
    """The embedding a new lm_head starts from when the merge must untie a tied model, else None."""
    embed = next((name for name in weight_map if name.endswith("embed_tokens.weight")), None)
    tied = HEAD not in weight_map and embed is not None
    if tied:
        _fold_tied_head(adapter, embed)
    if tied and (HEAD in adapter.tensor_names() or embed in adapter.pairs):
        # peft adapts a tied model's input embedding and output head as two modules sharing one base tensor, so a
        # LoRA on either one changes only that side; the merged model needs its own lm_head (untied).
        return embed
    if HEAD in adapter.tensor_names() and HEAD not in weight_map:
        raise _mismatch(adapter, "it changes lm_head.weight, which the base does not have")
    return None


def _output_shapes(adapter: Adapter, shapes: dict, config: dict, config_changes: dict) -> dict:
    """Each output tensor's shape: the base's, or that of the adapter's replacement, which may only grow the
    vocabulary rows (added tokens); a grown vocabulary goes into config_changes."""
    out_shapes = dict(shapes)
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    for name, array in sorted(adapter.full.items()):
        if name not in shapes:
            raise _mismatch(adapter, f"tensor {name} is not in the base model")
        base_shape = shapes[name]
        resized = (len(base_shape) == 2 and array.ndim == 2 and base_shape[0] == vocab
                   and array.shape[1] == base_shape[1])  # added tokens: embeddings/head grow rows only
        if tuple(array.shape) != base_shape and not resized:
            raise _mismatch(adapter, f"tensor {name} is {tuple(array.shape)} in the adapter but {base_shape} in the base")
        if resized and array.shape[0] != base_shape[0]:
            config_changes["vocab_size"] = int(array.shape[0])
        out_shapes[name] = tuple(array.shape)
    return out_shapes


def _check_pairs(adapter: Adapter, shapes: dict, out_shapes: dict, file_order: list[str]) -> None:
    order = {name: index for index, name in enumerate(file_order)}
    for name, pair in sorted(adapter.pairs.items(), key=lambda item: order.get(item[0], len(order))):
        if name not in out_shapes:
            raise _mismatch(adapter, f"tensor {name} (LoRA on {pair.module}) is not in the base model")
        if tuple(out_shapes[name]) != pair.delta_shape():
            raise _mismatch(adapter, f"tensor {name}: lora_B·lora_A is {pair.delta_shape()} but the base weight is "
                                     f"{tuple(out_shapes[name])}")
        if pair.magnitude is not None and pair.magnitude.shape[0] != out_shapes[name][0]:
            raise _mismatch(adapter, f"tensor {name}: DoRA magnitude has {pair.magnitude.shape[0]} rows, "
                                     f"the base weight {out_shapes[name][0]}")
        if pair.bias is not None and f"{pair.module}.bias" not in shapes:
            raise EdgeftError(f"{adapter.path}: {pair.module} has a LoRA bias but the base layer has no bias; "
                              "train with lora_bias=False")


def _grow_for_token_rows(adapter: Adapter, out_shapes: dict, tokenizer_size: int | None,
                         config_changes: dict) -> None:
    """`edgeft train` resizes embed_tokens and lm_head to its tokenizer's length for the tokens it adds and saves
    only their trained rows (trainable tokens, save_embedding_layers=False). A base with no spare rows (config
    vocab_size == its tokenizer's length, as Llama 2's) has no row for them, so the merged model grows both vocabulary
    tensors to the adapter tokenizer's length, as training did; the trained rows then fill the new rows."""
    vocabulary = [name for name in out_shapes if name == HEAD or name.endswith("embed_tokens.weight")]
    if not tokenizer_size or not adapter.token_rows or any(name in adapter.full for name in vocabulary):
        return  # a saved whole embedding decides the shape itself (see _output_shapes)
    rows = {out_shapes[name][0] for name in vocabulary if len(out_shapes[name]) == 2}
    highest = max((int(indices.max()) for indices, _ in adapter.token_rows.values() if indices.size), default=-1)
    if len(rows) != 1 or not min(rows) <= highest < tokenizer_size:
        return  # the rows exist already, or an index no tokenizer of this adapter has (_check_token_rows says so)
    for name in vocabulary:
        out_shapes[name] = (tokenizer_size, *out_shapes[name][1:])
    config_changes["vocab_size"] = tokenizer_size


def _check_token_rows(adapter: Adapter, out_shapes: dict, tokenizer_size: int | None) -> None:
    for name, (indices, rows) in adapter.token_rows.items():
        if name not in out_shapes or rows.shape[1:] != tuple(out_shapes[name][1:]):
            raise _mismatch(adapter, f"trainable token rows for {name} do not fit the base")
        if indices.size and indices.max() >= out_shapes[name][0]:
            tokenizer = f" and the adapter tokenizer's {tokenizer_size} tokens" if tokenizer_size else ""
            raise _mismatch(adapter, f"trainable token index {int(indices.max())} is beyond {name}'s "
                                     f"{out_shapes[name][0]} rows{tokenizer}")


def _lay_out_jobs(headers: dict[str, SafetensorsFile], weight_map: dict[str, str], out_shapes: dict,
                  out_dtype: str | None, untie_from: str | None) -> dict[str, list[TensorJob]]:
    def job(name: str, source: str) -> TensorJob:
        stored = headers[weight_map[source]].dtype(source)
        return TensorJob(name, source, out_dtype if (out_dtype and stored in FLOAT_DTYPES) else stored,
                         out_shapes[name])

    # the index is the truth: a tensor a shard holds but the index does not list there is not written
    shards = {shard: [job(name, name) for name in header.names() if weight_map.get(name) == shard]
              for shard, header in headers.items()}
    if untie_from:
        shards[weight_map[untie_from]].append(job(HEAD, untie_from))
    return shards


def plan_merge(base_dir: Path, adapter: Adapter, out_dtype: str | None,
               tokenizer_size: int | None = None) -> tuple[dict[str, list[TensorJob]], dict]:
    """Check the adapter against the base (shapes, names) and lay out every output tensor per shard.

    tokenizer_size: the length of the tokenizer saved with the adapter (None: it has none), which trainable token
    rows past the base's vocabulary grow embed_tokens and lm_head to.
    Returns (shard file -> jobs in write order, config changes).
    """
    config = read_config(base_dir)
    _refuse_quantized(base_dir, config)
    checkpoint = SafetensorsReader(base_dir)
    weight_map, headers = checkpoint.weight_map(), checkpoint.shards
    shapes = {name: headers[shard].shape(name) for name, shard in weight_map.items()}
    if any(name not in weight_map for name in adapter.pairs):
        _use_checkpoint_names(adapter, base_dir, weight_map)
    config_changes: dict = {}
    untie_from = _untie_from(adapter, weight_map)
    if untie_from:
        shapes[HEAD] = shapes[untie_from]
        config_changes["tie_word_embeddings"] = False
    out_shapes = _output_shapes(adapter, shapes, config, config_changes)
    if untie_from:
        out_shapes[HEAD] = out_shapes[untie_from]
    _grow_for_token_rows(adapter, out_shapes, tokenizer_size, config_changes)
    _check_pairs(adapter, shapes, out_shapes, [name for shard in sorted(headers) for name in headers[shard].names()])
    _check_token_rows(adapter, out_shapes, tokenizer_size)
    shards = _lay_out_jobs(headers, weight_map, out_shapes, out_dtype, untie_from)
    if out_dtype:
        config_changes["torch_dtype" if "torch_dtype" in config else "dtype"] = CONFIG_DTYPE_NAMES[out_dtype]
    return shards, config_changes
