"""QLoRA on every CPU: bitsandbytes' AVX512-BF16 packed path is exercised on purpose (forced on and off), whatever
CPU this runs on, and a kill during the post-training eval leaves a complete adapter."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, edgeft_env, toy_data, ROOT

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")


def _layer(in_features: int, out_features: int, packed_switch: bool):
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer = layer.to("cpu")  # quantizes the weight
    layer.support_avx512bf16_for_cpu = packed_switch  # what bitsandbytes sets from the CPU's AVX512-BF16 flag
    return layer


def test_packed_path_rejects_a_width_that_is_not_a_multiple_of_the_block():
    # The fault users met on AVX512-BF16 CPUs, reproduced on any CPU: the repacking is plain torch and fails first.
    layer = _layer(160, 64, packed_switch=True).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="invalid for input of size"):
        layer(torch.randn(2, 160))


@pytest.mark.parametrize("width", [160, 256])
def test_keep_training_layout_makes_eval_equal_training_kernels(width):
    from edgeft.train.model import keep_training_layout

    model = torch.nn.Sequential(_layer(width, 64, packed_switch=True))
    x = torch.randn(3, width)
    with torch.no_grad():
        trained = model.train()(x)
    assert keep_training_layout(model) == 1
    with torch.no_grad():
        evaluated = model.eval()(x)
    assert not getattr(model[0].weight.quant_state, "packing_format_for_cpu", False)
    assert torch.equal(trained, evaluated)


@pytest.fixture(scope="module")
def base_160():
    path = build_model("llama")
    import json

    assert json.loads((path / "config.json").read_text())["intermediate_size"] == 160
    return path


@pytest.mark.parametrize("cpu_has_avx512_bf16", [True, False])
def test_qlora_with_width_160_trains_evals_and_saves_on_both_cpu_kinds(base_160, tmp_path, monkeypatch,
                                                                      cpu_has_avx512_bf16):
    import bitsandbytes.nn.modules as bnb_modules
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from edgeft.train import train

    # Linear4bit reads the CPU flag when it is built: this is what a Sapphire Rapids / Zen 4 CPU (True) or an
    # AVX2 laptop (False) looks like to it.
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: cpu_has_avx512_bf16)
    train_path, eval_path = toy_data(tmp_path)
    out = train(base_160, train_path, tmp_path / "out", eval_path=eval_path, config=dict(TINY_RECIPE),
                max_steps=2, progress=False)
    metrics = (out / "metrics.jsonl").read_text()
    assert '"eval_loss"' in metrics  # the held-out eval after the last step ran
    assert (out / "adapter_model.safetensors").is_file() and (out / "summary.json").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_160)), str(out))
    assert any("lora_A" in name for name, _ in model.named_parameters())


KILL_IN_FINAL_EVAL = textwrap.dedent("""
    import os, signal, sys
    import edgeft.train.loop as loop

    def killed_eval(*args, **kwargs):  # the post-training eval: the process dies right here
        os.kill(os.getpid(), signal.SIGKILL)

    loop.evaluate = killed_eval
    from edgeft.train import train
    base, data, evals, out, recipe = sys.argv[1:6]
    train(base, data, out, eval_path=evals, config=recipe, progress=False)
""")


def test_kill_during_post_training_eval_leaves_a_complete_adapter(base_160, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.train_helpers import write_recipe

    train_path, eval_path = toy_data(tmp_path)
    # eval_every beyond the run: the only eval is the one after the final step.
    recipe = write_recipe(tmp_path / "recipe.yaml", max_steps=2, eval_every=100, save_every=100)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILL_IN_FINAL_EVAL, str(base_160), str(train_path),
                           str(eval_path), str(out), str(recipe)],
                          env=edgeft_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "summary.json").exists()  # it really died before finishing
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_160)), str(out))
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)  # trained weights, not the zero init
