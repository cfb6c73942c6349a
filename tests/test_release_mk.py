"""release.mk and the stage table (edgeft.release.pipeline.STAGES) declare the same graph: every stage has one make
rule, calling that stage, with the table's output as its target and the table's inputs as its prerequisites."""

from __future__ import annotations

import re
from pathlib import Path

from edgeft.release.pipeline import STAGES, make_rules

RELEASE_MK = Path(__file__).resolve().parent.parent / "release.mk"
# Variables whose value release.mk sets per case (demo or BASE=): compared as names, not expanded.
KEPT = {"W", "QUANT", "R_DATA", "R_EVAL", "R_BASE", "R_BASE_FILES", "R_NAME", "RELEASE_DIR"}


def _variables(text: str) -> dict[str, str]:
    found = {}
    for name, value in re.findall(r"^\s*([A-Z_]+)\s*[:?]?=\s*(.*)$", text, re.M):
        found.setdefault(name, value.strip())
    return found


def _expand(words: str, variables: dict[str, str]) -> str:
    for _ in range(10):
        expanded = re.sub(r"\$\(([A-Z_]+)\)",
                          lambda m: m.group(0) if m.group(1) in KEPT else variables.get(m.group(1), m.group(0)), words)
        if expanded == words:
            return expanded
        words = expanded
    return words


def _stage_rules(text: str) -> dict[str, tuple[str, list[str]]]:
    """{stage: (target, prerequisites)} of every rule whose recipe is `$(STAGE) NAME`."""
    variables = _variables(text)
    # `$(R_LORA)` is the lora stage's output when convert/lora.py exists: compare it as that output.
    variables["R_LORA"] = variables["R_LORA"].split(",")[1].rstrip(")")
    rules = {}
    joined = text.replace("\\\n", " ")
    for target, prerequisites, stage in re.findall(r"^(\S[^:\n]*?)\s*:\s*([^\n]*)\n\t@?\$\(STAGE\) (\w+)\s*$", joined,
                                                  re.M):
        normal = prerequisites.split("|")[0].split()
        rules[stage] = (_expand(target, variables),
                        [_expand(p, variables) for p in normal if p != "FORCE"])
    return rules


def test_every_stage_has_one_make_rule_with_the_tables_inputs():
    text = RELEASE_MK.read_text()
    in_make = _stage_rules(text)
    expected = make_rules()
    assert sorted(in_make) == sorted(stage.name for stage in STAGES)
    for name, (target, prerequisites) in expected.items():
        assert in_make[name][0] == target, name
        assert sorted(in_make[name][1]) == sorted(prerequisites), name


def test_inputs_only_the_recipe_names_reach_make_through_the_settings_stage():
    text = RELEASE_MK.read_text()
    assert "-include $(W)/recipe-inputs.mk" in text


def test_the_check_fails_on_a_drifted_rule():
    drifted = RELEASE_MK.read_text().replace("$(W)/bench.json: $(R_MODEL) $(R_BASEQ)", "$(W)/bench.json: $(R_MODEL)")
    in_make, expected = _stage_rules(drifted), make_rules()
    assert sorted(in_make["bench"][1]) != sorted(expected["bench"][1])


def test_recipe_inputs_file_names_the_context_corpus(tmp_path):
    from edgeft.release import stages
    from edgeft.release.settings import resolve_settings

    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "x"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"eval:\n  context: {docs}\n")
    settings = resolve_settings(base="m", data=tmp_path / "t.jsonl", eval_path=tmp_path / "e.jsonl",
                                recipe_path=recipe, out=tmp_path / "out")
    stages.stage_settings(settings)
    rules = (settings.out / "recipe-inputs.mk").read_text()
    assert f"{settings.out / 'eval' / 'report.json'}: {docs}" in rules
