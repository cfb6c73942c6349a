"""What every architecture shares: reading config.json, the registry by HF class name, the tensor-name lookups.

An architecture module only declares data (its GGUF arch name and its tensor table, see tensors.py) and overrides
small hooks: `write_hparams` for its hyper-parameters, `transform_tensor` for per-tensor rewrites. Nothing
arch-specific lives here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from convert.arch.rewrites import Rewrite
from convert.arch.tensors import LLAMA_FAMILY, TensorTable, gguf_names
from convert.common.jsonl import check_input_file
from convert.common.errors import EdgeftError

REGISTRY: dict[str, type["Architecture"]] = {}

# Tensors some checkpoints carry that llama.cpp recomputes itself.
IGNORED_TENSORS = re.compile(r"(^|\.)rotary_emb\.inv_freq$|(^|\.)masked_bias$|(^|\.)attn\.bias$")

_BLOCK = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class Source:
    """Where a GGUF tensor's data comes from, for the tables' two many-to-one / one-to-many forms:

    - a table key with `{xid}` (e.g. `...experts.{xid}.gate_proj.weight`): every HF tensor of that form is one
      slice of a GGUF tensor stacked along a new leading axis, at position `stack` (per-expert MoE checkpoints);
    - a table value that is a tuple of tensors: the HF tensor is cut into that many equal pieces along its
      second-to-last axis and piece `part` goes to the `part`-th name (fused `gate_up_proj` -> gate and up).
    """

    hf_name: str
    stack: int | None = None
    part: int = 0
    parts: int = 1


def register(*hf_class_names: str) -> Callable[[type["Architecture"]], type["Architecture"]]:
    def wrap(cls: type["Architecture"]) -> type["Architecture"]:
        for name in hf_class_names:
            REGISTRY[name] = cls
        return cls
    return wrap


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise EdgeftError(f"{model_dir}: not a folder; pass a local Hugging Face model folder")
    if not path.exists():
        raise EdgeftError(f"{model_dir}: config.json is missing; this does not look like a Hugging Face model folder")
    check_input_file(path, "a model's config.json is a JSON file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeftError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); fix or re-download config.json") from exc


class Architecture:
    """One HF decoder family. Subclasses set `gguf_arch` and `tensors`, and override hooks where needed."""

    gguf_arch: str = ""
    tensors: TensorTable = LLAMA_FAMILY
    # rows of convert.config_shapes.EXPECTED_SHAPES this arch's loader in llama.cpp sizes otherwise
    expected_shapes: dict = {}
    tensor_map: dict[str, str | tuple[str, ...]] = gguf_names(LLAMA_FAMILY)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # `tensors` with GGUF names, once per class: what the lookups of both directions (convert, import) read.
        cls.tensor_map = gguf_names(cls.tensors)

    def __init__(self, config: dict[str, Any], model_dir: Path):
        self.config = config
        self.model_dir = model_dir
        # transformers 5 folds rope settings into `rope_parameters`; older configs have rope_theta/rope_scaling.
        self.rope = dict(config.get("rope_scaling") or {})
        self.rope.update(config.get("rope_parameters") or {})

    # ---- hyper-parameters -----------------------------------------------------------------------------------
    def get(self, *keys: str, default: Any = None) -> Any:
        for key in keys:
            if key in self.config and self.config[key] is not None:
                return self.config[key]
        if default is not None:
            return default
        raise EdgeftError(f"{self.model_dir / 'config.json'}: missing {' or '.join(keys)}; the config is incomplete")

    @property
    def n_layer(self) -> int:
        return int(self.get("num_hidden_layers", "n_layer"))

    @property
    def n_head(self) -> int:
        return int(self.get("num_attention_heads"))

    @property
    def n_head_kv(self) -> int:
        return int(self.get("num_key_value_heads", default=self.n_head))

    @property
    def n_expert(self) -> int:
        """Routed experts per MoE layer; 0 for a dense model (the quantizer's rules depend on it)."""
        return int(self.config.get("num_local_experts") or self.config.get("num_experts") or 0)

    @property
    def n_embd(self) -> int:
        return int(self.get("hidden_size"))

    @property
    def head_dim(self) -> int:
        return int(self.get("head_dim", default=self.n_embd // self.n_head))

    @property
    def rotary_dims(self) -> int:
        """How many dims of each head rotary embedding applies to (all of them unless partial_rotary_factor < 1)."""
        fraction = float(self.rope.get("partial_rotary_factor", self.config.get("partial_rotary_factor") or 1.0))
        return int(fraction * self.head_dim)

    @property
    def rope_theta(self) -> float:
        return float(self.rope.get("rope_theta", self.get("rope_theta", default=10000.0)))

    @property
    def rope_type(self) -> str:
        """transformers' rope scaling kind (`rope_type`, `type` in older configs); "default" for none."""
        return self.rope.get("rope_type", self.rope.get("type", "default")) or "default"

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def write_hparams(self, writer) -> None:
        """Keys every llama-family arch in llama.cpp reads; subclasses add their own after calling this."""
        writer.add_context_length(int(self.get("max_position_embeddings")))
        writer.add_embedding_length(self.n_embd)
        writer.add_block_count(self.n_layer)
        writer.add_feed_forward_length(int(self.get("intermediate_size")))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_layer_norm_rms_eps(float(self.get("rms_norm_eps")))
        writer.add_rope_freq_base(self.rope_theta)
        writer.add_key_length(self.head_dim)
        writer.add_value_length(self.head_dim)
        writer.add_rope_dimension_count(self.rotary_dims)
        self.write_rope_scaling(writer)

    def write_rope_scaling(self, writer) -> None:
        import gguf

        kind = self.rope_type
        if kind == "default":
            return
        factor = float(self.rope.get("factor", 1.0))
        if kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(factor)
        elif kind == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(factor)
            writer.add_rope_scaling_orig_ctx_len(int(self.rope["original_max_position_embeddings"]))
        elif kind == "llama3" and self.supports_llama3_rope:
            pass  # expressed as the generated rope_freqs tensor, see llama.py
        else:
            raise EdgeftError(
                f"{self.model_dir / 'config.json'}: rope scaling type {kind!r} is not supported for "
                f"{type(self).__name__}; supported: linear, yarn{', llama3' if self.supports_llama3_rope else ''}")

    supports_llama3_rope = False

    # ---- tensors --------------------------------------------------------------------------------------------
    def gguf_tensor_name(self, hf_name: str) -> str | None:
        """GGUF name for an HF tensor; None when the tensor is not written (e.g. a tied lm_head)."""
        targets = self.tensor_sources(hf_name)
        if not targets:
            return None
        if len(targets) > 1:
            raise EdgeftError(f"tensor {hf_name}: is split into {', '.join(name for name, _ in targets)}, so it has "
                              "no single GGUF tensor")
        return targets[0][0]

    def tensor_sources(self, hf_name: str) -> list[tuple[str, Source]]:
        """(GGUF name, Source) for every GGUF tensor this HF tensor fills; [] when it is not written."""
        if hf_name == "lm_head.weight" and self.tied_embeddings:
            return []
        if IGNORED_TENSORS.search(hf_name):
            return []
        numbers = _BLOCK.findall(hf_name)
        key = _BLOCK.sub(".{bid}.", hf_name, count=1) if numbers else hf_name
        stack = None
        if key not in self.tensor_map and len(numbers) > 1:  # the second index of `layers.N.experts.M.`
            key, stack = _BLOCK.sub(".{xid}.", key, count=1), int(numbers[1])
        template = self.tensor_map.get(key)
        if template is None:
            raise EdgeftError(
                f"tensor {hf_name}: not expected in a {type(self).__name__} checkpoint; "
                "is config.json's architecture right for these weights?")
        fields = {"bid": numbers[0]} if numbers else {}
        if isinstance(template, tuple):
            return [(name.format(**fields), Source(hf_name, stack, part, len(template)))
                    for part, name in enumerate(template)]
        return [(template.format(**fields), Source(hf_name, stack))]

    def checkpoint_name(self, name: str, names) -> str:
        """The tensor among `names` (a checkpoint's) that `name` stands for: itself, or the one filling the same GGUF
        tensor. peft adapters carry transformers 5's in-memory module names, and a few differ from what
        save_pretrained writes (Mixtral's `block_sparse_moe.gate` is `mlp.gate` in memory)."""
        if name in names:
            return name
        try:
            target = self.tensor_sources(name)
        except EdgeftError:
            return name
        if not target:  # not written to GGUF (a tied lm_head): nothing to match it by
            return name
        for candidate in names:
            try:
                if self.tensor_sources(candidate) and self.tensor_sources(candidate)[0][0] == target[0][0]:
                    return candidate
            except EdgeftError:
                continue
        return name

    def rewrite(self, hf_name: str) -> Rewrite | None:
        """The invertible rewrite of this tensor into llama.cpp's layout (convert.arch.rewrites). Default: none."""
        return None

    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the tensor transform_tensor returns for an HF tensor of `shape`."""
        rewrite = self.rewrite(hf_name)
        return rewrite.gguf_shape(shape) if rewrite else shape

    def transform_tensor(self, hf_name: str, array: np.ndarray) -> np.ndarray:
        """Per-tensor rewrite into llama.cpp's layout."""
        rewrite = self.rewrite(hf_name)
        return rewrite.to_gguf(array) if rewrite else array

    def transform_is_rowwise(self, hf_name: str) -> bool:
        """True when transform_tensor can be applied to row chunks independently (lets us stream big tensors)."""
        rewrite = self.rewrite(hf_name)
        return rewrite is None or rewrite.rowwise

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Tensors llama.cpp needs that the checkpoint does not hold (e.g. rope frequency factors)."""
        return iter(())

    # ---- the way back: GGUF -> HF (`edgeft import`); each hook is the inverse of the one above ------------------
    # `meta` is convert.importer.metadata.GGUFMetadata: meta.get(gguf.Keys...), meta.has_tensor(name).
    model_type: str = ""  # config.json's model_type
    hidden_act: str = "silu"

    @classmethod
    def hf_architecture(cls) -> str:
        """config.json's `architectures[0]`: the HF class name this class is registered under."""
        return next(name for name, registered in REGISTRY.items() if registered is cls)

    @classmethod
    def config_from_gguf(cls, meta) -> dict[str, Any]:
        """config.json for a GGUF of this arch: the inverse of write_hparams (subclasses add their own keys)."""
        from gguf import Keys

        if int(meta.get(Keys.LLM.EXPERT_COUNT, 0) or 0) > 0 and not any("{xid}" in hf for hf in cls.tensor_map):
            # unstacking ffn_*_exps back into per-expert tensors is not written yet
            raise EdgeftError(f"{meta.path}: a mixture-of-experts GGUF ({meta.get(Keys.LLM.EXPERT_COUNT)} experts) "
                              "cannot be imported yet; convert from the Hugging Face checkpoint instead")
        n_head = int(meta.get(Keys.Attention.HEAD_COUNT))
        n_embd = int(meta.get(Keys.LLM.EMBEDDING_LENGTH))
        head_dim = int(meta.get(Keys.Attention.KEY_LENGTH, n_embd // n_head))
        config: dict[str, Any] = {
            "architectures": [cls.hf_architecture()],
            "model_type": cls.model_type,
            "vocab_size": meta.tensor_shape("token_embd.weight")[0],
            "hidden_size": n_embd,
            "intermediate_size": int(meta.get(Keys.LLM.FEED_FORWARD_LENGTH)),
            "num_hidden_layers": int(meta.get(Keys.LLM.BLOCK_COUNT)),
            "num_attention_heads": n_head,
            "num_key_value_heads": int(meta.get(Keys.Attention.HEAD_COUNT_KV, n_head)),
            "head_dim": head_dim,
            "max_position_embeddings": int(meta.get(Keys.LLM.CONTEXT_LENGTH)),
            "rms_norm_eps": float(meta.get(Keys.Attention.LAYERNORM_RMS_EPS)),
            "hidden_act": cls.hidden_act,
            "tie_word_embeddings": not meta.has_tensor("output.weight"),
            "rope_parameters": {"rope_type": "default", "rope_theta": float(meta.get(Keys.Rope.FREQ_BASE, 10000.0))},
        }
        rotary = int(meta.get(Keys.Rope.DIMENSION_COUNT, head_dim))
        if rotary != head_dim:
            config["partial_rotary_factor"] = rotary / head_dim
        config["rope_parameters"].update(cls.rope_scaling_from_gguf(meta))
        return config

    @classmethod
    def rope_scaling_from_gguf(cls, meta) -> dict[str, Any]:
        """The inverse of write_rope_scaling (llama3 scaling comes back from its tensor, see read_extra_tensors)."""
        from gguf import Keys

        kind = meta.get(Keys.Rope.SCALING_TYPE, "none")
        if kind == "none":
            return {}
        factor = float(meta.get(Keys.Rope.SCALING_FACTOR, 1.0))
        if kind == "linear":
            return {"rope_type": "linear", "factor": factor}
        if kind == "yarn":
            return {"rope_type": "yarn", "factor": factor,
                    "original_max_position_embeddings": int(meta.get(Keys.Rope.SCALING_ORIG_CTX_LEN))}
        raise EdgeftError(f"{meta.path}: rope scaling {kind!r} cannot be imported as {cls.hf_architecture()}; "
                          "supported: linear, yarn")

    def hf_tensor_name(self, gguf_name: str) -> str | None:
        """HF name for a GGUF tensor: the tensor map read backwards. None for a tensor that becomes config
        (extra_tensors' output, e.g. rope_freqs); EdgeftError for one we do not know."""
        match = _BLOCK.search(gguf_name)
        key = _BLOCK.sub(".{bid}.", gguf_name, count=1) if match else gguf_name
        # Where several HF names fill one GGUF tensor (two checkpoint layouts), the first listed is the way back.
        inverse: dict[str, str] = {}
        for hf, gguf in self.tensor_map.items():
            if isinstance(gguf, str) and "{xid}" not in hf:
                inverse.setdefault(gguf, hf)
        template = inverse.get(key)
        if template is None:
            if key in self.extra_tensor_names:
                return None
            raise EdgeftError(f"tensor {gguf_name}: not part of a {self.hf_architecture()} model as edgeft converts "
                              "it; this GGUF cannot be imported")
        return template.format(bid=match.group(1)) if match else template

    extra_tensor_names: tuple[str, ...] = ()

    def hf_tensors(self, gguf_name: str, shape: tuple[int, ...]) -> list[tuple[str, int | None]]:
        """(HF name, slice index or None) for a GGUF tensor; [] for one that becomes config. A stacked tensor (a
        `{xid}` row of the table) comes back as the per-expert tensors save_pretrained writes, slice i each."""
        match = _BLOCK.search(gguf_name)
        key = _BLOCK.sub(".{bid}.", gguf_name, count=1) if match else gguf_name
        stacked = {gguf: hf for hf, gguf in self.tensor_map.items() if isinstance(gguf, str) and "{xid}" in hf}
        if key in stacked:
            fields = {"bid": match.group(1)} if match else {}
            return [(stacked[key].format(xid=index, **fields), index) for index in range(shape[0])]
        name = self.hf_tensor_name(gguf_name)
        return [] if name is None else [(name, None)]

    # GGUF keys whose presence (a count above 0) makes a GGUF of this arch another HF class: (key, HF class name).
    import_variants: tuple[tuple[str, str], ...] = ()

    @classmethod
    def import_class(cls, meta) -> type["Architecture"]:
        """The class a GGUF of this arch comes back as: the first of `import_variants` it has, else this one."""
        for key, hf_class in cls.import_variants:
            if int(meta.get(key, 0) or 0) > 0:
                return REGISTRY[hf_class]
        return cls

    def hf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The inverse of gguf_shape: the HF tensor's shape for a GGUF tensor of `shape`."""
        rewrite = self.rewrite(hf_name)
        return rewrite.hf_shape(shape) if rewrite else shape

    def untransform_tensor(self, hf_name: str, array: np.ndarray) -> np.ndarray:
        """The inverse of transform_tensor: llama.cpp's layout back to the HF checkpoint's."""
        rewrite = self.rewrite(hf_name)
        return rewrite.to_hf(array) if rewrite else array

    def read_extra_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        """The inverse of extra_tensors: fold generated tensors back into self.config."""
        if tensors:
            raise EdgeftError(f"tensors {sorted(tensors)}: {type(self).__name__} does not generate these")
