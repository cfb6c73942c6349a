"""Packed rows and logits at the labelled positions only compute exactly what padded micro-batches with full logits
compute: the same loss and LoRA gradients, no attention between the conversations of a row (on architectures with
sliding windows and logit soft-capping, with sdpa and eager attention), the same learning over a run."""

from __future__ import annotations

import json
import random

import pytest

from edgeft.train.packing import IGNORE, block_length, loss_span, pack_rows, plan_forwards
from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, toy_data

torch = pytest.importorskip("torch")


def _examples(vocab: int, n: int = 9, seed: int = 0, system: int = 0) -> list[dict]:
    """Chats of different lengths: a prompt without labels, a labelled answer, sometimes unlabelled tokens after
    it (what a template may put after the end-of-turn token), which packing leaves out. With `system`, most begin
    with the same `system` tokens (a system prompt), some with another start."""
    rng = random.Random(seed)
    starts = [[rng.randrange(3, vocab) for _ in range(system)] for _ in range(2)]
    examples = []
    for k in range(n):
        prompt, answer, tail = rng.randint(3, 20), rng.randint(2, 9), rng.choice([0, 0, 1, 2])
        ids = [rng.randrange(3, vocab) for _ in range(prompt + answer + tail)]
        ids[:0] = starts[k % 4 == 3] if system else []
        prompt += system
        labels = [IGNORE] * prompt + ids[prompt:prompt + answer] + [IGNORE] * tail
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def _lora_model(arch: str, attn: str | None = None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    kwargs = {"attn_implementation": attn} if attn else {}  # else the model's default (gemma2: eager only)
    model = AutoModelForCausalLM.from_pretrained(str(build_model(arch)), dtype=torch.float32, **kwargs)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():  # B starts at zero, which would leave every A gradient zero: nothing to compare
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def _loss_and_grads(model, batches):
    from edgeft.train.forward import token_loss_sum

    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        summed = token_loss_sum(model, batch)
        summed.backward()
        total += float(summed.detach())
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch, share", [("llama", False), ("llama", True), ("gemma2", False), ("gemma2", True)])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(arch, share):
    """gemma2: eager attention (the additive mask), soft-capped logits, a sliding window (64) wider than a row."""
    from edgeft.train.forward import shared_prefix_mask_form, step_batches
    from edgeft.train.recipe import Recipe

    model = _lora_model(arch)
    examples = _examples(model.config.vocab_size, n=12, system=12 if share else 0)
    micro_batches = [examples[i:i + 3] for i in range(0, len(examples), 3)]
    settings = {"micro_batch": 3, "max_len": 48, "pad_id": 0, "device": "cpu"}
    mask = shared_prefix_mask_form(model, Recipe(max_len=48, share_prefixes=share))
    assert (mask is not None) == share
    packed = list(step_batches(micro_batches, packing=True, mask=mask, **settings))
    assert len(packed) < len(micro_batches) and max(b["input_ids"].shape[1] for b in packed) <= 48
    assert any(int((b["position_ids"] == 0).sum()) > b["input_ids"].shape[0] for b in packed)  # rows hold several
    assert ("attention_mask" in packed[0]) == share
    if share:  # each start is computed once per block, not once per conversation
        blocks = [block for rows in plan_forwards(examples, micro_batch=3, max_len=48, share=True)
                  for row in rows for block in row]
        assert sum(block_length(examples, b) for b in blocks) <= sum(loss_span(e) for e in examples) - 12 * 6
    padded_loss, padded_grads = _loss_and_grads(model, step_batches(micro_batches, packing=False, **settings))
    packed_loss, packed_grads = _loss_and_grads(model, packed)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    assert any(float(g.abs().max()) > 0 for n, g in padded_grads.items() if "lora_A" in n)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()) + 1e-8)


@pytest.mark.parametrize("packing", [False, True])
def test_logits_at_the_labelled_positions_give_the_full_logits_loss(packing):
    import torch.nn.functional as F

    from edgeft.train.forward import logits_only_at, step_batches, token_loss_sum

    model = _lora_model("gemma2")  # soft-capped logits: what the model does after its head applies to the rows kept
    batch = next(step_batches([_examples(model.config.vocab_size, n=4)], packing=packing, micro_batch=4, max_len=64,
                              pad_id=0, device="cpu"))
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    full = model(**inputs).logits
    keep = batch["targets"] != IGNORE
    reference = F.cross_entropy(full[keep], batch["targets"][keep], reduction="sum")
    assert float(token_loss_sum(model, batch)) == pytest.approx(float(reference), rel=1e-6)
    with logits_only_at(model, keep):
        selected = model(**inputs).logits
    assert selected.shape == (1, int(keep.sum()), full.shape[-1])
    torch.testing.assert_close(selected[0], full[keep], rtol=1e-5, atol=1e-5)
    assert not model.get_output_embeddings()._forward_pre_hooks  # the selection ends with the context


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"),
                                        ("mistral", "eager"), ("gemma2", "eager"), ("phi3", "sdpa")])
def test_no_attention_crosses_packed_conversations(arch, attn):
    """Each conversation's logits in a packed row are its logits alone; the same row read as one sequence (positions
    not restarting) gives other logits, so a leaking mask would fail here."""
    from edgeft.train.packing import packed_batch

    model = _lora_model(arch, attn).eval()
    examples = _examples(model.config.vocab_size, n=3, seed=1)
    batch = packed_batch(examples, [[(0, [0]), (0, [1]), (0, [2])]], pad_id=0, device="cpu")
    assert "attention_mask" not in batch  # position restarts alone mark the boundaries
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        at = 0
        for example in examples:
            n = loss_span(example)
            alone = model(input_ids=torch.tensor([example["input_ids"][:n]])).logits[0]
            torch.testing.assert_close(packed[at:at + n], alone, rtol=1e-4, atol=1e-4)
            at += n
        width = batch["input_ids"].shape[1]
        one_sequence = model(input_ids=batch["input_ids"], position_ids=torch.arange(width)[None]).logits[0]
    start = loss_span(examples[0])
    assert not torch.allclose(one_sequence[start:start + 3], packed[start:start + 3], atol=1e-3)


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("gemma2", "eager")])
def test_conversations_sharing_a_prefix_see_it_and_nothing_of_each_other(arch, attn):
    """Three conversations after one copy of their common start: each one's logits are its logits alone, and the
    mask with one conversation allowed to read another changes them (so a leaking mask would fail here)."""
    from edgeft.train.forward import MASK_FORMS
    from edgeft.train.packing import packed_batch, shared_prefix_mask

    model = _lora_model(arch, attn).eval()
    examples = _examples(model.config.vocab_size, n=3, seed=2, system=10)
    examples[2] = _examples(model.config.vocab_size, n=1, seed=2, system=10)[0]  # same start as the first two
    batch = packed_batch(examples, [[(10, [0, 1, 2])], [(0, [0])]], pad_id=0, device="cpu", mask=MASK_FORMS[attn])
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    with torch.no_grad():
        packed = model(**inputs).logits[0]
        at = 10
        for example in examples:
            n = loss_span(example)
            alone = model(input_ids=torch.tensor([example["input_ids"][:n]])).logits[0]
            torch.testing.assert_close(packed[:10], alone[:10], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(packed[at:at + n - 10], alone[10:], rtol=1e-4, atol=1e-4)
            at += n - 10
        width = batch["input_ids"].shape[1]
        # the first conversation marked as part of the prefix: the others read it
        owners = torch.tensor([[-1] * loss_span(examples[0]) + [1] * (width - loss_span(examples[0]))])
        leaky = shared_prefix_mask(torch.zeros(1, width, dtype=torch.long), owners, MASK_FORMS[attn])
        leaked = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1],
                       attention_mask=leaky).logits[0]
    second = loss_span(examples[0])
    assert not torch.allclose(leaked[second:second + 3], packed[second:second + 3], atol=1e-3)


def test_pack_rows_fills_rows_evenly_and_keeps_everything():
    spans = [30, 5, 17, 28, 9, 2, 40, 11, 3]
    rows = pack_rows(spans, 40)
    assert sorted(i for row in rows for i in row) == list(range(len(spans)))
    loads = [sum(spans[i] for i in row) for row in rows]
    assert max(loads) <= 40 and len(rows) == 4 and max(loads) - min(loads) <= 12
    assert pack_rows(spans, 40) == rows  # deterministic: a resumed run packs the same rows


@pytest.mark.parametrize("share", [False, True])
def test_plan_forwards_bounds_tokens_per_forward_and_drops_conversations_without_targets(share):
    examples = [{"input_ids": list(range(n)), "labels": [IGNORE] * (n - 2) + [1, 1]} for n in (10, 20, 30, 5, 25)]
    examples.append({"input_ids": [1] * 8, "labels": [IGNORE] * 8})
    forwards = plan_forwards(examples, micro_batch=2, max_len=32, share=share)
    placed = sorted(i for rows in forwards for row in rows for _, members in row for i in members)
    assert placed == [0, 1, 2, 3, 4]
    width = max(sum(block_length(examples, block) for block in row) for rows in forwards for row in rows)
    assert len(forwards) > 1 and all(len(rows) * width <= 2 * 32 for rows in forwards)
    shared = sorted((prefix, sorted(members)) for rows in forwards for row in rows for prefix, members in row
                    if len(members) > 1)
    # 20, 25 and 30 tokens share their first 17 (where the 20's targets begin), but the three rests (3 + 8 + 13)
    # after one prefix exceed a row of 32: the 30 gets a block of its own. The 10's start is too short (7) to share.
    assert shared == ([(17, [1, 4])] if share else [])


def test_a_sliding_window_shorter_than_a_row_turns_sharing_off():
    from edgeft.train.forward import shared_prefix_mask_form
    from edgeft.train.recipe import Recipe

    model = _lora_model("gemma2")  # window 64
    assert shared_prefix_mask_form(model, Recipe(max_len=64)) == "additive"
    assert shared_prefix_mask_form(model, Recipe(max_len=65)) is None
    assert shared_prefix_mask_form(model, Recipe(max_len=64, packing=False)) is None


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_packed_run_learns_as_the_padded_fp32_run(tmp_path, monkeypatch):
    """A short run, same seed and data order: the packed loss curve is the padded one (fp32, rounding apart), and
    so is the bf16 one within 2% mean relative difference (bf16 forced on: emulated here, but the same arithmetic)."""
    import edgeft.train.precision as precision
    from edgeft.train import train

    base = build_model("llama")
    data, _ = toy_data(tmp_path, n_train=24)
    config = dict(TINY_RECIPE, max_steps=6, save_every=100, lr=5e-3, dropout=0.0)  # dropout draws differ by layout
    curves = {}
    for name, settings in {"padded": {"packing": False, "precision": "fp32"},
                           "packed": {"packing": True, "precision": "fp32"},
                           "bf16": {"packing": True, "precision": "bf16"}}.items():
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: name == "bf16")
        out = train(base, data, tmp_path / name, config={**config, **settings}, progress=False)
        curves[name] = _losses(out)
        assert json.loads((out / "summary.json").read_text())["precision"] == settings["precision"]
    assert len(curves["padded"]) == 6 and curves["padded"][-1] < curves["padded"][0]

    def mean_relative_difference(curve):
        return sum(abs(a - b) / abs(b) for a, b in zip(curve, curves["padded"])) / len(curve)

    assert mean_relative_difference(curves["packed"]) < 1e-4
    assert mean_relative_difference(curves["bf16"]) < 0.02
