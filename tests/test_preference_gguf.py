"""Preference through the file: a pair's log-probabilities through llama.cpp on an F32 GGUF equal the HF model's
over the SFT mask's tokens (what DPO trains), and `eval --pairs` reports accuracy and margin with intervals."""

from __future__ import annotations

import json

import pytest

from tests.convert_helpers import converted
from tests.factory import build_model

torch = pytest.importorskip("torch")

PAIRS = [
    {"prompt": "How many users are there?", "chosen": "SELECT COUNT(*) FROM users;",
     "rejected": "There are many users in the table, I think."},
    {"prompt": [{"role": "system", "content": "Answer in SQL."}, {"role": "user", "content": "Names of admins?"}],
     "chosen": [{"role": "assistant", "content": "SELECT name FROM users WHERE admin = 1;"}],
     "rejected": "SELECT name FROM users;"},
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    return path


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_pair_logprobs_through_llama_cpp_equal_hf(arch, pairs_file):
    from transformers import AutoModelForCausalLM

    from edgeft.train.batches import tokenize_pairs
    from edgeft.train.preference import pair_batch
    from edgeft.train.model import load_tokenizer
    from edgeft.train.preference import sequence_logps
    from edgeft.train.recipe import Recipe
    from runtime.load import open_gguf
    from runtime.pairs_eval import answer_logprob, answer_span, read_eval_pairs

    base = build_model(arch)
    tok = load_tokenizer(base, Recipe(method="lora"))
    hf = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    examples = [side for pair in tokenize_pairs(pairs_file, tok.tokenizer, tok.chat_template, 512)
                for side in (pair["chosen"], pair["rejected"])]
    batch = pair_batch(examples, tok.pad_id, "cpu")
    with torch.no_grad():
        hf_logps, _ = sequence_logps(hf(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                                     batch["labels"])
    gguf = converted(arch)
    # An F32 KV cache: llama.cpp's default F16 cache alone moves a 30-token sum by ~4e-3 on this model.
    llm = open_gguf(gguf, n_ctx=256, logits_all=True, type_k=0, type_v=0)
    try:
        index = 0
        for prompt, chosen, rejected in read_eval_pairs(pairs_file):
            for answer in (chosen, rejected):
                tokens, start = answer_span(llm, prompt, answer, path=str(gguf))
                labelled = [i for i, label in enumerate(examples[index]["labels"]) if label != -100]
                assert tokens == examples[index]["input_ids"][:labelled[-1] + 1]  # the ids training fed
                assert start == labelled[0]  # the same answer tokens
                logp = answer_logprob(llm, prompt, answer, path=str(gguf))
                assert abs(logp - float(hf_logps[index])) < 1e-3, (arch, index, logp, float(hf_logps[index]))
                index += 1
    finally:
        llm.close()


def test_preference_section_has_intervals_and_a_paired_gain(pairs_file):
    from runtime.pairs_eval import preference_section

    gguf = converted("qwen2")
    section = preference_section(gguf, gguf, pairs_file, n_ctx=256)
    assert section["n"] == 2 and len(section["model"]["margins"]) == 2
    for who in ("model", "baseline"):
        accuracy = section[who]["accuracy"]
        assert accuracy["low"] <= accuracy["mean"] <= accuracy["high"] and accuracy["n"] == 2
    assert section["model"]["margins"] == pytest.approx(section["baseline"]["margins"])
    assert section["gain"]["mean"] == 0.0


def test_eval_pairs_reports_and_gates(pairs_file, tmp_path):
    """`edgeft eval --pairs` without torch: the preference section for model and base, and min_pref_gain as a gate
    (the same file as model and base: a gain of 0, so 0 passes and 1 point fails, exit 3)."""
    from tests.test_runtime_eval import _run_cli

    gguf = converted("qwen2")
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    common = ["eval", str(gguf), "--data", str(data), "--baseline", str(gguf), "--pairs", str(pairs_file),
              "--max-tokens", "2", "--ctx", "256", "--no-speed", "--threads", "1"]
    done = _run_cli([*common, "-o", str(tmp_path / "ok"), "--min-pref-gain", "0"])
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    section = report["preference"]
    assert section["n"] == 2 and section["gain"]["mean"] == 0.0 and "accuracy" in section["baseline"]
    assert "## Preference pairs" in (tmp_path / "ok" / "report.md").read_text()
    failed = _run_cli([*common, "-o", str(tmp_path / "fail"), "--min-pref-gain", "1"])
    assert failed.returncode == 3 and "gate failed: min_pref_gain" in failed.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    refused = _run_cli(["eval", str(gguf), "--data", str(data), "--pairs", str(bad), "-o", str(tmp_path / "no")])
    assert refused.returncode == 1 and 'missing "rejected"' in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "no").exists()


def test_a_release_that_trains_with_dpo_gates_on_its_pairs(tmp_path):
    """The recipe trains with dpo: the release's eval gates on min_pref_gain over eval.pairs ({data_dir}
    expanded); without eval.pairs the release is refused as one line, before anything trains."""
    import yaml

    from convert.common.errors import EdgeftError
    from edgeft.release import settings as rp

    def settings(eval_section):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"train": {"objective": "dpo", "beta": 0.1}, "eval": eval_section}))
        return rp.resolve_settings(base="m", data=tmp_path / "t.jsonl", eval_path=tmp_path / "e.jsonl",
                                   recipe_path=recipe, out=tmp_path / "out")

    evaluation = settings({"pairs": "{data_dir}/heldout_pairs.jsonl"}).eval_settings()
    assert evaluation.gates["min_pref_gain"] == 0.0 and evaluation.gates["earned"] == 0.0
    assert evaluation.pairs == str(tmp_path / "heldout_pairs.jsonl")
    with pytest.raises(EdgeftError, match=r"gate min_pref_gain needs .*pairs") as info:
        settings({})
    assert "\n" not in str(info.value)
