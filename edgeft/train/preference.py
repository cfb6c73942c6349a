"""Preference tuning on the LoRA: DPO's sigmoid loss and ORPO's odds-ratio loss over the SFT mask.

A sequence's log-probability is the sum of its labelled (assistant answer + end-of-turn) tokens' log-probabilities,
the tokens SFT trains and llama.cpp scores. Chosen and rejected go through one forward, stacked [chosen; rejected].

DPO (Rafailov et al.): loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), the reference being the
starting point: the base with the adapter disabled, or, after `--from-adapter`, a frozen copy of the SFT adapter
held as a second peft adapter ("reference") on the same base. No second base model is ever in memory.
ORPO (Hong et al.): loss = NLL(chosen) - beta * log sigmoid(log odds(chosen) - log odds(rejected)), with the odds
taken on the per-token mean log-probabilities, and no reference. The NLL is over the assistant tokens, as SFT's is
(TRL's ORPOTrainer takes it over prompt and answer).

The losses are TRL's (tests/test_preference.py compares the loss, rewards and LoRA gradients with TRL's trainers).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from convert.common.errors import EdgeftError

OBJECTIVES = ("sft", "dpo", "orpo")
REFERENCE_ADAPTER = "ref"  # TRL's name for the same thing


BETA_WANTED = ("must be a number > 0 (dpo: how far from the reference, typically 0.1; orpo: the odds-ratio "
               "weight, typically 0.1)")


def check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise EdgeftError(f"beta={beta!r} {BETA_WANTED}")
    return float(beta)


def sequence_logps(logits, labels):
    """(summed log-probability, labelled-token count) per row, over the labelled positions only (one vocab-wide
    log-softmax per labelled token, not per position: most of a chat is prompt)."""
    import torch

    targets = labels[:, 1:]
    keep = targets != -100
    rows = keep.nonzero(as_tuple=True)[0]
    picked = torch.log_softmax(logits[:, :-1][keep].float(), dim=-1).gather(-1, targets[keep].unsqueeze(-1))
    sums = torch.zeros(labels.shape[0], dtype=picked.dtype, device=picked.device)
    return sums.index_add(0, rows, picked.squeeze(-1)), keep.sum(dim=1)


def pair_batch(examples: list[dict], pad_id: int, device) -> dict:
    """SFT's padded batch plus its unshifted `labels` (transformers' and TRL's convention, which the losses here are
    checked against): the targets moved one position right; position 0 never has one."""
    from edgeft.train.forward import padded_batch

    batch = padded_batch(examples, pad_id, device)
    labels = batch["targets"].roll(1, dims=1)
    labels[:, 0] = -100
    batch["labels"] = labels
    return batch


@dataclass(frozen=True)
class PairLayout:
    """How a micro-batch of pairs goes through the model: SFT's packing (rows without padding; with `mask`, the
    prompt a pair's two answers share, and a system prompt all pairs share, computed once: edgeft.train.packing)
    or, with packing off, one right-padded batch."""

    packing: bool = False
    max_len: int = 0
    mask: str | None = None  # a MASK_FORMS value: shared prefixes on


def _pair_batches(examples: list[dict], pad_id: int, device, layout: PairLayout) -> list[dict]:
    from edgeft.train.packing import packed_batch, plan_forwards

    if not layout.packing:
        batch = pair_batch(examples, pad_id, device)
        batch["owners"] = _rows_of(batch["targets"])
        return [batch]
    # One forward for the micro-batch, as padded: at most len(examples) x max_len tokens (packing only narrows it).
    forwards = plan_forwards(examples, micro_batch=len(examples), max_len=layout.max_len,
                             share=layout.mask is not None)
    return [packed_batch(examples, rows, pad_id, device, layout.mask, owners=True) for rows in forwards]


def _rows_of(targets):
    """Each position's sequence in a padded batch: its row."""
    import torch

    return torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)


def pair_forward(model, chosen: list[dict], rejected: list[dict], pad_id: int, device, precision=None,
                 layout: PairLayout = PairLayout()):
    """Chosen and rejected through the model together: (logps_c, logps_r, tokens_c, tokens_r). The output head
    runs at the labelled positions only (edgeft.train.forward: most of a pair is prompt) and under the run's
    precision, as SFT's forward does; the log-softmax is taken in fp32."""
    import torch

    from edgeft.train.forward import labelled_logits

    examples = chosen + rejected
    logps = torch.zeros(len(examples), dtype=torch.float32, device=device)
    tokens = torch.zeros(len(examples), dtype=torch.long, device=device)
    for batch in _pair_batches(examples, pad_id, device, layout):
        logits, keep = labelled_logits(model, batch, precision)
        picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["targets"][keep].unsqueeze(-1))
        owners = batch["owners"][keep]
        logps = logps.index_add(0, owners, picked[:, 0])
        tokens = tokens.index_add(0, owners, torch.ones_like(owners))
    n = len(chosen)
    return logps[:n], logps[n:], tokens[:n], tokens[n:]


@contextlib.contextmanager
def reference_of(model):
    """The starting point, for DPO's reference forward: the frozen SFT adapter when one was loaded as
    REFERENCE_ADAPTER, else the base with every adapter disabled. Gradients and dropout off (the reference is one
    fixed function); the trained adapter is active (and trainable) again on exit, in the mode it was in."""
    import torch

    training = model.training
    model.eval()
    try:
        if REFERENCE_ADAPTER not in getattr(model, "peft_config", {}):
            with torch.no_grad(), model.disable_adapter():
                yield
            return
        trained = model.active_adapter
        model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
        try:
            with torch.no_grad():
                yield
        finally:
            model.set_adapter(trained)  # peft marks the adapter it activates trainable again
    finally:
        model.train(training)


def dpo_terms(policy_c, policy_r, ref_c, ref_r, beta: float):
    """Per-pair DPO sigmoid loss and the rewards beta * (policy - reference)."""
    import torch.nn.functional as F

    chosen_ratio, rejected_ratio = policy_c - ref_c, policy_r - ref_r
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler's switch at -log 2)."""
    import math

    import torch

    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_terms(mean_c, mean_r, beta: float):
    """Per-pair ORPO odds-ratio term beta * log sigmoid(log odds_c - log odds_r) (subtracted from the NLL) and the
    rewards beta * mean log-probability TRL reports."""
    import torch.nn.functional as F

    log_odds = (mean_c - mean_r) - (log1mexp(mean_c) - log1mexp(mean_r))
    return beta * F.logsigmoid(log_odds), beta * mean_c.detach(), beta * mean_r.detach()


class PreferenceLoss:
    """The loss of one micro-batch of pairs, normalised over the whole optimizer step (all processes) so that
    accumulated micro-batches sum to the loss of the step's batch: pair terms by the step's pairs, ORPO's NLL by
    the step's chosen labelled tokens (TRL's mean over one batch when the step is one micro-batch)."""

    def __init__(self, objective: str, beta: float, pad_id: int, precision=None, layout: PairLayout = PairLayout()):
        if objective not in ("dpo", "orpo"):
            raise EdgeftError(f"objective={objective!r} is not a preference objective (dpo or orpo)")
        self.objective, self.beta, self.pad_id = objective, check_beta(beta), pad_id
        self.precision, self.layout = precision, layout

    def __call__(self, model, pairs: list[dict], device, *, n_pairs: float, n_chosen_tokens: float) -> dict:
        chosen = [p["chosen"] for p in pairs]
        rejected = [p["rejected"] for p in pairs]
        args = (self.pad_id, device, self.precision, self.layout)
        policy_c, policy_r, tokens_c, tokens_r = pair_forward(model, chosen, rejected, *args)
        if self.objective == "dpo":
            with reference_of(model):
                ref_c, ref_r, _, _ = pair_forward(model, chosen, rejected, *args)
            losses, reward_c, reward_r = dpo_terms(policy_c, policy_r, ref_c, ref_r, self.beta)
            loss = losses.sum() / n_pairs
        else:
            ratio, reward_c, reward_r = orpo_terms(policy_c / tokens_c, policy_r / tokens_r, self.beta)
            loss = -policy_c.sum() / n_chosen_tokens - ratio.sum() / n_pairs
        return {"loss": loss, "reward_chosen": reward_c, "reward_rejected": reward_r,
                "logp_chosen": policy_c.detach(), "logp_rejected": policy_r.detach()}


def pair_stats(outputs: list[dict]) -> dict:
    """Step or held-out figures from PreferenceLoss outputs: mean rewards and margin, reward accuracy (the policy
    prefers chosen more than the reference did) and preference accuracy (log p(chosen) > log p(rejected), what
    `edgeft eval --pairs` measures on the GGUF)."""
    import torch

    def cat(key):
        return torch.cat([o[key].float() for o in outputs])

    reward_c, reward_r = cat("reward_chosen"), cat("reward_rejected")
    return {"reward_chosen": float(reward_c.mean()), "reward_rejected": float(reward_r.mean()),
            "reward_margin": float((reward_c - reward_r).mean()),
            "reward_accuracy": float((reward_c > reward_r).float().mean()),
            "pref_accuracy": float((cat("logp_chosen") > cat("logp_rejected")).float().mean())}
