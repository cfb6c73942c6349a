"""The demo's second stage: preference pairs for DPO after SFT, made from the demo's own SQL conversations.

Chosen is the gold query; rejected is a plausible wrong answer of one of three kinds, in turn: the query with its
filter dropped (every row instead of the asked ones), the query selecting a wrong column, or a verbose answer
that is not SQL at all (what the prompted base tends to write). Training pairs come from train.jsonl, held-out
pairs from eval.jsonl, so `edgeft eval --pairs` measures the preference on questions training never saw.
"""

from __future__ import annotations

import re
from pathlib import Path

from convert.common.jsonl import read_conversations

PAIRS_FILE, HELDOUT_PAIRS_FILE = "pairs.jsonl", "heldout_pairs.jsonl"
# A column of the same table the asker did not want, for each column or aggregate a demo query selects.
WRONG_COLUMN = {"customers": {"name": "city", "COUNT(*)": "SUM(id)"},
                "products": {"name": "category", "category": "name", "price": "name", "AVG(price)": "MAX(price)"},
                "orders": {"COUNT(*)": "SUM(quantity)"}}
FILTER = re.compile(r"\s+WHERE\s+.*?(?=\s+(?:GROUP BY|ORDER BY|LIMIT)\b|;?$)", re.IGNORECASE | re.DOTALL)


def dropped_filter(sql: str) -> str | None:
    wrong = FILTER.sub("", sql, count=1)
    return wrong if wrong != sql else None


def wrong_column(sql: str) -> str | None:
    match = re.match(r"SELECT\s+(\S+)\s+FROM\s+(\w+)", sql, re.IGNORECASE)
    wrong = match and WRONG_COLUMN.get(match.group(2), {}).get(match.group(1))
    return sql[:match.start(1)] + wrong + sql[match.end(1):] if wrong else None


def verbose_answer(sql: str) -> str:
    table = (re.search(r"\bFROM\s+(\w+)", sql, re.IGNORECASE) or [None, "customers"])[1]
    return (f"Sure! To find that you would look in the {table} table of the shop database and filter the rows you "
            "need. Let me know if you would like me to write the query for you.")


REJECTIONS = (dropped_filter, wrong_column, lambda sql: verbose_answer(sql))


def pair_of(conversation: dict, index: int) -> dict | None:
    """The pair for one SQL conversation: the index picks the kind of wrong answer (the next one that applies)."""
    messages = conversation["messages"]
    gold = messages[-1]["content"]
    for turn in range(len(REJECTIONS)):
        rejected = REJECTIONS[(index + turn) % len(REJECTIONS)](gold)
        if rejected and rejected != gold:
            return {"prompt": messages[:-1], "chosen": gold, "rejected": rejected}
    return None


def sql_pairs(path: str | Path) -> list[dict]:
    """Pairs for the SQL conversations of a demo JSONL (the generic chats mixed into training are left out)."""
    from edgeft.demo.sql_task import SYSTEM_PROMPT

    conversations = [c for c in read_conversations(path) if c["messages"][0].get("content") == SYSTEM_PROMPT]
    pairs = [pair_of(c, index) for index, c in enumerate(conversations)]
    return [p for p in pairs if p is not None]


def write_pairs(data_dir: str | Path) -> dict[str, Path]:
    """pairs.jsonl from train.jsonl and heldout_pairs.jsonl from eval.jsonl, in the demo data folder."""
    from edgeft.demo.sql_task import write_jsonl

    data_dir = Path(data_dir)
    return {"pairs": write_jsonl(sql_pairs(data_dir / "train.jsonl"), data_dir / PAIRS_FILE),
            "heldout": write_jsonl(sql_pairs(data_dir / "eval.jsonl"), data_dir / HELDOUT_PAIRS_FILE)}
