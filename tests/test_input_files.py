"""Inputs that are not regular files: a pipe (read once, or waits forever for a writer), a device (/dev/zero never
ends), a folder. One rule (convert.common.jsonl.input_file_problem) names what the path is, in one line, for every command
that reads a user's file; before it, data check and split read /dev/zero without bound, convert, merge and
convert-lora hung on a pipe inside a model or adapter folder, and train called a folder or a pipe "not found".
Each command runs in its own process with a timeout, so a hang fails the test instead of stalling it."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.factory import build_model
from tests.hostile import one_line_error, run
from tests.train_helpers import toy_data

KINDS = {"pipe": "is a pipe, not a regular file", "device": "is a device, not a regular file",
         "folder": "is a folder, not a file"}


def _input(tmp_path, kind: str, name: str):
    if kind == "device":
        return "/dev/zero"
    path = tmp_path / name
    if kind == "pipe":
        os.mkfifo(path)
    else:
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["pipe", "device"])
@pytest.mark.parametrize("command", ["check", "split"])
def test_data_commands_name_a_pipe_or_a_device(tmp_path, kind, command):
    path = _input(tmp_path, kind, "in.jsonl")
    extra = ["-o", tmp_path / "out"] if command == "split" else []
    one_line_error(run("data", command, path, *extra, timeout=60), f"{path}: {KINDS[kind]}")


@pytest.mark.parametrize("kind", ["pipe", "device", "folder"])
@pytest.mark.parametrize("option", ["--data", "--eval", "--config"])
def test_train_names_what_an_input_is_instead_of_not_found(tmp_path, kind, option):
    data, _ = toy_data(tmp_path / "data")
    path = _input(tmp_path, kind, "input")
    args = {"--data": data, option: path}
    one_line_error(run("train", "--base", build_model("qwen2"), *[part for pair in args.items() for part in pair],
                       "-o", tmp_path / "run", timeout=120), f"{path}: {KINDS[kind]}")
    assert not (tmp_path / "run").exists()


def test_a_recipe_chat_template_that_is_a_pipe_is_named_before_the_model_loads(tmp_path):
    data, _ = toy_data(tmp_path / "data")
    template = _input(tmp_path, "pipe", "template.jinja")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"method: lora\nchat_template: {template}\n")
    one_line_error(run("train", "--base", build_model("qwen2"), "--data", data, "--config", recipe, "-o",
                       tmp_path / "run", timeout=120), f"{template}: {KINDS['pipe']}", "fix chat_template")


def _folder_with_a_pipe(source, target, name):
    shutil.copytree(source, target)
    os.remove(target / name)
    os.mkfifo(target / name)
    return target


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_convert_and_merge_name_a_pipe_inside_the_model_folder(tmp_path, name):
    model = _folder_with_a_pipe(build_model("llama"), tmp_path / "model", name)
    one_line_error(run("convert", model, "-o", tmp_path / "m.gguf", timeout=60), f"{model / name}: {KINDS['pipe']}")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
@pytest.mark.parametrize("command", ["merge", "convert-lora"])
def test_merge_and_convert_lora_name_a_pipe_inside_the_adapter_folder(tmp_path, name, command):
    pytest.importorskip("peft")
    from tests.test_merge import make_adapter

    base = build_model("llama")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter-ok", target_modules=["q_proj"])
    adapter = _folder_with_a_pipe(adapter, tmp_path / "adapter", name)
    args = (["merge", "--base", base, "--adapter", adapter, "-o", tmp_path / "out"] if command == "merge"
            else ["convert-lora", adapter, "--base", base, "-o", tmp_path / "out"])
    one_line_error(run(*args, timeout=60), f"{adapter / name}: {KINDS['pipe']}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["pipe", "device"])
@pytest.mark.parametrize("command", ["quantize", "import", "convert --imatrix"])
def test_gguf_readers_name_a_pipe_or_a_device(tmp_path, kind, command):
    path = _input(tmp_path, kind, "in.gguf")
    args = {"quantize": ["quantize", path, "-o", tmp_path / "q.gguf", "--type", "Q8_0"],
            "import": ["import", path, "-o", tmp_path / "hf"],
            "convert --imatrix": ["convert", build_model("llama"), "-o", tmp_path / "m.gguf", "--imatrix", path]}
    one_line_error(run(*args[command], timeout=60), f"{path}: {KINDS[kind]}")


@pytest.mark.parametrize("command", ["convert", "quantize"])
@pytest.mark.parametrize("threads", ["0", "-3"])
def test_a_thread_count_below_one_is_refused(tmp_path, command, threads):
    from tests.hostile import invoke

    source = build_model("llama") if command == "convert" else tmp_path / "in.gguf"  # refused before it is read
    args = [command, source, "-o", tmp_path / "out.gguf", "--threads", threads]
    one_line_error(invoke(*args, *(["--type", "Q8_0"] if command == "quantize" else [])),
                   f"Invalid value for '--threads': {threads} is not in the range x>=1", code=2)
