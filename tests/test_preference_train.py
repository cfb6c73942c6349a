"""`edgeft train --objective dpo|orpo` end to end on a fixture model (the SFT loop, pairs instead of
conversations), `--from-adapter` on an SFT run, and the bad inputs: one line each, nothing written."""

from __future__ import annotations

import json

import pytest

from convert.common.errors import EdgeftError
from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, toy_data, write_jsonl

torch = pytest.importorskip("torch")


def toy_pair(i: int) -> dict:
    return {"prompt": f"What colour is box number {i}?", "chosen": "The box is blue.",
            "rejected": f"Box {i} is probably red, or maybe green."}


@pytest.fixture(scope="module")
def base():
    return build_model("qwen2")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    return (write_jsonl(folder / "train.jsonl", [toy_pair(i) for i in range(8)]),
            write_jsonl(folder / "eval.jsonl", [toy_pair(100 + i) for i in range(4)]))


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_run(base, tmp_path_factory):
    from edgeft.train import train

    folder = tmp_path_factory.mktemp("sft")
    data, _ = toy_data(folder, n_train=8)
    # No dropout: a continued adapter keeps its own LoRA settings, so the DPO runs on it are deterministic.
    return train(base, data, folder / "out", config={**TINY_RECIPE, "method": "lora", "dropout": 0.0}, max_steps=2,
                 progress=False)


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_preference_training_learns_the_preference(base, pairs, tmp_path, objective):
    from edgeft.train import train

    out = train(base, pairs[0], tmp_path / "out", eval_path=pairs[1], progress=False, objective=objective,
                config={**TINY_RECIPE, "method": "lora", "beta": 0.5, "early_stop": None}, max_steps=6)
    rows = metrics(out)
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert len(steps) == 6 and all("reward_margin" in r and "pref_accuracy" in r for r in steps)
    assert evals and all("eval_pref_accuracy" in r and "eval_reward_margin" in r for r in evals)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert evals[-1]["eval_reward_margin"] > evals[0]["eval_reward_margin"] - 1e-9
    assert (out / "adapter_config.json").is_file() and not (out / "ref").exists()
    assert "objective: " + objective in (out / "recipe.yaml").read_text()
    from edgeft.train import format_summary

    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == objective and f"lora, {objective} objective" in format_summary(summary)[0]


def test_dpo_from_an_sft_adapter_starts_at_its_reference(base, pairs, sft_run, tmp_path):
    """The policy starts as the SFT adapter and the reference is its frozen copy: the first step's rewards are 0
    and the loss is log 2, whatever the SFT adapter learnt."""
    from edgeft.train import train

    out = train(base, pairs[0], tmp_path / "out", progress=False, objective="dpo", from_adapter=str(sft_run),
                config={**TINY_RECIPE, "method": "lora"}, max_steps=2)
    first = [r for r in metrics(out) if "loss" in r][0]
    assert abs(first["loss"] - 0.6931471805599453) < 1e-5 and abs(first["reward_margin"]) < 1e-6
    assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()


def expect_refusal(tmp_path, match, base, data, **overrides):
    from edgeft.train import train

    out = tmp_path / "refused"
    with pytest.raises(EdgeftError, match=match) as info:
        train(base, data, out, progress=False, config={**TINY_RECIPE, "method": "lora"}, max_steps=1, **overrides)
    assert "\n" not in str(info.value) and not out.exists()


def test_bad_input_is_one_line_and_writes_nothing(base, pairs, sft_run, tmp_path):
    conversations, _ = toy_data(tmp_path / "sft", n_train=4)
    expect_refusal(tmp_path, "holds conversations, and --objective dpo", base, conversations, objective="dpo")
    expect_refusal(tmp_path, "holds preference pairs .* --objective sft", base, pairs[0])
    expect_refusal(tmp_path, r"beta=0\.0 must be a number > 0", base, pairs[0], objective="dpo", beta=0.0)
    expect_refusal(tmp_path, r"beta=-1\.0 must be", base, pairs[0], objective="orpo", beta=-1.0)
    no_rejected = write_jsonl(tmp_path / "a.jsonl", [toy_pair(0), {"prompt": "x", "chosen": "y"}])
    expect_refusal(tmp_path, 'missing "rejected"', base, no_rejected, objective="dpo")
    same = write_jsonl(tmp_path / "b.jsonl", [toy_pair(0), {"prompt": "x", "chosen": "y", "rejected": "y"}])
    expect_refusal(tmp_path, '"chosen" and "rejected" are identical', base, same, objective="dpo")
    other = build_model("llama")
    expect_refusal(tmp_path, f"--from-adapter {sft_run}: trained on base", other, pairs[0], objective="dpo",
                   from_adapter=str(sft_run))
    expect_refusal(tmp_path, "not a trained adapter", base, pairs[0], objective="dpo", from_adapter=str(tmp_path))


def test_data_check_reads_pairs(pairs, tmp_path):
    from edgeft.data.check import check_dataset

    rows = [toy_pair(0), toy_pair(0), {"prompt": "x", "chosen": "", "rejected": "z"},
            {"prompt": "What colour is box number 100?", "chosen": "The box is blue.", "rejected": "no"},
            {**toy_pair(0), "rejected": "another wrong answer"}]
    report = check_dataset(write_jsonl(tmp_path / "p.jsonl", rows), eval_path=pairs[1])
    kinds = {(f.line, f.kind) for f in report.errors}
    assert (2, "duplicate") in kinds and (3, "schema") in kinds and (4, "contaminated") in kinds
    assert not any(f.line in (1, 5) for f in report.errors)  # same prompt and chosen, another rejected: a new pair


def test_resume_from_a_checkpoint_ends_where_a_straight_run_does(base, pairs, sft_run, tmp_path):
    """DPO from an SFT adapter, resumed from its step-2 checkpoint: the same adapter as the straight run (the
    checkpoint holds only the trained adapter; the frozen reference is reloaded from --from-adapter)."""
    import shutil

    from safetensors.torch import load_file

    from edgeft.train import train

    settings = dict(progress=False, objective="dpo", from_adapter=str(sft_run), eval_path=pairs[1],
                    config={**TINY_RECIPE, "method": "lora", "keep": "last", "early_stop": None}, max_steps=4)
    straight = train(base, pairs[0], tmp_path / "straight", **settings)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for path in resumed.iterdir():  # what a kill right after the step-2 checkpoint leaves
        if path.name.startswith(("adapter", "summary")) or path.name == "loss.png":
            path.unlink()
    for checkpoint in (resumed / "checkpoints").iterdir():
        if checkpoint.name != "step-000002":
            shutil.rmtree(checkpoint)
    train(base, pairs[0], resumed, resume=True, **settings)
    expected, got = (load_file(str(out / "adapter_model.safetensors")) for out in (straight, resumed))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key
    assert [r.get("loss") for r in metrics(straight)] == pytest.approx([r.get("loss") for r in metrics(resumed)])


def test_data_sample_renders_both_sides_of_a_pair(base, pairs, tmp_path):
    from edgeft.data.sample import TRAIN_CLOSE, TRAIN_OPEN, write_sample

    page = write_sample(pairs[0], tmp_path / "sample.md", n=2, tokenizer_dir=base).read_text()
    assert page.count("## 1. chosen ") == 1 and page.count("## 1. rejected ") == 1 and "## 2. rejected " in page
    assert f"{TRAIN_OPEN}The box is blue.<|im_end|>{TRAIN_CLOSE}" in page
    assert f"{TRAIN_OPEN}Box " in page  # the rejected answer is marked as the trained span of its side
