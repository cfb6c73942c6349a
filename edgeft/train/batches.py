"""Training data for the loop: tokenized, masked examples and a deterministic batch plan.

The plan is a pure function of (lengths, recipe, world size, seed, epoch), so a resumed run re-derives exactly
the batches an uninterrupted run would have seen from the step number alone: the "data position" saved in a
checkpoint is just the global step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from convert.common.errors import EdgeftError

# Examples sorted by length within windows of this many micro-batches: padding shrinks, yet every epoch still
# visits every example once in a shuffled order.
LENGTH_GROUP_WINDOW = 50


def tokenize_conversations(path: str | Path, tokenizer, chat_template: str, max_len: int) -> list[dict]:
    """Each conversation -> {"input_ids", "labels"} via edgeft.data.masking's mask builder (loss on assistant tokens)."""
    from convert.common.jsonl import read_conversations
    from edgeft.data.masking import build_example

    examples = []
    for index, conversation in enumerate(read_conversations(path)):
        messages = conversation["messages"] if isinstance(conversation, dict) else conversation
        try:
            example = build_example(messages, tokenizer, chat_template=chat_template, max_len=max_len,
                                    tools=conversation.get("tools") if isinstance(conversation, dict) else None)
        except EdgeftError as exc:
            raise EdgeftError(f"{path}: conversation {index + 1}: {exc}") from None
        examples.append({"input_ids": list(example["input_ids"]), "labels": list(example["labels"])})
    if not examples:
        raise EdgeftError(f"{path}: no conversations to train on; add lines of {{\"messages\": [...]}}")
    return examples


def tokenize_pairs(path: str | Path, tokenizer, chat_template: str, max_len: int) -> list[dict]:
    """Each preference pair -> {"chosen": example, "rejected": example}, each side its prompt + answer
    conversation through the same mask builder as SFT (labels on the answer and its end-of-turn marker only)."""
    from edgeft.data.masking import build_example
    from convert.common.pairs import SIDES, read_pairs, rejected_conversation

    pairs = []
    for record in read_pairs(path):
        sides = {}
        for side, messages in zip(SIDES, (record.messages, rejected_conversation(record))):
            example = build_example(messages, tokenizer, chat_template=chat_template, max_len=max_len,
                                    where=f"{path}:{record.line} ({side})")
            sides[side] = {"input_ids": list(example["input_ids"]), "labels": list(example["labels"])}
        pairs.append(sides)
    return pairs


def label_count(example: dict) -> int:
    """Tokens that carry loss: labels are shifted by one against inputs, so the first label never counts."""
    return sum(1 for label in example["labels"][1:] if label != -100)


@dataclass(frozen=True)
class BatchPlan:
    """Which examples form each micro-batch, and which micro-batches form each optimizer step, for one epoch."""

    steps: list[list[list[int]]]  # steps[i] = micro-batches of step i (all ranks); a micro-batch = example indices

    def for_rank(self, step: int, rank: int, world: int) -> list[list[int]]:
        # Round-robin keeps the ranks' shares within one micro-batch of each other.
        return self.steps[step][rank::world]


def plan_epoch(lengths: list[int], *, micro_batch: int, accum: int, world: int, seed: int, epoch: int,
               group_by_length: bool) -> BatchPlan:
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = micro_batch * LENGTH_GROUP_WINDOW
        order = [i for start in range(0, len(order), window)
                 for i in sorted(order[start:start + window], key=lambda i: -lengths[i])]
    micro_batches = [order[i:i + micro_batch] for i in range(0, len(order), micro_batch)]
    if group_by_length:
        rng.shuffle(micro_batches)  # else every step would begin with the longest sequences of its window
    per_step = accum * world
    steps = []
    for start in range(0, len(micro_batches), per_step):
        chunk = micro_batches[start:start + per_step]
        # A short last step is cut to a multiple of the world size so no rank idles (dropped examples come back
        # next epoch in another order); with one process nothing is dropped.
        chunk = chunk[: len(chunk) - len(chunk) % world] if len(chunk) >= world else []
        if chunk:
            steps.append(chunk)
    if not steps:
        raise EdgeftError(f"dataset has {len(lengths)} conversations, fewer than one micro-batch per process "
                          f"({micro_batch} x {world}); add data or lower micro_batch")
    return BatchPlan(steps)

