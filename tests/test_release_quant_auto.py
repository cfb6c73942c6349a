"""`make release QUANT=auto` end to end on a fixture model: the sweep scores every candidate of the auto set from
the one F16 and imatrix, the release ships the file the sweep chose (the very bytes it scored), the base's ladder
runs once at that quant, and the card and manifest say why."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from edgeft.release.verify import verify_release  # noqa: E402
from tests.test_release_make import make_release  # noqa: E402
from tests.test_release_pipeline import fixture_release  # noqa: E402


def _answers(report_dir):
    return [json.loads(line)["prediction"] for line in (report_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_quant_auto_ships_the_smallest_file_that_keeps_the_task(tmp_path, fixture_model):
    from convert.gguf_reader import GGUFFile
    from convert.quant import parse_file_type
    from runtime.quant_choice import choose_quant
    from runtime.quant_sweep import auto_quants, model_facts

    base = fixture_model("llama", aligned=True)
    _, _, _, variables = fixture_release(tmp_path, base)
    recipe = tmp_path / "recipe.yaml"  # with a KLD gate, which the shipped file must pass too
    recipe.write_text(recipe.read_text().replace("gates: {min_gain: 0,", "gates: {min_gain: 0, max_kld: 0.5,"))
    made = make_release(tmp_path, *variables, "QUANT=auto")
    assert made.returncode == 0, made.stdout + made.stderr
    work, folder = tmp_path / "out" / "fixture-release", tmp_path / "rel" / "fixture-release"
    sweep = json.loads((work / "quants" / "quants.json").read_text())
    chosen = sweep["type"]
    f16 = work / "model-F16.gguf"
    assert {row["type"] for row in sweep["rows"]} == set(auto_quants(model_facts(f16)["n_weights"]))
    assert len(sweep["rows"]) >= 8 and sweep["imatrix"] == str(work / "imatrix.gguf")
    gated = choose_quant([{key: row[key] for key in ("type", "bytes", "scores", "kld_mean")} for row in sweep["rows"]],
                         sweep["tolerance"], max_kld=0.5)
    assert gated["type"] == chosen and sweep["tolerance"] == 2.0 and sweep["max_kld"] == 0.5
    by_type = {row["type"]: row for row in sweep["rows"]}
    assert by_type[chosen]["kld_mean"] <= 0.5 and all(
        row["kld_mean"] > 0.5 or not row["keeps"] for row in sweep["rows"] if row["bytes"] < by_type[chosen]["bytes"])

    # What ships is the file the sweep scored, named for its type; the ladder's base is quantized the same way.
    shipped = folder / f"fixture-release-{chosen}.gguf"
    assert shipped.read_bytes() == (work / "quants" / f"model-{chosen}.gguf").read_bytes()
    assert verify_release(folder) == []
    with GGUFFile(work / "base-AUTO.gguf") as base_gguf:
        assert base_gguf.value("general.file_type") == int(parse_file_type(chosen).gguf_file_type)
    # The release's eval answered with the shipped file exactly as the sweep's eval of that type did.
    assert _answers(work / "eval") == _answers(work / "quants" / f"eval-{chosen}")

    manifest = json.loads((folder / "manifest.json").read_text())
    assert any(gate["gate"] == "max_kld" and gate["passed"] for gate in manifest["gates"])
    assert manifest["quant"] == chosen and manifest["metrics"]["task"]["quant"] == chosen
    choice = manifest["metrics"]["quants"]
    assert choice["type"] == chosen and choice["reason"] == sweep["reason"]
    assert all("scores" not in row for row in choice["rows"]) and len(choice["rows"]) == len(sweep["rows"])
    card = (folder / "README.md").read_text()
    assert "## Why this quant" in card and f"**{sweep['reason']}.**" in card
    assert all(f"| {row['type']}" in card or f"| **{row['type']}**" in card for row in sweep["rows"])
