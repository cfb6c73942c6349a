"""Hostile input found beyond the first list of cases (each one mishandled before this change): outputs that
would replace or overwrite their own input in eval, data split, data sample and imatrix; an eval --recipe that is
a list or invalid YAML; a device as eval data. Then the sweep of the newer commands: an adapter_config.json of the
wrong shape (convert-lora), a GGUF whose header claims an unknown version (import), and `demo tiny-base` into a
folder that is not a demo base (replaced after minutes of pretraining) or over a damaged stamp (a traceback)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.factory import build_model
from tests.hostile import invoke, one_line_error, tree_state
from tests.train_helpers import toy_data


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from convert import convert_model

    return convert_model(build_model("llama"), tmp_path_factory.mktemp("extra") / "m.gguf", outtype="f16")


def test_eval_output_folder_holding_the_model_is_refused(tmp_path, gguf):
    """An earlier eval folder (report.json) may be replaced; the model inside it must not go with it."""
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "report.json").write_text("{}")
    model = folder / "m.gguf"
    shutil.copyfile(gguf, model)
    _, evals = toy_data(tmp_path / "data")
    before = tree_state(folder)
    one_line_error(invoke("eval", model, "--data", evals, "-o", folder, "--ctx", "256"), "holds the model")
    assert tree_state(folder) == before


def test_split_into_the_folder_of_its_input_is_refused(tmp_path):
    train, _ = toy_data(tmp_path / "data")
    before = tree_state(tmp_path / "data")
    one_line_error(invoke("data", "split", train, "-o", tmp_path / "data", "--overwrite"), "holds the input file")
    assert tree_state(tmp_path / "data") == before


def test_sample_over_its_input_is_refused(tmp_path):
    train, _ = toy_data(tmp_path / "data")
    before = tree_state(train)
    one_line_error(invoke("data", "sample", train, "-n", "2", "-o", train), "is the input file itself")
    assert tree_state(train) == before


@pytest.mark.parametrize("target", ["inside", "data"])
def test_imatrix_over_its_inputs_is_refused(tmp_path, target):
    pytest.importorskip("torch")
    model = tmp_path / "model"
    shutil.copytree(build_model("llama"), model)
    train, _ = toy_data(tmp_path / "data")
    out = model / "imatrix.gguf" if target == "inside" else train
    before = tree_state(model, train)
    one_line_error(invoke("imatrix", model, "--data", train, "-o", out), "write the output somewhere else")
    assert tree_state(model, train) == before


@pytest.mark.parametrize("text, needle", [("- min_gain: 5\n", "is a list, not a mapping"),
                                          ("eval: {gates: [\n", "not valid YAML (line 2"),
                                          ("eval: strict\n", "eval: must be a mapping")])
def test_eval_recipe_that_is_not_a_mapping_is_refused(tmp_path, gguf, text, needle):
    """Read as 'no gates', such a recipe let every eval pass."""
    _, evals = toy_data(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    one_line_error(invoke("eval", gguf, "--data", evals, "-o", tmp_path / "out", "--recipe", recipe), needle)
    assert not (tmp_path / "out").exists()


def test_a_device_as_eval_data_is_named_as_such(tmp_path, gguf):
    one_line_error(invoke("eval", gguf, "--data", "/dev/null", "-o", tmp_path / "out"), "not a regular file")


def test_report_json_is_still_replaced_by_a_new_eval(tmp_path, gguf):
    """The refusals above do not stop the ordinary rerun into an earlier eval folder."""
    _, evals = toy_data(tmp_path / "data")
    out = tmp_path / "out"
    for _ in range(2):
        result = invoke("eval", gguf, "--data", evals, "-o", out, "--ctx", "256", "--max-tokens", "2", "--no-speed")
        assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["n"] == 4


# adapter_config.json edits and what the one line says: each was a traceback (AttributeError, ValueError, TypeError).
BAD_ADAPTER_CONFIGS = [
    ("[1]", "is a JSON list, not an object of peft settings"),
    ({"lora_alpha": "lots"}, 'lora_alpha is "lots", not an integer or a number'),
    ({"alpha_pattern": [1]}, "alpha_pattern is [1], not an object"),
    ({"target_parameters": 5}, "target_parameters is 5, not a list"),
    ({"r": True}, "r is true, not an integer"),
    # nonsense values converted: the rank is taken from the tensors, a negative alpha only flips the delta
    ({"r": 0}, "r is 0, not a rank of 1 or more"),
    ({"r": -8}, "r is -8, not a rank of 1 or more"),
    ({"lora_alpha": 0}, "lora_alpha is 0, not a finite number above 0"),
    ({"lora_alpha": -16}, "lora_alpha is -16, not a finite number above 0"),
    ({"lora_alpha": float("nan")}, "lora_alpha is NaN, not a finite number above 0"),
    ({"lora_alpha": float("inf")}, "lora_alpha is Infinity, not a finite number above 0"),
    ({"alpha_pattern": {"q_proj": -1}}, 'alpha_pattern["q_proj"] is -1, not a finite number above 0'),
    ({"alpha_pattern": {"q_proj": "big"}}, 'alpha_pattern["q_proj"] is "big", not an integer or a number'),
    ({"rank_pattern": {"q_proj": 0}}, 'rank_pattern["q_proj"] is 0, not a rank of 1 or more'),
    ({"rank_pattern": {"(q_proj": 8}}, 'rank_pattern key "(q_proj" is not a regular expression'),
    ({"alpha_pattern": {"[": 16}}, 'alpha_pattern key "[" is not a regular expression'),
]


# config r vs the tensors' rank (8): a disagreement rank_pattern does not explain is refused, one it does converts.
RANK_CONFIGS = [
    ({"r": 4}, "adapter_model.safetensors: ",
     ("has rank 8 (lora_A rows) but adapter_config.json gives r 4", "not the same adapter's")),
    ({"rank_pattern": {"q_proj": 4}}, "adapter_model.safetensors: ",
     ("has rank 8 (lora_A rows) but adapter_config.json gives its rank_pattern entry 4", "not the same adapter's")),
    ({"r": 4, "rank_pattern": {".*": 8}}, None, None),
]


@pytest.mark.parametrize("change, where, needles", [(change, "adapter_config.json: ", (needle,))
                                                    for change, needle in BAD_ADAPTER_CONFIGS] + RANK_CONFIGS)
def test_convert_lora_checks_adapter_config(tmp_path, change, where, needles):
    pytest.importorskip("peft")
    from tests.test_merge import make_adapter

    model = build_model("llama")
    adapter, _, _ = make_adapter(model, tmp_path / "adapter")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(change if isinstance(change, str) else json.dumps({**config, **change}))
    out = tmp_path / "adapter.gguf"
    result = invoke("convert-lora", adapter, "-o", out, "--base", model)
    if needles is None:
        assert result.exit_code == 0, result.output
        assert out.exists()
    else:
        one_line_error(result, where, *needles)
        assert not out.exists()


def test_import_refuses_a_gguf_version_it_does_not_know(tmp_path, gguf):
    """Version 99 (a damaged header, or a byte-swapped file) was imported as if it were version 3."""
    damaged = tmp_path / "damaged.gguf"
    data = bytearray(gguf.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    damaged.write_bytes(bytes(data))
    one_line_error(invoke("import", damaged, "-o", tmp_path / "hf"), "GGUF version 99 (this reader knows 2 to 3")
    assert not (tmp_path / "hf").exists()


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


def test_demo_tiny_base_over_a_damaged_stamp_pretrains_again(tmp_path, monkeypatch):
    """A damaged pretrain.json was a JSONDecodeError traceback; it means: not cached, pretrain again."""
    pytest.importorskip("torch")
    from edgeft.demo import base_lm
    from edgeft.errors import EdgeftError

    def stop(recipe):
        raise EdgeftError("pretraining would start here")

    monkeypatch.setattr(base_lm, "build_corpus", stop)
    for stamp in ("{damaged", "[1, 2]"):
        folder = tmp_path / "tiny-base"
        folder.mkdir(exist_ok=True)
        (folder / "pretrain.json").write_text(stamp)
        one_line_error(invoke("demo", "tiny-base", "-o", folder), "pretraining would start here")


def test_a_lora_adapter_gguf_as_the_model_and_a_model_as_an_adapter_are_named(tmp_path, gguf):
    """An adapter GGUF given as the model was 'llama.cpp could not load it ... this llama-cpp-python build'."""
    pytest.importorskip("peft")
    from convert.lora import convert_lora
    from tests.test_merge import make_adapter

    model = build_model("llama")
    adapter, _, _ = make_adapter(model, tmp_path / "adapter")
    adapter_gguf = convert_lora(adapter, tmp_path / "adapter.gguf", base_dir=model)
    _, evals = toy_data(tmp_path / "data")
    for args, needle in [([adapter_gguf], "a LoRA adapter GGUF, not a model"),
                         ([gguf, "--baseline", adapter_gguf], "a LoRA adapter GGUF, not a model"),
                         ([gguf, "--adapter", f"sql={gguf}"], "a model GGUF, not a LoRA adapter")]:
        one_line_error(invoke("eval", *args, "--data", evals, "-o", tmp_path / "out", "--ctx", "256"), needle)
        assert not (tmp_path / "out").exists()


# ---- --overwrite replaces only a folder of the command's own files (it deleted any folder, its files and all) ----

def _folder(path, files: dict):
    """`files`: name -> text ("/" : a sub-folder)."""
    path.mkdir()
    for name, text in files.items():
        (path / name).mkdir() if text == "/" else (path / name).write_text(text)
    return path


# (what the output folder holds, the refusal's needle or None when --overwrite may replace it)
SPLIT_FOLDERS = [
    ({}, None),
    ({"train.jsonl": "old\n", "eval.jsonl": "old\n", "split.json": "{}"}, None),
    ({".train.jsonl.99999999-abcd.edgeft-tmp": ""}, None),  # a killed write's temporary
    ({"train.jsonl": "old\n", "notes.txt": "mine"}, "holds notes.txt, which this command does not write"),
    ({".env": "SECRET=1"}, "holds .env"),
    ({"eval.jsonl": "/"}, "holds eval.jsonl"),  # a folder of that name is not the file a split writes
]


@pytest.mark.parametrize("files, needle", SPLIT_FOLDERS)
def test_split_overwrite_replaces_only_a_split(tmp_path, files, needle):
    from edgeft.data.split import SPLIT_FILES

    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket"]
    train = tmp_path / "all.jsonl"
    train.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a} {b} {a}?"},
                                                      {"role": "assistant", "content": f"{b} {a} {b}."}]}) + "\n"
                             for a, b in zip(words, reversed(words))))
    out = _folder(tmp_path / "out", files)
    before = tree_state(out)
    result = invoke("data", "split", train, "-o", out, "--overwrite", "--eval-frac", "0.25")
    if needle is None:
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == sorted(SPLIT_FILES)  # the table is what a split writes
    else:
        one_line_error(result, f"{out}: exists and is not an edgeft data split", needle, "choose another -o")
        assert tree_state(out) == before


IMPORT_FOLDERS = [
    ({}, None),
    ({"config.json": "{}", "model-00001-of-00002.safetensors": "x", "model.safetensors.index.json": "{}",
      "tokenizer.model": "x", "README.md": "old card"}, None),
    ({"config.json": "{}", "my-notes.md": "mine"}, "holds my-notes.md, which this command does not write"),
    ({"train.jsonl": "{}"}, "holds train.jsonl"),
    ({"config.json": "{}", "checkpoints": "/"}, "holds checkpoints"),
]


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


# `edgeft demo data -o FOLDER` wrote over a user's own train.jsonl (exit 0). A folder is the demo's when it is
# empty, holds the stamp, or (caches from before the stamp) holds only task files with an earlier generator's bytes.
DEMO_DATA_FOLDERS = [
    ({}, None),
    ({"task.json": "{}", "train.jsonl": "an earlier run's\n"}, None),
    ({"train.jsonl": "UNSTAMPED\n", "shop.sqlite": "UNSTAMPED\n"}, None),  # bytes an earlier generator wrote
    ({"train.jsonl": '{"messages": []}\n'}, "its train.jsonl is not the demo's (no task.json"),
    ({"train.jsonl": "UNSTAMPED\n", "eval.jsonl": "mine\n"}, "its eval.jsonl is not the demo's"),
    ({"notes.txt": "mine"}, "holds notes.txt, which this command does not write"),
]


@pytest.mark.parametrize("files, needle", DEMO_DATA_FOLDERS)
def test_demo_data_writes_only_into_its_own_folder(tmp_path, monkeypatch, files, needle):
    import hashlib

    import edgeft.demo as demo

    earlier = (hashlib.sha256(b"UNSTAMPED\n").hexdigest(),)
    monkeypatch.setattr(demo, "UNSTAMPED_SHA256", dict.fromkeys(demo.TASK_FILES, earlier))
    out = _folder(tmp_path / "data", files)
    before = tree_state(out)
    result = invoke("demo", "data", "-o", out)
    if needle is None:
        assert result.exit_code == 0, result.output
        assert {p.name for p in out.iterdir()} == {*demo.TASK_FILES, demo.TASK_STAMP}
        assert (out / "train.jsonl").read_bytes().startswith(b'{"messages"')
    else:
        one_line_error(result, f"{out}: exists and is not the demo's data folder", needle, "pass another folder (-o)")
        assert tree_state(out) == before



# `edgeft train` and `edgeft eval -o` decide by the same rule: a folder is theirs when missing, empty (a killed
# write's temporaries aside) or stamped (run.json written by edgeft train, or an older run's recipe.yaml +
# inputs.json; report.json). Neither goes by output names: an adapter from elsewhere holds only names a run writes.
TRAIN_FOLDERS = [
    ({}, None),
    ({".run.json.99999999-abcd.edgeft-tmp": "{"}, None),
    ({"run.json": '{"tool": "edgeft train"}', "metrics.jsonl": "", "notes.txt": "an earlier run's"}, None),
    ({"recipe.yaml": "r: 4\n", "inputs.json": "{}", "loss.png": "x"}, None),  # a run from before run.json
    ({"precious.txt": "mine"}, "holds precious.txt and no run.json"),
    ({"run.json": '{"tool": "something else"}'}, "its run.json is not the marker edgeft train writes"),
    ({"inputs.json": "{}"}, "holds inputs.json and no run.json"),
    ({"adapter_config.json": "{}", "adapter_model.safetensors": "x"}, "holds adapter_config.json and no run.json"),
]


@pytest.mark.parametrize("files, needle", TRAIN_FOLDERS)
def test_train_overwrite_replaces_only_a_run(tmp_path, no_model_load, files, needle):
    base = build_model("qwen2")
    train, _ = toy_data(tmp_path / "data")
    out = _folder(tmp_path / "run", files)
    before = tree_state(out)
    result = invoke("train", "--base", base, "--data", train, "-o", out, "--method", "lora", "--overwrite")
    if needle is None:  # accepted: it went on as far as loading the model, which no_model_load stops
        assert isinstance(result.exception, AssertionError) and "was loaded" in str(result.exception), result.output
    else:
        one_line_error(result, f"{out}: exists and is not empty and is not an edgeft training run", needle,
                       "choose another -o")
        assert tree_state(out) == before


EVAL_FOLDERS = [
    ({}, None),
    ({".report.json.99999999-abcd.edgeft-tmp": "{"}, None),
    ({"report.json": "{}", "notes.txt": "an earlier eval's"}, None),  # replaced whole, as before
    ({"precious.txt": "mine"}, "holds precious.txt and no report.json"),
    ({"report.md": "# mine"}, "holds report.md and no report.json"),
]


@pytest.mark.parametrize("files, needle", EVAL_FOLDERS)
def test_eval_replaces_only_an_eval_folder(tmp_path, gguf, files, needle):
    _, evals = toy_data(tmp_path / "data")
    out = _folder(tmp_path / "eval", files)
    before = tree_state(out)
    result = invoke("eval", gguf, "--data", evals, "-o", out, "--ctx", "256", "--max-tokens", "2", "--no-speed")
    if needle is None:
        assert result.exit_code == 0, result.output
        assert json.loads((out / "report.json").read_text())["n"] == 4 and not (out / "notes.txt").exists()
    else:
        one_line_error(result, f"{out}: exists and is not an edgeft eval report folder", needle,
                       "choose another -o or empty it yourself")
        assert tree_state(out) == before


# A path that is no GGUF: runtime.check_gguf (eval, serve, chat) had its own wording on top of the reader's
# ('bad magic' vs 'starts with ...; a Hugging Face checkpoint'); both now show convert.gguf_reader's one line.
NOT_GGUF = [
    ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"\0" * 64, "a safetensors checkpoint: convert"),
    ("pytorch_model.bin", b"PK\x03\x04" + b"\0" * 64, "a PyTorch checkpoint: convert"),
    ("model.gguf", b"\0" * 64, r"starts with b'\x00\x00\x00\x00', expected b'GGUF'); pass a .gguf made by"),
    ("empty.gguf", b"", "not a GGUF file (the file is empty)"),
    ("folder", None, "is a folder, not a GGUF file; a Hugging Face model folder converts with `edgeft convert"),
    ("absent.gguf", "absent", "no such file; pass the path of a .gguf file"),
]


@pytest.mark.parametrize("name, content, needle", NOT_GGUF)
def test_a_file_that_is_not_a_gguf_gets_one_message_on_every_path(tmp_path, name, content, needle):
    from convert.gguf_reader import GGUFFile
    from edgeft.errors import EdgeftError
    from runtime.load import check_gguf

    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    lines = []
    for read in (check_gguf, GGUFFile):
        with pytest.raises(EdgeftError) as error:
            read(path)
        lines.append(str(error.value))
    assert lines[0] == lines[1] and needle in lines[0], lines
    if content is not None:  # click itself refuses a folder as eval's MODEL
        _, evals = toy_data(tmp_path / "data")
        result = invoke("eval", path, "--data", evals, "-o", tmp_path / "out")
        assert one_line_error(result, needle) == f"Error: {lines[0]}"
