"""--precision: auto picks bf16 only where the hardware multiplies bf16 natively, an explicit bf16 where it cannot is
one line before anything loads, and the choice is in the summary. The CPU probe is patched both ways, so each side
runs on any CPU (this suite's machine has AVX512F without AVX512-BF16)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import edgeft.train.precision as precision
from edgeft.cli import main
from convert.common.errors import EdgeftError
from edgeft.train.precision import resolve_precision
from edgeft.train.recipe import resolve_recipe
from tests.factory import build_model
from tests.train_helpers import toy_data

torch = pytest.importorskip("torch")


@pytest.fixture()
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("has_bf16, setting, compute", [
    (True, "auto", "bf16"), (True, "bf16", "bf16"), (True, "fp32", "fp32"),
    (False, "auto", "fp32"), (False, "fp32", "fp32"),
])
def test_precision_follows_the_cpu(monkeypatch, cpu_only, has_bf16, setting, compute):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    chosen = resolve_precision(setting)
    assert (chosen.setting, chosen.compute) == (setting, compute)
    assert chosen.describe().startswith(compute)
    if setting == "auto" and not has_bf16:
        assert "no AVX512-BF16 or AMX" in chosen.reason


def test_bf16_on_a_cpu_without_it_is_one_line(monkeypatch, cpu_only):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(EdgeftError) as info:
        resolve_precision("bf16")
    message = str(info.value)
    assert "\n" not in message and "--precision bf16" in message and "--precision auto" in message


def test_cli_bf16_without_cpu_support_stops_before_loading(tmp_path, monkeypatch, cpu_only, no_model_load):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    train, _ = toy_data(tmp_path)
    result = CliRunner().invoke(main, ["train", "--base", str(build_model("qwen2")), "--data", str(train), "-o",
                                       str(tmp_path / "out"), "--precision", "bf16"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: --precision bf16: this CPU has no AVX512-BF16 or AMX")
    assert not (tmp_path / "out").exists()


def test_paged_optimizer_without_cuda_is_one_line(tmp_path, cpu_only, no_model_load):
    from edgeft.train import train

    data, _ = toy_data(tmp_path)
    with pytest.raises(EdgeftError, match="paged 8-bit AdamW runs on CUDA only") as info:
        train(build_model("qwen2"), data, tmp_path / "out", config={"optimizer": "paged_adamw_8bit"}, progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("precision", "fp16"), ("optimizer", "sgd")])
def test_unknown_precision_or_optimizer_in_a_recipe(key, value):
    with pytest.raises(EdgeftError, match=f"{key}='{value}' is not one of"):
        resolve_recipe({key: value})


def test_bf16_autocast_keeps_lora_weights_and_their_gradients_fp32(monkeypatch, cpu_only):
    """Master weights and optimizer state stay fp32: autocast only changes what the matmuls compute in."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from edgeft.train.forward import step_batches, token_loss_sum

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    chosen = resolve_precision("auto")
    model = AutoModelForCausalLM.from_pretrained(str(build_model("llama")), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear"))
    example = {"input_ids": list(range(3, 15)), "labels": [-100] * 6 + list(range(9, 15))}
    batch = next(step_batches([[example]], packing=True, micro_batch=1, max_len=32, pad_id=0, device="cpu"))
    token_loss_sum(model, batch, chosen).backward()
    lora = [p for p in model.parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in lora)
    with chosen.autocast("cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
