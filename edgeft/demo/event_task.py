"""The second demo task: messy event notes -> one JSON object ("an event extractor"), scored by json-match.

Another shape than the SQL demo: free text in, a structured record out, where every field must be normalised
(a date written six ways -> ISO, "6.30pm" -> "18:30", "a dozen" -> 12, a missing time -> null). Deterministic from a
seed, offline. Nothing the eval set asks was seen in training: eval notes are written from sentence patterns no
training note uses (PATTERNS' eval side), and each (event, city) pair belongs to one side only (about one in five,
by hash, to eval), so no eval answer is a training answer. Dates, times and counts are written in the same
formats on both sides: those are the task's vocabulary, which the fine-tune must learn from a few hundred notes.

Example:
    write_event_task(Path(".cache/demo/events"))   # train.jsonl, eval.jsonl
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

from edgeft.demo import TASK_STAMP, refuse_foreign_folder, stamped_sets
from edgeft.demo.sql_task import messy, write_jsonl
from edgeft.demo.vocabulary import CITIES, FIRST

SEED = 4321
# "A few hundred training examples": what a user brings to a new task; plus some generic chats against forgetting.
N_TRAIN, N_EVAL, N_GENERAL = 400, 120, 100
EVAL_SHARE = 5  # about one (event, city) pair in 5 is eval-only
FIELDS = ("event", "city", "date", "time", "people")

SYSTEM_PROMPT = "You turn event notes into JSON. Reply with one JSON object and nothing else."
EVENTS = ("dinner", "workshop", "birthday party", "book club", "team meeting", "concert", "yoga class",
          "football match", "wedding", "hackathon", "picnic", "board game night")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten",
                12: "a dozen", 20: "twenty"}

# Sentence patterns: {event} {city} {date} {time} {people} {who}; a pattern without {time} has "time": null.
TRAIN_PATTERNS = (
    "{event} in {city} on {date} at {time}, {people} people",
    "{who} is hosting a {event} in {city}, {date} {time}, expecting {people}",
    "reminder: {event} {date} {time} @ {city} ({people} ppl)",
    "{people} of us for the {event}, {city}, {date} at {time}",
    "{event} on {date} in {city}. around {people} guests. starts {time}",
    "{city} {event}, {date}, {people} attendees, no time set yet",
    "can you note the {event} in {city} on {date}? {people} people coming",
    "{date}: {event} at {city}, {time}, headcount {people}",
    "booked the {event} for {people} in {city}, {date}, doors at {time}",
    "{who} says the {event} is {date} in {city}, {people} people, time tbd",
)
EVAL_PATTERNS = (
    "so the {event} ended up being in {city} — {date}, kicking off {time}, with {people} folks",
    "note to self: {people} heads, {event}, {city}, {date} around {time}",
    "{who} organised a {event} in {city} for {date} and we expect {people}, no start time yet",
    "we're {people} for {who}'s {event} in {city} on {date} at {time}",
)


def _date_text(year: int, month: int, day: int, rng: random.Random) -> str:
    name = MONTHS[month - 1]
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd"}.get(day, "th")
    return rng.choice((f"{year}-{month:02d}-{day:02d}", f"{day} {name} {year}", f"{name} {day}, {year}",
                       f"{day:02d}/{month:02d}/{year}", f"{name[:3]} {day}{suffix} {year}",
                       f"{day}{suffix} of {name} {year}"))


def _time_text(hour: int, minute: int, rng: random.Random) -> str:
    twelve, half = (hour - 1) % 12 + 1, "am" if hour < 12 else "pm"
    forms = [f"{hour:02d}:{minute:02d}", f"{twelve}:{minute:02d}{half}", f"{twelve}.{minute:02d} {half}",
             f"{hour}h{minute:02d}"]
    if minute == 0:
        forms += [f"{twelve}{half}", f"{twelve} {half}"]
    return rng.choice(forms)


def _people_text(people: int, rng: random.Random) -> str:
    return NUMBER_WORDS[people] if people in NUMBER_WORDS and rng.random() < 0.4 else str(people)


def eval_only(event: str, city: str) -> bool:
    return zlib.crc32(f"{event}|{city}".encode()) % EVAL_SHARE == 0


def _record(rng: random.Random, held_out: bool) -> tuple[dict, str]:
    while True:
        event, city = rng.choice(EVENTS), rng.choice(CITIES)
        if eval_only(event, city) == held_out:
            break
    year, month, day = rng.choice((2025, 2026, 2027)), rng.randint(1, 12), rng.randint(1, 28)
    hour, minute = rng.randint(7, 22), rng.choice((0, 0, 15, 30, 45))
    people = rng.choice((2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 20, 25, 30, 40))
    pattern = rng.choice(EVAL_PATTERNS if held_out else TRAIN_PATTERNS)
    timed = "{time}" in pattern
    values = {"event": event, "city": city, "date": _date_text(year, month, day, rng),
              "time": _time_text(hour, minute, rng), "people": _people_text(people, rng), "who": rng.choice(FIRST)}
    text = pattern.format(**values)
    record = {"event": event, "city": city, "date": f"{year}-{month:02d}-{day:02d}",
              "time": f"{hour:02d}:{minute:02d}" if timed else None, "people": people}
    # The values stay readable (no typo in a month name or a city): the gold record must follow from the note.
    protected = {word for value in values.values() for word in value.split()}
    return record, messy(text[0].upper() + text[1:] if rng.random() < 0.5 else text, rng, protected)


def _conversation(note: str, record: dict) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": note},
                         {"role": "assistant", "content": json.dumps(record, ensure_ascii=False)}]}


def generate(n_train: int = N_TRAIN, n_eval: int = N_EVAL, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Train and eval conversations; notes are unique across both sets, eval answers never appear in training."""
    rng = random.Random(seed)
    seen: set[str] = set()
    answers: set[str] = set()
    sets: dict[bool, list[dict]] = {False: [], True: []}
    for held_out, count in ((False, n_train), (True, n_eval)):
        while len(sets[held_out]) < count:
            record, note = _record(rng, held_out)
            answer = json.dumps(record)
            key = " ".join(note.lower().split())
            if key in seen or (held_out and answer in answers):
                continue
            seen.add(key)
            answers.add(answer)
            sets[held_out].append(_conversation(note, record))
    return sets[False], sets[True]


TASK_FILES = ("train.jsonl", "eval.jsonl")


def write_event_task(out_dir: Path, *, seed: int = SEED, n_train: int = N_TRAIN, n_eval: int = N_EVAL,
                     n_general: int = N_GENERAL) -> dict[str, Path]:
    """train.jsonl (event notes plus `n_general` generic chats, shuffled) and eval.jsonl (event notes only) into
    `out_dir`, after its stamp task.json; a folder holding anything else is refused before anything is written."""
    out_dir = Path(out_dir)
    refuse_foreign_folder(out_dir, what="the event demo's data folder", stamps=(TASK_STAMP,), outputs=TASK_FILES)
    train, evaluation = stamped_sets(out_dir, "edgeft demo events", generate, seed=seed, n_train=n_train,
                                     n_eval=n_eval, n_general=n_general)
    return {"train": write_jsonl(train, out_dir / "train.jsonl"), "eval": write_jsonl(evaluation, out_dir / "eval.jsonl")}
