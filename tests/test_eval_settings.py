"""runtime/eval_settings.py: EvalSettings.from_mapping takes its names, types and defaults from the dataclass."""

from __future__ import annotations

import pytest

@pytest.mark.hostile
def test_eval_settings_from_a_mapping_have_the_dataclass_s_names_types_and_defaults():
    from runtime.eval_settings import EvalSettings, SettingError, recipe_key

    assert EvalSettings.from_mapping({}) == EvalSettings()  # the dataclass's defaults are the only ones
    given = EvalSettings.from_mapping({"shots": 3, "requests_per_day": 100, "gates": {"min_gain": 5, "earned": None}})
    assert given.shots == 3 and given.requests_per_day == 100.0 and given.gates == {"min_gain": 5.0, "earned": None}
    for mapping, line in [({"shot": 3}, "r.yaml: eval.shot: unknown setting; known: baseline, metric"),
                          ({"max_tokens": "64"}, "r.yaml: eval.max_tokens '64': must be a whole number"),
                          ({"max_tokens": 0}, "r.yaml: eval.max_tokens 0: must be at least 1"),
                          ({"requests_per_day": -5}, "r.yaml: eval.requests_per_day -5: must be a number of requests"),
                          ({"gates": {"min_gian": 1}}, "r.yaml: eval.gates: unknown gate 'min_gian'; known gates"),
                          ({"gates": {"min_gain": "lots"}}, "r.yaml: eval.gates: gate min_gain: threshold 'lots'")]:
        with pytest.raises(SettingError) as refused:
            EvalSettings.from_mapping(mapping, where="r.yaml")
        assert refused.value.named(recipe_key).startswith(line), refused.value.named(recipe_key)
