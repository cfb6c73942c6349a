"""The peft adapter folder a release ships for engines that serve many adapters over one base (vLLM): copied as peft
saves it, listed and checked like every shipped file, and its rank on the card's vLLM line."""

from __future__ import annotations

import json
import shutil

import pytest

from convert.common.errors import EdgeftError
from edgeft.release.publish import publish_release
from edgeft.release.verify import verify_release
from tests.test_release import PASSING, inputs, write_peft_adapter  # noqa: F401 (the fixture)

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja"}


def _publish(tmp_path, inputs, name="demo"):  # noqa: F811
    return publish_release(name, tmp_path / "release", gates=PASSING, **inputs)


def test_the_adapter_ships_as_peft_saved_it_and_the_card_names_its_rank(tmp_path, inputs):  # noqa: F811
    folder = _publish(tmp_path, inputs)
    shipped = folder / "peft-adapter"
    assert {p.name for p in shipped.iterdir()} == ADAPTER_FILES  # no checkpoint, no loss log
    for name in ADAPTER_FILES:
        assert (shipped / name).read_bytes() == (inputs["peft_adapter"] / name).read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["adapter"] == {"path": "peft-adapter", "rank": 48}  # rank_pattern's 48 is above r 16
    listed = {entry["path"] for entry in manifest["files"]}
    assert {f"peft-adapter/{name}" for name in ADAPTER_FILES} <= listed
    assert verify_release(folder) == []
    card = (folder / "README.md").read_text()
    # 48 is no --max-lora-rank vLLM accepts; 64 is the smallest one that holds the adapter.
    assert "vllm serve base --enable-lora --lora-modules demo=peft-adapter --max-lora-rank 64" in card


def test_the_rank_is_r_without_a_rank_pattern(tmp_path, inputs):  # noqa: F811
    shutil.rmtree(inputs["peft_adapter"])
    inputs["peft_adapter"] = write_peft_adapter(tmp_path / "adapter", r=8)
    folder = _publish(tmp_path, inputs)
    assert json.loads((folder / "manifest.json").read_text())["adapter"] == {"path": "peft-adapter", "rank": 8}
    assert "--max-lora-rank 8\n" in (folder / "README.md").read_text()


@pytest.mark.parametrize("tamper, needle", [
    (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x09" + bytes(range(200))),
     "peft-adapter/adapter_model.safetensors: sha256 differs"),
    (lambda d: (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 512}'),
     "peft-adapter/adapter_config.json: size"),
    (lambda d: (d / "chat_template.jinja").unlink(), "peft-adapter/chat_template.jinja: missing"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "peft-adapter/tokenizer.json: not listed"),
    (lambda d: (d / "extra").mkdir(), "peft-adapter/extra: not listed"),
])
def test_tampering_inside_the_adapter_folder_is_found(tmp_path, inputs, tamper, needle):  # noqa: F811
    folder = _publish(tmp_path, inputs)
    tamper(folder / "peft-adapter")
    problems = verify_release(folder)
    assert any(p.startswith(needle) for p in problems), problems


def test_a_folder_that_is_not_a_lora_adapter_publishes_nothing(tmp_path, inputs):  # noqa: F811
    (inputs["peft_adapter"] / "adapter_config.json").unlink()
    with pytest.raises(EdgeftError, match="no adapter_config.json"):
        _publish(tmp_path, inputs)
    assert not (tmp_path / "release" / "demo").exists()
    inputs["peft_adapter"] = write_peft_adapter(tmp_path / "other", peft_type="IA3")
    with pytest.raises(EdgeftError, match="IA3"):
        _publish(tmp_path, inputs)
    inputs["peft_adapter"] = write_peft_adapter(tmp_path / "third")
    (inputs["peft_adapter"] / "adapter_model.safetensors").unlink()
    with pytest.raises(EdgeftError, match="adapter_model.safetensors: missing"):
        _publish(tmp_path, inputs)
    assert list((tmp_path / "release").iterdir()) == []
