"""Release gates: thresholds a fine-tune must meet, from CLI flags or the recipe's `eval.gates` section.

Each gate is one row of data: the report field it reads, the comparison, the settings (EvalSettings fields) whose
measurement it needs (a gate asked for without them is refused up front rather than failing as "not measured"),
its default threshold and when it is on without being asked for.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from convert.common.errors import EdgeftError
from runtime.eval_settings import SettingError

# When a gate is on: only when a threshold is asked for; in every release (at its default, unless the recipe sets
# it to null); whenever the settings it needs are given (at its default, unless asked for with another threshold).
ASKED, RELEASE, WITH_NEEDS = "asked", "release", "with its needs"


# A 95% bootstrap interval over fewer eval examples is not evidence: all-equal paired differences give it zero width
# (one example: [+100, +100]), and below about 30 its coverage falls well short of 95%. A gate that claims
# significance fails below this many examples, saying so; the verdict says the same (runtime/verdict.py).
MIN_EXAMPLES_FOR_SIGNIFICANCE = 30


@dataclass(frozen=True)
class Gate:
    name: str
    description: str
    needs: tuple[str, ...]  # the EvalSettings fields whose measurement it reads
    value: Callable[[dict], float | None]  # reads the report
    passes: Callable[[float, float], bool]
    symbol: str
    default: float | None = None  # the threshold when it is on without one (and for a flag without a number)
    on: str = ASKED
    min_examples: int = 0  # fewer eval examples than this: the gate fails (it claims significance)


def _gain(report: dict):
    difference = report.get("difference")
    return None if difference is None else difference["mean"] * 100.0


def _gain_low(report: dict):
    difference = report.get("difference")
    return None if difference is None else difference["low"] * 100.0


def _pref_gain(report: dict):
    gain = (report.get("preference") or {}).get("gain")
    return None if gain is None else gain["mean"] * 100.0


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
    Gate("min_gain", "fine-tune beats the strongest prompted rung by at least N points", ("baseline",), _gain,
         operator.ge, ">="),
    # On in every release: weights ship only when fine-tuning beat the strongest rung of the prompted base's ladder.
    Gate("earned", "the 95% interval of the gain over the strongest rung lies above N points (the verdict)",
         ("baseline",), _gain_low, operator.gt, ">", default=0.0, on=RELEASE,
         min_examples=MIN_EXAMPLES_FOR_SIGNIFICANCE),
    Gate("max_ppl_ratio", "probe perplexity fine-tune/base at most P", ("baseline",), _ppl_ratio, operator.le, "<="),
    # A release whose recipe trains with DPO or ORPO turns it on (edgeft/release): the preference must survive the
    # merge, the quantization and llama.cpp, measured on the shipped file against the base at the same quant.
    Gate("min_pref_gain", "preference accuracy on the pairs beats the base's by at least N points",
         ("baseline", "pairs"), _pref_gain, operator.ge, ">=", default=0.0),
    Gate("max_kld", "mean KL-divergence vs the reference at most K", ("reference",), _kld, operator.le, "<="),
    Gate("min_speed_ratio", "generation tok/s at least R times the base's", ("baseline", "speed"), _speed,
         operator.ge, ">="),
    # On whenever hf is given: a GGUF that renders or tokenizes the eval differently from its HF folder is a
    # converter or template bug, and a parity table in report.md alone is too easy to miss.
    Gate("max_hf_mismatches", "eval conversations rendered or tokenized differently by HF and the GGUF, at most N",
         ("hf",), _hf_mismatches, operator.le, "<=", default=0.0, on=WITH_NEEDS),
)}


def check_thresholds(asked: Mapping) -> dict[str, float | None]:
    """Known gate names with a number each (None: that gate off); SettingError otherwise."""
    checked: dict[str, float | None] = {}
    for name, threshold in asked.items():
        if name not in GATES:
            raise SettingError(f"<gates>: unknown gate {name!r}; known gates: {', '.join(GATES)}", "gates")
        if threshold is None:
            checked[name] = None
            continue
        try:
            if isinstance(threshold, bool):  # YAML's `yes` is not 1 point
                raise TypeError
            checked[name] = float(threshold)
        except (TypeError, ValueError):
            raise SettingError(f"<gates>: gate {name}: threshold {threshold!r} is not a number", "gates") from None
        # NaN fails every comparison and -inf passes every one: a gate that cannot decide is no gate.
        if not math.isfinite(checked[name]):
            raise SettingError(f"<gates>: gate {name}: threshold {threshold!r} must be a finite number", "gates")
    return checked


def release_gates(asked: Mapping[str, float | None]) -> dict[str, float | None]:
    """A release's gates: the ones on in every release at their default, under the ones asked for."""
    return {**{gate.name: gate.default for gate in GATES.values() if gate.on == RELEASE}, **asked}


def gates_on(asked: Mapping[str, float | None], settings) -> dict[str, float]:
    """The gates an eval with `settings` checks: those asked for with a number, and those on with their needs;
    SettingError for one whose needs are not given."""
    gates = {gate.name: gate.default for gate in GATES.values()
             if gate.on == WITH_NEEDS and all(getattr(settings, need) is not None for need in gate.needs)}
    gates.update({name: threshold for name, threshold in check_thresholds(asked).items() if threshold is not None})
    for name in gates:
        needs = GATES[name].needs
        if not all(getattr(settings, need) for need in needs):
            raise SettingError(f"gate {name} needs {' with '.join(f'<{need}>' for need in needs)}; add it or drop "
                               "the gate", *needs)
    return gates


def recipe_eval(path: str | Path | None) -> dict:
    """The `eval:` section of a recipe YAML (empty when absent)."""
    if path is None:
        return {}
    from convert.common.jsonl import read_yaml

    recipe = read_yaml(path, "recipe") or {}
    # A list or a sentence read as "no gates" would let every eval pass: only a mapping is a recipe.
    if not isinstance(recipe, dict):
        raise EdgeftError(f"{path}: the recipe is a {type(recipe).__name__}, not a mapping with an eval: "
                          "section; see edgeft/demo/recipe.yaml")
    section = recipe.get("eval")
    if section is not None and not isinstance(section, dict):
        raise EdgeftError(f"{path}: eval: must be a mapping (metric:, gates: ...), not {section!r}")
    return section or {}


def resolve_gates(from_flags: Mapping[str, float | None], from_recipe: Mapping | None = None) -> dict[str, float]:
    """CLI > recipe; a flag not given (None) does not count. Unknown names are refused with the known ones."""
    merged = {**check_thresholds(from_recipe or {}),
              **check_thresholds({name: value for name, value in from_flags.items() if value is not None})}
    return {name: threshold for name, threshold in merged.items() if threshold is not None}


def decide(gate: Gate, value: float | None, threshold: float, n: int | None) -> tuple[bool, str]:
    """(passed, why) for one gate: the rule check_gates applies and `release verify` applies again to a manifest."""
    if value is None:
        return False, f"not measured (needs {' with '.join(gate.needs)})"
    if (n or 0) < gate.min_examples:
        return False, (f"{n} eval examples, fewer than the {gate.min_examples} a 95% claim needs (an interval over "
                       f"so few is not evidence) — FAIL; add held-out examples")
    passed = bool(gate.passes(value, threshold))
    return passed, (f"{value:.4g} (need {gate.symbol} {threshold:g}) — {'pass' if passed else 'FAIL'} "
                    f"({gate.description})")


def check_gates(gates: dict[str, float], report: dict) -> list[dict]:
    """One row per gate: value, threshold, the eval's sample size, passed, and a sentence for report.md / the
    terminal."""
    rows = []
    n = (report.get("difference") or {}).get("n", report.get("n"))
    for name, threshold in gates.items():
        gate = GATES[name]
        value = gate.value(report)
        passed, why = decide(gate, value, threshold, n)
        rows.append({"gate": name, "threshold": threshold, "value": value, "n": n, "passed": passed,
                     "text": f"{name}: {why}"})
    return rows
