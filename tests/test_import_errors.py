"""`edgeft import` on bad input: one line, a non-zero exit, and nothing (not even a temporary folder) left behind."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgeft.cli import main
from tests.convert_helpers import assert_refused, converted
from tests.hostile import _folder, invoke, one_line_error, tree_state
from tests.test_eval import gguf  # noqa: F401  (the fixture: a llama GGUF)


def _run(*args):
    return CliRunner().invoke(main, ["import", *map(str, args)])




@pytest.fixture
def parent(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def _tiny_gguf(path, arch: str, *, general_type: str = "model"):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(general_type)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_architecture_we_cannot_import(tmp_path, parent):
    source = _tiny_gguf(tmp_path / "mamba.gguf", "mamba")
    assert_refused(_run(source, "-o", parent / "hf"), parent, "'mamba' cannot be imported", "llama", "gemma2")


def test_adapter_gguf(tmp_path, parent):
    source = _tiny_gguf(tmp_path / "lora.gguf", "llama", general_type="adapter")
    assert_refused(_run(source, "-o", parent / "hf"), parent, "LoRA adapter")


@pytest.mark.parametrize("keep", [0.6, 0.001])
def test_truncated_gguf(tmp_path, parent, keep):
    source = tmp_path / "cut.gguf"
    data = converted("qwen2", "f32").read_bytes()
    source.write_bytes(data[: int(len(data) * keep)])
    assert_refused(_run(source, "-o", parent / "hf"), parent, "truncated GGUF")


def test_not_a_gguf(tmp_path, parent):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"\x00" * 4096)
    assert_refused(_run(source, "-o", parent / "hf"), parent, "not a GGUF")


def test_missing_file(tmp_path, parent):
    assert_refused(_run(tmp_path / "absent.gguf", "-o", parent / "hf"), parent, "no such GGUF file")


def test_pretokenizer_we_cannot_write(tmp_path, fixture_model, parent):
    from convert import convert_model

    source = convert_model(fixture_model("llama"), tmp_path / "starcoder.gguf", outtype="f32", pretokenizer="starcoder")
    assert_refused(_run(source, "-o", parent / "hf"), parent, "pre-tokenizer 'starcoder'", "smollm")


@pytest.mark.parametrize("content", ["empty", "full"])
def test_existing_output_folder(parent, content):
    target = parent / "hf"
    target.mkdir()
    if content == "full":
        (target / "keep.txt").write_text("mine")
    result = _run(converted("qwen2", "f32"), "-o", target)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert [p.name for p in parent.iterdir()] == ["hf"]
    assert [p.name for p in target.iterdir()] == (["keep.txt"] if content == "full" else [])


def test_overwrite_never_deletes_the_input(parent):
    source = parent / "hf" / "model.gguf"
    source.parent.mkdir()
    source.write_bytes(converted("qwen2", "f32").read_bytes())
    result = _run(source, "-o", parent / "hf", "--overwrite")
    assert result.exit_code == 1 and "input GGUF" in result.output, result.output
    assert source.exists() and [p.name for p in source.parent.iterdir()] == ["model.gguf"]


def test_overwrite_replaces_the_folder(parent):
    """An earlier import's folder (only files an import writes, a stale shard among them) is replaced whole."""
    target = parent / "hf"
    target.mkdir()
    (target / "model-00001-of-00002.safetensors").write_text("old")
    (target / "config.json").write_text("{}")
    result = _run(converted("qwen2", "f32"), "-o", target, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (target / "model-00001-of-00002.safetensors").exists() and (target / "model.safetensors").exists()
    assert [p.name for p in parent.iterdir()] == ["hf"]


def test_failure_while_writing_leaves_nothing(parent, monkeypatch):
    """A tensor that fails half-way through the safetensors file: no output folder, no temporary folder."""
    from convert.importer.metadata import GGUFMetadata
    from convert.common.errors import EdgeftError

    real = GGUFMetadata.read_tensor
    calls = []

    def failing(self, name):
        calls.append(name)
        if len(calls) > 5:
            raise EdgeftError(f"tensor {name}: simulated read failure")
        return real(self, name)

    monkeypatch.setattr(GGUFMetadata, "read_tensor", failing)
    assert_refused(_run(converted("llama", "f32"), "-o", parent / "hf"), parent, "simulated read failure")


def test_cli_writes_a_folder(parent):
    result = _run(converted("gemma2", "f32"), "-o", parent / "hf", "--dtype", "bf16")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (parent / "hf").iterdir())
    assert names == ["README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    assert "Gemma2ForCausalLM" in result.output
    shutil.rmtree(parent / "hf")


@pytest.mark.hostile
def test_import_refuses_a_gguf_version_it_does_not_know(tmp_path, gguf):
    """Version 99 (a damaged header, or a byte-swapped file) was imported as if it were version 3."""
    damaged = tmp_path / "damaged.gguf"
    data = bytearray(gguf.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    damaged.write_bytes(bytes(data))
    one_line_error(invoke("import", damaged, "-o", tmp_path / "hf"), "GGUF version 99 (this reader knows 2 to 3")
    assert not (tmp_path / "hf").exists()


IMPORT_FOLDERS = [
    ({}, None),
    ({"config.json": "{}", "model-00001-of-00002.safetensors": "x", "model.safetensors.index.json": "{}",
      "tokenizer.model": "x", "README.md": "old card"}, None),
    ({"config.json": "{}", "my-notes.md": "mine"}, "holds my-notes.md, which this command does not write"),
    ({"train.jsonl": "{}"}, "holds train.jsonl"),
    ({"config.json": "{}", "checkpoints": "/"}, "holds checkpoints"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("files, needle", IMPORT_FOLDERS)
def test_import_overwrite_replaces_only_an_import(tmp_path, files, needle):
    import fnmatch

    from convert.importer import IMPORT_FILES
    from tests.convert_helpers import converted

    out = _folder(tmp_path / "hf", files)
    before = tree_state(out)
    result = invoke("import", converted("qwen2", "f32"), "-o", out, "--overwrite")
    if needle is None:
        assert result.exit_code == 0, result.output
        written = [p.name for p in out.iterdir()]
        assert "config.json" in written and "model-00001-of-00002.safetensors" not in written
        assert all(any(fnmatch.fnmatchcase(name, pattern) for pattern in IMPORT_FILES) for name in written), written
    else:
        one_line_error(result, f"{out}: exists and is not a folder edgeft import wrote", needle, "choose another -o")
        assert tree_state(out) == before
