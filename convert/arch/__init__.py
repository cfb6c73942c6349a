"""Architectures, registered by Hugging Face class name (config.json's `architectures[0]`)."""

from __future__ import annotations

import os
from pathlib import Path

from convert.arch import gemma2, llama, mistral, phi3, qwen2, qwen3  # noqa: F401  (registration)
from convert.arch import gemma3, granite, olmo2, smollm3  # noqa: F401  (registration)
from convert.arch import lfm2, mixtral, qwen3moe  # noqa: F401  (registration, MoE and hybrid)
from convert.arch.base import REGISTRY, Architecture, read_config
from convert.common.errors import EdgeftError

__all__ = ["Architecture", "gguf_architecture", "load_architecture", "supported_architectures"]


def supported_architectures() -> list[str]:
    return sorted(REGISTRY)


def load_architecture(model_dir: str | os.PathLike) -> Architecture:
    """The Architecture for a local HF model folder, from its config.json."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    names = config.get("architectures") or []
    if not names:
        raise EdgeftError(f"{model_dir / 'config.json'}: no 'architectures' entry; cannot tell which model this is")
    cls = REGISTRY.get(names[0])
    if cls is None:
        raise EdgeftError(
            f"{model_dir / 'config.json'}: architecture {names[0]} is not supported; "
            f"supported: {', '.join(supported_architectures())}")
    return cls(config, model_dir)


def gguf_architecture(gguf_arch: str, source: str) -> type[Architecture]:
    """The class that writes GGUF arch `gguf_arch` (for `edgeft import`). Where several HF classes share one (Mistral
    runs as `llama`), the class that declares the arch itself is the one a GGUF comes back as."""
    for cls in REGISTRY.values():
        if cls.__dict__.get("gguf_arch") == gguf_arch:
            return cls
    known = sorted({cls.gguf_arch for cls in REGISTRY.values()})
    raise EdgeftError(f"{source}: GGUF architecture {gguf_arch!r} cannot be imported; supported: {', '.join(known)}")
