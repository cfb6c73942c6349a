"""runtime/fleet_eval.py: the fleet eval (--adapter) refuses every eval option and setting it does not read."""

from __future__ import annotations

import pytest

from tests.hostile import invoke, one_line_error, tree_state
from tests.test_eval import _conversations

# The fleet eval (--adapter) reads runtime.eval_settings.FLEET_SETTINGS only: every other eval option was ignored
# with exit 0 (--latency-samples, --requests-per-day, --no-speed, a recipe's gates...). Option -> the name shown.
FLEET_UNREAD = [
    (["--latency-samples", "3"], "--latency-samples"),
    (["--requests-per-day", "500"], "--requests-per-day"),
    (["--no-speed"], "the speed test (leave out --no-speed)"),
    (["--min-gain", "2"], "the gates (--min-gain"),
    (["--require-earned"], "the gates (--min-gain"),
    (["--probe", "probe.txt"], "--probe"),
    (["--choices", "choices.jsonl"], "--choices"),
    (["--reference", "ref.gguf"], "--reference"),
    (["--hf", "org/not-fetched"], "--hf"),
    (["--baseline", "base.gguf"], "--baseline"),
    (["--context", "passages.jsonl"], "--context"),
    (["--shots", "2", "--shots-from", "eval.jsonl"], "--shots, --shots-from"),
    (["--recipe", "recipe.yaml"], "the gates (--min-gain"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("args, shown", FLEET_UNREAD)
def test_fleet_eval_refuses_every_option_it_does_not_read(tmp_path, args, shown):
    (tmp_path / "eval.jsonl").write_text(_conversations([("q", "a")]))
    (tmp_path / "recipe.yaml").write_text("eval:\n  gates:\n    min_gain: 1\n")
    for name in ("base.gguf", "a.gguf"):
        (tmp_path / name).write_bytes(b"")
    before = tree_state(tmp_path)
    args = [str(tmp_path / arg) if "." in arg and arg != "org/not-fetched" else arg for arg in args]
    result = invoke("eval", tmp_path / "base.gguf", "--adapter", f"a={tmp_path / 'a.gguf'}", "--data",
                    tmp_path / "eval.jsonl", "-o", tmp_path / "out", *args)
    one_line_error(result, f"{shown}", "not with --adapter", "evaluate one model")
    assert tree_state(tmp_path) == before


@pytest.mark.hostile
def test_fleet_eval_library_refuses_a_setting_it_does_not_read(tmp_path):
    from runtime.eval_settings import EvalSettings, SettingError
    from runtime.fleet_eval import run_fleet_eval

    with pytest.raises(SettingError, match=r"^requests_per_day, latency_samples: not with adapters"):
        run_fleet_eval("base.gguf", {"a": "a.gguf"}, "eval.jsonl", tmp_path / "out",
                       EvalSettings(latency_samples=3, requests_per_day=10.0))
    assert not (tmp_path / "out").exists()
