"""A training run holds its output folder (an flock on the folder, which the OS drops on any exit): a second
`edgeft train` into it, an --overwrite or a --resume of it while it trains, is refused in one line and touches
nothing; once the run is gone (even SIGKILLed, with no chance to clean up) the folder is free again. Two real
processes: the run below is stopped inside its second step and killed at the end."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from convert.common.errors import EdgeftError
from convert.common.fsutil import hold_folder
from tests.factory import build_model
from tests.hostile import one_line_error, run, tree_state
from tests.train_helpers import ROOT, edgeft_env, toy_data, write_recipe

PAUSE_IN_STEP_2 = textwrap.dedent("""
    import pathlib, sys, time
    import edgeft.train.loop as loop

    real_step = loop.TrainRun.step
    ready = pathlib.Path(sys.argv[-1])

    def step(self, index):  # a run that is training: it stays inside step 2 until the test kills it
        if index == 1:
            ready.write_text("training")
            time.sleep(600)
        return real_step(self, index)

    loop.TrainRun.step = step
    from edgeft.cli import main
    sys.argv = ["edgeft", *sys.argv[1:-1]]
    main()
""")

REFUSAL = "another edgeft train is using this folder right now; wait for it to end, or choose another -o"


def _wait_for(path, process, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first run never reached step 2"
        time.sleep(0.2)


def test_a_live_run_holds_its_folder_against_a_second_run_overwrite_and_resume(tmp_path):
    pytest.importorskip("torch")
    base = build_model("qwen2")
    data, evals = toy_data(tmp_path / "data")
    recipe = write_recipe(tmp_path / "recipe.yaml", method="lora", save_every=1, max_steps=4)
    out, ready = tmp_path / "run", tmp_path / "ready"
    args = ["train", "--base", base, "--data", data, "--config", recipe, "-o", out]
    first = subprocess.Popen([sys.executable, "-c", PAUSE_IN_STEP_2, *map(str, args), str(ready)], env=edgeft_env(),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, first)
        before = tree_state(out)
        for flags in ([], ["--overwrite"], ["--resume"]):
            one_line_error(run(*args, *flags), f"{out}: {REFUSAL}")
        # same data or other data, the folder is the first run's: nothing of it was touched
        other_data = tmp_path / "other.jsonl"
        other_data.write_text(data.read_text().replace("blue", "green"))
        one_line_error(run("train", "--base", base, "--data", other_data, "--config", recipe, "-o", out), REFUSAL)
        assert tree_state(out) == before and first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    with hold_folder(out, holder="x", advice="y") as created:  # the kill released it: no lock file, no pid to clear
        assert not created


def test_hold_folder_is_exclusive_and_removes_only_a_folder_it_made_and_left_empty(tmp_path):
    folder = tmp_path / "new"
    with hold_folder(folder, holder="another edgeft train", advice="wait") as created:
        assert created and folder.is_dir()
        with pytest.raises(EdgeftError, match="another edgeft train is using this folder right now; wait"):
            with hold_folder(folder, holder="another edgeft train", advice="wait"):
                pass
    assert not folder.exists()
    with hold_folder(folder, holder="x", advice="y"):
        (folder / "kept").write_text("1")
    assert (folder / "kept").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgeftError, match="exists and is not a folder"):
        with hold_folder(tmp_path / "file", holder="x", advice="y"):
            pass


def test_the_hold_is_dropped_by_the_os_when_its_process_dies(tmp_path):
    """A process SIGKILLed while holding: the next one holds at once (no stale lock file or pid to judge)."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from convert.common.fsutil import hold_folder
        with hold_folder({str(tmp_path / 'held')!r}, holder="x", advice="y"):
            print("held", flush=True)
            time.sleep(600)
    """)], env=edgeft_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(EdgeftError, match="is using this folder"):
            with hold_folder(tmp_path / "held", holder="another", advice="y"):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with hold_folder(tmp_path / "held", holder="x", advice="y"):
        pass
