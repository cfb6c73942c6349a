"""peft LoRA adapter -> llama.cpp LoRA adapter GGUF (the multi-LoRA route: one base GGUF, many small adapters).

Facts from llama.cpp's src/llama-adapter.cpp and llama-graph.cpp that shape this file:
- the loader requires general.type = "adapter", adapter.type = "lora", general.architecture equal to the base's,
  and reads adapter.lora.alpha (f32); every tensor is "<base gguf name>.lora_a" or ".lora_b";
- it computes y += scale · B(A x) with scale = alpha / rank, rank read from lora_b (its ggml ne[0] = r). There is
  one alpha per file, so per-module differences (rsLoRA's alpha/sqrt(r), rank_pattern, alpha_pattern) are folded
  into lora_b;
- linear: lora_a is peft's A (r, in) and lora_b its B (out, r) unchanged; token embeddings: lora_a is A transposed
  (vocab, r) because llama.cpp gathers rows of it by token id, lora_b is B (hidden, r);
- the converter's per-tensor rewrites of the base (llama's q/k row permutation) must hit lora_b's rows too, since
  B's rows are the weight's output rows.
A llama.cpp adapter holds LoRA pairs only: DoRA magnitudes, modules_to_save copies and trained token rows cannot be
expressed, so such adapters are refused with the way out (merge, then convert the merged model).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from convert.adapter_file import Adapter, load_adapter
from convert.arch import Architecture, load_architecture
from convert.fingerprint import check_adapter_base
from convert.safetensors_file import SafetensorsReader
from convert.vocab.chat_template import chat_template_of
from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_file, refuse_own_input

OUTTYPES = ("f32", "f16", "q8_0")


def _resolve_base(adapter: Adapter, base_dir) -> Path:
    if base_dir is not None:
        return Path(base_dir)
    named = adapter.base_model
    if named and (Path(named) / "config.json").exists():
        return Path(named)
    raise EdgeftError(f"{adapter.path}: adapter_config.json names base {named!r}, which is not a local model folder; "
                      "pass --base MODEL_DIR")


def _refuse_unexpressible(adapter: Adapter, base: SafetensorsReader, arch: Architecture) -> None:
    reason = None
    if any(pair.magnitude is not None for pair in adapter.pairs.values()):
        reason = "it is a DoRA adapter (per-row magnitudes)"
    elif any(pair.bias is not None for pair in adapter.pairs.values()):
        reason = "it trains LoRA biases (lora_bias=True)"
    elif adapter.token_rows:
        reason = f"it trains whole token rows of {sorted(adapter.token_rows)[0]}"
    elif any(pair.kind == "embedding" for pair in adapter.pairs.values()) and arch.tied_embeddings:
        reason = "it has LoRA on the embeddings of a tied-embedding model (llama.cpp would apply it to the output too)"
    elif "lm_head.weight" in adapter.pairs and arch.tied_embeddings:
        reason = "it has LoRA on lm_head of a tied-embedding model, which has no separate output tensor in GGUF"
    else:
        names = set(base.names())
        for name, array in sorted(adapter.full.items()):
            # peft saves a targeted embedding's base weight alongside its LoRA; identical to the base it is harmless.
            if name in names and base.shape(name) == array.shape and np.array_equal(base.read(name), array):
                continue
            reason = f"it replaces the whole tensor {name} (modules_to_save or added tokens)"
            break
    if reason:
        raise EdgeftError(f"{adapter.path}: cannot be a llama.cpp LoRA adapter: {reason}; use `edgeft merge` and "
                          "convert the merged model instead")


def _check_shapes(adapter: Adapter, base: SafetensorsReader) -> None:
    weight_map = base.weight_map()
    order = {name: index for index, name in enumerate(weight_map)}
    for name, pair in sorted(adapter.pairs.items(), key=lambda item: order.get(item[0], len(order))):
        if name not in weight_map:
            raise EdgeftError(f"{adapter.path}: tensor {name} (LoRA on {pair.module}) is not in the base "
                              f"{base.model_dir}; pass the base the adapter was trained on with --base")
        shape = base.shape(name)
        if shape != pair.delta_shape():
            raise EdgeftError(f"{adapter.path}: tensor {name}: lora_B·lora_A is {pair.delta_shape()} but the base "
                              f"weight is {shape}; pass the base the adapter was trained on with --base")


def _file_alpha(adapter: Adapter) -> float:
    """The one alpha for the file: the value that makes alpha/rank equal most modules' scale."""
    votes = Counter(round(pair.scale * pair.rank, 6) for pair in adapter.pairs.values())
    return float(votes.most_common(1)[0][0])


def _rewrite_rows(arch: Architecture, weight_name: str, lora_b: np.ndarray) -> np.ndarray:
    """Apply the converter's rewrite of the base weight to B's rows; only row reorderings carry over to a factor."""
    rewritten = arch.transform_tensor(weight_name, lora_b)
    if rewritten.shape != lora_b.shape or np.any(arch.transform_tensor(weight_name, np.zeros_like(lora_b))):
        raise EdgeftError(f"tensor {weight_name}: the {type(arch).__name__} converter rewrites it in a way a LoRA "
                          "factor cannot follow; merge the adapter instead")
    return rewritten


def lora_tensors(adapter: Adapter, arch: Architecture, alpha: float):
    """Yield (gguf name, float32 array) pairs: <name>.lora_a then <name>.lora_b, in module order."""
    for weight_name, pair in sorted(adapter.pairs.items()):
        gguf_name = arch.gguf_tensor_name(weight_name)
        if gguf_name is None:
            raise EdgeftError(f"tensor {weight_name}: not written to the base GGUF, so a LoRA on it has nowhere to go")
        fold = pair.scale / (alpha / pair.rank)  # 1.0 unless this module's scale differs from the file's
        if pair.kind == "embedding":
            lora_a, lora_b = pair.A.T, pair.B
        elif pair.fan_in_fan_out:
            raise EdgeftError(f"{adapter.path}: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported")
        else:
            lora_a, lora_b = pair.A, _rewrite_rows(arch, weight_name, pair.B)
        yield f"{gguf_name}.lora_a", np.ascontiguousarray(lora_a, dtype=np.float32)
        yield f"{gguf_name}.lora_b", np.ascontiguousarray(lora_b * np.float32(fold), dtype=np.float32)


def _encode(array: np.ndarray, outtype: str):
    """(data, raw ggml type or None) for GGUFWriter.add_tensor. Q8_0 needs rows of 32: narrower rows (lora_b's r
    columns when r < 32) stay F16 rather than fail."""
    import gguf

    from convert.quant import quantize_tensor

    if outtype == "f32":
        return array, None
    if outtype == "q8_0" and array.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return quantize_tensor(array, qtype), qtype
    return quantize_tensor(array, gguf.GGMLQuantizationType.F16), None


def _trained_template(adapter_dir: Path, base_dir: Path) -> str | None:
    """The template the adapter was trained with (`edgeft train` saves it in the adapter folder), by the one rule;
    a warning when it is not the base's, since base GGUF + adapter is then served with the wrong one."""
    trained = chat_template_of(adapter_dir)
    if trained is not None and trained != chat_template_of(base_dir):
        warnings.warn(f"{adapter_dir}: trained with another chat template than the base {base_dir}'s; llama.cpp "
                      "renders base GGUF + adapter with the base's template, so serve the merged GGUF (or render "
                      "with this adapter GGUF's tokenizer.chat_template yourself)")
    return trained


def convert_lora(adapter_dir, out_path, *, base_dir=None, outtype: str = "f32") -> Path:
    """Write a llama.cpp LoRA adapter GGUF for the peft adapter in `adapter_dir`; returns out_path.

    base_dir: the base HF folder (for the architecture, tensor names and shape checks); defaults to the adapter's
    base_model_name_or_path when that is a local folder. outtype: f32, f16 or q8_0.
    """
    import gguf

    outtype = str(outtype).lower()
    if outtype not in OUTTYPES:
        raise EdgeftError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    adapter = load_adapter(adapter_dir)
    base = _resolve_base(adapter, base_dir)
    refuse_own_input(out_path, {"adapter folder": adapter_dir, "base model folder": base})
    arch = load_architecture(base)
    checkpoint = SafetensorsReader(base)
    weight_names = set(checkpoint.weight_map())
    adapter.rename_pairs(lambda name: arch.checkpoint_name(name, weight_names))
    if not adapter.pairs:
        raise EdgeftError(f"{adapter.path}: the adapter has no LoRA pairs; nothing for a llama.cpp adapter to hold")
    _refuse_unexpressible(adapter, checkpoint, arch)
    _check_shapes(adapter, checkpoint)
    check_adapter_base(adapter.path, adapter.base_model, base)  # same shapes can still be another model
    alpha = _file_alpha(adapter)
    template = _trained_template(Path(adapter_dir), base)
    out_path = Path(out_path)
    with atomic_file(out_path) as tmp:
        writer = gguf.GGUFWriter(os.fspath(tmp), arch.gguf_arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(Path(adapter_dir).resolve().name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        if template:
            # llama.cpp renders with the base GGUF's template; the trained one travels here so a server can use it.
            writer.add_chat_template(template)
        for name, array in lora_tensors(adapter, arch, alpha):
            data, raw_type = _encode(array, outtype)
            if raw_type is None:
                writer.add_tensor(name, data)
            else:
                writer.add_tensor(name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out_path


def describe(path) -> dict:
    """Metadata of an adapter GGUF, for tests and `edgeft convert-lora` output (tensor shapes in ggml order)."""
    import gguf

    from convert.gguf_reader import GGUFFile

    keys = gguf.Keys
    with GGUFFile(path) as source:
        fields = {key: source.value(key) for key in (keys.General.TYPE, keys.General.ARCHITECTURE, keys.Adapter.TYPE,
                                                      keys.Tokenizer.CHAT_TEMPLATE)}
        alpha = source.value(keys.Adapter.LORA_ALPHA)
        fields[keys.Adapter.LORA_ALPHA] = float(alpha) if alpha is not None else None
        fields["tensors"] = {t.name: (t.qtype.name, tuple(int(x) for x in t.ggml_shape)) for t in source.tensors}
    return json.loads(json.dumps(fields))
