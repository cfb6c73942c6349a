"""convert/common/fsutil.py: files appear whole or not at all, and no command writes over or inside its own input; a full
disk, a read-only or forbidden folder and a path that cannot be created are one line naming the output, with nothing
half-written and the earlier output untouched; a SIGKILLed merge or convert leaves a recognisable temporary that the
next run of that stage removes.

The full disk is a real one: a 1 MiB tmpfs (we mount it when the machine lets us, otherwise the test says why it
skips), filled up to a few KiB so every command runs out of space in the middle of writing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from convert.common.fsutil import TEMP_TAG
from tests.factory import build_model
from tests.hostile import ROOT, invoke, one_line_error, tree_state

FREE_BYTES = 8192  # left on the filled tmpfs: enough to create files, never enough to finish one


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); disk-full/read-only cases not exercised here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); disk-full/read-only "
                    "cases not exercised")


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 1 MiB tmpfs with only FREE_BYTES left, holding an earlier output `old.bin`."""
    mount = tmp_path / "full"
    _mount_tmpfs(mount, "size=1m")
    try:
        (mount / "old.bin").write_bytes(b"earlier output" * 100)
        free = shutil.disk_usage(mount).free
        with open(mount / "filler", "wb") as handle:
            handle.write(b"\0" * (free - FREE_BYTES))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only(tmp_path):
    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "size=64k,ro")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def model():
    return build_model("llama")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory, model):
    from convert import convert_model

    return convert_model(model, tmp_path_factory.mktemp("hostile-out") / "model-f32.gguf", outtype="f32")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, model):
    pytest.importorskip("peft")
    from tests.test_merge import make_adapter

    folder, _, _ = make_adapter(model, tmp_path_factory.mktemp("hostile-adapter") / "adapter")
    return folder


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_TAG in p.name or p.name.endswith(".tmp"))


# ---- over or inside its own input ----------------------------------------------------------------------------

@pytest.mark.parametrize("target, needle", [("model.safetensors", "inside the model folder"),
                                            ("config.json", "inside the model folder"),
                                            ("sub/model.gguf", "inside the model folder")])
@pytest.mark.hostile
def test_convert_never_writes_inside_its_input(tmp_path, model, target, needle):
    source = _copy(model, tmp_path / "model")
    before = tree_state(source)
    one_line_error(invoke("convert", source, "-o", source / target, "--outtype", "f16"), needle)
    assert tree_state(source) == before


@pytest.mark.hostile
def test_quantize_never_writes_over_its_input(tmp_path, gguf):
    copy = tmp_path / "m.gguf"
    shutil.copyfile(gguf, copy)
    before = tree_state(copy)
    one_line_error(invoke("quantize", copy, "-o", tmp_path / "." / "m.gguf", "--type", "Q8_0"),
                   "is the input GGUF itself")
    assert tree_state(copy) == before


@pytest.mark.hostile
@pytest.mark.parametrize("where", ["base", "adapter", "inside-base", "around-adapter"])
def test_merge_never_writes_over_inside_or_around_its_inputs(tmp_path, model, adapter, where):
    base = _copy(model, tmp_path / "base")
    work = tmp_path / "work"
    adapter_copy = _copy(adapter, work / "adapter")
    out = {"base": base, "adapter": adapter_copy, "inside-base": base / "merged", "around-adapter": work}[where]
    before = tree_state(base, adapter_copy)
    line = one_line_error(invoke("merge", "--base", base, "--adapter", adapter_copy, "-o", out, "--overwrite"),
                          "write the output somewhere else")
    assert ("holds the adapter folder" in line) == (where == "around-adapter")
    assert tree_state(base, adapter_copy) == before


@pytest.mark.hostile
def test_convert_lora_never_writes_inside_the_adapter(tmp_path, model, adapter):
    adapter_copy = _copy(adapter, tmp_path / "adapter")
    before = tree_state(adapter_copy)
    one_line_error(invoke("convert-lora", adapter_copy, "-o", adapter_copy / "adapter.gguf", "--base", model),
                   "inside the adapter folder")
    assert tree_state(adapter_copy) == before


# ---- full disk, read-only, forbidden, uncreatable ------------------------------------------------------------

def _commands(model, gguf, adapter, out_dir: Path) -> dict[str, list]:
    return {
        "convert": ["convert", model, "-o", out_dir / "model.gguf", "--outtype", "f32"],
        "quantize": ["quantize", gguf, "-o", out_dir / "model-q8.gguf", "--type", "Q8_0"],
        "merge": ["merge", "--base", model, "--adapter", adapter, "-o", out_dir / "merged", "--no-nf4-report"],
        "convert-lora": ["convert-lora", adapter, "-o", out_dir / "adapter.gguf", "--base", model],
    }


@pytest.mark.hostile
@pytest.mark.parametrize("command", ["convert", "quantize", "merge", "convert-lora"])
def test_disk_full_is_one_line_and_leaves_nothing(full_disk, model, gguf, adapter, command):
    args = _commands(model, gguf, adapter, full_disk)[command]
    before = tree_state(full_disk, model, adapter)
    one_line_error(invoke(*args), "cannot write it: the disk is full", "(nothing was written)")
    assert tree_state(full_disk, model, adapter) == before  # no partial file, the earlier output as it was
    assert _leftovers(full_disk) == []


@pytest.mark.hostile
@pytest.mark.parametrize("command", ["convert", "quantize", "merge", "convert-lora"])
def test_read_only_output_folder_is_one_line(read_only, model, gguf, adapter, command):
    args = _commands(model, gguf, adapter, read_only / "sub")[command]
    one_line_error(invoke(*args), "the file system is read-only")
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("folder, needle", [
    ("/proc", "files cannot be created there"),
    (f"/proc/edgeft-{uuid.uuid4().hex[:8]}/deeper", "files cannot be created there"),
    ("/sys", None),  # root: permission denied; others: not writable
])
@pytest.mark.hostile
@pytest.mark.parametrize("command", ["convert", "quantize", "merge", "convert-lora"])
def test_output_under_proc_or_sys_is_one_line(model, gguf, adapter, command, folder, needle):
    if not Path(folder.split("/edgeft-")[0]).is_dir():
        pytest.skip(f"{folder} does not exist on this system")
    args = _commands(model, gguf, adapter, Path(folder))[command]
    line = one_line_error(invoke(*args), "cannot write it")
    assert needle is None or needle in line
    assert "Traceback" not in line


@pytest.mark.hostile
def test_output_under_a_file_is_one_line(tmp_path, model):
    (tmp_path / "file").write_text("x")
    one_line_error(invoke("convert", model, "-o", tmp_path / "file" / "sub" / "m.gguf"), "is a file")


# ---- SIGKILL mid-write, then a later run -------------------------------------------------------------------

KILL_AFTER_FIRST_WRITE = textwrap.dedent("""
    import os, signal, sys
    import {module} as target
    original = target.{attribute}
    def write_then_die(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    target.{attribute} = write_then_die
    from edgeft.cli import main
    main(sys.argv[1:])
""")


def _killed(module: str, attribute: str, *args) -> subprocess.CompletedProcess:
    code = KILL_AFTER_FIRST_WRITE.format(module=module, attribute=attribute)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


@pytest.mark.parametrize("command, module, attribute", [
    ("merge", "convert.safetensors_file", "SafetensorsStreamWriter.write"),
    ("convert", "convert.gguf_writer", "stream_tensor_data"),
])
@pytest.mark.hostile
def test_sigkill_leftovers_are_named_and_cleaned_by_the_next_run(tmp_path, model, gguf, adapter, command, module,
                                                               attribute):
    args = _commands(model, gguf, adapter, tmp_path)[command]
    done = _killed(module, attribute, *args)
    assert done.returncode == -9, done.stderr
    leftovers = _leftovers(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].endswith(TEMP_TAG), leftovers
    assert not (tmp_path / Path(str(args[args.index("-o") + 1])).name).exists()  # nothing that looks finished

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert _leftovers(tmp_path) == []


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    from convert.common.fsutil import atomic_file

    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
