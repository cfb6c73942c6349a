"""Read a peft LoRA adapter folder into plain numpy pieces, keyed by the base model's tensor names.

Shared by `edgeft.merge` (which adds the pieces into the base weights) and `convert.lora` (which writes them as a
llama.cpp adapter GGUF), so it lives below both and imports no torch. What peft saves (checked against peft 0.21):

    base_model.model.<module>.lora_A.weight        (r, in)        linear
    base_model.model.<module>.lora_B.weight        (out, r)
    base_model.model.<module>.lora_B.bias          (out,)         only with lora_bias=True
    base_model.model.<module>.lora_magnitude_vector (out,)         DoRA
    base_model.model.<module>.lora_embedding_A     (r, vocab)     embedding
    base_model.model.<module>.lora_embedding_B     (hidden, r)
    base_model.model.<module>.weight               full tensor    modules_to_save
    base_model.model.<module>.base_layer.weight    full tensor    embedding saved because it was resized/targeted
    base_model.model.<module>.modules_to_save.weight  (+ .original_module.weight, the untouched copy: ignored)
                                                   what peft writes for modules_to_save of a resized embedding
    base_model.model.<module>.token_adapter.trainable_tokens_delta (n, hidden)  trainable_token_indices (new rows)
    base_model.model.<module>.token_adapter.base_layer.weight      full tensor  the resized embedding they sit in
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.safetensors_file import SafetensorsFile
from convert.common.jsonl import check_input_file
from convert.common.errors import EdgeftError

PEFT_PREFIX = "base_model.model."

# LoRA variants whose result cannot be written as W0 + s*B*A (+ DoRA rescale); refuse them rather than merge wrong.
UNSUPPORTED_OPTIONS: dict[str, str] = {
    "alora_invocation_tokens": "activated LoRA only switches on after its invocation tokens, so it cannot be merged",
    "layer_replication": "layer replication changes the layer count",
    "use_qalora": "QA-LoRA pools its input groups",
    "use_bdlora": "BD-LoRA shares blocks across layers",
}
# suffix of a saved key -> (role, kind); kind tells merge how to form the delta.
KEY_SUFFIXES: tuple[tuple[str, str, str], ...] = (
    (".lora_A.weight", "A", "linear"),
    (".lora_B.weight", "B", "linear"),
    (".lora_B.bias", "bias", "linear"),
    (".lora_magnitude_vector", "magnitude", "linear"),
    (".lora_embedding_A", "A", "embedding"),
    (".lora_embedding_B", "B", "embedding"),
    (".token_adapter.trainable_tokens_delta", "token_rows", ""),
    (".token_adapter.base_layer.weight", "full", ""),
    (".base_layer.weight", "full", ""),
    (".modules_to_save.weight", "full", ""),
    (".modules_to_save.bias", "full_bias", ""),
    (".original_module.weight", "ignore", ""),
    (".original_module.bias", "ignore", ""),
    (".weight", "full", ""),
    (".bias", "full_bias", ""),
)


@dataclass
class LoraPair:
    """One adapted module. `delta()` is what gets added to the base weight (rows = output features)."""

    module: str  # HF module path, e.g. model.layers.0.self_attn.q_proj
    kind: str  # "linear" or "embedding"
    A: np.ndarray  # linear: (r, in); embedding: (r, vocab)
    B: np.ndarray  # linear: (out, r); embedding: (hidden, r)
    scale: float
    magnitude: np.ndarray | None = None  # DoRA: per-output-row norm target
    bias: np.ndarray | None = None  # lora_bias: added to the base bias times scale
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def weight_name(self) -> str:
        return f"{self.module}.weight"

    def delta_shape(self) -> tuple[int, int]:
        if self.kind == "embedding":
            return int(self.A.shape[1]), int(self.B.shape[0])
        rows, cols = int(self.B.shape[0]), int(self.A.shape[1])
        return (cols, rows) if self.fan_in_fan_out else (rows, cols)

    def delta_rows(self, start: int, stop: int) -> np.ndarray:
        """scale * (B @ A) restricted to weight rows [start, stop), as float32, in the base weight's layout."""
        if self.kind == "embedding":  # embedding weight is (vocab, hidden) = (B @ A).T
            return self.scale * (self.A[:, start:stop].T @ self.B.T)
        if self.fan_in_fan_out:  # Conv1D-style weights are stored (in, out)
            return self.scale * (self.A[:, start:stop].T @ self.B.T)
        return self.scale * (self.B[start:stop] @ self.A)


@dataclass
class Adapter:
    path: Path
    config: dict
    pairs: dict[str, LoraPair] = field(default_factory=dict)  # base weight name -> pair
    full: dict[str, np.ndarray] = field(default_factory=dict)  # base tensor name -> replacement tensor
    token_rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # weight -> (indices, rows)

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def rename_pairs(self, rename) -> None:
        """Re-key the pairs by `rename(weight name)`: the adapter's module names -> the base checkpoint's."""
        self.pairs = {rename(name): pair for name, pair in self.pairs.items()}

    def tensor_names(self) -> set[str]:
        """Every base tensor this adapter changes."""
        names = set(self.pairs) | set(self.full) | set(self.token_rows)
        names |= {f"{pair.module}.bias" for pair in self.pairs.values() if pair.bias is not None}
        return names


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank_pattern/alpha_pattern rule: a key matches when it is a dotted suffix (regex) of the module path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_scale(config: dict, module: str, rank: int) -> float:
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8)))
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank


# The adapter_config.json settings this reader computes with: the JSON types peft writes for them (null: unset) and,
# for numbers, the values that mean something. r 0, a negative r or a lora_alpha <= 0 / NaN converted: the rank is
# taken from the tensors and a negative alpha only flips the delta's sign.
CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "r": (int,),
    "lora_alpha": (int, float),
    "alpha_pattern": (dict,),
    "rank_pattern": (dict,),
    "use_rslora": (bool,),
    "use_dora": (bool,),
    "target_parameters": (list,),
    "trainable_token_indices": (list, dict),
    "base_model_name_or_path": (str,),
}
CONFIG_RANGES: dict[str, tuple[object, str]] = {  # setting -> (holds(value), what it must be)
    "r": (lambda value: value >= 1, "a rank of 1 or more"),
    "lora_alpha": (lambda value: math.isfinite(value) and value > 0, "a finite number above 0"),
}
# Each value of a per-module pattern is the setting it overrides, and follows that setting's rules.
PATTERN_OF = {"alpha_pattern": "lora_alpha", "rank_pattern": "r"}
CONFIG_TYPE_NAMES = {int: "an integer", float: "a number", dict: "an object", bool: "true/false", list: "a list",
                     str: "a string"}


def _config_value_problem(key: str, value) -> str | None:
    """What is wrong with one adapter_config.json value under CONFIG_TYPES / CONFIG_RANGES (None: nothing)."""
    types = CONFIG_TYPES[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        return " or ".join(CONFIG_TYPE_NAMES[t] for t in types)
    holds, wanted = CONFIG_RANGES.get(key, (None, ""))
    return None if holds is None or holds(value) else wanted


def _refuse_bad_config_values(config: dict, config_path: Path) -> None:
    checks = [(key, key, config.get(key)) for key in CONFIG_TYPES]
    for pattern, setting in PATTERN_OF.items():
        if isinstance(config.get(pattern), dict):
            checks += [(f"{pattern}[{json.dumps(module)}]", setting, value)
                       for module, value in config[pattern].items()]
            for module in config[pattern]:  # peft matches the keys as regular expressions (_pattern_value)
                try:
                    re.compile(module)
                except re.error as exc:
                    raise EdgeftError(f"{config_path}: {pattern} key {json.dumps(module)[:60]} is not a regular "
                                      f"expression ({exc}); re-save the adapter with peft") from None
    for shown, key, value in checks:
        wanted = None if value is None and shown == key else _config_value_problem(key, value)
        if wanted:
            raise EdgeftError(f"{config_path}: {shown} is {json.dumps(value)[:60]}, not {wanted}; "
                              "re-save the adapter with peft")


def read_adapter_config(adapter_dir: Path) -> dict:
    config_path = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir():
        raise EdgeftError(f"{adapter_dir}: adapter folder not found; pass the folder `edgeft train` wrote (…/adapter)")
    if not config_path.exists():
        raise EdgeftError(f"{adapter_dir}: no adapter_config.json; pass a peft adapter folder "
                          "(the one holding adapter_config.json and adapter_model.safetensors)")
    check_input_file(config_path, "re-save the adapter with peft")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise EdgeftError(f"{config_path}: invalid JSON ({exc}); re-save the adapter with peft") from exc
    if not isinstance(config, dict):
        raise EdgeftError(f"{config_path}: is a JSON {type(config).__name__}, not an object of peft settings; "
                          "re-save the adapter with peft")
    _refuse_bad_config_values(config, config_path)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise EdgeftError(f"{config_path}: adapter type {peft_type or 'unknown'!r} is not supported; "
                          "edgeft handles LoRA adapters (plain, rsLoRA, DoRA)")
    for option, why in UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            raise EdgeftError(f"{config_path}: {option} is set; {why}; train a plain LoRA/rsLoRA/DoRA adapter")
    experts = expert_parameters(config.get("target_parameters"))
    if experts:
        raise EdgeftError(f"{config_path}: target_parameters {experts} puts LoRA on stacked MoE experts (3-D tensors), "
                          "which edgeft cannot merge or export yet; train attention and the router only "
                          "(target_modules [q_proj, k_proj, v_proj, o_proj, gate])")
    return config


def expert_parameters(target_parameters) -> list[str]:
    """The entries of peft's `target_parameters` that are not a module's 2-D `weight` (a MoE router's `gate.weight`
    is saved as an ordinary lora_A/lora_B pair; `gate_up_proj` / `down_proj` are the stacked experts)."""
    return sorted(name for name in (target_parameters or []) if not str(name).endswith("weight"))


def _token_indices(config: dict, module: str) -> list[int]:
    spec = config.get("trainable_token_indices")
    if isinstance(spec, dict):
        # A tied lm_head gets rows saved under its own name with the embedding's indices (peft ties the two).
        spec = _pattern_value(spec, module, next(iter(spec.values())) if len(spec) == 1 else None)
    if not spec:
        raise EdgeftError(f"adapter_config.json: trainable token rows saved for {module} but no "
                          "trainable_token_indices for it; re-save the adapter with peft")
    return list(spec)


def _refuse_rank_mismatch(config: dict, module: str, rank: int, weights_path: Path) -> None:
    """The tensors' rank is what gets converted; a config r (or its rank_pattern entry) that says otherwise means
    the config and the weights are not one adapter's."""
    rank_pattern = config.get("rank_pattern") or {}
    configured = _pattern_value(rank_pattern, module, config.get("r"))
    if configured is not None and configured != rank:
        said = "its rank_pattern entry" if _pattern_value(rank_pattern, module, None) is not None else "r"
        raise EdgeftError(f"{weights_path}: {module} has rank {rank} (lora_A rows) but adapter_config.json gives "
                          f"{said} {configured}; the config and the weights are not the same adapter's, re-save "
                          "the adapter with peft")


def load_adapter(adapter_dir: str | Path) -> Adapter:
    """Parse adapter_config.json + adapter_model.safetensors (float32 numpy, keyed by base tensor names)."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.exists():
        if (adapter_dir / "adapter_model.bin").exists():
            raise EdgeftError(f"{adapter_dir}: adapter_model.bin is a pickle; re-save the adapter with "
                              "save_pretrained(safe_serialization=True)")
        raise EdgeftError(f"{adapter_dir}: no adapter_model.safetensors; the adapter folder is incomplete")
    weights = SafetensorsFile(weights_path)
    adapter = Adapter(path=adapter_dir, config=config)
    parts: dict[str, dict[str, object]] = {}
    for key in weights.names():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for suffix, role, kind in KEY_SUFFIXES:
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                break
        else:
            raise EdgeftError(f"{weights_path}: unexpected tensor {key}; this is not a LoRA adapter edgeft can read")
        if role == "ignore":
            continue
        array = weights.read(key)
        if role == "full":
            adapter.full[f"{module}.weight"] = array
        elif role == "full_bias":
            adapter.full[f"{module}.bias"] = array
        elif role == "token_rows":
            indices = np.asarray(_token_indices(config, module), dtype=np.int64)
            if indices.shape[0] != array.shape[0]:
                raise EdgeftError(f"{weights_path}: {key} has {array.shape[0]} rows but adapter_config.json lists "
                                  f"{indices.shape[0]} trainable token indices; re-save the adapter with peft")
            adapter.token_rows[f"{module}.weight"] = (indices, array)
        else:
            entry = parts.setdefault(module, {"kind": kind})
            entry[role] = array
    for module, entry in parts.items():
        if "A" not in entry or "B" not in entry:
            raise EdgeftError(f"{weights_path}: {module} has only one of lora_A/lora_B; the adapter file is incomplete")
        rank = int(entry["A"].shape[0])
        _refuse_rank_mismatch(config, module, rank, weights_path)
        pair = LoraPair(module=module, kind=str(entry["kind"]), A=entry["A"], B=entry["B"],
                        scale=lora_scale(config, module, rank), magnitude=entry.get("magnitude"),
                        bias=entry.get("bias"), fan_in_fan_out=bool(config.get("fan_in_fan_out")))
        if pair.magnitude is not None and (pair.kind != "linear" or pair.fan_in_fan_out):
            raise EdgeftError(f"{weights_path}: DoRA on {module} (an embedding or a Conv1D-style layer) is not supported; "
                              "train DoRA on linear layers")
        adapter.pairs[pair.weight_name] = pair
    if not adapter.pairs and not adapter.full and not adapter.token_rows:
        raise EdgeftError(f"{weights_path}: the adapter holds no tensors; train it again")
    return adapter
