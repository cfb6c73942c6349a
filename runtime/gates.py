"""Release gates: thresholds a fine-tune must meet, from CLI flags or the recipe's `eval.gates` section.

Each gate is a row of data: the report field it reads, the comparison, the measurement it needs (so a gate asked
for without its measurement is refused up front rather than silently passing).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeft.errors import EdgeftError


@dataclass(frozen=True)
class Gate:
    name: str
    description: str
    needs: str  # the eval option that produces the value
    value: Callable[[dict], float | None]  # reads the report
    passes: Callable[[float, float], bool]
    symbol: str


def _gain(report: dict):
    difference = report.get("difference")
    return None if difference is None else difference["mean"] * 100.0


def _gain_low(report: dict):
    difference = report.get("difference")
    return None if difference is None else difference["low"] * 100.0


def _ppl_ratio(report: dict):
    probe = report.get("probe") or {}
    return probe.get("ppl_ratio")


def _kld(report: dict):
    quality = report.get("quantization") or {}
    return quality.get("kld_mean")


def _hf_mismatches(report: dict):
    parity = report.get("parity")
    return None if parity is None else parity["mismatched"]


def _speed(report: dict):
    speed = report.get("throughput") or {}
    return (speed.get("ratio") or {}).get("tg")


GATES: dict[str, Gate] = {gate.name: gate for gate in (
    # The baseline is the ladder's strongest rung (runtime/ladder.py), so a fine-tune is never judged against the
    # weakest prompt that happened to be tried.
    Gate("min_gain", "fine-tune beats the strongest prompted rung by at least N points", "--baseline", _gain,
         operator.ge, ">="),
    Gate("earned", "the 95% interval of the gain over the strongest rung lies above N points (the verdict)",
         "--baseline", _gain_low, operator.gt, ">"),
    Gate("max_ppl_ratio", "probe perplexity fine-tune/base at most P", "--baseline (probe)", _ppl_ratio,
         operator.le, "<="),
    Gate("max_kld", "mean KL-divergence vs the reference at most K", "--reference", _kld, operator.le, "<="),
    Gate("min_speed_ratio", "generation tok/s at least R times the base's", "--baseline with --speed", _speed,
         operator.ge, ">="),
    # Added with threshold 0 whenever --hf is given: a GGUF that renders or tokenizes the eval differently from its
    # HF folder is a converter or template bug, and a parity table in report.md alone is too easy to miss.
    Gate("max_hf_mismatches", "eval conversations rendered or tokenized differently by HF and the GGUF, at most N",
         "--hf", _hf_mismatches, operator.le, "<="),
)}


def recipe_eval(path: str | Path | None) -> dict:
    """The `eval:` section of a recipe YAML (empty when absent)."""
    if path is None:
        return {}
    from edgeft.data.io import read_yaml

    recipe = read_yaml(path, "recipe") or {}
    # A list or a sentence read as "no gates" would let every eval pass: only a mapping is a recipe.
    if not isinstance(recipe, dict):
        raise EdgeftError(f"{path}: the recipe is a {type(recipe).__name__}, not a mapping with an eval: "
                          "section; see edgeft/demo/recipe.yaml")
    section = recipe.get("eval")
    if section is not None and not isinstance(section, dict):
        raise EdgeftError(f"{path}: eval: must be a mapping (metric:, gates: ...), not {section!r}")
    return section or {}


def gates_from_recipe(path: str | Path | None) -> dict[str, float]:
    """The `eval: gates:` mapping of a recipe YAML (empty when absent)."""
    gates = recipe_eval(path).get("gates") or {}
    if not isinstance(gates, dict):
        raise EdgeftError(f"{path}: eval.gates must be a mapping like {{min_gain: 5}}")
    return gates


def resolve_gates(from_flags: dict[str, float | None], from_recipe: dict | None = None) -> dict[str, float]:
    """CLI > recipe. Unknown names are refused with the list of known ones."""
    merged: dict[str, float] = {}
    for source in (from_recipe or {}, {k: v for k, v in from_flags.items() if v is not None}):
        for name, threshold in source.items():
            if name not in GATES:
                raise EdgeftError(f"unknown gate {name!r}; known gates: {', '.join(GATES)}")
            try:
                merged[name] = float(threshold)
            except (TypeError, ValueError) as exc:
                raise EdgeftError(f"gate {name}: threshold {threshold!r} is not a number") from exc
    return merged


def check_gates(gates: dict[str, float], report: dict) -> list[dict]:
    """One row per gate: value, threshold, passed, and a sentence for report.md / the terminal."""
    rows = []
    for name, threshold in gates.items():
        gate = GATES[name]
        value = gate.value(report)
        if value is None:
            rows.append({"gate": name, "threshold": threshold, "value": None, "passed": False,
                         "text": f"{name}: not measured (needs {gate.needs})"})
            continue
        passed = bool(gate.passes(value, threshold))
        rows.append({"gate": name, "threshold": threshold, "value": value, "passed": passed,
                     "text": f"{name}: {value:.4g} (need {gate.symbol} {threshold:g}) — {'pass' if passed else 'FAIL'} "
                             f"({gate.description})"})
    return rows
