"""runtime/fleet_eval.py: `edgeft eval` with several --adapter over one base load gives each adapter the
answers it gets loaded alone with lora_path, and refuses the single-model options."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn")

from tests.serve_helpers import CHATS, MAX_TOKENS, N_CTX, fleet, reference  # noqa: E402, F401  (the fixtures)


def test_eval_scores_several_adapters_over_one_base_load(fleet, reference, tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    golds = [reference.answer(model, messages=CHATS[i])[0] for i, model in enumerate(("a1", "a2", "base"))]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"messages": chat + [{"role": "assistant", "content": gold}]}) + "\n"
                            for chat, gold in zip(CHATS, golds)))
    adapters = [f"--adapter={name}={path}" for name, path in fleet["adapters"].items()]
    result = CliRunner().invoke(main, ["eval", str(fleet["base"]), *adapters, "--data", str(data), "-o",
                                       str(tmp_path / "out"), "--max-tokens", str(MAX_TOKENS), "--ctx", str(N_CTX),
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    for index, row in enumerate(rows):
        for model in ("base", "a1", "a2"):
            # the same answers as each adapter loaded alone with lora_path
            assert row[model]["answer"] == reference.answer(model, messages=CHATS[index])[0], (index, model)
    assert [rows[i][model]["score"] for i, model in enumerate(("a1", "a2", "base"))] == [1.0, 1.0, 1.0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    means = {row["model"]: row["score"]["mean"] for row in report["models"]}
    assert means == {model: sum(rows[i][model]["score"] for i in range(3)) / 3 for model in ("base", "a1", "a2")}
    assert means["a1"] < 1.0  # each adapter got only its own example right: the answers really differ
    assert "a1: exact" in result.output


def test_eval_with_adapters_refuses_single_model_options(fleet, tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"messages": CHATS[0] + [{"role": "assistant", "content": "x"}]}) + "\n")
    result = CliRunner().invoke(main, ["eval", str(fleet["base"]), f"--adapter=a1={fleet['adapters']['a1']}",
                                       "--data", str(data), "-o", str(tmp_path / "out"), "--baseline",
                                       str(fleet["base"])])
    assert result.exit_code == 1 and "--baseline: not with --adapter" in result.output
    assert not (tmp_path / "out").exists()
