"""`data check` at scale: 100,000 generated conversations with a tokenizer, dedup and decontamination.

The data is generated (seeded) with planted problems, so the bench also reports whether each kind was found:
exact duplicates, near-duplicates with typos, and eval items leaked into training (verbatim or wrapped in a new
instruction). Target: the whole check in <= 60 s on 2 cores.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

N_TRAIN = 100_000
N_EVAL = 1_000
N_EXACT_DUPS = 500
N_NEAR_DUPS = 500
N_LEAKS = 100  # half verbatim, half embedded in another instruction
_GENERATOR_VERSION = "2"  # bump when the generator changes: the cached files are regenerated
SYSTEM = "You are a helpful assistant for a small online shop. Answer briefly and politely."

_NOUNS = ("order parcel invoice refund jacket kettle lamp shoe voucher account password address courier "
          "battery charger blanket mug scarf helmet tent ticket receipt warranty drawer").split()
_VERBS = ("arrived broke vanished changed failed shipped returned charged cracked stopped leaked faded").split()
_ADJ = ("blue heavy late small broken cheap damp noisy wrong second cracked missing").split()
_SYLLABLES = ("ka ro mi tu len sa vo ri pe dan tho mur el quin bas fe go lor ny ash ved cor pim sul ta "
              "bri hel om zan tek").split()


def _vocabulary(seed: int, size: int, extra) -> tuple[str, ...]:
    # Real chats use thousands of words; a 24-noun toy vocabulary would make every 13-gram common.
    rng = random.Random(seed)
    words = {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randrange(2, 4))) for _ in range(size)}
    return tuple(sorted(words)) + tuple(extra)


_NOUNS = _vocabulary(1, 1500, _NOUNS)
_VERBS = _vocabulary(2, 300, _VERBS)
_ADJ = _vocabulary(3, 300, _ADJ)
_OPENERS = ("Hi, my", "Hello, the", "Good morning, my", "Hey there, the", "Excuse me, my", "Quick question: the")
_FOLLOW = ("What should I do?", "Can you help?", "Is that normal?", "How do I fix this?", "Who do I contact?")
_ANSWERS = ("Sorry about that.", "Thanks for telling us.", "Let us sort this out.", "That should not happen.")
_STEPS = ("please send a photo of the {n}", "check the {a} label on the {n}", "wait two days for the {n}",
          "use the {a} form for the {n}", "reply with your {n} number", "keep the {n} until we call")


def _question(rng: random.Random) -> str:
    parts = [f"{rng.choice(_OPENERS)} {rng.choice(_ADJ)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} after "
             f"{rng.randrange(2, 60)} days and the {rng.choice(_NOUNS)} {rng.choice(_VERBS)} too."]
    for _ in range(rng.randrange(1, 4)):
        parts.append(f"The {rng.choice(_ADJ)} {rng.choice(_NOUNS)} number {rng.randrange(10_000, 99_999)} "
                     f"{rng.choice(_VERBS)} on day {rng.randrange(1, 31)}.")
    parts.append(rng.choice(_FOLLOW))
    return " ".join(parts)


def _answer(rng: random.Random) -> str:
    steps = [rng.choice(_STEPS).format(n=rng.choice(_NOUNS), a=rng.choice(_ADJ)) for _ in range(rng.randrange(2, 5))]
    return f"{rng.choice(_ANSWERS)} First, " + ", then ".join(steps) + f". Case {rng.randrange(100_000, 999_999)}."


def _conversation(rng: random.Random) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    for _ in range(1 if rng.random() < 0.7 else 2):
        messages += [{"role": "user", "content": _question(rng)}, {"role": "assistant", "content": _answer(rng)}]
    return messages


def _typos(rng: random.Random, text: str, n: int = 2) -> str:
    chars = list(text)
    for _ in range(n):
        i = rng.randrange(len(chars))
        chars[i] = chars[i].swapcase() if chars[i].isalpha() and rng.random() < 0.5 else "q"
    return "".join(chars)


def generate(folder: Path, seed: int = 0) -> tuple[Path, Path, dict]:
    """train.jsonl / eval.jsonl with planted problems; returns their paths and the planted 1-based line numbers."""
    train_path, eval_path, planted_path = folder / "train.jsonl", folder / "eval.jsonl", folder / "planted.json"
    if (folder / "generator.txt").exists() and (folder / "generator.txt").read_text() != _GENERATOR_VERSION:
        for path in (train_path, eval_path, planted_path):
            path.unlink(missing_ok=True)
    if train_path.exists() and eval_path.exists() and planted_path.exists():
        return train_path, eval_path, json.loads(planted_path.read_text())
    rng = random.Random(seed)
    evals = [_conversation(rng) for _ in range(N_EVAL)]
    train = [_conversation(rng) for _ in range(N_TRAIN - N_EXACT_DUPS - N_NEAR_DUPS - N_LEAKS)]
    planted: dict[str, list[int]] = {"duplicate": [], "near-duplicate": [], "contaminated": []}
    extras = []
    for k in range(N_EXACT_DUPS):
        extras.append(("duplicate", [dict(m) for m in train[rng.randrange(len(train))]]))
    for k in range(N_NEAR_DUPS):
        source = train[rng.randrange(len(train))]
        extras.append(("near-duplicate", [dict(m, content=_typos(rng, m["content"])) if m["role"] == "user" else dict(m)
                                          for m in source]))
    for k in range(N_LEAKS):
        leaked = evals[k * (N_EVAL // N_LEAKS)]
        if k % 2:
            question = "Please rewrite this customer message politely: " + leaked[1]["content"]
            extras.append(("contaminated", [{"role": "user", "content": question}, {"role": "assistant", "content": "Done."}]))
        else:
            extras.append(("contaminated", [dict(m) for m in leaked]))
    rng.shuffle(extras)
    # Extras go after the originals so "after its first occurrence" is well defined.
    lines = [json.dumps({"messages": m}) for m in train]
    for kind, messages in extras:
        lines.append(json.dumps({"messages": messages}))
        planted[kind].append(len(lines))
    folder.mkdir(parents=True, exist_ok=True)
    train_path.write_text("\n".join(lines) + "\n")
    eval_path.write_text("\n".join(json.dumps({"messages": m}) for m in evals) + "\n")
    planted_path.write_text(json.dumps(planted))
    (folder / "generator.txt").write_text(_GENERATOR_VERSION)
    return train_path, eval_path, planted


def run(cache_dir: Path) -> list[dict]:
    from edgeft.data.check import check_dataset
    from tests.factory import build_tokenizer

    tokenizer_dir = build_tokenizer("bpe-qwen2")
    train, evals, planted = generate(Path(cache_dir) / "data-100k")
    started, cpu_started = time.perf_counter(), time.process_time()
    report = check_dataset(train, eval_path=evals, tokenizer_dir=tokenizer_dir, max_len=4096)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    rows = [{"bench": "data", "metric": f"check {N_TRAIN:,} conversations (tokenizer, dedup, decontam)",
             "value": round(seconds, 2), "unit": "s", "target": "<= 60 s", "ok": seconds <= 60},
            # CPU time of all threads: on a shared machine it says what the wall time would be on idle cores.
            {"bench": "data", "metric": "  same, CPU time (all threads)", "value": round(cpu_seconds, 2),
             "unit": "cpu-s", "target": None, "ok": None}]
    found = {kind: {f.line for f in report.findings() if f.kind == kind} for kind in planted}
    for kind, lines in planted.items():
        recall = len(found[kind] & set(lines)) / max(len(lines), 1)
        rows.append({"bench": "data", "metric": f"planted {kind} found ({len(lines)})", "value": round(recall, 4),
                     "unit": "recall", "target": "1.0", "ok": recall == 1.0})
        extra = len(found[kind] - set(lines))
        rows.append({"bench": "data", "metric": f"{kind} flagged but not planted", "value": float(extra),
                     "unit": "lines", "target": "0", "ok": extra == 0})
    rows.append({"bench": "data", "metric": "median chat-rendered tokens", "value": float(report.stats["tokens"]["median"]),
                 "unit": "tokens", "target": None, "ok": None})
    return rows


if __name__ == "__main__":  # pragma: no cover
    import sys

    for row in run(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/bench")):
        print(row)
