"""DPO and ORPO against TRL as the reference: on a fixture model and a fixed batch of pairs tokenized by our SFT
mask, the loss, the rewards and the LoRA gradients equal TRL's DPOTrainer / ORPOTrainer computation in fp32."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

PAIRS = [
    {"prompt": "How many users are there?", "chosen": "SELECT COUNT(*) FROM users;",
     "rejected": "There are many users in the table."},
    {"prompt": [{"role": "system", "content": "Answer in SQL."}, {"role": "user", "content": "Names of admins?"}],
     "chosen": [{"role": "assistant", "content": "SELECT name FROM users WHERE admin = 1;"}],
     "rejected": [{"role": "assistant", "content": "SELECT name FROM users;"}]},
    {"prompt": "Oldest order?", "chosen": "SELECT * FROM orders ORDER BY day LIMIT 1;",
     "rejected": "SELECT * FROM orders;"},
]
BETA = 0.1


@pytest.fixture(scope="module")
def setup(fixture_model, tmp_path_factory):
    from edgeft.train.batches import tokenize_pairs
    from edgeft.train.model import load_tokenizer
    from edgeft.train.recipe import Recipe

    base = fixture_model("qwen2")
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    tok = load_tokenizer(base, Recipe(method="lora"))
    return base, tok, tokenize_pairs(path, tok.tokenizer, tok.chat_template, 512)


def lora_model(base, *, seed=0):
    """fp32 base + LoRA with random (non-zero) A and B, so policy and reference differ and every LoRA weight
    has a gradient."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.1
    return model


def lora_grads(model) -> dict:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def trl_examples(pairs) -> list[dict]:
    """Our masked pairs as TRL's tokenized preference rows: the prompt is what precedes the first labelled token,
    the completion runs to the last labelled one (the template's newline after the end-of-turn is not trained)."""
    rows = []
    for pair in pairs:
        parts = {}
        for side in ("chosen", "rejected"):
            labelled = [i for i, label in enumerate(pair[side]["labels"]) if label != -100]
            ids = pair[side]["input_ids"]
            parts[side] = (ids[:labelled[0]], ids[labelled[0]:labelled[-1] + 1])
            assert labelled == list(range(labelled[0], labelled[-1] + 1))  # one contiguous answer
        assert parts["chosen"][0] == parts["rejected"][0]
        rows.append({"prompt_ids": parts["chosen"][0], "chosen_ids": parts["chosen"][1],
                     "rejected_ids": parts["rejected"][1]})
    return rows


def ours(model, pairs, objective, pad_id):
    from edgeft.train.preference import PreferenceLoss

    n_tokens = sum(sum(1 for label in p["chosen"]["labels"][1:] if label != -100) for p in pairs)
    out = PreferenceLoss(objective, BETA, pad_id)(model, pairs, "cpu", n_pairs=len(pairs), n_chosen_tokens=n_tokens)
    out["loss"].backward()
    return out, lora_grads(model)


def assert_grads_equal(mine: dict, theirs: dict):
    assert mine.keys() == theirs.keys() and len(mine) > 0
    for name in mine:
        assert torch.allclose(mine[name], theirs[name], atol=1e-5, rtol=1e-4), name
    assert sum(float(g.abs().sum()) for g in mine.values()) > 0


def trl_dpo(model, tok, rows, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), beta=BETA, report_to="none", use_cpu=True, bf16=False,
                     per_device_train_batch_size=len(rows), gradient_checkpointing=False)
    # The trainer's own dataset is never read: the batch is ours, collated by TRL.
    dataset = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok.tokenizer)


def compare_with_trl(trainer, model, pairs, pad_id):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    assert trainer.model is model
    model.train()
    mine, my_grads = ours(model, pairs, "dpo", pad_id)
    rows = trl_examples(pairs)
    loss = trainer.compute_loss(model, DataCollatorForPreference(pad_token_id=pad_id)(rows))
    loss.backward()
    metrics = trainer._metrics["train"]
    assert abs(float(mine["loss"]) - float(loss)) < 1e-5
    assert abs(float(mine["reward_chosen"].mean()) - metrics["rewards/chosen"][-1]) < 1e-5
    assert abs(float(mine["reward_rejected"].mean()) - metrics["rewards/rejected"][-1]) < 1e-5
    assert float(mine["reward_chosen"].abs().sum()) > 1e-3  # policy and reference really differ
    assert_grads_equal(my_grads, lora_grads(model))


def test_dpo_equals_trl_dpo_trainer(setup, tmp_path):
    """A fresh adapter: the reference is the base with the adapter disabled (TRL: a peft model without "ref")."""
    from edgeft.train.preference import REFERENCE_ADAPTER

    base, tok, pairs = setup
    model = lora_model(base)
    trainer = trl_dpo(model, tok, trl_examples(pairs), tmp_path)
    model.delete_adapter(REFERENCE_ADAPTER)  # TRL copies the starting adapter as the reference; this run has none
    model.set_adapter("default")
    compare_with_trl(trainer, model, pairs, tok.pad_id)


def test_dpo_from_adapter_equals_trl_ref_adapter(setup, tmp_path):
    """--from-adapter: the reference is a frozen copy of the starting (SFT) adapter as a second peft adapter on the
    same base, TRL's "ref" adapter; after the trained adapter moves, both score against that copy."""
    from edgeft.train.preference import REFERENCE_ADAPTER

    base, tok, pairs = setup
    model = lora_model(base, seed=1)
    trainer = trl_dpo(model, tok, trl_examples(pairs), tmp_path)
    assert REFERENCE_ADAPTER in model.peft_config
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(f".{REFERENCE_ADAPTER}." in n for n in trainable)
    generator = torch.Generator().manual_seed(2)
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.data += torch.randn(param.shape, generator=generator) * 0.1
    compare_with_trl(trainer, model, pairs, tok.pad_id)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_orpo_equals_trl_orpo(setup):
    """TRL ships ORPO in trl.experimental.orpo: its per-token-mean log-probabilities and its odds-ratio loss, with
    the NLL over the assistant tokens (ours, as SFT's; TRL's trainer takes it over the prompt too)."""
    import torch.nn.functional as F
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    from edgeft.train.preference import pair_batch

    base, tok, pairs = setup
    model = lora_model(base)
    mine, my_grads = ours(model, pairs, "orpo", tok.pad_id)

    examples = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    batch = pair_batch(examples, tok.pad_id, "cpu")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    means = ORPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=True)
    n = len(pairs)
    trl_self = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device="cpu"))
    losses, reward_c, reward_r, _, _ = ORPOTrainer.odds_ratio_loss(trl_self, means[:n], means[n:])
    nll = F.cross_entropy(logits[:n, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:n, 1:].reshape(-1))
    loss = nll - losses.mean()
    loss.backward()
    assert abs(float(mine["loss"]) - float(loss)) < 1e-5
    assert torch.allclose(mine["reward_chosen"], reward_c, atol=1e-5)
    assert torch.allclose(mine["reward_rejected"], reward_r, atol=1e-5)
    assert_grads_equal(my_grads, lora_grads(model))


def test_beta_must_be_positive():
    from convert.common.errors import EdgeftError
    from edgeft.train.preference import PreferenceLoss

    for beta in (0, -0.1, True, "x"):
        with pytest.raises(EdgeftError, match="beta=.* must be a number > 0"):
            PreferenceLoss("dpo", beta, 0)


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_packed_pairs_give_the_padded_loss_and_gradients(setup, objective):
    """SFT's packing for pairs: rows without padding, the prompt a pair's two answers share (and the template's
    system prompt all pairs share) computed once; the loss, log-probabilities and LoRA gradients are the padded
    batch's (fp32, 1e-5). Fails if the packed rows leak attention across sequences or mis-assign a token."""
    from edgeft.train.forward import shared_prefix_mask_form
    from edgeft.train.preference import PairLayout, PreferenceLoss, _pair_batches
    from edgeft.train.recipe import Recipe

    base, tok, pairs = setup
    model = lora_model(base)
    pad_id = tok.tokenizer.pad_token_id
    n_tokens = sum(sum(1 for label in p["chosen"]["labels"][1:] if label != -100) for p in pairs)
    mask = shared_prefix_mask_form(model, Recipe(method="lora"))
    assert mask is not None
    examples = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    shared = _pair_batches(examples, pad_id, "cpu", PairLayout(True, 512, mask))
    assert "attention_mask" in shared[0]  # prefixes were shared, not only packed
    fed = sum(int((b["input_ids"] != pad_id).sum()) for b in shared)
    assert fed < sum(len(e["input_ids"]) for e in examples) * 0.8

    results = {}
    for name, layout in (("padded", PairLayout()), ("packed", PairLayout(True, 512, None)),
                         ("shared", PairLayout(True, 512, mask))):
        out = PreferenceLoss(objective, BETA, pad_id, layout=layout)(model, pairs, "cpu", n_pairs=len(pairs),
                                                                      n_chosen_tokens=n_tokens)
        out["loss"].backward()
        results[name] = (out, lora_grads(model))
    reference, reference_grads = results.pop("padded")
    for out, grads in results.values():
        for key in ("loss", "logp_chosen", "logp_rejected", "reward_chosen", "reward_rejected"):
            assert torch.allclose(out[key], reference[key], atol=1e-5, rtol=1e-5), key
        assert_grads_equal(grads, reference_grads)


def test_preference_forward_runs_under_the_runs_precision(setup, monkeypatch):
    """Both sides of the CPU-dependent path: fp32 where the CPU has no bf16, bf16 autocast where it has (made to
    say so here): the bf16 loss stays near the fp32 one and LoRA weights and gradients stay fp32."""
    from edgeft.train import precision as precision_module
    from edgeft.train.preference import PairLayout, PreferenceLoss

    base, tok, pairs = setup
    pad_id = tok.tokenizer.pad_token_id
    n_tokens = sum(sum(1 for label in p["chosen"]["labels"][1:] if label != -100) for p in pairs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    losses = {}
    for has_bf16 in (False, True):
        monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: has_bf16)
        chosen = precision_module.resolve_precision("auto")
        assert chosen.compute == ("bf16" if has_bf16 else "fp32")
        model = lora_model(base)
        out = PreferenceLoss("dpo", BETA, pad_id, chosen, PairLayout(True, 512, None))(
            model, pairs, "cpu", n_pairs=len(pairs), n_chosen_tokens=n_tokens)
        out["loss"].backward()
        lora = [p for p in model.parameters() if p.requires_grad]
        assert lora and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in lora)
        losses[chosen.compute] = float(out["loss"])
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * abs(losses["fp32"]) + 0.01
