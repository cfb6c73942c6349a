"""Open a GGUF through llama-cpp-python, turning every way a file can be wrong into one clear line.

llama.cpp's own failure is a bare "Failed to load model from file" on stderr; a user deserves to know whether the
path is wrong, the file is not a GGUF at all, or a download/copy was cut short. So we check the container with
our header walk (convert.gguf_reader: memory-mapped, no tensor data read) before llama.cpp sees the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gguf import GGUFType, Keys

from convert.gguf_reader import GGUFFile
from convert.common.errors import EdgeftError
from runtime.eval_settings import SettingError


def check_gguf(path: str | os.PathLike, *, adapter: bool = False) -> Path:
    """Fail with one line if `path` is missing, not a GGUF, shorter than its own tensor table says, or a model where
    a LoRA adapter is expected (`adapter`) or the other way round."""
    path = Path(path)
    # The header walk (shared with the quantizer) names a missing, foreign, cut or damaged file in one line.
    with GGUFFile(path) as gguf_file:
        is_adapter = gguf_file.value(Keys.General.TYPE) == GGUFType.ADAPTER
    if is_adapter and not adapter:  # llama.cpp's own refusal blamed the build or the architecture
        raise EdgeftError(f"{path}: a LoRA adapter GGUF, not a model; load it over its base model "
                          "(edgeft eval BASE.gguf --adapter NAME=ADAPTER.gguf)")
    if adapter and not is_adapter:
        raise EdgeftError(f"{path}: a model GGUF, not a LoRA adapter; write the adapter with `edgeft convert-lora`")
    return path


def tensor_type_differences(model: str | os.PathLike, base: str | os.PathLike, *, limit: int = 20) -> dict:
    """Tensors stored in a different type in `model` than in `base` (by GGUF name). A fine-tune quantized like
    its base must have none; one that does explains a slower tg (e.g. an F32 ffn_down where the base has Q4_K)."""
    def types(path):
        with GGUFFile(path) as gguf_file:
            return {tensor.name: tensor.qtype.name for tensor in gguf_file.tensors}

    model_types, base_types = types(model), types(base)
    differing = [{"tensor": name, "model": kind, "baseline": base_types[name]}
                 for name, kind in model_types.items() if name in base_types and base_types[name] != kind]
    only_model = sorted(set(model_types) - set(base_types))
    return {"n_differing": len(differing), "differing": differing[:limit], "only_in_model": only_model[:limit],
            "n_only_in_model": len(only_model), "same": not differing and not only_model
            and set(base_types) <= set(model_types)}


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def kv_cache_bytes(path: str | os.PathLike, n_ctx: int) -> int:
    """What llama.cpp allocates for an F16 KV cache of n_ctx tokens: n_ctx x layers x (K + V width) x 2 bytes."""
    with GGUFFile(path) as gguf_file:
        layers = int(gguf_file.hparam(Keys.LLM.BLOCK_COUNT, 0) or 0)
        width = int(gguf_file.hparam(Keys.LLM.EMBEDDING_LENGTH, 0) or 0)
        heads = int(gguf_file.hparam(Keys.Attention.HEAD_COUNT, 0) or 0)
        kv_heads = int(gguf_file.hparam(Keys.Attention.HEAD_COUNT_KV, heads) or heads)
        head_dim = width // heads if heads else 0
        key = int(gguf_file.hparam(Keys.Attention.KEY_LENGTH, head_dim) or head_dim)
        value = int(gguf_file.hparam(Keys.Attention.VALUE_LENGTH, head_dim) or head_dim)
    return n_ctx * layers * kv_heads * (key + value) * 2


def check_context(path: str | os.PathLike, n_ctx: int) -> None:
    """A context llama.cpp cannot allocate is one line now, not the machine swapping until the OOM killer ends
    the process without a word (a context of a few million tokens does that)."""
    path = Path(path)  # llama_cpp.Llama keeps model_path as the str it was given
    if n_ctx < 1:
        raise SettingError(f"<n_ctx> {n_ctx}: must be at least 1", "n_ctx")
    needed, available = kv_cache_bytes(path, n_ctx), _available_memory()
    if available is not None and needed > available:
        raise SettingError(f"<n_ctx> {n_ctx}: {path.name}'s KV cache for that context needs {needed / 2**30:.1f} "
                           f"GiB, more than the {available / 2**30:.1f} GiB of memory available; lower <n_ctx>",
                           "n_ctx")


def open_gguf(path: str | os.PathLike, *, n_ctx: int = 2048, logits_all: bool = False, threads: int | None = None,
              lora_path: str | os.PathLike | None = None, vocab_only: bool = False, **kwargs: Any):
    """Load a GGUF with llama-cpp-python after checking it; returns a `llama_cpp.Llama`.

    Example: `llm = open_gguf("model-Q4_K_M.gguf", n_ctx=4096)`.
    """
    path = check_gguf(path)
    if lora_path is not None:
        check_gguf(lora_path, adapter=True)
    try:
        import llama_cpp
    except ImportError as exc:
        raise EdgeftError("llama-cpp-python is not installed; `pip install llama-cpp-python` to evaluate GGUFs") from exc
    if not vocab_only:
        check_context(path, n_ctx)
        from runtime.native_probe import ensure_decodes

        ensure_decodes(path)  # a kernel that faults on this CPU becomes one line, not a dead process
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
        if "llama_context" in str(exc):  # the model loaded; the context of n_ctx tokens could not be made
            raise EdgeftError(f"{what}: llama.cpp could not create a context of {n_ctx} tokens (not enough memory "
                              "for its KV cache?); lower --ctx") from exc
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
