"""The base's ladder answered once and reused while the base GGUF, the prompts and the decoding settings are the
same: the reused report equals the generated one; a changed input generates again."""

from __future__ import annotations

import json
import shutil

from runtime import ladder
from tests.ladder_helpers import ggufs  # noqa: F401  (the fixture GGUFs and data of the ladder's tests)


def _eval(paths, out, **changes):
    from runtime.evaluate import run_eval

    options = dict(baseline=paths["base"], system="Answer with one SQL query.", shots=2, shots_from=paths["train"],
                   max_tokens=6, n_ctx=512, threads=1, speed=False, latency_samples=2, metric="exact")
    return run_eval(paths["ft"], paths["eval"], out, **{**options, **changes})


def _counting(monkeypatch) -> list[str]:
    labels = []
    original = ladder.generate

    def counted(path, runs, **settings):
        labels.append(settings.get("label"))
        return original(path, runs, **settings)

    monkeypatch.setattr(ladder, "generate", counted)
    return labels


def test_a_second_eval_reuses_the_base_ladder(ggufs, tmp_path, monkeypatch):  # noqa: F811
    from runtime.ladder_cache import reusing_base_ladder

    labels = _counting(monkeypatch)
    cache, lines = tmp_path / "cache", []
    with reusing_base_ladder(cache, log=lines.append) as first:
        generated = _eval(ggufs, tmp_path / "one")
    assert labels == ["fine-tune", "ladder"] and len(first["stored"]) == 1 and not lines
    with reusing_base_ladder(cache, log=lines.append) as second:
        reused = _eval(ggufs, tmp_path / "two")
    assert labels == ["fine-tune", "ladder", "fine-tune"]  # no rung of the base generated again
    assert second["reused"] == first["stored"] and lines[0].startswith("ladder: reused the base's answers for 3")
    assert reused["ladder"]["rungs"] == generated["ladder"]["rungs"]
    assert reused["scores"] == generated["scores"] and reused["ladder"]["verdict"] == generated["ladder"]["verdict"]
    rows = [[json.loads(line)["rungs"] for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
            for name in ("one", "two")]
    assert rows[0] == rows[1]
    assert ladder.generate.__name__ == "counted"  # the wrap is undone when the block ends


def test_a_changed_input_generates_the_ladder_again(ggufs, tmp_path, monkeypatch):  # noqa: F811
    from runtime.ladder_cache import reusing_base_ladder

    labels = _counting(monkeypatch)
    cache = tmp_path / "cache"
    with reusing_base_ladder(cache, log=lambda line: None):
        _eval(ggufs, tmp_path / "one")
        _eval(ggufs, tmp_path / "system", system="Reply in SQL.")  # other prompts
        _eval(ggufs, tmp_path / "tokens", max_tokens=5)  # other decoding
        other_base = shutil.copy(ggufs["base"], tmp_path / "base-copy.gguf")
        with open(other_base, "r+b") as handle:  # the same size, one byte of the last tensor changed
            handle.seek(-1, 2)
            last = handle.read(1)
            handle.seek(-1, 2)
            handle.write(bytes([last[0] ^ 1]))
        _eval(ggufs, tmp_path / "base", baseline=other_base)
        _eval(ggufs, tmp_path / "again")
    assert labels.count("ladder") == 4 and len(list(cache.glob("*.json"))) == 4


def test_eval_command_ladder_cache(ggufs, tmp_path, monkeypatch):  # noqa: F811
    """`edgeft eval --ladder-cache DIR`: a second eval of a model against the same base reuses the ladder; without
    --baseline the flag is one line."""
    from click.testing import CliRunner

    from edgeft.cli import main

    labels = _counting(monkeypatch)
    args = ["eval", str(ggufs["ft"]), "--data", str(ggufs["eval"]), "--baseline", str(ggufs["base"]), "--system",
            "Answer with one SQL query.", "--shots", "2", "--shots-from", str(ggufs["train"]), "--max-tokens", "6",
            "--ctx", "512", "--threads", "1", "--no-speed", "--latency-samples", "2", "--ladder-cache",
            str(tmp_path / "cache")]
    for name in ("one", "two"):
        result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / name)])
        assert result.exit_code in (0, 3), result.output
    assert labels == ["fine-tune", "ladder", "fine-tune"] and "ladder: reused" in result.output
    refused = CliRunner().invoke(main, ["eval", str(ggufs["ft"]), "--data", str(ggufs["eval"]), "-o",
                                        str(tmp_path / "three"), "--ladder-cache", str(tmp_path / "cache")])
    assert refused.exit_code == 1 and "--ladder-cache keeps the baseline's ladder" in refused.output
    assert not (tmp_path / "three").exists()
