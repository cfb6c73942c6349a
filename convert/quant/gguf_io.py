"""GGUF -> GGUF quantization (what llama-quantize does), streaming one tensor at a time.

The input is memory-mapped (convert.gguf_reader.GGUFFile); each tensor is converted to float32 and quantized in row
slabs by a thread pool, written in order (convert.gguf_writer), and its input pages dropped once written — memory
stays near a few slabs. Metadata is copied byte for byte except general.file_type and
general.quantization_version, which llama-quantize rewrites too. KV and tensor order follow llama-quantize's, so the
whole output file is byte-identical to what llama-quantize writes for the same input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from convert.finite import refuse_non_finite
from convert.gguf_reader import GGUFFile, TensorEntry, tensor_nbytes
from convert.gguf_writer import BulkGGUFWriter, RawValue, write_streamed
from convert.quant.policy import walk_order
from convert.common.errors import EdgeftError

_KEYS = gguf.Keys.General
# One output file, as llama-quantize writes; the two stamps are rewritten at the end (see _metadata).
_DROPPED_KEYS = (gguf.Keys.Split.LLM_KV_SPLIT_NO, gguf.Keys.Split.LLM_KV_SPLIT_COUNT,
                 gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, _KEYS.FILE_TYPE, _KEYS.QUANTIZATION_VERSION)
# Rows are converted and quantized in slabs of about this many values (8 MB as float32), one slab per worker at a
# time: the float32 copy of a 150k-row embedding never exists whole, and the to-float conversion runs in parallel.
SLAB_VALUES = 2 * 1024 * 1024


def _to_float(tensor: TensorEntry) -> Callable[[np.ndarray], np.ndarray]:
    """Stored rows (uint8 bytes) -> float32, exactly as ggml's to-float row functions do."""
    from convert.quant import bf16_bits_to_f32

    if tensor.qtype == T.F32:
        return lambda raw: raw.view(np.float32)
    if tensor.qtype == T.F16:
        return lambda raw: raw.view(np.float16).astype(np.float32)
    if tensor.qtype == T.BF16:
        return lambda raw: bf16_bits_to_f32(raw.view(np.uint16))
    raise EdgeftError(
        f"{tensor.name}: requantizing from {tensor.qtype.name} is not supported (it compounds error); "
        "quantize from the F32/F16/BF16 GGUF instead"
    )


def _tensor_jobs(source: GGUFFile, tensor: TensorEntry, target: T, importance: dict | None):
    """Zero-argument jobs giving the tensor's output bytes in order: its stored bytes when the type stays, else one
    quantized slab of rows per job."""
    from convert.quant import quantize_tensor

    raw = source.data(tensor)
    if target == tensor.qtype:
        refuse_non_finite(raw, tensor.name, str(source.path), stored=tensor.qtype.name)
        yield lambda: raw
        return
    to_float = _to_float(tensor)
    values = (importance or {}).get(tensor.name)
    if values is not None and values.size != tensor.n_per_row:
        values = None  # token_embd: llama.cpp ignores a mismatched entry for it
    rows = raw.reshape(-1, tensor_nbytes((tensor.n_per_row,), tensor.qtype))
    step = max(1, SLAB_VALUES // tensor.n_per_row)
    for start in range(0, len(rows), step):
        slab = rows[start : start + step]
        yield lambda slab=slab: quantize_tensor(_finite(to_float(slab), tensor.name, source.path), target,
                                                imatrix=values, threads=1)


def _finite(values: np.ndarray, name: str, path) -> np.ndarray:
    refuse_non_finite(values, name, str(path))
    return values


def _model_shape(source: GGUFFile, path: Path) -> tuple[str, int, int, int]:
    """(arch, n_layer, n_gqa, n_expert): what the type policy needs to know of the model."""
    if source.arch is None:
        raise EdgeftError(f"{path}: no general.architecture key; this is not a model GGUF (an imatrix or LoRA?)")
    if source.value(_KEYS.TYPE, gguf.GGUFType.MODEL) != gguf.GGUFType.MODEL:
        raise EdgeftError(f"{path}: general.type is {source.value(_KEYS.TYPE)!r}; only model GGUFs can be quantized")
    n_layer = int(source.hparam(gguf.Keys.LLM.BLOCK_COUNT, 0))
    n_head = int(source.hparam(gguf.Keys.Attention.HEAD_COUNT, 0) or 0)
    # Per layer in some models (lfm2: 0 for conv layers): value() gives layer 0, as llama.cpp's n_gqa() reads.
    n_head_kv = int(source.hparam(gguf.Keys.Attention.HEAD_COUNT_KV, n_head) or n_head)
    n_expert = int(source.hparam(gguf.Keys.LLM.EXPERT_COUNT, 0) or 0)
    return source.arch, n_layer, (n_head // n_head_kv if n_head and n_head_kv else 1), n_expert


def _plan(source: GGUFFile, path: Path, file_type, imatrix) -> tuple[dict, dict | None]:
    """Tensor name -> output type, and the imatrix entries to quantize with (refusals before any output)."""
    from convert.quant import load_imatrix, plan_tensor_types, validate_imatrix

    arch, n_layer, n_gqa, n_expert = _model_shape(source, path)
    importance = load_imatrix(imatrix) if isinstance(imatrix, (str, os.PathLike)) else (imatrix or None)
    plan = plan_tensor_types(
        file_type, [(t.name, t.shape) for t in source.tensors], arch=arch, n_layer=n_layer, n_gqa=n_gqa,
        has_imatrix=bool(importance), n_expert=n_expert, source_types={t.name: t.qtype for t in source.tensors},
    )
    # i-quants without an imatrix, or an imatrix of another model: one line, before the output exists.
    importance = validate_imatrix(file_type, plan, {t.name: t.n_per_row for t in source.tensors}, importance)
    return plan, importance


def _metadata(writer: BulkGGUFWriter, source: GGUFFile, file_type) -> None:
    """Every KV entry verbatim, split keys dropped, and the two quantization stamps moved to the end — where
    llama.cpp's gguf_set_val (remove, then append) leaves them, so our header is byte-identical to llama-quantize's."""
    for key in source.kv:
        if key not in _DROPPED_KEYS:
            writer.add_raw(key, RawValue(source.kv_value_bytes(key)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(int(file_type.gguf_file_type))


def quantize_gguf(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    file_type,
    *,
    imatrix: str | os.PathLike | dict | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> Path:
    """Quantize a GGUF model file to `file_type` (a FileType or name like "Q4_K_M"); returns `out_path`.

    `imatrix`: a llama.cpp imatrix GGUF path or an already-loaded {name: importance} dict. The output appears only
    when complete (atomic rename). `progress` shows a tqdm bar on stderr.
    """
    from convert.quant import default_threads, parse_file_type
    from convert.common.jsonl import check_input_file
    from convert.common.fsutil import refuse_own_input

    in_path, out_path = Path(in_path), Path(out_path)
    if isinstance(file_type, str):
        file_type = parse_file_type(file_type)
    check_input_file(in_path, "pass the F16/BF16/F32 GGUF made by `edgeft convert`", missing="input GGUF not found")
    refuse_own_input(out_path, {"input GGUF": in_path,
                                "imatrix": imatrix if isinstance(imatrix, (str, os.PathLike)) else None})
    with GGUFFile(in_path) as source:
        plan, importance = _plan(source, in_path, file_type, imatrix)
        _write(source, out_path, file_type, plan, importance, threads or default_threads(), progress)
    return out_path


def planned_size(in_path: str | os.PathLike, file_type, *, imatrix: str | os.PathLike | dict | None = None) -> int:
    """Bytes `quantize_gguf` would write for this input, type and imatrix, computed without writing any; refuses
    what quantize_gguf refuses at planning (a type that needs an imatrix without one, an imatrix of another model,
    a source tensor type that cannot be requantized)."""
    from convert.quant import parse_file_type

    if isinstance(file_type, str):
        file_type = parse_file_type(file_type)
    with GGUFFile(Path(in_path)) as source:
        plan, _ = _plan(source, Path(in_path), file_type, imatrix)
        for tensor in source.tensors:
            if plan[tensor.name] != tensor.qtype:
                _to_float(tensor)  # raises for a quantized source tensor
        return _writer_plan(source, file_type, plan)[0].planned_size()


def _writer_plan(source: GGUFFile, file_type, plan: dict) -> tuple[BulkGGUFWriter, list[TensorEntry], dict]:
    """The writer with the metadata and tensor table in place, the tensors in write order, and their sizes."""
    writer = BulkGGUFWriter(path=None, arch="")  # general.architecture comes verbatim from the source, in place
    writer.data_alignment = source.alignment  # and general.alignment, when the source has one
    _metadata(writer, source, file_type)
    # llama-quantize writes tensors in its loader's order (layer, then name); so do we, for identical files.
    by_name = {t.name: t for t in source.tensors}
    ordered = [by_name[name] for name in walk_order(list(by_name))]
    sizes = {t.name: tensor_nbytes(t.shape, plan[t.name]) for t in ordered}
    for tensor in ordered:
        writer.add_tensor_plan(tensor.name, tensor.shape, plan[tensor.name], sizes[tensor.name])
    return writer, ordered, sizes


def _write(source: GGUFFile, out_path: Path, file_type, plan: dict, importance, threads: int, progress: bool):
    writer, ordered, sizes = _writer_plan(source, file_type, plan)
    by_name = {t.name: t for t in ordered}

    def jobs(bar):
        for tensor in ordered:
            bar.set_postfix_str(f"{tensor.name} -> {plan[tensor.name].name}", refresh=False)
            yield tensor.name, sizes[tensor.name], _tensor_jobs(source, tensor, plan[tensor.name], importance)

    # Four slabs per thread in flight keep both threads busy; the input pages go once a tensor is written.
    write_streamed(writer, out_path, jobs, desc="quantize", progress=progress, workers=threads, window=4 * threads,
                   on_tensor=lambda name: source.release(by_name[name]))
