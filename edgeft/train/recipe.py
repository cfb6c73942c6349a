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

from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_file
from edgeft.train.preference import BETA_WANTED, OBJECTIVES

METHODS = ("qlora", "lora")
SELECT = ("loss", "metric")


@dataclasses.dataclass
class Recipe:
    # --- what is trained
    method: str = "qlora"  # qlora: base frozen in 4-bit NF4 (double quant); lora: base kept in 16/32-bit
    objective: str = "sft"  # sft (conversations) | dpo | orpo (preference pairs; edgeft/train/preference.py)
    beta: float = 0.1  # dpo: how far from the reference; orpo: the odds-ratio term's weight
    from_adapter: str | None = None  # start from this trained adapter (e.g. SFT's); dpo's reference is its copy
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
    micro_batch: int = 4  # sequences per forward pass (packed: up to micro_batch x max_len tokens)
    max_len: int = 2048
    max_grad_norm: float | None = 1.0
    seed: int = 0
    gradient_checkpointing: bool | None = None  # None -> on for qlora, off for lora
    group_by_length: bool = True  # batch similar lengths together: less padding, same examples per epoch
    # --- how the arithmetic runs (what is trained stays the same)
    packing: bool = True  # conversations packed into rows without padding, attention kept within each one
    share_prefixes: bool = True  # with packing: a start common to several conversations (system prompt) run once
    precision: str = "auto"  # fp32 | bf16 | auto: bf16 autocast where the CPU has AVX512-BF16/AMX or on CUDA
    optimizer: str = "adamw"  # adamw | paged_adamw_8bit (bitsandbytes, CUDA only: QLoRA's memory-saving optimizer)
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

    def grad_accum(self, world_size: int, source: str = "recipe") -> int:
        """Micro-batches per process per optimizer step, so that micro_batch * accum * world_size is effective_batch
        exactly: a step of any other size would train more sequences than the saved recipe says."""
        per_round = self.micro_batch * world_size
        if self.effective_batch % per_round == 0:
            return self.effective_batch // per_round
        processes = f" x {world_size} processes" if world_size > 1 else ""
        actual = math.ceil(self.effective_batch / per_round) * per_round
        options = sorted({n for n in (actual - per_round, actual) if n > 0})
        raise EdgeftError(f"{source}: effective_batch={self.effective_batch} is not a multiple of micro_batch="
                          f"{self.micro_batch}{processes}, so a step would train {actual} sequences, not "
                          f"{self.effective_batch}; set effective_batch to {' or '.join(map(str, options))}, or a "
                          f"micro_batch that divides it")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
# Settings a resumed run may change (how long, how often to eval/save/log): the others change what the saved
# optimizer state and batch plan mean, so `train --resume` refuses a change to them.
RESUME_MAY_CHANGE = frozenset({"epochs", "max_steps", "eval_every", "early_stop", "keep", "save_every",
                               "keep_checkpoints", "log_every", "gradient_checkpointing", "packing",
                               "share_prefixes", "precision"})
PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("adamw", "paged_adamw_8bit")
# An upper bound that no real schedule reaches, so epochs x steps per epoch stays a finite count of steps.
MAX_EPOCHS = 10_000
SEED_LIMIT = 2**63  # torch.manual_seed takes a 64-bit seed; numpy gets it modulo 2**32


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one recipe setting takes: its type, and (`holds`, `wanted`: what the error line says, "must be a number
    > 0", or a function giving it) the values that mean something. A float is always checked finite first, since
    NaN passes every `<= 0` test; None is accepted only when `nullable`."""

    kind: type | tuple[type, ...]
    holds: Callable[[Any], bool] | None = None
    wanted: str | Callable[[], str] = ""
    nullable: bool = False
    auto: bool = False  # "auto" means None: edgeft/train/size.py fills it from the base's size


def _positive_int(wanted: str = "must be an integer of 1 or more", nullable: bool = False) -> Setting:
    return Setting(int, lambda v: v >= 1, wanted, nullable)


def _choice(*values: str) -> Setting:
    return Setting(str, lambda v: v in values, f"is not one of {', '.join(values)}")


def _validation(value) -> bool:
    from edgeft.data.split import MAX_VALIDATION_FRACTION

    return bool(value.strip()) if isinstance(value, str) else 0 < value <= MAX_VALIDATION_FRACTION


def _validation_wanted() -> str:
    from edgeft.data.split import MAX_VALIDATION_FRACTION

    return (f"must be a fraction of the training data in (0, {MAX_VALIDATION_FRACTION}] (e.g. 0.1) or a JSONL file "
            "of conversations")


def _modules(value) -> bool:
    return value == "all-linear" or (isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value))


# The whole vocabulary of a recipe and what each setting may be: every reader (YAML, the command line, a release
# recipe's train: section, a saved recipe read back by --resume) goes through this table. A new Recipe field needs a
# row here (tests/test_recipe_settings.py checks that every field has one).
SETTINGS: dict[str, Setting] = {
    "method": Setting(str, lambda v: v in METHODS, f"is not one of {', '.join(METHODS)} (preference tuning is an "
                      "objective: objective: dpo or orpo)"),
    "objective": _choice(*OBJECTIVES),
    "beta": Setting(float, lambda v: v > 0, BETA_WANTED),
    "from_adapter": Setting(str, lambda v: bool(v.strip()), "must be an adapter folder (null: a new adapter)",
                            nullable=True),
    "r": _positive_int(),
    "alpha": Setting(float, lambda v: v > 0, "must be a number > 0 (null: 2 * r)", nullable=True),
    "dropout": Setting(float, lambda v: 0 <= v < 1, "must be a number in [0, 1)"),
    "target_modules": Setting((str, list), _modules,
                              "must be 'all-linear' or a list of module names like [q_proj, v_proj]"),
    "rslora": Setting(bool),
    "dora": Setting(bool),
    "lr": Setting(float, lambda v: v > 0, "must be a number > 0, or auto (by the base's size)", nullable=True,
                  auto=True),
    "weight_decay": Setting(float, lambda v: v >= 0, "must be a number of 0 or more"),
    "warmup_ratio": Setting(float, lambda v: 0 <= v < 1, "must be a fraction in [0, 1)"),
    "epochs": Setting(float, lambda v: 0 < v <= MAX_EPOCHS,
                      f"must be a number > 0 and at most {MAX_EPOCHS} (1.5 trains one and a half passes)"),
    "max_steps": _positive_int("must be an integer of 1 or more (null: run by epochs)", nullable=True),
    "effective_batch": Setting(int, lambda v: v >= 1, "must be an integer of 1 or more, or auto (by the base's size)",
                               nullable=True, auto=True),
    "micro_batch": _positive_int(),
    "max_len": _positive_int(),
    "max_grad_norm": Setting(float, lambda v: v > 0, "must be a number > 0 (null: no clipping)", nullable=True),
    "seed": Setting(int, lambda v: 0 <= v < SEED_LIMIT, "must be an integer in [0, 2**63)"),
    "gradient_checkpointing": Setting(bool, nullable=True),
    "group_by_length": Setting(bool),
    "eval_every": _positive_int(),
    "early_stop": _positive_int("must be an integer of 1 or more (null: never stop early)", nullable=True),
    "keep": _choice("best", "last"),
    "save_every": _positive_int(),
    "keep_checkpoints": _positive_int(),
    "log_every": _positive_int(),
    "validation": Setting((float, str), _validation, _validation_wanted, nullable=True),
    "select": _choice(*SELECT),
    "metric": Setting(str, lambda v: bool(v.strip()), "must be a metric name such as exact (null: none)",
                      nullable=True),
    "chat_template": Setting(str, lambda v: bool(v.strip()), "must be a path to a .jinja file (null: the base's own)",
                             nullable=True),
    "packing": Setting(bool),
    "share_prefixes": Setting(bool),
    "precision": _choice(*PRECISIONS),
    "optimizer": _choice(*OPTIMIZERS),
}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
              object: "a value"}


def _setting(key: str) -> Setting:
    """The row for `key`; a field added without one is typed by its default until the row is written."""
    if key in SETTINGS:
        return SETTINGS[key]
    default = FIELDS[key].default
    return Setting(type(default) if default is not None else object, nullable=True)


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    """`value` as `kind` where YAML or click gave a near miss (2 for a float, 4.0 for an int, "1e-4" for a float:
    YAML 1.1 reads an exponent without a dot as a string); None where it is not that kind at all."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return value if bool in kinds else None
    if isinstance(value, kinds):
        return value
    if float in kinds and isinstance(value, int):
        return float(value)
    if float in kinds and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    if int in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _coerce(key: str, value: Any, source: str) -> Any:
    """One setting's value, typed and range-checked by its SETTINGS row; anything else is one line naming it."""
    setting = _setting(key)
    if setting.auto and isinstance(value, str) and value.strip().lower() == "auto":
        value = None
    if value is None and setting.nullable:
        return None
    typed = None if value is None else _typed(value, setting.kind)
    kinds = setting.kind if isinstance(setting.kind, tuple) else (setting.kind,)
    wanted = setting.wanted() if callable(setting.wanted) else setting.wanted
    wanted = wanted or "must be " + " or ".join(TYPE_NAMES.get(k, k.__name__) for k in kinds)
    if typed is None and object not in kinds:
        raise EdgeftError(f"{source}: {key}={value!r} {wanted}")
    if isinstance(typed, float) and not math.isfinite(typed):
        raise EdgeftError(f"{source}: {key}={value!r} is not a finite number; it {wanted}")
    if setting.holds is not None and not setting.holds(typed):
        raise EdgeftError(f"{source}: {key}={value!r} {wanted}")
    return value if object in kinds else typed


def _check(recipe: Recipe, source: str) -> Recipe:
    """The rules between settings (each setting alone is SETTINGS' job)."""
    if recipe.effective_batch is not None:  # else the base's size gives it, and train checks it then
        recipe.grad_accum(1, source)

    def bad(key: str, why: str) -> EdgeftError:
        return EdgeftError(f"{source}: {key}={getattr(recipe, key)!r} {why}")

    _check_selection(recipe, bad)
    if recipe.objective != "sft" and recipe.validation is not None:
        raise bad("validation", f"splits conversations, and objective={recipe.objective} trains on pairs; pass "
                                "held-out pairs with --eval instead")
    return recipe


def _check_selection(recipe: Recipe, bad) -> None:
    """The validation split and what selects the checkpoint: wrong here is one line before anything trains."""
    from edgeft.data.split import DEFAULT_VALIDATION

    # each setting alone is SETTINGS'; these are the rules between them
    if recipe.select == "metric" and not recipe.metric:
        raise bad("select", "needs metric: (e.g. exact, json-match) to score checkpoints with; add it")
    if recipe.select == "metric" and recipe.validation is None:  # scored on a split of its own, never on the eval set
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


def load_yaml(path: str | Path) -> dict[str, Any]:
    from convert.common.jsonl import check_input_file, read_yaml

    path = check_input_file(path, "pass a recipe YAML with --config")
    data = read_yaml(path, "recipe") or {}
    if not isinstance(data, dict):
        raise EdgeftError(f"{path}: recipe must be a mapping of settings (key: value); see edgeft/recipes/default.yaml")
    return data


def resolve_recipe(config: str | Path | dict | None = None, *, where: str = "config", **overrides: Any) -> Recipe:
    """Defaults, then the YAML file (or dict, named `where` in errors), then the non-None overrides (the CLI).
    Unknown keys are errors."""
    values: dict[str, Any] = {}
    layers: list[tuple[str, dict]] = []
    if isinstance(config, dict):
        layers.append((where, config))
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
