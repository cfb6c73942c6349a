"""The release pipeline: settings, incremental stages, interrupted training, and one end-to-end run on a fixture
model that is not the demo's (the same stages `make release BASE=... DATA=... EVAL=...` runs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.release import pipeline, stages
from edgeft.release import settings as release_settings
from edgeft.cli import main
from convert.common.errors import EdgeftError
from edgeft.release.verify import verify_release
from tests.hostile import ROOT
from tests.test_release_make import make_release, would_run

FIXTURE_RECIPE = """\
name: fixture-release
quant: Q5_K_M
train: {method: lora, r: 4, max_steps: 2, effective_batch: 8, micro_batch: 8, max_len: 512, eval_every: 2,
        save_every: 1, early_stop: null}
eval: {metric: exact, system: "Schema and instructions for the prompted base.", shots: 1, max_tokens: 4,
       imatrix_examples: 8, gates: {min_gain: 0, earned: null}}
"""
# `earned: null` opts out of the verdict gate: two steps on a random fixture cannot beat its base, and this test
# is about the stages; test_ladder.py checks that a release that has not earned it publishes nothing.
# A recipe template (Llama-3 tokens, another layout than the fixture base's own): what training renders with, so
# what the shipped GGUF must embed.
TRAINED_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n' + "
    "m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n' }}{% endif %}")


def test_demo_defaults():
    s = release_settings.resolve_settings()
    assert s.demo and s.name == "edgeft-demo" and s.quant == "Q4_K_M"
    assert s.base == release_settings.DEMO_DIR / "base" and s.data == release_settings.DEMO_DIR / "data" / "train.jsonl"
    assert s.recipe["eval"]["gates"]["min_gain"] == 15  # the demo's claim: 15 points over the strongest rung
    assert s.path("model") == Path("out/edgeft-demo/model-Q4_K_M.gguf")


def test_base_needs_data_and_eval():
    with pytest.raises(EdgeftError, match="needs DATA="):
        release_settings.resolve_settings(base="some/model", data="t.jsonl")
    result = CliRunner().invoke(main, ["release", "--base", "some/model"])
    assert result.exit_code == 1 and "needs DATA=" in result.output and "Traceback" not in result.output


def test_quant_is_checked_up_front():
    # the whole llama.cpp menu is accepted (the i-quants get the training data's imatrix), a typo is one line
    assert release_settings.resolve_settings(base="m", data="t", eval_path="e", quant="iq2_m").quant == "IQ2_M"
    with pytest.raises(EdgeftError, match="unknown quant type") as err:
        release_settings.resolve_settings(base="m", data="t", eval_path="e", quant="q4_k_xl")
    assert "\n" not in str(err.value) and "IQ4_XS" in str(err.value)


def test_recipe_unknown_key(tmp_path):
    (tmp_path / "r.yaml").write_text("trian: {}\n")
    with pytest.raises(EdgeftError, match="unknown release recipe keys"):
        release_settings.resolve_settings(base="m", data="t", eval_path="e", recipe_path=tmp_path / "r.yaml")


def test_settings_file_rewritten_only_on_change(tmp_path):
    s = release_settings.resolve_settings(base="m", data="t", eval_path="e", out=tmp_path)
    s.out.mkdir(parents=True)
    stages.stage_settings(s)
    path = s.path("settings")
    os.utime(path, (1, 1))
    stages.stage_settings(s)
    assert path.stat().st_mtime == 1  # unchanged settings: make sees nothing new
    stages.stage_settings(release_settings.resolve_settings(base="m", data="t", eval_path="e", out=tmp_path, quant="q8_0"))
    assert path.stat().st_mtime > 1 and json.loads(path.read_text())["quant"] == "Q8_0"


def test_killed_training_resumes_and_publishes_nothing_half_done(tmp_path, monkeypatch):
    """A training run killed after a checkpoint leaves only adapter.partial/; the rerun resumes it, then renames."""
    import edgeft.train.checkpoint
    import edgeft.train

    s = release_settings.resolve_settings(base="m", data="t", eval_path="e", out=tmp_path)
    partial = s.path("train").with_name("adapter.partial")
    (partial / "checkpoint-25").mkdir(parents=True)
    calls = []

    def fake_train(base, data, out_dir, **kwargs):
        calls.append(kwargs)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "adapter_config.json").write_text("{}")
        return out_dir

    monkeypatch.setattr(edgeft.train, "train", fake_train)
    monkeypatch.setattr(edgeft.train.checkpoint, "latest_checkpoint",
                        lambda d: (Path(d) / "checkpoint-25") if (Path(d) / "checkpoint-25").is_dir() else None)
    stages.stage_train(s)
    assert calls[-1]["resume"] and not calls[-1]["overwrite"]
    assert (s.path("train") / "adapter_config.json").is_file() and not partial.exists()
    stages.stage_train(s)  # a fresh run (no partial) starts over
    assert not calls[-1]["resume"] and calls[-1]["overwrite"]


def fixture_release(tmp_path: Path, base: Path) -> tuple[Path, Path, list[str], list[str]]:
    """Slices of the demo's SQL data and the fixture recipe for a release of `base`: (data, eval, `edgeft release`
    arguments, `make release` variables)."""
    from edgeft.demo.sql_task import generate, write_jsonl

    train, evaluation = generate()
    # The data check compares answers with punctuation stripped, so "price < 450" and "price > 450" look alike to
    # it: keep the small slices apart on that normalisation.
    loose = lambda example: re.sub(r"\W+", " ", example["messages"][-1]["content"]).strip()  # noqa: E731
    evaluation = evaluation[:6]
    train = [e for e in train if loose(e) not in {loose(x) for x in evaluation}][:16]
    data = write_jsonl(train, tmp_path / "train.jsonl")
    eval_path = write_jsonl(evaluation, tmp_path / "eval.jsonl")
    (tmp_path / "template.jinja").write_text(TRAINED_TEMPLATE)
    (tmp_path / "recipe.yaml").write_text(
        FIXTURE_RECIPE.replace("train: {", f"train: {{chat_template: {tmp_path / 'template.jinja'}, "))
    args = ["release", "--base", str(base), "--data", str(data), "--eval", str(eval_path), "--recipe",
            str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"), "--release-dir", str(tmp_path / "rel")]
    variables = [f"BASE={base}", f"DATA={data}", f"EVAL={eval_path}", f"RECIPE={tmp_path / 'recipe.yaml'}",
                 f"OUT={tmp_path / 'out'}", f"RELEASE_DIR={tmp_path / 'rel'}"]
    return data, eval_path, args, variables


@pytest.mark.slow
def test_end_to_end_on_a_fixture_model(tmp_path, fixture_model):
    base = fixture_model("llama", aligned=True)
    data, eval_path, args, variables = fixture_release(tmp_path, base)
    made = make_release(tmp_path, *variables)  # as a user runs it: the recipe's quant and name, not make's defaults
    assert made.returncode == 0, made.stdout + made.stderr
    folder = tmp_path / "rel" / "fixture-release"
    assert verify_release(folder) == []
    names = {p.name for p in folder.iterdir()}
    assert names == {"fixture-release-Q5_K_M.gguf", "fixture-release-adapter.gguf", "manifest.json", "README.md",
                     "Modelfile", "peft-adapter"}
    manifest = json.loads((folder / "manifest.json").read_text())
    trained = json.loads((folder / "peft-adapter" / "adapter_config.json").read_text())
    assert manifest["adapter"] == {"path": "peft-adapter", "rank": trained["r"]} and not trained.get("rank_pattern")
    assert manifest["verdict"] == "pass" and manifest["quant"] == "Q5_K_M"
    # The Modelfile and the card run the fine-tune with the prompt it was measured with, not the base's long one.
    from edgeft.demo.sql_task import SYSTEM_PROMPT

    modelfile = (folder / "Modelfile").read_text()
    assert f'SYSTEM """{SYSTEM_PROMPT}"""' in modelfile and "prompted base" not in modelfile
    assert SYSTEM_PROMPT in (folder / "README.md").read_text()
    metrics = manifest["metrics"]
    assert metrics["quantization"]["kld"] is not None and metrics["forgetting"]["ratio"] is not None
    assert metrics["throughput"]["finetune"]["tg"] > 0 and metrics["throughput"]["base"]["tg"] > 0
    assert metrics["parity"]["ok"]
    assert metrics["chat_parity"]["ok"] and metrics["chat_parity"]["token_matches"] == metrics["chat_parity"]["n"] > 4
    # A fixed quant without the sweep: no sweep in the manifest, no quant section in the card.
    assert "quants" not in metrics and "Why this quant" not in (folder / "README.md").read_text()

    from llama_cpp import Llama

    llm = Llama(model_path=str(folder / "fixture-release-Q5_K_M.gguf"), verbose=False, n_ctx=256)
    assert llm.n_vocab() > 0 and llm.metadata.get("general.license") == "apache-2.0"
    assert llm.metadata["tokenizer.chat_template"] == TRAINED_TEMPLATE
    llm.close()

    # Second run: every stage is up to date, and `edgeft release` is the same run as `make release`.
    again = subprocess.run([sys.executable, "-m", "edgeft", *args], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert would_run(again.stdout) == [] and "done in" not in again.stdout

    # Only train.lr changed: the fine-tune's stages rerun, the base's imatrix and GGUF do not, and the eval reuses
    # the base's ladder (OUT/ladder-cache) instead of answering it again.
    recipe_text = (tmp_path / "recipe.yaml").read_text()
    (tmp_path / "recipe.yaml").write_text(recipe_text.replace("max_steps: 2,", "max_steps: 2, lr: 0.003,"))
    changed = subprocess.run([sys.executable, "-m", "edgeft", *args], capture_output=True, text=True, cwd=ROOT)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    ran = would_run(changed.stdout)
    assert {"train", "merge", "eval", "publish"} <= set(ran) and not {"base_imatrix", "base_gguf"} & set(ran)
    assert "ladder: reused the base's answers for 3 rung(s)" in changed.stderr
    (tmp_path / "recipe.yaml").write_text(recipe_text)

    # A failing gate: publishing refuses, names the gate, and leaves the report in OUT.
    s = release_settings.resolve_settings(base=base, data=data, eval_path=eval_path, recipe_path=tmp_path / "recipe.yaml",
                            out=tmp_path / "out", release_root=tmp_path / "rel2")
    report_path = s.path("eval") / "report.json"
    passing_report = report_path.read_text()
    report = json.loads(passing_report)
    report["gates"] = [{"gate": "max_kld", "threshold": 0.0, "value": 0.3, "passed": False,
                        "text": "max_kld: 0.3 (need <= 0) — FAIL"}]
    report_path.write_text(json.dumps(report))
    with pytest.raises(EdgeftError, match="max_kld"):
        pipeline.run_stage("publish", s)
    assert not (tmp_path / "rel2" / "fixture-release").exists() and report_path.is_file()

    # A GGUF embedding another template (the base's own, same vocabulary and quant) fails the release in one line
    # (with the gates passing again: a failed gate is refused before the template is looked at).
    report_path.write_text(passing_report)
    shutil.copyfile(s.path("base_gguf"), s.path("model"))
    rel3 = [str(tmp_path / "rel3") if arg == str(tmp_path / "rel") else arg for arg in args]
    refused = CliRunner().invoke(main, rel3 + ["stage", "publish"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "embedded chat template is not the one training used" in lines[0], lines
    assert not (tmp_path / "rel3" / "fixture-release").exists()
