"""convert_model: HF folder -> one GGUF, in one streaming pass.

Memory stays bounded by one tensor (or one row chunk of a big one): we first plan every tensor from the
safetensors headers alone (name, shape, type, byte size), write the GGUF header, metadata and tensor-info table,
then read, rewrite, encode and append each tensor's data in turn. gguf.GGUFWriter would otherwise keep every
tensor in memory until the end. Everything goes to a temporary file that is renamed only when complete.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from convert.arch import Architecture, load_architecture
from convert.arch.base import Source
from convert.config_shapes import check_block_count, check_config_shapes, check_header_numbers, check_tied_output
from convert.gguf_reader import tensor_nbytes
from convert.gguf_writer import BulkGGUFWriter, write_streamed
from convert.reader import iter_row_chunks, open_weights
from convert.vocab import load_vocab, write_vocab
from convert.common.errors import EdgeftError
from convert.common.fsutil import refuse_own_input

# Rows are processed in chunks of at most this many values (16 MB as float32) when the rewrite allows it.
CHUNK_ELEMENTS = 4 * 1024 * 1024


@dataclass
class PlannedTensor:
    gguf_name: str
    shape: tuple[int, ...]
    hf_name: str | None = None  # None for tensors we generate
    generated: np.ndarray | None = None
    # Several HF tensors stacked into this one, or a piece of one (MoE experts; see convert.arch.base.Source).
    sources: list[Source] = field(default_factory=list)
    qtype: object = None
    nbytes: int = 0


def _order_key(name: str) -> tuple:
    # token_embd first, blocks in numeric order, output tensors last — the same for sharded and unsharded input.
    match = re.match(r"blk\.(\d+)\.", name)
    if match:
        return (1, int(match.group(1)), name)
    return (0 if name.startswith(("token_embd", "rope_")) else 2, 0, name)


def plan_tensors(arch: Architecture, reader) -> list[PlannedTensor]:
    planned: dict[str, PlannedTensor] = {}
    for hf_name in reader.names():
        for gguf_name, source in arch.tensor_sources(hf_name):
            tensor = planned.setdefault(gguf_name, PlannedTensor(gguf_name, (), hf_name=hf_name))
            if tensor.sources and (source.stack is None or tensor.sources[0].stack is None):
                raise EdgeftError(f"tensor {hf_name}: maps to {gguf_name}, which another tensor already filled")
            tensor.sources.append(source)
    for tensor in planned.values():
        tensor.shape = _planned_shape(arch, reader, tensor)
    for gguf_name, array in arch.extra_tensors():
        planned[gguf_name] = PlannedTensor(gguf_name, tuple(array.shape), generated=array)
    if "token_embd.weight" not in planned:
        raise EdgeftError(f"{arch.model_dir}: no token embedding (model.embed_tokens.weight) in the weights; "
                          "the checkpoint is incomplete")
    return sorted(planned.values(), key=lambda t: _order_key(t.gguf_name))


def _piece_shape(arch: Architecture, reader, source: Source) -> tuple[int, ...]:
    shape = tuple(arch.gguf_shape(source.hf_name, tuple(reader.shape(source.hf_name))))
    if source.parts == 1:
        return shape
    if len(shape) < 2 or shape[-2] % source.parts:
        raise EdgeftError(f"tensor {source.hf_name}: shape {list(shape)} does not split into {source.parts} equal "
                          "parts along its rows; the checkpoint does not match its config")
    return (*shape[:-2], shape[-2] // source.parts, shape[-1])


def _planned_shape(arch: Architecture, reader, tensor: PlannedTensor) -> tuple[int, ...]:
    if tensor.sources[0].stack is None:
        return _piece_shape(arch, reader, tensor.sources[0])
    tensor.sources.sort(key=lambda source: source.stack)
    positions = [source.stack for source in tensor.sources]
    if positions != list(range(len(positions))):
        missing = sorted(set(range(max(positions) + 1)) - set(positions))
        raise EdgeftError(f"tensor {tensor.gguf_name}: slice {missing[0] if missing else positions} of its "
                          f"{tensor.sources[0].hf_name} family is missing; the checkpoint is incomplete")
    shapes = {_piece_shape(arch, reader, source) for source in tensor.sources}
    if len(shapes) > 1:
        raise EdgeftError(f"tensor {tensor.gguf_name}: its slices ({tensor.sources[0].hf_name}...) differ in shape "
                          f"{sorted(shapes)}; they cannot be stacked")
    return (len(positions), *shapes.pop())


def _chunk_jobs(tensor: PlannedTensor, arch: Architecture, reader, encode: Callable[[np.ndarray], np.ndarray]):
    """Zero-argument jobs, each reading, rewriting and encoding the next row chunk of the tensor."""
    if tensor.generated is not None:
        yield lambda: encode(np.asarray(tensor.generated, dtype=np.float32))
        return
    if len(tensor.sources) > 1 or tensor.sources[0].parts > 1:
        for source in tensor.sources:
            yield from _piece_jobs(source, arch, reader, encode)
        return
    name = tensor.hf_name
    shape = tuple(reader.shape(name))
    if not arch.transform_is_rowwise(name) or len(shape) < 2:
        yield lambda: encode(arch.transform_tensor(name, reader.read(name)))
        return
    for start, stop in iter_row_chunks(shape, CHUNK_ELEMENTS):
        yield lambda start=start, stop=stop: encode(arch.transform_tensor(name, reader.read_rows(name, start, stop)))


def _piece_jobs(source: Source, arch: Architecture, reader, encode):
    """A stacked slice or a split piece, in GGUF byte order. A 3-D source (all experts fused) is read one expert at
    a time, so memory stays at one expert's matrix."""
    name, shape = source.hf_name, tuple(reader.shape(source.hf_name))

    def piece(array: np.ndarray) -> np.ndarray:
        array = arch.transform_tensor(name, array)
        rows = array.shape[-2] // source.parts
        return array[..., source.part * rows:(source.part + 1) * rows, :] if source.parts > 1 else array

    if len(shape) >= 3:
        for index in range(shape[0]):
            yield lambda index=index: encode(piece(reader.read_rows(name, index, index + 1)))
    else:
        yield lambda: encode(piece(reader.read(name)))


def convert_model(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    outtype: str = "f16",
    imatrix: str | os.PathLike | None = None,
    threads: int | None = None,
    allow_pickle: bool = False,
    pretokenizer: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Convert a local Hugging Face model folder to one GGUF file at `out_path` and return its path.

    `outtype` is a llama.cpp file type name (f32, f16, bf16, q8_0, q4_k_m, iq4_xs...: convert.quant.FILE_TYPES);
    `imatrix` a llama.cpp importance-matrix GGUF used by the quantizer (the i-quants that llama.cpp refuses without
    one are refused the same way); `pretokenizer` overrides the detected BPE pre-tokenizer.
    """
    from convert.quant import load_imatrix, parse_file_type

    started = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_path.is_dir():
        raise EdgeftError(f"{out_path}: is a folder; pass a file name for -o, e.g. {out_path / 'model.gguf'}")
    refuse_own_input(out_path, {"model folder": model_dir, "imatrix": imatrix})
    arch = load_architecture(model_dir)
    file_type = parse_file_type(outtype)
    reader = open_weights(model_dir, allow_pickle=allow_pickle)
    vocab = load_vocab(model_dir, pretokenizer=pretokenizer)
    importance = load_imatrix(imatrix) if imatrix else {}

    tensors = plan_tensors(arch, reader)
    embd = next(t for t in tensors if t.gguf_name == "token_embd.weight")
    vocab.pad_to(embd.shape[0], str(model_dir))
    importance = _choose_types(tensors, arch, file_type, importance)
    writer = _header(tensors, arch, vocab, file_type, model_dir)
    _check_config(writer.kv_data[0], arch, reader, tensors, model_dir / "config.json")
    _write_data(writer, out_path, tensors, arch, reader, importance, threads, progress)
    if log is not None:
        seconds = time.perf_counter() - started
        size = out_path.stat().st_size
        log(f"wrote {out_path}: {len(tensors)} tensors, {file_type.name}, {size / 1e6:.1f} MB in {seconds:.1f} s")
    return out_path


def _check_config(header: dict, arch: Architecture, reader, tensors: list[PlannedTensor], config_path: Path) -> None:
    """What llama.cpp's loader checks, and what it cannot see, checked before a byte is written."""
    planned = [(t.gguf_name, t.shape, t.hf_name) for t in tensors]
    check_config_shapes(header, arch.gguf_arch, planned, config_path, arch.expected_shapes)
    check_block_count(header, arch.gguf_arch, planned, config_path)
    check_header_numbers(header, arch.gguf_arch, config_path)
    check_tied_output(arch, reader, config_path)


def _choose_types(tensors: list[PlannedTensor], arch: Architecture, file_type, importance: dict) -> dict:
    """Set each tensor's type and byte size as llama-quantize would; returns the imatrix entries to use."""
    from convert.quant import plan_tensor_types, validate_imatrix

    types = plan_tensor_types(file_type, [(t.gguf_name, t.shape) for t in tensors], arch=arch.gguf_arch,
                              n_layer=arch.n_layer, n_gqa=max(1, arch.n_head // arch.n_head_kv),
                              has_imatrix=bool(importance), n_expert=arch.n_expert)
    # i-quants without an imatrix, or an imatrix of another model: one line, before the output exists.
    importance = validate_imatrix(file_type, types, {t.gguf_name: t.shape[-1] for t in tensors}, importance)
    for t in tensors:
        t.qtype = types[t.gguf_name]
        t.nbytes = tensor_nbytes(t.shape, t.qtype)
    return importance


def _header(tensors: list[PlannedTensor], arch: Architecture, vocab, file_type, model_dir: Path) -> BulkGGUFWriter:
    """The writer holding every KV entry and the tensor table; the data follows in _write_data."""
    from convert.metadata import write_general

    writer = BulkGGUFWriter(path=None, arch=arch.gguf_arch)
    write_general(writer, model_dir=model_dir, config=arch.config, file_type=file_type)
    arch.write_hparams(writer)
    write_vocab(writer, vocab)
    for t in tensors:
        writer.add_tensor_plan(t.gguf_name, t.shape, t.qtype, t.nbytes)
    return writer


def _write_data(writer, out_path, tensors, arch, reader, importance, threads, progress) -> None:
    from convert.quant import quantize_tensor

    def encoder(t: PlannedTensor):
        def encode(values: np.ndarray) -> np.ndarray:
            values = np.asarray(values, dtype=np.float32)  # NaN or Inf were refused as read (convert.finite)
            return quantize_tensor(values, t.qtype, imatrix=importance.get(t.gguf_name), threads=threads)
        return encode

    def jobs_with_progress(bar):
        for index, t in enumerate(tensors, 1):
            bar.set_postfix_str(f"tensor {index}/{len(tensors)}", refresh=False)
            yield t.gguf_name, t.nbytes, _chunk_jobs(t, arch, reader, encoder(t))

    write_streamed(writer, out_path, jobs_with_progress, desc="convert", progress=progress,
                   workers=min(2, os.cpu_count() or 1))
