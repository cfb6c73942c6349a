"""edgeft merge: merged HF logits equal the unmerged peft model's, for every architecture and LoRA variant.

The reference is peft itself running the adapter unmerged on the same base (f32), with random non-zero lora_B so
the adapter actually moves the logits (each test also checks that it does, so a merge that drops the adapter fails).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from click.testing import CliRunner  # noqa: E402

from convert.common.errors import EdgeftError  # noqa: E402
from edgeft.merge import merge_adapter  # noqa: E402
from tests.factory import ARCHS, MOE_ARCHS, build_model  # noqa: E402

PROMPT_IDS = list(range(3, 40))
TOLERANCE = 1e-4
# MoE: attention and the router (peft puts the router's `gate` in target_parameters as `gate.weight`); "all-linear"
# there would also train the stacked experts, which are refused (see test_expert_lora_is_refused_in_one_line).
MOE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate"]


def default_targets(arch: str) -> dict:
    return {"target_modules": MOE_TARGETS} if arch in MOE_ARCHS else {}


def make_adapter(base_dir: Path, out_dir: Path, *, seed: int = 1, resize_vocab: int | None = None,
                 prompt_ids: list[int] = PROMPT_IDS, save_embedding_layers: bool | str = "auto",
                 **lora_kwargs) -> tuple[Path, np.ndarray, np.ndarray]:
    """Save a peft LoRA adapter with random non-zero weights; return (dir, peft logits, base logits) in f32.

    save_embedding_layers: peft's; "auto" saves a resized embedding whole, False (what `edgeft train` passes) only
    the trainable token rows."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = model(torch.tensor([PROMPT_IDS])).logits[0].numpy()
    if resize_vocab:
        model.resize_token_embeddings(resize_vocab)
    ids = torch.tensor([prompt_ids])
    lora_kwargs.setdefault("target_modules", "all-linear")
    config = peft.LoraConfig(r=lora_kwargs.pop("r", 8), lora_alpha=lora_kwargs.pop("lora_alpha", 16), **lora_kwargs)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if any(part in name for part in ("lora_", "trainable_tokens", "modules_to_save")):
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.eval()
    peft_model.save_pretrained(out_dir, save_embedding_layers=save_embedding_layers)
    with torch.no_grad():
        adapted_logits = peft_model(ids).logits[0].numpy()
    return out_dir, adapted_logits, base_logits


def hf_logits(model_dir: Path, prompt_ids: list[int] = PROMPT_IDS) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([prompt_ids])).logits[0].numpy()


def assert_matches_peft(merged: Path, adapted: np.ndarray, base: np.ndarray) -> None:
    got = hf_logits(merged)
    assert np.abs(adapted - base).max() > 0.1, "the adapter does not move the logits; the test would prove nothing"
    assert np.abs(got - adapted).max() <= TOLERANCE


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_logits_equal_peft(arch, tmp_path):
    base = build_model(arch)
    adapter, adapted, base_logits = make_adapter(base, tmp_path / "adapter", **default_targets(arch))
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    assert_matches_peft(merged, adapted, base_logits)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_router_lora_on_the_fused_layout(arch, tmp_path):
    # the other checkpoint layout transformers 5 writes; the router and attention tensors keep their names
    base = build_model(arch, expert_layout="fused")
    adapter, adapted, base_logits = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj", "gate"])
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    assert_matches_peft(merged, adapted, base_logits)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_expert_lora_is_refused_in_one_line(arch, tmp_path):
    from edgeft.cli import main

    base = build_model(arch)
    adapter, _, _ = make_adapter(base, tmp_path / "adapter")  # all-linear: peft adds the experts' 3-D parameters
    assert set(json.loads((adapter / "adapter_config.json").read_text())["target_parameters"]) > {"gate.weight"}
    result = CliRunner().invoke(main, ["merge", "--base", str(base), "--adapter", str(adapter), "-o",
                                       str(tmp_path / "merged")])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0, result.output
    assert "stacked MoE experts" in result.output and "down_proj" in result.output
    assert not (tmp_path / "merged").exists()


VARIANTS = {
    "rslora": dict(use_rslora=True, r=4),
    "dora": dict(use_dora=True),
    "patterns": dict(rank_pattern={"down_proj": 4}, alpha_pattern={"layers.1.self_attn.q_proj": 3}),
    "modules_to_save": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    "embedding_lora": dict(target_modules=["q_proj", "embed_tokens"]),
    "lora_bias": dict(target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True),
    "trainable_tokens": dict(target_modules=["q_proj"], trainable_token_indices=[1, 2, 5]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lora_variants(variant, tmp_path):
    base = build_model("qwen2")
    adapter, adapted, base_logits = make_adapter(base, tmp_path / "adapter", **VARIANTS[variant])
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    assert_matches_peft(merged, adapted, base_logits)


@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_tied_embeddings_are_untied_when_one_side_changes(target, tmp_path):
    # gemma2 ties lm_head to the embeddings; peft's LoRA on either side changes that side only.
    base = build_model("gemma2")
    adapter, adapted, base_logits = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj", target])
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is False
    assert_matches_peft(merged, adapted, base_logits)


def test_added_tokens_resize_embeddings(tmp_path):
    base = build_model("llama")
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    adapter, adapted, base_logits = make_adapter(base, tmp_path / "adapter", resize_vocab=vocab + 8,
                                                 target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"])
    # `edgeft train` saves the grown tokenizer into the adapter folder (with the base's BOS decision, which merge
    # checks); the merge must ship that one.
    saved = {"marker": "from-adapter", "add_bos_token": True, "bos_token": "<|begin_of_text|>"}
    (adapter / "tokenizer_config.json").write_text(json.dumps(saved))
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    assert json.loads((merged / "config.json").read_text())["vocab_size"] == vocab + 8
    assert json.loads((merged / "tokenizer_config.json").read_text()) == saved
    got = hf_logits(merged)
    assert got.shape == adapted.shape
    assert np.abs(got - adapted).max() <= TOLERANCE


def save_grown_tokenizer(base: Path, adapter: Path, added: int) -> None:
    """What `edgeft train` saves with the adapter when it adds tokens: the base's tokenizer plus `added` special
    tokens (ids from the base's vocab_size on, as the fixtures have no spare rows), with the base's BOS decision."""
    from transformers import AutoTokenizer

    from convert.vocab.special import bos_llama_cpp_adds, state_add_bos

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.add_tokens([f"<|new_{i}|>" for i in range(added)], special_tokens=True)
    tokenizer.save_pretrained(str(adapter))
    state_add_bos(adapter, bos_llama_cpp_adds(base))
    if (base / "tokenizer.model").is_file():  # save_pretrained does not write it; training copies it
        shutil.copyfile(base / "tokenizer.model", adapter / "tokenizer.model")


# True: peft saves the resized embeddings whole. False: only the trained rows, as `edgeft train` saves them
# (save_embedding_layers=False), so merge grows the fixtures' vocabulary (no spare rows) to the adapter's tokenizer.
@pytest.mark.parametrize("whole", [True, False], ids=["whole embeddings", "rows only"])
@pytest.mark.parametrize("arch, tie", [("llama", False), ("llama", True), ("qwen2", True), ("gemma2", True)])
def test_added_tokens_trained_as_token_rows(arch, tie, whole, tmp_path):
    # What `edgeft train` does when the template needs new tokens: resize, then train only the new rows through
    # peft's trainable tokens (on lm_head too when it is a separate tensor).
    from gguf import GGUFReader

    from convert import convert_model
    from edgeft.data.masking import load_tokenizer

    base = build_model(arch, tie=tie)
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    assert vocab == len(load_tokenizer(base))  # no spare rows for the new tokens
    new_ids = [vocab, vocab + 1, vocab + 2]
    indices = {"embed_tokens": new_ids} if tie or arch == "gemma2" else {"embed_tokens": new_ids, "lm_head": new_ids}
    prompt = PROMPT_IDS[:10] + new_ids + PROMPT_IDS[10:]
    adapter, adapted, _ = make_adapter(base, tmp_path / "adapter", resize_vocab=vocab + 3, prompt_ids=prompt,
                                       target_modules=["q_proj"], trainable_token_indices=indices,
                                       save_embedding_layers="auto" if whole else False)
    if not whole:
        save_grown_tokenizer(base, adapter, 3)
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    config = json.loads((merged / "config.json").read_text())
    assert config["vocab_size"] == vocab + 3
    assert config.get("tie_word_embeddings", False) == (tie or arch == "gemma2")  # a tied base stays tied
    got = hf_logits(merged, prompt)
    assert got.shape == adapted.shape
    assert np.abs(got - adapted).max() <= TOLERANCE
    if not whole:
        gguf = convert_model(merged, tmp_path / "merged.gguf", outtype="f32")
        embedding = next(t for t in GGUFReader(gguf).tensors if t.name == "token_embd.weight")
        assert [int(n) for n in embedding.shape] == [64, vocab + 3]


def test_added_token_rows_not_saved_start_at_the_mean_row(tmp_path):
    """A row the adapter's tokenizer has but the adapter saved no trained row for starts where transformers'
    resize_token_embeddings started it: the mean row (peft's reference adds noise of 1e-9 times the covariance)."""
    from safetensors import safe_open

    base = build_model("llama")
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    trained = {"embed_tokens": [vocab, vocab + 1], "lm_head": [vocab, vocab + 1]}
    prompt = PROMPT_IDS[:10] + [vocab, vocab + 1] + PROMPT_IDS[10:]
    adapter, adapted, _ = make_adapter(base, tmp_path / "adapter", resize_vocab=vocab + 3, prompt_ids=prompt,
                                       target_modules=["q_proj"], trainable_token_indices=trained,
                                       save_embedding_layers=False)
    save_grown_tokenizer(base, adapter, 3)
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    got = hf_logits(merged, prompt)
    assert got.shape == adapted.shape
    # the unsaved row's own logit differs from peft's by that noise (1.2e-4 measured), every other one as usual
    assert np.abs(got[:, :vocab + 2] - adapted[:, :vocab + 2]).max() <= TOLERANCE
    assert np.abs(got[:, vocab + 2] - adapted[:, vocab + 2]).max() <= 1e-3
    with safe_open(base / "model.safetensors", "np") as before, safe_open(merged / "model.safetensors", "np") as after:
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert np.allclose(after.get_tensor(name)[vocab + 2], before.get_tensor(name).mean(axis=0), atol=1e-6)


def test_sharded_bf16_base_keeps_layout_and_side_files(tmp_path):
    from safetensors import safe_open

    base = build_model("qwen2", shards=3, dtype="bfloat16")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj", "down_proj"])
    (adapter / "chat_template.jinja").write_text("{{ messages }}")
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    base_index = json.loads((base / "model.safetensors.index.json").read_text())
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == base_index["weight_map"]
    total = sum((merged / shard).stat().st_size for shard in set(index["weight_map"].values()))
    assert 0 < index["metadata"]["total_size"] < total
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (merged / name).exists(), name
    assert (merged / "chat_template.jinja").read_text() == "{{ messages }}"

    # Reference: the same merge done whole-tensor in torch from the bf16 base, rounded back to bf16.
    from convert.adapter_file import load_adapter

    pairs = load_adapter(adapter).pairs
    for name, shard in index["weight_map"].items():
        with safe_open(merged / shard, "pt") as out, safe_open(base / base_index["weight_map"][name], "pt") as ref:
            got, original = out.get_tensor(name), ref.get_tensor(name)
        assert got.dtype == torch.bfloat16
        expected = original
        if name in pairs:
            pair = pairs[name]
            expected = (original.float() + pair.scale * torch.from_numpy(pair.B) @ torch.from_numpy(pair.A)).bfloat16()
        assert torch.equal(got, expected), name


def test_dtype_option_converts_and_records(tmp_path):
    from safetensors import safe_open

    base = build_model("llama")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    merged = merge_adapter(base, adapter, tmp_path / "merged", dtype="f16", nf4_report=False)
    with safe_open(merged / "model.safetensors", "pt") as handle:
        assert {handle.get_tensor(name).dtype for name in handle.keys()} == {torch.float16}
    config = json.loads((merged / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"


def test_nf4_comparison_matches_bitsandbytes(tmp_path):
    import bitsandbytes.functional as bnb

    from convert.adapter_file import load_adapter
    from safetensors import safe_open

    # aligned: bitsandbytes' CPU dequantize treats rows whose length is not a multiple of 64 differently from its
    # quantize (real models' widths are multiples of 64), so compare where the two agree.
    base = build_model("llama", aligned=True)
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj", "down_proj", "lm_head"])
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    report = json.loads((merged / "merge_report.json").read_text())["nf4_merge_comparison"]
    diff_sq = merged_sq = 0.0
    with safe_open(base / "model.safetensors", "pt") as handle:
        for name, pair in load_adapter(adapter).pairs.items():
            if name == "lm_head.weight":  # QLoRA keeps the output head unquantized
                continue
            weight = handle.get_tensor(name).float()
            packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
            delta = pair.scale * torch.from_numpy(pair.B) @ torch.from_numpy(pair.A)
            high, low = weight + delta, bnb.dequantize_4bit(packed, state) + delta
            diff_sq += float((high - low).square().sum())
            merged_sq += float(high.square().sum())
    assert report["relative_error"] == pytest.approx(math.sqrt(diff_sq / merged_sq), rel=1e-4)
    assert 0.001 < report["relative_error"] < 0.5


# ---- bad input ----------------------------------------------------------------------------------------------

def _leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith(".merged"))


def test_missing_adapter_config(tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(EdgeftError, match="no adapter_config.json"):
        merge_adapter(build_model("llama"), tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_unsupported_adapter_type(tmp_path):
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    base = build_model("llama")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    get_peft_model(model, IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
                   ).save_pretrained(tmp_path / "ia3")
    with pytest.raises(EdgeftError, match="adapter type 'IA3' is not supported"):
        merge_adapter(base, tmp_path / "ia3", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_failure_mid_merge_leaves_no_output(tmp_path, monkeypatch):
    import edgeft.merge as merge_module

    base = build_model("qwen2", shards=2)
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    from tests.hostile import interrupted_on_call

    monkeypatch.setattr(merge_module, "_write_job", interrupted_on_call(merge_module._write_job, 5))
    with pytest.raises(KeyboardInterrupt):
        merge_adapter(base, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not _leftovers(tmp_path)


def test_cli_merge_and_one_line_error(tmp_path):
    from edgeft.cli import main

    base = build_model("phi3")
    adapter, adapted, base_logits = make_adapter(base, tmp_path / "adapter", target_modules=["qkv_proj"])
    runner = CliRunner()
    result = runner.invoke(main, ["merge", "--base", str(base), "--adapter", str(adapter), "-o", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "NF4-dequantized" in result.output
    assert_matches_peft(tmp_path / "m", adapted, base_logits)

    os.remove(adapter / "adapter_config.json")
    result = runner.invoke(main, ["merge", "--base", str(base), "--adapter", str(adapter), "-o", str(tmp_path / "n")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "adapter_config.json" in result.output
