"""Defaults that fit the base: the learning rate and the effective batch a recipe leaves out follow the base's
parameter count.

The rule: lr = 1e-3 x sqrt(135M / parameters), two significant digits, within [1e-4, 2e-3]. LoRA's useful step
shrinks with the width of the layers it adapts, and parameters grow about as width squared, so the lr falls as the
square root of the parameter count. It is anchored where it was measured: on SmolLM2-135M (the demo), 1e-3 for one
epoch reaches 97.5% sql-exec while 1e-4, the seed's default, leaves the fine-tune at the prompted base's level. The
same rule gives 1.4e-4 at 7B and 1e-4 from 13B: the seed's default where the seed meant it. The effective batch is
16 sequences below 1B parameters (a small base on a few hundred examples needs steps more than averaging) and the
seed's 32 from there. Epochs stay the seed's 2 at every size: selection by the metric (edgeft/train/select.py)
keeps the best checkpoint of them.

`lr: auto` in a recipe asks for the rule explicitly; a number always wins. The chosen values are written into the
resolved recipe.yaml with the rule's line beside them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from edgeft.train.recipe import Recipe

ANCHOR_PARAMS, ANCHOR_LR = 135e6, 1e-3
LR_RANGE = (1e-4, 2e-3)
# (fewer parameters than this, effective batch)
BATCH_BY_SIZE = ((1e9, 16), (math.inf, 32))


def parameter_count(base: Path) -> int | None:
    """Parameters in the base's safetensors, from the headers alone (no weights are read); None without them."""
    from convert.safetensors_file import SafetensorsReader
    from convert.common.errors import EdgeftError

    try:
        reader = SafetensorsReader(base)
    except (EdgeftError, OSError):
        return None
    return sum(math.prod(reader.shape(name)) for name in reader.names())


def size_lr(parameters: int) -> float:
    lr = ANCHOR_LR * math.sqrt(ANCHOR_PARAMS / parameters)
    lr = min(LR_RANGE[1], max(LR_RANGE[0], lr))
    return float(f"{lr:.2g}")


def size_batch(parameters: int) -> int:
    return next(batch for below, batch in BATCH_BY_SIZE if parameters < below)


def apply_size_defaults(recipe: Recipe, base: Path) -> tuple[Recipe, str | None]:
    """The recipe with lr and effective_batch filled in from the base's size where it left them out, and the line
    that says so (None when the recipe set both)."""
    if recipe.lr is not None and recipe.effective_batch is not None:
        return recipe, None
    parameters = parameter_count(base)
    if parameters is None:  # no safetensors headers to count: the seed's defaults
        lr, batch, why = 1e-4, 32, "the seed's defaults (the base's size is unknown: no safetensors)"
    else:
        lr, batch = size_lr(parameters), size_batch(parameters)
        why = f"by the base's size, {parameters:,} parameters (edgeft/train/size.py)"
    filled = {key: value for key, value in (("lr", lr), ("effective_batch", batch)) if getattr(recipe, key) is None}
    return dataclasses.replace(recipe, **filled), f"{', '.join(f'{k} {v}' for k, v in filled.items())}: {why}"
