"""A disk without room, for the three writers (convert and quantize: the GGUF writer; import: the safetensors one):
refused before the first byte when the planned output does not fit (the free space is faked through
shutil.disk_usage), and a disk that fills in the middle of a write (a patched `open`) is one line naming the output
and the bytes needed vs free, with no partial output left and the input untouched."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

import convert.output_space
from convert.output_space import MARGIN_BYTES, human_size
from tests.convert_helpers import assert_refused
from tests.hostile import disk_full_after, invoke, one_line_error, tree_state
# The fixture model and its F32 GGUF, defined once (pytest finds fixtures imported into a test module).
from tests.test_fsutil import gguf, model  # noqa: F401

Usage = namedtuple("Usage", "total used free")
# Files an import writes besides the ones whose room it checks (a few kB; MARGIN_BYTES covers them).
UNCOUNTED = ("config.json", "generation_config.json", "README.md")


def _command(writer: str, model: Path, gguf: Path, out_dir: Path) -> tuple[list, Path]:
    """(edgeft arguments, the output they write)."""
    output = out_dir / {"convert": "model.gguf", "quantize": "model-q8.gguf", "import": "hf"}[writer]
    return {"convert": ["convert", model, "-o", output, "--outtype", "f32"],
            "quantize": ["quantize", gguf, "-o", output, "--type", "Q8_0"],
            "import": ["import", gguf, "-o", output]}[writer], output


def _counted_bytes(output: Path) -> int:
    if output.is_file():
        return output.stat().st_size
    return sum(p.stat().st_size for p in output.iterdir() if p.name not in UNCOUNTED)


def _fake_free(monkeypatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(convert.output_space.shutil, "disk_usage",
                        lambda path: Usage(real(path).total, real(path).total - free, free))


@pytest.mark.parametrize("writer", ["convert", "quantize", "import"])
def test_no_room_is_refused_before_the_first_byte(writer, model, gguf, tmp_path, monkeypatch):
    """The planned size is exact: one byte short of it plus the margin is refused, naming both numbers; exactly
    enough is written."""
    args, output = _command(writer, model, gguf, tmp_path / "measure")
    assert invoke(*args).exit_code == 0
    needed = _counted_bytes(output)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args, output = _command(writer, model, gguf, out_dir)
    before = tree_state(model, gguf)

    _fake_free(monkeypatch, needed + MARGIN_BYTES - 1)
    assert_refused(invoke(*args), out_dir, f"{output}: cannot write it: the disk is full",
                   f"needs {human_size(needed)}", f"has {human_size(needed + MARGIN_BYTES - 1)} free",
                   "(nothing was written)")
    assert tree_state(model, gguf) == before

    _fake_free(monkeypatch, needed + MARGIN_BYTES)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert _counted_bytes(output) == needed


@pytest.mark.parametrize("writer", ["convert", "quantize", "import"])
def test_disk_filling_mid_write_leaves_nothing(writer, model, gguf, tmp_path, monkeypatch):
    import gguf as gguf_package

    import convert.importer.safetensors_out

    args, output = _command(writer, model, gguf, tmp_path / "measure")
    assert invoke(*args).exit_code == 0
    needed = _counted_bytes(output)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "earlier.bin").write_bytes(b"an earlier output")
    args, output = _command(writer, model, gguf, out_dir)
    before = tree_state(model, gguf, out_dir)
    # Half the output reaches the disk, then every write fails as on a full disk.
    module = convert.importer.safetensors_out if writer == "import" else gguf_package.gguf_writer
    monkeypatch.setattr(module, "open", disk_full_after(needed // 2), raising=False)

    one_line_error(invoke(*args), f"{output}: cannot write it: the disk filled up while writing",
                   f"needs {human_size(needed)}", "free; free some space or write to another disk (nothing was written)")
    assert tree_state(model, gguf, out_dir) == before  # no partial output, the input and earlier output as they were
