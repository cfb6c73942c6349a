"""One forward pass: its input tensors (packed rows, or padded micro-batches when packing is off) and the summed
next-token loss over the labelled positions, with the output head applied at those positions only.

The head is the widest matmul of a small model (49,152 x 576 on SmolLM2, a fifth of its arithmetic) and its logits
the biggest tensor of the step; most positions of a chat are prompt, which carries no loss, so computing its logits
is work thrown away. The model's own forward still applies its head (and whatever the architecture does to the
logits after it: scaling, soft-capping), only to fewer rows.
"""

from __future__ import annotations

import contextlib

from edgeft.train.packing import IGNORE, packed_batch, plan_forwards, targets_of

# The 4-D mask form each attention implementation takes (what transformers builds for it): shared prefixes need one.
MASK_FORMS = {"sdpa": "bool", "eager": "additive"}


@contextlib.contextmanager
def logits_only_at(model, keep):
    """Within this context the output head of `model` sees only the hidden states where `keep` (batch, length) is
    True, as one sequence: logits come out as (1, keep.sum(), vocab)."""
    head = model.get_output_embeddings()

    def select(_module, args):
        return (args[0][keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def labelled_logits(model, batch: dict, precision=None):
    """(logits at the positions with a target as (count, vocab), the (batch, length) mask of those positions): the
    one forward of SFT's and the preference losses, under the run's precision."""
    keep = batch["targets"] != IGNORE
    inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "position_ids") if name in batch}
    compute = precision.autocast(batch["input_ids"].device) if precision is not None else contextlib.nullcontext()
    with logits_only_at(model, keep), compute:
        # No KV cache: with one, transformers stops reading position_ids restarts as packed-row boundaries.
        logits = model(**inputs, use_cache=False).logits
    return logits[0], keep


def token_loss_sum(model, batch: dict, precision=None):
    """Summed next-token cross-entropy over the positions with a target (the assistant's tokens)."""
    import torch.nn.functional as F

    logits, keep = labelled_logits(model, batch, precision)
    return F.cross_entropy(logits.float(), batch["targets"][keep], reduction="sum")


def padded_batch(examples: list[dict], pad_id: int, device) -> dict:
    """Right-padded to the longest example; padding is masked out of attention and has no targets."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        targets[row, :n] = torch.tensor(targets_of(example))
        attention[row, :n] = 1
    return {"input_ids": input_ids.to(device), "targets": targets.to(device), "attention_mask": attention.to(device)}


def shared_prefix_mask_form(model, recipe) -> str | None:
    """The mask form for shared prefixes with this model and recipe, or None where they are not used: packing off,
    sharing off, an attention implementation that takes no 4-D mask, or a sliding window shorter than a row (a 4-D
    mask replaces the windowed one)."""
    config = model.config
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if not (recipe.packing and recipe.share_prefixes) or (window and window < recipe.max_len):
        return None
    return MASK_FORMS.get(getattr(config, "_attn_implementation", None))


def step_batches(micro_batches: list[list[dict]], *, packing: bool, micro_batch: int, max_len: int, pad_id: int,
                 device, mask: str | None = None):
    """The forward passes of one process's share of an optimizer step: the same conversations either way; with
    `mask` (a MASK_FORMS value) conversations share their common prefixes."""
    if not packing:
        for examples in micro_batches:
            yield padded_batch(examples, pad_id, device)
        return
    examples = [e for examples in micro_batches for e in examples]
    for rows in plan_forwards(examples, micro_batch=micro_batch, max_len=max_len, share=mask is not None):
        yield packed_batch(examples, rows, pad_id, device, mask)


def eval_batches(examples: list[dict], *, packing: bool, micro_batch: int, max_len: int, pad_id: int, device,
                 mask: str | None = None, rank: int = 0, size: int = 1):
    """This process's forward passes over a held-out set (every size-th one)."""
    if packing:
        forwards = plan_forwards(examples, micro_batch=micro_batch, max_len=max_len, share=mask is not None)
        for rows in forwards[rank::size]:
            yield packed_batch(examples, rows, pad_id, device, mask)
        return
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    chunks = [order[i:i + micro_batch] for i in range(0, len(order), micro_batch)]
    for chunk in chunks[rank::size]:
        yield padded_batch([examples[i] for i in chunk], pad_id, device)
