"""The release stages: each reads files and writes files (atomically: a temporary name, renamed when complete), so
a killed stage leaves nothing that looks finished and training resumes from its last checkpoint.

`edgeft.release.graph` says which stage reads what and writes where (the one stage table); this module says how each
is done: stage NAME is `stage_NAME`.

Example:
    stage_merge(resolve_settings(recipe_path="edgeft/demo/recipe.yaml"))
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_file
from edgeft.release.graph import AUTO
from edgeft.release.settings import BENCH_SETTINGS, Settings
from runtime.report import EVAL_FILES

def free_cores() -> int:
    """Cores not already busy (1-minute load average), at least 1. On a shared 2-core box two torch threads
    fighting other processes measured ~5x slower per step than one thread; on an idle box all cores are used."""
    cpus = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, min(cpus, cpus - busy + 1))


def env_threads(name: str) -> int:
    """A thread count from the environment, 0 when unset; OpenMP's nested form "4,2" counts its first level."""
    value = os.environ.get(name, "").split(",")[0].strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise EdgeftError(f"{name}={os.environ[name]!r}: must be a whole number of threads of at least 1")
    return int(value)


def stage_threads() -> int:
    """The threads of a stage's torch or llama.cpp work: EDGEFT_THREADS, else OpenMP's own OMP_NUM_THREADS (torch
    honours it unless told otherwise, and overriding it put two threads per job on a shared box: measured 10x
    slower per step), else the free cores. The load average lags: two jobs started together both see an idle box,
    so pin them with either variable."""
    return env_threads("EDGEFT_THREADS") or env_threads("OMP_NUM_THREADS") or free_cores()


def _torch_threads() -> int:
    import torch

    threads = stage_threads()
    torch.set_num_threads(threads)
    return threads


def stage_settings(s: Settings) -> None:
    """Rewrite settings.json only when it changes, so make reruns everything after a change of BASE, QUANT..."""
    write_if_changed(s.path("settings"), json.dumps(s.as_json(), indent=2, sort_keys=True) + "\n")


def stage_train_settings(s: Settings) -> None:
    """What training reads of the settings, apart (its config as train() gets it, the sweep, the paths): a changed
    eval setting re-evaluates the fine-tune it already has."""
    body = {"base": str(s.base), "data": str(s.data), "eval": str(s.eval), "out": str(s.out),
            "train": s.train_config(), "sweep": s.recipe.get("sweep")}
    path = s.path("train_settings")
    first = not path.exists()
    write_if_changed(path, json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")
    whole = s.path("settings")
    if first and whole.is_file():
        # A release made before this file existed: settings.json (written first, and only on a change) holds every
        # training setting, so its time is when they last changed; a new file's own time would retrain for nothing.
        stat = whole.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def stage_base_settings(s: Settings) -> None:
    """What the base's stages read of the settings, apart: a changed training or eval setting leaves the base's
    imatrix and GGUF (and so the cached ladder of the base) as they are."""
    body = {"base": str(s.base), "data": str(s.data), "quant": s.quant, "imatrix_examples": s.imatrix_examples()}
    write_if_changed(s.path("base_settings"), json.dumps(body, indent=2, sort_keys=True) + "\n")


def write_if_changed(path: Path, text: str) -> None:
    """A file make watches: an unchanged rewrite would rerun everything after it."""
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def stage_check(s: Settings) -> None:
    from edgeft.data.check import check_dataset
    from edgeft.release.settings import check_eval_inputs, check_recipe_files

    check_recipe_files(s)

    report = check_dataset(s.data, eval_path=s.eval)
    lines = report.lines()
    shown = [line for line in lines if ": error:" in line][:20] + [line for line in lines if ": warning:" in line][:5]
    for line in shown + [line for line in lines if ": error:" not in line and ": warning:" not in line]:
        print(line)
    if len(lines) > len(shown):
        # A failed check writes no data-check.json (nothing half-done for make): the command is the one pointer.
        kept = "" if report.errors else f"{s.path('check')} and "
        print(f"(every finding is in {kept}`edgeft data check {s.data} --eval {s.eval}`)")
    if report.errors:
        raise EdgeftError(f"data check found {len(report.errors)} error(s) in {s.data} / {s.eval}: "
                          f"{report.errors[0]}; fix the data (edgeft data check --fix)")
    check_eval_inputs(s)
    with atomic_file(s.path("check")) as tmp:
        tmp.write_text(json.dumps({"errors": report.errors, "warnings": report.warnings,
                                   "stats": report.stats}, indent=2, default=str))


def stage_train(s: Settings) -> None:
    from edgeft.train import checkpoint
    from edgeft.train import train

    final = s.path("train")
    # Train in a side folder: train() writes checkpoints as it goes, and a SIGKILLed run resumes from them.
    partial = final.with_name(final.name + ".partial")
    resume = partial.is_dir() and checkpoint.latest_checkpoint(partial) is not None
    _torch_threads()
    config = s.train_config()
    if s.recipe.get("sweep"):  # the winner's run is reused as the adapter; finished trials are skipped
        from edgeft.sweep import train_winner

        train_winner(s.base, s.data, partial, grid=s.recipe["sweep"], metric=config["metric"], config=config,
                     eval_path=s.eval, sweep_dir=s.out / "sweep")
    else:
        train(s.base, s.data, partial, eval_path=s.eval, config=config, overwrite=not resume, resume=resume)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def stage_merge(s: Settings) -> None:
    from edgeft.merge import merge_adapter

    merge_adapter(s.base, s.path("train"), s.path("merge"), overwrite=True)


def _imatrix(model_dir: Path, s: Settings, out: Path) -> None:
    from edgeft.imatrix import compute_imatrix

    compute_imatrix(model_dir, s.data, out, max_examples=s.imatrix_examples(), threads=_torch_threads())


def stage_imatrix(s: Settings) -> None:
    _imatrix(s.path("merge"), s, s.path("imatrix"))


def stage_base_imatrix(s: Settings) -> None:
    _imatrix(s.base, s, s.path("base_imatrix"))


def stage_f16(s: Settings) -> None:
    from convert import convert_model

    convert_model(s.path("merge"), s.path("f16"), outtype="f16")


def stage_quants(s: Settings) -> None:
    """The fine-tune's task score at each quant of the auto set, each file scored as the eval stage scores the one
    that ships (runtime.quant_sweep), from the one F16 and imatrix; the choice is in quants/quants.json."""
    from dataclasses import replace

    from runtime.quant_sweep import run_sweep, sweep_settings

    evaluation = s.eval_settings()
    settings = sweep_settings(replace(evaluation, threads=stage_threads()))
    # The shipped file must pass the release's KLD gate too: a smaller file that keeps the score but not the gate
    # would fail the release after the choice.
    report = run_sweep(s.path("f16"), s.eval, s.path("quants"), settings, quants="auto", imatrix=s.path("imatrix"),
                       max_kld=evaluation.gates.get("max_kld"))
    print(f"quants: ships {report['reason']}")


def _ship_swept_file(s: Settings) -> None:
    """quant auto: the file the sweep scored is the one that ships, byte for byte (a hard link where it can be)."""
    from runtime.quant_report import read_report

    report = read_report(s.path("quants"))
    chosen = s.path("quants") / next(row["file"] for row in report["rows"] if row["type"] == report["type"])
    with atomic_file(s.path("model")) as tmp:
        tmp.unlink()  # the staged name, free for the link
        try:
            os.link(chosen, tmp)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(chosen, tmp)


def stage_model(s: Settings) -> None:
    from convert import convert_model

    if s.quant == AUTO:
        _ship_swept_file(s)
    else:
        # Always with the imatrix of the training data (what `--imatrix auto` computes): the i-quants llama.cpp
        # refuses without one (QUANT=IQ2_M, IQ3_XXS...) just work, and the K-quants and IQ4_XS gain from it.
        convert_model(s.path("merge"), s.path("model"), outtype=s.quant, imatrix=s.path("imatrix"))
    try:
        _chat_parity(s)  # fail here, not after eval: a GGUF that chats unlike training is not worth measuring
    except EdgeftError:
        s.path("model").unlink()  # so the stage is not seen as done
        raise


def _chat_parity(s: Settings) -> dict:
    from convert.common.jsonl import read_conversations
    from edgeft.release.parity import check_chat_parity

    return check_chat_parity(s.path("model"), s.path("merge"), trained_template=_chat_template(s.path("train")),
                             conversations=[c["messages"] for c in read_conversations(s.eval)])


def stage_base_gguf(s: Settings) -> None:
    from convert import convert_model

    # The baseline runs at the same quant and with its own imatrix: the comparison is fine-tune vs base, not vs F16.
    convert_model(s.base, s.path("base_gguf"), outtype=s.shipped_quant(), imatrix=s.path("base_imatrix"))


def stage_lora(s: Settings) -> None:
    from convert.lora import convert_lora

    convert_lora(s.path("train"), s.path("lora"), base_dir=s.base)


def stage_eval(s: Settings) -> None:
    """Writes the report even when a gate fails: the publish stage refuses, the report stays for reading."""
    from dataclasses import replace

    from runtime.evaluate import run_eval

    from runtime.ladder_cache import reusing_base_ladder

    # The base's ladder is the same for every release of this base, eval set and shots: answered once per OUT.
    with reusing_base_ladder(s.out.parent / "ladder-cache"):
        run_eval(s.path("model"), s.eval, s.path("eval"), replace(s.eval_settings(), threads=stage_threads()))


def context_files(s: Settings) -> list[Path]:
    """The recipe's context corpus (eval.context), an input of the eval stage."""
    context = s.eval_settings().context
    return [Path(context)] if context else []


def stage_bench(s: Settings) -> None:
    from runtime.throughput import measure

    threads = stage_threads()
    rows = {who: measure(s.path(key), threads=threads, **BENCH_SETTINGS)
            for who, key in (("finetune", "model"), ("base", "base_gguf"))}
    with atomic_file(s.path("bench")) as tmp:
        tmp.write_text(json.dumps({"settings": BENCH_SETTINGS, **rows}, indent=2))


def stage_publish(s: Settings) -> None:
    from edgeft.release.publish import published_digest, publish_release, refuse_failed_gates
    from edgeft.release.metrics import metrics_from_outputs, quant_choice_metrics

    report = json.loads((s.path("eval") / EVAL_FILES["report"]).read_text())
    # A failed gate is final: refuse before the chat-parity check and the rest spend minutes on it.
    refuse_failed_gates(report.get("gates", []), s.release_root / s.name, report_dir=s.path("eval"))
    bench = json.loads(s.path("bench").read_text())
    quant = s.shipped_quant()
    metrics = metrics_from_outputs(report, bench, s.path("train"), quant=quant)
    sweep = _sweep_of_this_model(s)
    if sweep is not None:  # why this quant: in the card whenever the sweep ran, for auto or a fixed quant
        metrics["quants"] = quant_choice_metrics(sweep)
    metrics["chat_parity"] = _chat_parity(s)  # the file that ships, checked again: raises on any difference
    if s.recipe.get("description"):
        metrics["description"] = s.recipe["description"]
    lora = s.path("lora")
    folder = publish_release(
        s.name, s.release_root, gguf=s.path("model"), base_dir=s.base, quant=quant,
        recipe={"release": s.recipe, "train_resolved": _read_yaml(s.path("train") / "recipe.yaml")},
        data_files={"train": s.data, "eval": s.eval}, metrics=metrics, gates=report.get("gates", []),
        adapter=lora if lora.is_file() else None, peft_adapter=s.path("train"),
        system_prompt=_finetune_system_prompt(s),
        chat_template=_chat_template(s.path("merge")), report_dir=s.path("eval"))
    print(f"published {folder}; {published_digest(folder)}")


def _sweep_of_this_model(s: Settings) -> dict | None:
    """The quants stage's report when it ran on the current F16 (an older one, of an earlier fine-tune, is not)."""
    from runtime.quant_report import SWEEP_FILES, read_report

    done = s.path("quants") / SWEEP_FILES["report"]
    if not done.is_file() or done.stat().st_mtime < s.path("f16").stat().st_mtime:
        return None
    return read_report(s.path("quants"))


def _finetune_system_prompt(s: Settings) -> str | None:
    """The system prompt the fine-tune was measured with: its eval conversations' own, when they share one. Not
    eval.system, which is the prompted base's (schema, instructions): the card and the Modelfile would otherwise
    make every user pay the prompt tax the release claims to save."""
    from convert.common.jsonl import read_conversations

    firsts = {c["messages"][0]["content"] if c["messages"][0]["role"] == "system" else None
              for c in read_conversations(s.eval)}
    return firsts.pop() if len(firsts) == 1 else None


def _read_yaml(path: Path):
    from convert.common.jsonl import read_yaml

    return read_yaml(path, "resolved train recipe") if path.is_file() else None


def _chat_template(model_dir: Path) -> str | None:
    from convert.vocab.chat_template import chat_template_of

    return chat_template_of(model_dir)  # the adapter's is the template training rendered
