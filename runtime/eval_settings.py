"""EvalSettings: every choice an eval makes besides the model, the data and the output folder, in one object that
`edgeft eval`, the release pipeline and tests build and pass to `run_eval` / `run_fleet_eval`.

`EvalSettings.from_mapping` builds one from a mapping of field names (a recipe's `eval:` section, a command's given
options): the fields are the whole vocabulary, their annotations the types, their defaults the only defaults.

Errors about a setting are `SettingError`s: the library names the setting (`n_ctx 0: must be at least 1`), and a
caller shows the user's own word for it through `SettingError.named`: a flag (`--ctx 0: ...`) or a recipe key
(`recipe_key`: `eval.n_ctx 0: ...`), so the library knows neither.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Mapping

from convert.common.errors import EdgeftError
from convert.common.fsutil import refuse_foreign_folder
from runtime.quant_choice import DEFAULT_TOLERANCE
from runtime.report import EVAL_FILES

PathLike = str | os.PathLike
_SETTING = re.compile(r"<(\w+)>")
REPORT_MARKER = EVAL_FILES["report"]  # every eval writes it: an earlier eval's folder may be replaced
DEFAULT_CONTEXT_K = 3  # passages per question for the retrieved-context rung
# What the fleet eval (runtime.fleet_eval) reads; every other setting belongs to the single-model eval's ladder,
# probe, KLD, speed and gates, and a fleet given one would ignore it and exit 0.
FLEET_SETTINGS = ("metric", "rubric", "system", "max_tokens", "n_ctx", "threads", "limit")


class SettingError(EdgeftError):
    """A user error about settings. `text` marks each setting it names as `<name>` (one of `settings`); the
    message shows the name itself, `named(names)` shows the caller's word for it (a mapping or a function)."""

    def __init__(self, text: str, *settings: str):
        self.text, self.settings = text, settings
        super().__init__(self.named({}))

    def named(self, names: Mapping[str, str] | Callable[[str], str]) -> str:
        def name(match: re.Match) -> str:
            setting = match[1]
            if setting not in self.settings:
                return match[0]
            return names(setting) if callable(names) else names.get(setting, setting)

        return _SETTING.sub(name, self.text)


RECIPE_SECTION = "eval"


def recipe_key(setting: str) -> str:
    """A setting as a recipe names it: its key in the recipe's `eval:` section."""
    return f"{RECIPE_SECTION}.{setting}"


# What a value of each field annotation must be, and how the user is told.
_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "text (a string)"),
    "PathLike": (lambda v: isinstance(v, (str, os.PathLike)), "a path"),
    "Mapping[str, float]": (lambda v: isinstance(v, Mapping), "a mapping like {min_gain: 5}"),
}


# The least value of each count that must make sense on its own (context_k and latency_samples: see check).
AT_LEAST = {"max_tokens": 1, "n_ctx": 1, "threads": 1, "shots": 0}


def _typed(name: str, annotation: str, value):
    kind = annotation.removesuffix(" | None")
    if value is None and kind != annotation:
        return None
    accepts, what = _KINDS[kind]
    if not accepts(value):
        raise SettingError(f"<{name}> {value!r}: must be {what}", name)
    _check_value(name, value)
    return float(value) if kind == "float" else dict(value) if kind.startswith("Mapping") else value


def _check_value(name: str, value, least: int | None = None) -> None:
    """One setting's value on its own: a count below its least, or traffic that is not a positive number."""
    least = AT_LEAST.get(name) if least is None else least
    if least is not None and value is not None and value < least:
        raise SettingError(f"<{name}> {value}: must be {'0 or more' if least == 0 else f'at least {least}'}", name)
    if name == "requests_per_day":
        check_requests_per_day(value)
    if name == "quant_tolerance":
        from runtime.quant_choice import check_tolerance

        check_tolerance(value)


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. Paths may be str or Path; `gates` maps a gate name (runtime.gates.GATES) to its threshold.

    Example: `EvalSettings(baseline="base.gguf", system="Answer in SQL.", shots=3, shots_from="train.jsonl",
    metric="sql-exec:shop.sqlite", gates={"min_gain": 5})`.
    """

    baseline: PathLike | None = None  # the base GGUF to beat; it climbs the whole ladder
    metric: str = "exact"
    rubric: PathLike | None = None  # for metric judge:JUDGE.gguf
    system: str | None = None  # the baseline's system prompt
    shots: int = 0  # K for the fixed and the retrieved K-shot rungs
    shots_from: PathLike | None = None  # the training JSONL the shots come from
    context: PathLike | None = None  # passages JSONL for the retrieved-context rung
    context_k: int | None = None  # passages per question for `context` (None: DEFAULT_CONTEXT_K)
    requests_per_day: float | None = None  # traffic for the prompt tax
    latency_samples: int = 16
    probe: PathLike | None = None  # forgetting-probe text (default: the text shipped with edgeft)
    probe_window: int = 512
    probe_max_tokens: int | None = 8192
    choices: PathLike | None = None  # multiple-choice JSONL for the probe
    pairs: PathLike | None = None  # preference pairs JSONL: how often log p(chosen) > log p(rejected), model and base
    reference: PathLike | None = None  # higher-precision GGUF for KLD
    hf: PathLike | None = None  # HF folder for the tokenization parity check
    gates: Mapping[str, float] = field(default_factory=dict)
    max_tokens: int = 256
    n_ctx: int = 4096
    threads: int | None = None
    limit: int | None = None  # evaluate only the first N examples
    speed: bool = True  # throughput against the baseline
    bench_prompt: int = 128
    bench_gen: int = 32
    bench_repeat: int = 5
    quant_tolerance: float = DEFAULT_TOLERANCE  # points a smaller quant may lose to the best (runtime.quant_choice)

    @classmethod
    def from_mapping(cls, mapping: Mapping, *, where: str = "", base: EvalSettings | None = None,
                     keys: tuple[str, ...] | None = None) -> EvalSettings:
        """`mapping`'s settings over `base` (default: the defaults). Its keys are field names (`keys`: the ones a
        caller lets its user set), its values of the field's type, its gates known names with numbers (None:
        that gate off); anything else is a SettingError, with `where` (the file it came from) in front.

        Example: `EvalSettings.from_mapping({"metric": "exact", "shots": 3}, where="recipe.yaml: eval")`."""
        from runtime.gates import check_thresholds

        known = keys or tuple(item.name for item in fields(cls))
        try:
            unknown = sorted(map(str, set(mapping) - set(known)))
            if unknown:
                raise SettingError(f"{', '.join(f'<{key}>' for key in unknown)}: unknown setting; known: "
                                   f"{', '.join(known)}", *unknown)
            values = {item.name: _typed(item.name, item.type, mapping[item.name]) for item in fields(cls)
                      if item.name in mapping}
            if values.get("gates"):
                values["gates"] = check_thresholds(values["gates"])
        except SettingError as exc:
            if where:
                exc.text = f"{where}: {exc.text}"
                exc.args = (exc.named({}),)
            raise
        return replace(base or cls(), **values)

    @property
    def passages(self) -> int:
        """Passages per question for the retrieved-context rung."""
        return DEFAULT_CONTEXT_K if self.context_k is None else self.context_k

    def check(self, *, fleet: bool = False) -> None:
        """Numbers that make no sense, and settings nothing would read, refused before any file is read.
        `fleet`: the fleet eval's settings (FLEET_SETTINGS only; its base itself answers prompted with `system`)."""
        if fleet:
            self._refuse_unread_by_fleet()
        at_least = dict(AT_LEAST)  # limit: see read_examples
        if self.baseline is not None:  # passages per question and timed requests matter only for the base's ladder
            at_least.update(context_k=1, latency_samples=1)
        for name, least in at_least.items():
            _check_value(name, getattr(self, name), least)
        check_requests_per_day(self.requests_per_day)
        from runtime.metrics import split_metric_spec

        split_metric_spec(self.metric)  # its name and argument; parse_metric opens its files later
        # The ladder's inputs without the base that climbs it were ignored, and the eval looked like it had run them.
        for name, given in (("context", self.context is not None), ("shots", self.shots > 0),
                            ("shots_from", self.shots_from is not None)):
            if given and self.baseline is None:
                raise SettingError(f"<{name}> needs <baseline>: the shots and the retrieved passages are rungs of the "
                                   "base's ladder", name, "baseline")
        if self.system is not None and self.baseline is None and not fleet:
            raise SettingError("<system> needs <baseline>: it is the prompted base's system prompt, and the model "
                               "answers with each example's own turns", "system", "baseline")
        if self.context_k is not None and self.context is None:
            raise SettingError(f"<context_k> {self.context_k} needs <context>: it is the number of passages per "
                               "question retrieved from it", "context_k", "context")
        if self.rubric is not None and not str(self.metric).startswith("judge:"):  # it was ignored, exit 0
            raise SettingError(f"<rubric> is read by the judge metric only, not <metric> {self.metric}: pass "
                               "<metric> judge:JUDGE.gguf or drop <rubric>", "rubric", "metric")
        if self.shots_from is not None and self.shots == 0:
            raise SettingError("<shots_from> needs <shots> K (1 or more): with K=0 no shot is drawn from it",
                               "shots_from", "shots")

    def given_beyond(self, reads: tuple[str, ...]) -> list[str]:
        """The settings away from their defaults that an eval reading only `reads` would ignore (the fleet's, the
        quant sweep's): each a refusal, not a silent exit 0."""
        return [item.name for item in fields(self) if item.name not in reads
                and getattr(self, item.name) != (item.default if item.default is not MISSING
                                                 else item.default_factory())]

    def _refuse_unread_by_fleet(self) -> None:
        unread = self.given_beyond(FLEET_SETTINGS)
        if unread:
            raise SettingError(f"{', '.join(f'<{name}>' for name in unread)}: not with <adapters> (the fleet eval "
                               "scores adapters against the zero-shot base); evaluate one model for the ladder, "
                               "probe, KLD, speed and gates", *unread, "adapters")

    def report_section(self) -> dict:
        """The `settings` section of report.json."""
        return {"max_tokens": self.max_tokens, "n_ctx": self.n_ctx, "threads": self.threads, "system": self.system,
                "shots": self.shots, "shots_from": str(self.shots_from) if self.shots_from else None,
                "decoding": "greedy", "context": str(self.context) if self.context else None,
                "context_k": self.passages if self.context else None, "requests_per_day": self.requests_per_day}


def check_requests_per_day(value) -> None:
    """The prompt tax's traffic: a count of requests a day (None: not given). -5, nan or inf printed nonsense
    figures ('at -5 requests a day, -0 tokens')."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SettingError(f"<requests_per_day> {value!r}: must be a number of requests a day above 0 (e.g. 10000)",
                           "requests_per_day")


def refuse_foreign_out_dir(out_dir: Path) -> None:
    """The report folder is replaced whole: only a missing or empty one or an earlier eval's (its report.json), by
    the rule every command shares; never an arbitrary folder."""
    try:
        refuse_foreign_folder(out_dir, what="an edgeft eval report folder", markers=(REPORT_MARKER,),
                              advice="choose another <out_dir> or empty it yourself")
    except EdgeftError as exc:  # the line names the setting, so a CLI shows its own flag
        raise SettingError(str(exc), "out_dir") from None


def refuse_long_prompts(data: PathLike, too_long: list[tuple[int, int]], total: int, *, n_ctx: int,
                        label: str) -> None:
    """`too_long`: (line, prompt tokens) of each prompt that leaves no room for an answer in n_ctx."""
    if too_long:
        line, n_tokens = too_long[0]
        raise SettingError(f"{data}:{line}: the {label} prompt is {n_tokens} tokens, which leaves no room for an "
                           f"answer in <n_ctx> {n_ctx}; {len(too_long)} of {total} prompts do not fit: raise "
                           "<n_ctx> or shorten them", "n_ctx")
