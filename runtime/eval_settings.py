"""EvalSettings: every choice an eval makes besides the model, the data and the output folder, in one object that
`edgeft eval`, the release pipeline and tests build and pass to `run_eval` / `run_fleet_eval`.

Errors about a setting are `SettingError`s: the library names the setting (`n_ctx 0: must be at least 1`), and a
CLI shows its own flag instead (`--ctx 0: ...`) through `SettingError.named`, so the library knows no flags.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Mapping

from edgeft.errors import EdgeftError
from edgeft.fsutil import refuse_foreign_folder
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
    message shows the name itself, `named(flags)` shows the caller's word for it."""

    def __init__(self, text: str, *settings: str):
        self.text, self.settings = text, settings
        super().__init__(self.named({}))

    def named(self, names: Mapping[str, str]) -> str:
        def name(match: re.Match) -> str:
            setting = match[1]
            return names.get(setting, setting) if setting in self.settings else match[0]

        return _SETTING.sub(name, self.text)


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

    @property
    def passages(self) -> int:
        """Passages per question for the retrieved-context rung."""
        return DEFAULT_CONTEXT_K if self.context_k is None else self.context_k

    def check(self, *, fleet: bool = False) -> None:
        """Numbers that make no sense, and settings nothing would read, refused before any file is read.
        `fleet`: the fleet eval's settings (FLEET_SETTINGS only; its base itself answers prompted with `system`)."""
        if fleet:
            self._refuse_unread_by_fleet()
        at_least = [("max_tokens", 1), ("n_ctx", 1), ("threads", 1), ("shots", 0)]  # limit: see read_examples
        if self.baseline is not None:  # passages per question and timed requests matter only for the base's ladder
            at_least += [("context_k", 1), ("latency_samples", 1)]
        for name, least in at_least:
            value = getattr(self, name)
            if value is not None and value < least:
                rule = "0 or more" if least == 0 else f"at least {least}"
                raise SettingError(f"<{name}> {value}: must be {rule}", name)
        check_requests_per_day(self.requests_per_day)
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

    def _refuse_unread_by_fleet(self) -> None:
        unread = [item.name for item in fields(self) if item.name not in FLEET_SETTINGS
                  and getattr(self, item.name) != (item.default if item.default is not MISSING
                                                   else item.default_factory())]
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
