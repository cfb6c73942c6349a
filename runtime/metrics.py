"""Metrics: how one generated answer is scored against the gold (last assistant turn).

Each metric is a small class with `score(prediction, gold, prompt) -> Verdict`; `METRICS` maps the names users
type (`exact`, `sql-exec:shop.sqlite`) to them. A metric never raises on a bad *prediction*:
invalid JSON, SQL that does not run, or a judge that rambles all count as wrong (with a note), because one odd
answer must not sink a whole evaluation. Bad *inputs the user controls* (a missing database, gold that is not
JSON) are errors naming the setting (SettingError: `metric`, `rubric`), since every score would be meaningless. `gold_problem(gold)` says, before any generation,
why a gold answer cannot be scored by the metric (empty, not JSON, SQL that does not run): such an example would
score 0 for every model, or 1 for a model that answers nothing, and an eval full of them would "pass".
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runtime.eval_settings import SettingError

_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL)
# What a query that only reads does (sqlite.org/c3ref/c_alter_table.html): read columns, select, call functions,
# recurse in a CTE. ATTACH, VACUUM INTO, PRAGMA, writes and the rest are denied.
SQLITE_READ_ACTIONS = frozenset((sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION,
                                 sqlite3.SQLITE_RECURSIVE))


@dataclass
class Verdict:
    score: float  # 0..1
    note: str = ""  # why, for review.md ("invalid JSON", "no such table: x", ...)
    parsed: bool = True  # False when a judge verdict could not be read


def strip_fences(text: str) -> str:
    """Answers often come wrapped in ```json / ```sql fences; score what is inside."""
    text = text.strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def _empty(gold: str) -> str | None:
    return "the gold answer is empty" if not gold.strip() else None


class Exact:
    name = "exact"

    def gold_problem(self, gold: str) -> str | None:
        return _empty(gold)

    def score(self, prediction: str, gold: str, prompt: str = "") -> Verdict:
        # Surrounding whitespace is an artefact of templates/detokenization, not an answer difference.
        return Verdict(float(prediction.strip() == gold.strip()))


class Normalized:
    name = "normalized"

    def gold_problem(self, gold: str) -> str | None:
        return _empty(gold)

    @staticmethod
    def normalize(text: str) -> str:
        return " ".join(text.casefold().split())

    def score(self, prediction: str, gold: str, prompt: str = "") -> Verdict:
        return Verdict(float(self.normalize(prediction) == self.normalize(gold)))


def _parse_json(text: str):
    return json.loads(strip_fences(text))


class JsonValid:
    name = "json-valid"

    def gold_problem(self, gold: str) -> str | None:
        return None  # only the prediction is checked

    def score(self, prediction: str, gold: str, prompt: str = "") -> Verdict:
        try:
            _parse_json(prediction)
        except ValueError as exc:
            return Verdict(0.0, f"invalid JSON: {exc}")
        return Verdict(1.0)


class JsonMatch:
    name = "json-match"

    def gold_problem(self, gold: str) -> str | None:
        try:
            _parse_json(gold)
        except ValueError as exc:
            return f"the gold answer is not JSON ({exc})"
        return None

    def score(self, prediction: str, gold: str, prompt: str = "") -> Verdict:
        try:
            expected = _parse_json(gold)
        except ValueError as exc:
            raise SettingError(f"json-match: a gold answer is not JSON ({exc}): {gold[:80]!r}; fix the eval file "
                               "or use <metric> exact", "metric") from exc
        try:
            got = _parse_json(prediction)
        except ValueError as exc:
            return Verdict(0.0, f"invalid JSON: {exc}")
        # Parsed equality: key order and spacing do not matter; 1 and 1.0 compare equal as in Python.
        return Verdict(float(got == expected), "" if got == expected else "JSON differs")


class Regex:
    """`regex:PAT`. Without a capture group: 1 when PAT occurs in the prediction (format check).
    With a group: the first group extracted from prediction and gold must be equal (answer extraction).

    Python's `re` cannot be stopped: a pattern with nested repeats ((a|a)*, (\\w+\\s?)*$) backtracks for hours on
    the wrong answer. The `regex` package (re's syntax, VERSION0) takes a timeout, so each search is bounded and a
    pattern that needs more is refused in one line naming what it was searching."""

    name = "regex"
    seconds = 1.0  # per search; ordinary patterns take microseconds on an answer

    def __init__(self, pattern: str):
        import regex

        try:
            self.pattern = regex.compile(pattern, regex.DOTALL | regex.VERSION0)
        except regex.error as exc:
            raise SettingError(f"<metric> regex:{pattern}: invalid regular expression ({exc})", "metric") from exc
        self.source = pattern

    def _search(self, text: str, what: str):
        try:
            return self.pattern.search(text, timeout=self.seconds)
        except TimeoutError:
            raise SettingError(f"<metric> regex:{self.source[:80]}: gave up after {self.seconds:g} s on {what} "
                               f"({len(text)} characters, {text[:40]!r}...): the pattern backtracks catastrophically; "
                               "rewrite it without nested repeats such as (a+)+ or (a|a)*", "metric") from None

    def gold_problem(self, gold: str) -> str | None:
        if self.pattern.groups == 0:
            return None  # a format check: the gold answer is not used
        found = self._search(gold, "a gold answer")
        return _empty(found.group(1) if found and found.group(1) is not None else gold)

    def score(self, prediction: str, gold: str, prompt: str = "") -> Verdict:
        found = self._search(prediction, "a model's answer")
        if self.pattern.groups == 0:
            return Verdict(float(found is not None), "" if found else "pattern not found")
        if found is None:
            return Verdict(0.0, "pattern not found")
        gold_match = self._search(gold, "a gold answer")
        expected = gold_match.group(1) if gold_match else gold.strip()
        return Verdict(float(found.group(1).strip() == expected.strip()))


class SqlExec:
    """`sql-exec:DB.sqlite`: run gold and predicted SQL read-only; equal result multisets (row order ignored)."""

    name = "sql-exec"
    max_steps = 5_000_000  # sqlite VM instructions; stops runaway cross joins without a timer

    def __init__(self, db_path: str):
        self.path = Path(db_path)
        if not self.path.is_file():
            what = "not a regular file" if self.path.exists() else "SQLite file not found"  # a folder, a pipe
            raise SettingError(f"<metric> sql-exec:{db_path}: {what}; pass the database the gold queries run "
                               "against", "metric")
        with open(self.path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                raise SettingError(f"<metric> sql-exec:{db_path}: not an SQLite database file", "metric")

    def _run(self, sql: str):
        # mode=ro: a predicted DROP/DELETE must not damage the user's database or later comparisons. It does not
        # cover other files: ATTACH DATABASE 'any.db' and VACUUM INTO 'any/path' create and write files wherever
        # the user can. Only reading is authorized (SQLITE_READ_ACTIONS); anything else fails as an SQL error.
        connection = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True)
        connection.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in SQLITE_READ_ACTIONS
                                  else sqlite3.SQLITE_DENY)
        steps = [0]

        def guard() -> int:
            steps[0] += 1000
            return 1 if steps[0] > self.max_steps else 0

        connection.set_progress_handler(guard, 1000)
        try:
            rows = connection.execute(sql).fetchall()
        finally:
            connection.close()
        return Counter(tuple(_canonical(value) for value in row) for row in rows)

    def gold_problem(self, gold: str) -> str | None:
        if _empty(gold):
            return _empty(gold)
        try:
            self._run(strip_fences(gold))
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:
            return f"the gold SQL fails on {self.path.name} ({exc})"
        return None

    def score(self, prediction: str, gold: str, prompt: str = "") -> Verdict:
        try:
            expected = self._run(strip_fences(gold))
        except (sqlite3.Error, sqlite3.Warning, ValueError) as exc:
            return Verdict(0.0, f"gold SQL failed: {exc}")
        try:
            got = self._run(strip_fences(prediction))
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:
            return Verdict(0.0, f"SQL error: {exc}")
        return Verdict(float(got == expected), "" if got == expected else "different result set")


def _canonical(value):
    # 3 and 3.0 are the same answer to "how many"; round floats so SUM/AVG summation order does not matter.
    if isinstance(value, float):
        return round(value, 6) if not value.is_integer() else int(value)
    return value


class Judge:
    """`judge:JUDGE.gguf` + a rubric: a local model grades each answer 1-5 against the gold one."""

    name = "judge"
    scale = 5
    _verdict = re.compile(r"score\s*[:=]?\s*\**\s*([1-5])\b", re.IGNORECASE)

    def __init__(self, judge_path: str, rubric: str | None = None, *, threads: int | None = None,
                 max_tokens: int = 200):
        from runtime.load import check_gguf

        self.path = check_gguf(judge_path)
        self.rubric = rubric or DEFAULT_RUBRIC
        self.threads = threads
        self.max_tokens = max_tokens
        self._llm = None
        self.unparsed = 0

    def gold_problem(self, gold: str) -> str | None:
        return _empty(gold)

    def _model(self):
        if self._llm is None:
            from runtime.load import open_gguf

            self._llm = open_gguf(self.path, n_ctx=4096, threads=self.threads)
        return self._llm

    def score(self, prediction: str, gold: str, prompt: str = "") -> Verdict:
        from runtime.generate import chat_reply

        messages = [
            {"role": "system", "content": self.rubric},
            {"role": "user", "content": f"Question:\n{prompt}\n\nReference answer:\n{gold}\n\n"
                                        f"Candidate answer:\n{prediction}\n\n"
                                        "Grade the candidate. End with a line `Score: N` (N from 1 to 5)."},
        ]
        reply = chat_reply(self._model(), messages, max_tokens=self.max_tokens, path=str(self.path)).text
        return self.parse(reply)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def parse(self, reply: str) -> Verdict:
        found = self._verdict.findall(reply)
        if not found:
            self.unparsed += 1
            return Verdict(0.0, f"unparseable judge verdict: {reply.strip()[:120]!r}", parsed=False)
        value = int(found[-1])
        return Verdict((value - 1) / (self.scale - 1), f"judge score {value}/{self.scale}")


DEFAULT_RUBRIC = (
    "You are a strict grader. Compare the candidate answer with the reference answer. 5: same meaning and fully "
    "correct; 4: correct with minor omissions; 3: partly correct; 2: mostly wrong; 1: wrong or off-topic. "
    "Judge content, not style or length."
)

# name -> factory(argument or None, options) ; arguments follow the first colon: regex:PAT, sql-exec:DB, judge:GGUF
METRICS: dict[str, Callable[..., object]] = {
    "exact": lambda arg, **kw: Exact(),
    "normalized": lambda arg, **kw: Normalized(),
    "json-valid": lambda arg, **kw: JsonValid(),
    "json-match": lambda arg, **kw: JsonMatch(),
    "regex": lambda arg, **kw: Regex(arg),
    "sql-exec": lambda arg, **kw: SqlExec(arg),
    "judge": lambda arg, **kw: Judge(arg, kw.get("rubric"), threads=kw.get("threads")),
}
NEEDS_ARGUMENT = {"regex": "PATTERN", "sql-exec": "DB.sqlite", "judge": "JUDGE.gguf"}


def unscoreable(metric, examples, data: object = "eval data") -> list[tuple[int, str]]:
    """(line, why) for every example whose gold answer `metric` cannot score; see `gold_problem`. A metric that
    cannot go on at all (a pattern that never finishes) raises, with the file and line it stopped at."""
    bad = []
    for example in examples:
        try:
            problem = metric.gold_problem(example.gold)
        except SettingError as exc:
            raise SettingError(f"{data}:{example.line}: {exc.text}", *exc.settings) from None
        if problem:
            bad.append((example.line, problem))
    return bad


def refuse_unscoreable(metric, examples, data, spec: str) -> None:
    """SettingError at the first example `metric` cannot score, with how many there are (before any generation)."""
    bad = unscoreable(metric, examples, data)
    if bad:
        line, why = bad[0]
        raise SettingError(f"{data}:{line}: {why}; {len(bad)} of {len(examples)} eval examples cannot be scored "
                           f"with <metric> {spec}: fix or remove them", "metric")


def split_metric_spec(spec: str) -> tuple[str, str]:
    """`"sql-exec:db.sqlite"` -> ("sql-exec", "db.sqlite") without opening anything; SettingError naming the known
    metrics, or the regex's error, otherwise (a release recipe is checked with this before training)."""
    name, _, argument = spec.partition(":")
    name = name.strip().lower()
    if name not in METRICS:
        known = ", ".join(f"{n}:{NEEDS_ARGUMENT[n]}" if n in NEEDS_ARGUMENT else n for n in METRICS)
        raise SettingError(f"<metric> {spec}: unknown metric; choose one of {known}", "metric")
    if name in NEEDS_ARGUMENT and not argument:
        raise SettingError(f"<metric> {spec}: needs an argument, e.g. {name}:{NEEDS_ARGUMENT[name]}", "metric")
    if name == "regex":
        Regex(argument)  # compiling opens nothing; an invalid pattern is found before a release trains
    return name, argument


def parse_metric(spec: str, *, rubric_path: str | None = None, threads: int | None = None):
    """`"sql-exec:db.sqlite"` -> a metric object; SettingError naming the known metrics otherwise."""
    name, argument = split_metric_spec(spec)
    rubric = None
    if rubric_path:
        if not Path(rubric_path).is_file():  # a pipe blocked the eval, /dev/zero filled the memory
            what = "not a regular file" if Path(rubric_path).exists() else "file not found"
            raise SettingError(f"<rubric> {rubric_path}: {what}; pass a plain-text rubric file", "rubric")
        try:
            rubric = Path(rubric_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingError(f"<rubric> {rubric_path}: cannot read ({exc.strerror})", "rubric") from exc
        except UnicodeDecodeError as exc:
            raise SettingError(f"<rubric> {rubric_path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                               f"byte {exc.start}); pass a plain-text rubric", "rubric") from None
    metric = METRICS[name](argument or None, rubric=rubric, threads=threads)
    metric.spec = spec
    return metric
