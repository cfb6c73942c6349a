"""`edgeft eval MODEL-F16.gguf --quants ...` on a tiny llama: the sweep's files are `edgeft quantize`'s bytes, each
quant is answered and scored by the shipped file's eval, the table and plot are written, and every refusal comes in
one line before the first byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from tests.hostile import error_line, invoke, tree_state  # noqa: E402

QUESTIONS = [("What is the capital of France?", "Paris"), ("Count the orders table.", "SELECT COUNT(*) FROM orders"),
             ("Name a primary colour.", "red"), ("2 + 2 = ?", "4"), ("Spell cat backwards.", "tac")]
TYPES = ("Q8_0", "Q4_K_M", "IQ2_M")  # IQ2_M: llama.cpp refuses it without an imatrix
FAST = ["--max-tokens", "6", "--ctx", "256", "--threads", "1", "--latency-samples", "1"]


def _conversations(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in pairs))
    return path


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    from convert import convert_model
    from edgeft.imatrix import compute_imatrix
    from tests.factory import build_model

    folder = tmp_path_factory.mktemp("sweep")
    model_dir = build_model("llama", aligned=True)  # rows of 256: the K- and i-quants apply
    train = _conversations(folder / "train.jsonl", [(f"Example {i}?", f"Answer {i}.") for i in range(8)])
    return {"hf": model_dir, "f16": convert_model(model_dir, folder / "model-F16.gguf", outtype="f16"),
            "imatrix": compute_imatrix(model_dir, train, folder / "imatrix.gguf", threads=1),
            "eval": _conversations(folder / "eval.jsonl", QUESTIONS), "train": train, "folder": folder}


@pytest.fixture(scope="module")
def swept(fixture, tmp_path_factory):
    """One sweep through the CLI, with every call of the eval's decoder recorded (the file it loaded)."""
    from runtime import ladder

    out = tmp_path_factory.mktemp("swept") / "quants"
    loaded, generate = [], ladder.generate

    def recording(path, runs, **options):
        loaded.append(Path(path).name)
        return generate(path, runs, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ladder, "generate", recording)
        result = invoke("eval", fixture["f16"], "--quants", ",".join(TYPES), "--imatrix", fixture["imatrix"],
                        "--data", fixture["eval"], "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    return {"out": out, "report": json.loads((out / "quants.json").read_text()), "output": result.output,
            "loaded": loaded}


def test_sweep_files_are_edgeft_quantize_bytes(fixture, swept, tmp_path):
    for name in TYPES:
        reference = tmp_path / f"quantize-{name}.gguf"
        done = invoke("quantize", fixture["f16"], "-o", reference, "--type", name, "--imatrix", fixture["imatrix"])
        assert done.exit_code == 0, done.output
        assert (swept["out"] / f"model-{name}.gguf").read_bytes() == reference.read_bytes(), name


def test_every_quant_is_answered_by_the_shipped_files_eval(fixture, swept, tmp_path):
    """Each candidate went through runtime.ladder.generate (the decoder of `edgeft eval` and of the release's eval
    stage), and the answers of the sweep's Q4_K_M are those `edgeft eval` gives the same file as the shipped one."""
    assert sorted(swept["loaded"]) == sorted(f"model-{name}.gguf" for name in TYPES)
    shipped = tmp_path / "model-Q4_K_M.gguf"
    shipped.write_bytes((swept["out"] / "model-Q4_K_M.gguf").read_bytes())
    done = invoke("eval", shipped, "--data", fixture["eval"], "-o", tmp_path / "eval", "--reference", fixture["f16"],
                  *FAST)
    assert done.exit_code == 0, done.output

    def answers(folder: Path) -> list[tuple[str, float]]:
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        return [(row["prediction"], row["model_score"]) for row in rows]

    assert answers(swept["out"] / "eval-Q4_K_M") == answers(tmp_path / "eval")
    by_type = {row["type"]: row for row in swept["report"]["rows"]}
    assert by_type["Q4_K_M"]["scores"] == [score for _, score in answers(tmp_path / "eval")]


def test_the_table_has_every_measure_and_the_choice(swept):
    report = swept["report"]
    rows = report["rows"]
    assert [row["type"] for row in rows] == list(TYPES)  # largest first
    sizes = [row["bytes"] for row in rows]
    assert sizes == sorted(sizes, reverse=True) and report["reference"] == "Q8_0"
    for row in rows:
        assert row["bytes"] == (swept["out"] / row["file"]).stat().st_size
        assert 1.5 < row["bits_per_weight"] < 9 and row["score"]["n"] == len(QUESTIONS)
        assert row["score"]["low"] <= row["score"]["mean"] <= row["score"]["high"]
        assert row["kld_mean"] >= 0 and 0 <= row["top1_agreement"] <= 100
        assert row["pp_tok_s"] > 0 and row["tg_tok_s"] > 0
        assert set(row["vs_reference"]) >= {"mean", "low", "high"} and "keeps" in row
    assert rows[0]["kld_mean"] < rows[2]["kld_mean"]  # Q8_0 is closer to the F16 than IQ2_M
    assert rows[0]["vs_reference"]["mean"] == 0
    assert report["type"] in TYPES and report["reason"].startswith(report["type"] + ": ")
    markdown = (swept["out"] / "quants.md").read_text()
    assert f"**Ships: {report['reason']}**" in markdown and all(f"| {name}" in markdown or f"**{name}**" in markdown
                                                                 for name in TYPES)
    assert (swept["out"] / "quants.png").read_bytes()[:4] == b"\x89PNG"
    assert f"ships: {report['reason']}" in swept["output"]


@pytest.mark.parametrize("extra, needles", [
    (["--quants", "Q4_K_M,Q9_K"], ["--quants: unknown quant type 'Q9_K'; known: Q8_0, ", "IQ1_S (or auto)"]),
    (["--quants", "TQ2_0"], ["--quants: TQ2_0 is not a candidate (ternary", "known: Q8_0"]),
    (["--quants", "Q8_0,q8_0"], ["--quants: Q8_0 is given twice"]),
    (["--quants", "Q8_0,IQ2_M"], ["--quants IQ2_M: IQ2_M: llama.cpp refuses this type without an importance matrix"]),
    (["--quants", "IQ2_M", "--imatrix", "auto"], ["--imatrix auto: no imatrix can be made", "--hf"]),
    (["--quants", "auto", "--metric", "json-match"], ["json-match"]),
    (["--quants", "auto", "--baseline", "{f16}"], ["--baseline: not with --quants"]),
    (["--quants", "auto", "--quant-tolerance", "-1"], ["--quant-tolerance -1.0: must be a number of points"]),
    (["--quant-tolerance", "3"], ["--quant-tolerance is read with --quants only"]),
])
def test_bad_sweep_input_is_one_line_before_the_first_byte(fixture, tmp_path, extra, needles):
    out = tmp_path / "quants"
    before = tree_state(fixture["folder"], tmp_path)
    args = [part.format(f16=fixture["f16"]) for part in extra]
    error_line(invoke("eval", fixture["f16"], "--data", fixture["eval"], "-o", out, *args, *FAST), *needles)
    assert tree_state(fixture["folder"], tmp_path) == before


def test_a_disk_without_room_for_every_candidate_is_refused_with_the_bytes(fixture, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from convert.quant.gguf_io import planned_size

    needed = sum(planned_size(fixture["f16"], name, imatrix=fixture["imatrix"]) for name in TYPES)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - needed, needed))
    out = tmp_path / "quants"
    line = error_line(invoke("eval", fixture["f16"], "--quants", ",".join(TYPES), "--imatrix", fixture["imatrix"],
                             "--data", fixture["eval"], "-o", out, *FAST), "the disk is full", "nothing was written")
    from convert.output_space import human_size

    assert f"needs {human_size(needed)}" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []
