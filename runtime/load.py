"""Open a GGUF through llama-cpp-python, turning every way a file can be wrong into one clear line.

llama.cpp's own failure is a bare "Failed to load model from file" on stderr; a user deserves to know whether the
path is wrong, the file is not a GGUF at all, or a download/copy was cut short. So we check the container with
the `gguf` package (a memory-mapped header parse, no tensor data read) before llama.cpp sees the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeft.errors import EdgeftError

GGUF_MAGIC = b"GGUF"


def check_gguf(path: str | os.PathLike) -> Path:
    """Fail with one line if `path` is missing, not a GGUF, or shorter than its own tensor table says."""
    path = Path(path)
    if not path.exists():
        raise EdgeftError(f"{path}: no such file; pass the path of a .gguf model (see `edgeft convert`)")
    if path.is_dir():
        raise EdgeftError(f"{path}: is a folder, not a GGUF file; convert it first with `edgeft convert {path}`")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        if not size:
            hint = "the file is empty"
        elif path.suffix in {".safetensors", ".bin", ".pt", ".pth"}:
            hint = "a Hugging Face checkpoint: convert its folder with `edgeft convert`"
        else:
            hint = "pass a .gguf model file"
        raise EdgeftError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF'); {hint}")
    expected_end = _expected_size(path)
    if expected_end > size:
        raise EdgeftError(
            f"{path}: truncated GGUF ({size} bytes, its tensor table needs {expected_end}); "
            "the download or copy was cut short, fetch or convert it again"
        )
    return path


# GGUF metadata value types -> struct format of a scalar (8 = string, 9 = array are variable-length).
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Truncated(Exception):
    pass


def _expected_size(path: Path) -> int:
    data_start, tensors = read_tensor_table(path)
    return data_start + max((end for _name, _type, end in tensors), default=0)


def read_tensor_table(path: str | os.PathLike) -> tuple[int, list[tuple[str, int, int]]]:
    """Walk the header (metadata and tensor infos, per docs/gguf.md): the data section's start, and for each
    tensor (name, ggml type id, end of its bytes relative to the data section).

    Our own small walk rather than gguf.GGUFReader: the reader memory-maps tensors and fails on a cut file with
    a numpy reshape error, while we want the two sizes to tell the user."""
    import struct

    from gguf import GGML_QUANT_SIZES

    with open(path, "rb") as handle:
        def read(fmt: str):
            size = struct.calcsize(fmt)
            raw = handle.read(size)
            if len(raw) < size:
                raise _Truncated
            return struct.unpack("<" + fmt, raw)[0]

        def read_string() -> bytes:
            length = read("Q")
            raw = handle.read(length)
            if len(raw) < length:
                raise _Truncated
            return raw

        def read_value(kind: int):
            if kind == 8:
                return read_string()
            if kind == 9:
                item_kind, count = read("I"), read("Q")
                if item_kind in _SCALAR_FORMATS:  # fixed width: skip without decoding
                    handle.seek(struct.calcsize(_SCALAR_FORMATS[item_kind]) * count, 1)
                else:
                    for _ in range(count):
                        read_value(item_kind)
                return None
            if kind not in _SCALAR_FORMATS:
                raise ValueError(f"unknown metadata value type {kind}")
            return read(_SCALAR_FORMATS[kind])

        try:
            handle.seek(4)
            version = read("I")
            if version < 2:
                raise EdgeftError(f"{path}: GGUF version {version} is too old for llama.cpp; convert the model again")
            n_tensors, n_metadata = read("Q"), read("Q")
            alignment = 32
            for _ in range(n_metadata):
                key, kind = read_string(), read("I")
                value = read_value(kind)
                if key == b"general.alignment" and isinstance(value, int):
                    alignment = value
            tensors = []
            for _ in range(n_tensors):
                name = read_string()
                dims = [read("Q") for _ in range(read("I"))]
                ggml_type, offset = read("I"), read("Q")
                if ggml_type not in GGML_QUANT_SIZES:
                    raise ValueError(f"tensor {name.decode(errors='replace')}: unknown tensor type {ggml_type}")
                block, block_bytes = GGML_QUANT_SIZES[ggml_type]
                elements = 1
                for dim in dims:
                    elements *= dim
                tensors.append((name.decode("utf-8", errors="replace"), ggml_type,
                                offset + elements // block * block_bytes))
            data_start = -(-handle.tell() // alignment) * alignment
        except _Truncated:
            raise EdgeftError(f"{path}: truncated GGUF (the file ends inside its header); the download or copy "
                              "was cut short, fetch or convert it again") from None
        except (ValueError, struct.error, OverflowError) as exc:
            raise EdgeftError(f"{path}: corrupt GGUF header ({exc}); fetch or convert it again") from exc
    return data_start, tensors


def tensor_type_differences(model: str | os.PathLike, base: str | os.PathLike, *, limit: int = 20) -> dict:
    """Tensors stored in a different type in `model` than in `base` (by GGUF name). A fine-tune quantized like
    its base must have none; one that does explains a slower tg (e.g. an F32 ffn_down where the base has Q4_K)."""
    from gguf import GGMLQuantizationType

    def types(path):
        return {name: GGMLQuantizationType(kind).name for name, kind, _end in read_tensor_table(path)[1]}

    model_types, base_types = types(model), types(base)
    differing = [{"tensor": name, "model": kind, "baseline": base_types[name]}
                 for name, kind in model_types.items() if name in base_types and base_types[name] != kind]
    only_model = sorted(set(model_types) - set(base_types))
    return {"n_differing": len(differing), "differing": differing[:limit], "only_in_model": only_model[:limit],
            "n_only_in_model": len(only_model), "same": not differing and not only_model
            and set(base_types) <= set(model_types)}


def open_gguf(path: str | os.PathLike, *, n_ctx: int = 2048, logits_all: bool = False, threads: int | None = None,
              lora_path: str | os.PathLike | None = None, vocab_only: bool = False, **kwargs: Any):
    """Load a GGUF with llama-cpp-python after checking it; returns a `llama_cpp.Llama`.

    Example: `llm = open_gguf("model-Q4_K_M.gguf", n_ctx=4096)`.
    """
    path = check_gguf(path)
    if lora_path is not None:
        check_gguf(lora_path)
    try:
        import llama_cpp
    except ImportError as exc:
        raise EdgeftError("llama-cpp-python is not installed; `pip install llama-cpp-python` to evaluate GGUFs") from exc
    try:
        with _quiet():
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=min(512, n_ctx),
                n_ubatch=min(512, n_ctx),
                logits_all=logits_all,
                n_threads=threads,
                n_threads_batch=threads,
                lora_path=str(lora_path) if lora_path is not None else None,
                vocab_only=vocab_only,
                verbose=False,
                **kwargs,
            )
    except (ValueError, RuntimeError) as exc:
        what = f"{path} with adapter {lora_path}" if lora_path else str(path)
        raise EdgeftError(
            f"{what}: llama.cpp could not load it ({exc}); the architecture or a tensor type may be unsupported "
            "by this llama-cpp-python build, or the adapter does not match the model"
        ) from exc


def _quiet():
    """llama.cpp writes load-time warnings straight to the stderr file descriptor even with verbose=False (e.g. a
    vocab-only load reports a training context of 0); our own errors say what matters, so silence it here."""
    import contextlib

    try:
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:
        return contextlib.nullcontext()
    return suppress_stdout_stderr(disable=False)
