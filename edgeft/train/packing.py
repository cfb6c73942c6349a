"""Forward passes without padding: a step's conversations packed into rows, each keeping its own positions.

A row holds blocks back to back. A block is one conversation, or several that begin with the same tokens (a system
prompt, a chat template's default one) whose common start carries no loss: that prefix is computed once and each
conversation's rest follows it, positions continuing from the prefix, attending to the prefix and to itself only.
Causal attention makes this exact: a conversation's tokens see the same keys and values at the same positions as
when it runs alone, and the prefix's gradients sum over the conversations that read it, as they would separately.

Attention never crosses blocks or conversations. Without shared prefixes no mask is passed: transformers (5.x, every
attention implementation, sliding windows included) reads the restarts in position_ids as sequence boundaries.
With them, the 4-D mask is built here (bool for sdpa, additive for eager, the forms transformers itself builds), so
sharing is used only with those two and when no sliding window is shorter than a row. tests/test_train_packing.py
fails if attention leaks. The unused end of a row is a segment of its own, of padding, with no targets. Tokens
after a conversation's last target are left out: nothing before them depends on them.

Blocks are filled longest first into the least-loaded row (as few rows as fit in `max_len` tokens, evenly loaded),
so a batch is as narrow as the data allows; a forward pass holds at most micro_batch x max_len tokens, the bound an
unpacked micro-batch has.
"""

from __future__ import annotations

import heapq
import math

IGNORE = -100
# A shorter common start is not worth splitting conversations into prefix and rest for.
MIN_SHARED = 8


def targets_of(example: dict) -> list[int]:
    """The token each position predicts (labels shifted left by one), IGNORE where it carries no loss."""
    return list(example["labels"][1:]) + [IGNORE]


def loss_span(example: dict) -> int:
    """How many leading tokens the loss depends on: up to the last position with a target (0: none has one)."""
    targets = targets_of(example)
    return next((i + 1 for i in range(len(targets) - 1, -1, -1) if targets[i] != IGNORE), 0)


def shareable(example: dict) -> int:
    """Leading positions without a target: a start that other conversations may read from one copy."""
    return next((i for i, target in enumerate(targets_of(example)) if target != IGNORE), 0)


def pack_rows(spans: list[int], width: int) -> list[list[int]]:
    """Indices of `spans` (each 1..width) grouped into as few rows of at most `width` tokens as this finds, the
    longest first into the least-loaded row so the rows come out about equally long. Deterministic."""
    if not spans:
        return []
    n_rows = math.ceil(sum(spans) / width)
    order = sorted(range(len(spans)), key=lambda i: (-spans[i], i))
    while True:
        heap = [(0, row) for row in range(n_rows)]
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        for i in order:
            load, row = heapq.heappop(heap)
            rows[row].append(i)
            heapq.heappush(heap, (load + spans[i], row))
        if max(load for load, _ in heap) <= width:
            return [row for row in rows if row]
        n_rows += 1  # one row per item always fits, so this ends


def _prefix_groups(examples: list[dict], live: list[int]) -> list[tuple[int, list[int]]]:
    """(shared prefix length, example indices): neighbours in token order joined while their common target-free
    start stays at least MIN_SHARED tokens long; a conversation on its own shares nothing."""
    groups: list[tuple[int, list[int]]] = []
    for i in sorted(live, key=lambda i: (examples[i]["input_ids"], i)):
        if groups:
            shared, members = groups[-1]
            first, ids = examples[members[0]]["input_ids"], examples[i]["input_ids"]
            limit = min(shared if len(members) > 1 else shareable(examples[members[0]]), shareable(examples[i]))
            common = next((n for n in range(limit) if first[n] != ids[n]), limit)
            if common >= MIN_SHARED:
                groups[-1] = (common, members + [i])
                continue
        groups.append((0, [i]))
    return groups


def _blocks(examples: list[dict], live: list[int], max_len: int, share: bool) -> list[tuple[int, list[int]]]:
    """(prefix length, example indices) blocks of at most max_len tokens each."""
    if not share:
        return [(0, [i]) for i in live]
    blocks = []
    for prefix, members in _prefix_groups(examples, live):
        rests = [loss_span(examples[i]) - prefix for i in members]
        blocks += [(prefix, [members[j] for j in part]) for part in pack_rows(rests, max_len - prefix)]
    return blocks


def block_length(examples: list[dict], block: tuple[int, list[int]]) -> int:
    prefix, members = block
    return prefix + sum(loss_span(examples[i]) - prefix for i in members)


def plan_forwards(examples: list[dict], *, micro_batch: int, max_len: int, share: bool = False) -> list[list[list]]:
    """Forward passes -> rows -> blocks (prefix length, example indices), for packed batches of these examples.
    Conversations without any target are left out: nothing in them counts."""
    live = [i for i, example in enumerate(examples) if loss_span(example)]
    blocks = _blocks(examples, live, max_len, share)
    lengths = [block_length(examples, block) for block in blocks]
    rows = [[blocks[j] for j in row] for row in pack_rows(lengths, max_len)]
    if not rows:
        return []
    width = max(sum(block_length(examples, block) for block in row) for row in rows)
    per_forward = max(1, (micro_batch * max_len) // width)
    return [rows[start:start + per_forward] for start in range(0, len(rows), per_forward)]


def _row_layout(examples: list[dict], row: list) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """One row's ids, positions, targets, and for the mask each token's block and conversation (-1: a prefix)."""
    ids, positions, targets, block_of, owner = [], [], [], [], []
    for b, (prefix, members) in enumerate(row):
        first = examples[members[0]]
        ids += first["input_ids"][:prefix]
        positions += range(prefix)
        targets += targets_of(first)[:prefix]  # all IGNORE: a prefix is shared only where it carries no loss
        block_of += [b] * prefix
        owner += [-1] * prefix
        for i in members:
            span = loss_span(examples[i])
            ids += examples[i]["input_ids"][prefix:span]
            positions += range(prefix, span)
            targets += targets_of(examples[i])[prefix:span]
            block_of += [b] * (span - prefix)
            owner += [i] * (span - prefix)
    return ids, positions, targets, block_of, owner


def packed_batch(examples: list[dict], rows: list[list], pad_id: int, device, mask: str | None = None,
                 owners: bool = False) -> dict:
    """input_ids, position_ids and targets of shape (rows, widest row); with shared prefixes and `mask` ("bool" or
    "additive") also the 4-D attention mask, else none (see the module). With `owners`, also "owners": the index
    in `examples` of the conversation each position belongs to (-1: a shared prefix or padding), for losses summed
    per sequence (preference pairs)."""
    import torch

    layouts = [_row_layout(examples, row) for row in rows]
    width = max(len(layout[0]) for layout in layouts)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    blocks = torch.full((len(rows), width), -1, dtype=torch.long)  # the padding: a block of its own
    owner_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, (ids, pos, tgt, block_of, owner) in enumerate(layouts):
        n = len(ids)
        input_ids[r, :n], targets[r, :n], positions[r, :n] = torch.tensor(ids), torch.tensor(tgt), torch.tensor(pos)
        blocks[r, :n], owner_ids[r, :n] = torch.tensor(block_of), torch.tensor(owner)
        positions[r, n:] = torch.arange(width - n)
    batch = {"input_ids": input_ids, "position_ids": positions, "targets": targets}
    if owners:
        batch["owners"] = owner_ids
    if any(prefix and len(members) > 1 for row in rows for prefix, members in row):
        if mask is None:
            raise ValueError("shared prefixes need a 4-D attention mask: pass mask='bool' or 'additive'")
        batch["attention_mask"] = shared_prefix_mask(blocks, owner_ids, mask)
    return {name: tensor.to(device) for name, tensor in batch.items()}


def shared_prefix_mask(blocks, owners, kind: str):
    """(rows, 1, width, width): a token sees earlier tokens of its block that are its own or the block's prefix."""
    import torch

    width = blocks.shape[1]
    earlier = torch.ones(width, width, dtype=torch.bool).tril()
    same_block = blocks[:, :, None] == blocks[:, None, :]
    readable = (owners[:, None, :] == -1) | (owners[:, :, None] == owners[:, None, :])
    allowed = (earlier & same_block & readable)[:, None]
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
