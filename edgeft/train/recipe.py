"""Training recipes: one flat table of settings, resolved CLI > YAML > defaults and saved next to every adapter.

The table below is the whole vocabulary of a recipe; a YAML key that is not in it is an error (a typo such as
`learning_rate:` must not silently train with the default). No torch here: `edgeft --help` and `edgeft train -h`
stay instant.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from edgeft.errors import EdgeftError
from edgeft.fsutil import atomic_file

METHODS = ("qlora", "lora")
SELECT = ("loss", "metric")


@dataclasses.dataclass
class Recipe:
    # --- what is trained
    method: str = "qlora"  # qlora: base frozen in 4-bit NF4 (double quant); lora: base kept in 16/32-bit
    r: int = 16
    alpha: float | None = None  # None -> 2 * r
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names (q_proj, v_proj, ...)
    rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r
    dora: bool = False  # weight-decomposed LoRA
    # --- schedule
    lr: float | None = None  # None (or `auto`): by the base's size, edgeft/train/size.py
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    epochs: float = 2
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    effective_batch: int | None = None  # sequences per optimizer step, over all processes (gradient accumulation);
    # None: by the base's size (edgeft/train/size.py)
    micro_batch: int = 4  # sequences per forward pass
    max_len: int = 2048
    max_grad_norm: float | None = 1.0
    seed: int = 0
    gradient_checkpointing: bool | None = None  # None -> on for qlora, off for lora
    group_by_length: bool = True  # batch similar lengths together: less padding, same examples per epoch
    # --- evaluation, checkpoints, early stop
    eval_every: int = 50  # optimizer steps between held-out evals (needs --eval)
    early_stop: int | None = 3  # stop after this many evals in a row without a new best eval loss; None: never
    keep: str = "best"  # which weights become the adapter when an eval set is given: best | last
    save_every: int = 50  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2  # most recent resumable checkpoints kept on disk
    log_every: int = 1
    # --- selection by the task's score (edgeft/train/select.py)
    validation: Any = None  # a fraction of the training data (0.1) or a JSONL file: scores checkpoints, never trains
    select: str = "loss"  # which checkpoint becomes the adapter: loss (held-out loss) | metric (validation score)
    metric: str | None = None  # what select: metric scores with (runtime.metrics: exact, json-match, sql-exec:DB...)
    # --- chat template: path to a .jinja file; None -> the base's own template, or ChatML when it has none
    chat_template: str | None = None

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r

    @property
    def use_gradient_checkpointing(self) -> bool:
        if self.gradient_checkpointing is None:
            return self.method == "qlora"
        return bool(self.gradient_checkpointing)

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches per process per optimizer step so that micro_batch * accum * world ~= effective_batch."""
        return max(1, math.ceil(self.effective_batch / (self.micro_batch * world_size)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
# Settings a resumed run may change (how long, how often to eval/save/log): the others change what the saved
# optimizer state and batch plan mean, so `train --resume` refuses a change to them.
RESUME_MAY_CHANGE = frozenset({"epochs", "max_steps", "eval_every", "early_stop", "keep", "save_every",
                               "keep_checkpoints", "log_every", "gradient_checkpointing"})


def _check(recipe: Recipe, source: str) -> Recipe:
    def bad(key: str, why: str) -> EdgeftError:
        return EdgeftError(f"{source}: {key}={getattr(recipe, key)!r} {why}")

    if recipe.method not in METHODS:
        raise bad("method", f"is not one of {', '.join(METHODS)}")
    if isinstance(recipe.lr, str):  # YAML reads 1e-3 (no dot) as text
        recipe.lr = None if recipe.lr.strip().lower() == "auto" else _number(recipe.lr)
    for key in ("r", "micro_batch", "max_len", "eval_every", "save_every", "log_every",
                "keep_checkpoints"):
        if not isinstance(getattr(recipe, key), int) or getattr(recipe, key) < 1:
            raise bad(key, "must be a positive integer")
    if recipe.max_steps is not None and (not isinstance(recipe.max_steps, int) or recipe.max_steps < 1):
        raise bad("max_steps", "must be a positive integer")
    if not 0 <= recipe.dropout < 1:
        raise bad("dropout", "must be in [0, 1)")
    if not 0 <= recipe.warmup_ratio < 1:
        raise bad("warmup_ratio", "must be in [0, 1)")
    if recipe.effective_batch is not None and (not isinstance(recipe.effective_batch, int) or recipe.effective_batch < 1):
        raise bad("effective_batch", "must be a positive integer (or leave it out: by the base's size)")
    if recipe.lr is not None and (not isinstance(recipe.lr, (int, float)) or isinstance(recipe.lr, bool) or recipe.lr <= 0):
        raise bad("lr", "must be a number > 0, or auto (by the base's size)")
    if recipe.epochs <= 0:
        raise bad("epochs", "must be > 0")
    if recipe.keep not in ("best", "last"):
        raise bad("keep", "must be best or last")
    if recipe.early_stop is not None and recipe.early_stop < 1:
        raise bad("early_stop", "must be a positive integer or null")
    if not (recipe.target_modules == "all-linear" or (isinstance(recipe.target_modules, list) and recipe.target_modules)):
        raise bad("target_modules", "must be 'all-linear' or a list of module names like [q_proj, v_proj]")
    _check_selection(recipe, bad)
    return recipe


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text  # refused below with the rule


def _check_selection(recipe: Recipe, bad) -> None:
    """The validation split and what selects the checkpoint: wrong here is one line before anything trains."""
    from edgeft.data.split import DEFAULT_VALIDATION, MAX_VALIDATION_FRACTION

    validation = recipe.validation
    if validation is not None and not (isinstance(validation, str) and validation.strip()):
        if isinstance(validation, bool) or not isinstance(validation, (int, float)) \
                or not 0 < validation <= MAX_VALIDATION_FRACTION:
            raise bad("validation", f"must be a fraction of the training data in (0, {MAX_VALIDATION_FRACTION}] "
                                    "(e.g. 0.1) or a JSONL file of conversations")
    if recipe.select not in SELECT:
        raise bad("select", f"is not one of {', '.join(SELECT)}")
    if recipe.select == "metric" and not recipe.metric:
        raise bad("select", "needs metric: (e.g. exact, json-match) to score checkpoints with; add it")
    if recipe.select == "metric" and validation is None:  # scored on a split of its own, never on the eval set
        recipe.validation = DEFAULT_VALIDATION
    if recipe.select == "metric" and recipe.keep == "last":
        raise bad("keep", "contradicts select: metric, which makes the best-scoring checkpoint the adapter; "
                          "leave keep out (best) or select by loss")
    if recipe.metric is not None:
        from runtime.metrics import split_metric_spec

        try:
            split_metric_spec(str(recipe.metric))
        except EdgeftError as exc:
            raise bad("metric", str(exc).split(": ", 1)[-1]) from None


def _coerce(key: str, value: Any, source: str) -> Any:
    """YAML and click already give typed values; this only catches the obvious mismatches with a clear line."""
    default = FIELDS[key].default
    if value is None or default is None or key == "target_modules":
        return value
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise EdgeftError(f"{source}: {key}={value!r} should be a {expected.__name__}; fix the value")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise EdgeftError(f"{path}: recipe file not found; pass an existing YAML with --config")
    from edgeft.data.io import read_yaml

    data = read_yaml(path, "recipe") or {}
    if not isinstance(data, dict):
        raise EdgeftError(f"{path}: recipe must be a mapping of settings (key: value); see edgeft/recipes/default.yaml")
    return data


def resolve_recipe(config: str | Path | dict | None = None, **overrides: Any) -> Recipe:
    """Defaults, then the YAML file (or dict), then the non-None overrides (the CLI). Unknown keys are errors."""
    values: dict[str, Any] = {}
    layers: list[tuple[str, dict]] = []
    if isinstance(config, dict):
        layers.append(("config", config))
    elif config is not None:
        layers.append((str(config), load_yaml(config)))
    layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for source, layer in layers:
        for key, value in layer.items():
            if key not in FIELDS:
                known = ", ".join(FIELDS)
                raise EdgeftError(f"{source}: unknown recipe setting {key!r}; known settings: {known}")
            values[key] = _coerce(key, value, source)
    source = " + ".join(s for s, _ in layers)
    return _check(Recipe(**values), source)


def save_recipe(recipe: Recipe, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved recipe (every setting, defaults included) so a run can be repeated from it alone."""
    body = recipe.to_dict()
    text = "# Resolved training recipe (CLI > YAML > defaults), written by edgeft train.\n"
    text += yaml.safe_dump(body, sort_keys=False)
    if extra:
        text += "# Run facts (not settings):\n" + "".join(f"# {k}: {v}\n" for k, v in extra.items())
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
