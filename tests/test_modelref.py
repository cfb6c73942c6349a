"""Model arguments: local folders pass through; hub ids are fetched, and offline that is one clear line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from convert.common.errors import EdgeftError
from edgeft.modelref import is_hub_id, resolve_model


def test_local_folder_passes_through(tmp_path):
    assert resolve_model(tmp_path) == tmp_path


def test_file_and_missing_path_are_clear(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EdgeftError, match="not a file"):
        resolve_model(tmp_path / "config.json")
    with pytest.raises(EdgeftError, match="no such model folder"):
        resolve_model(tmp_path / "missing")


def test_hub_id_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_hub_id("Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(EdgeftError, match="HF_HUB_OFFLINE"):
        resolve_model("Qwen/Qwen2.5-0.5B-Instruct")


def test_hub_download_failure_is_one_line(monkeypatch):
    # The hub is unreachable from CI: whatever huggingface_hub raises becomes one line naming the id.
    import huggingface_hub

    def unreachable(**kwargs):
        raise OSError("Cannot reach https://huggingface.co: connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(EdgeftError) as info:
        resolve_model("someone/some-model")
    message = str(info.value)
    assert message.startswith("someone/some-model: ") and "\n" not in message and "connection refused" in message


def test_cli_convert_with_offline_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "m.gguf"
    result = CliRunner().invoke(main, ["convert", "Qwen/Qwen2.5-0.5B-Instruct", "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "Qwen/Qwen2.5-0.5B-Instruct" in result.output
    assert not out.exists()
