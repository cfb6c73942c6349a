"""The release pipeline as stages: each reads files and writes files, so it can be rerun only when inputs change.

`release.mk` gives each stage a make target whose prerequisites are the files the stage reads here (`inputs`);
`run_pipeline` (what `edgeft release --recipe` runs) applies the same rule itself for people without make.
Every output is written under a temporary name and renamed when complete, so a killed stage leaves nothing that
looks finished; training even resumes from its last checkpoint.

Work files live in OUT/NAME/:  data-check.json, adapter/, merged/, imatrix.gguf, model-F16.gguf, model-QUANT.gguf,
base-imatrix.gguf, base-QUANT.gguf, adapter.gguf, eval/report.json, bench.json; the release in release/NAME/.

Example:
    settings = resolve_settings(recipe_path="edgeft/demo/recipe.yaml")
    run_pipeline(settings)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeft.errors import EdgeftError
from edgeft.fsutil import atomic_file
from edgeft.release import check_release_name

DEMO_DIR = Path(".cache/demo")
DEMO_RECIPE = Path(__file__).parent / "demo" / "recipe.yaml"
# When the user brings a model but no recipe: the training defaults, and a fine-tune may not lose to its base.
GENERIC_RECIPE = {"train": {}, "eval": {"metric": "exact", "shots": 3, "gates": {"min_gain": 0}}}
BENCH_SETTINGS = {"n_prompt": 256, "n_gen": 64, "repeat": 3}


@dataclass
class Settings:
    base: Path
    data: Path
    eval: Path
    quant: str
    name: str
    out: Path           # work folder OUT/NAME
    release_root: Path
    recipe: dict = field(default_factory=dict)
    recipe_path: Path | None = None
    demo: bool = False

    def path(self, key: str) -> Path:
        return self.out / LAYOUT[key].format(quant=self.quant)

    def as_json(self) -> dict:
        return {"base": str(self.base), "data": str(self.data), "eval": str(self.eval), "quant": self.quant,
                "name": self.name, "out": str(self.out), "release_root": str(self.release_root),
                "recipe": self.recipe, "demo": self.demo}


LAYOUT = {
    "settings": "settings.json", "check": "data-check.json", "adapter": "adapter", "merged": "merged",
    "imatrix": "imatrix.gguf", "f16": "model-F16.gguf", "model": "model-{quant}.gguf",
    "base_imatrix": "base-imatrix.gguf", "base_gguf": "base-{quant}.gguf", "lora": "adapter.gguf",
    "eval": "eval", "bench": "bench.json",
}


def load_release_recipe(path: Path | None, demo: bool) -> dict:
    from edgeft.data.io import read_yaml

    if path is None:
        path = DEMO_RECIPE if demo else None
    if path is None:
        return json.loads(json.dumps(GENERIC_RECIPE))
    recipe = read_yaml(path, "release recipe")
    recipe = {} if recipe is None else recipe
    if not isinstance(recipe, dict):
        raise EdgeftError(f"{path}: the release recipe is a {type(recipe).__name__}, not a mapping; write it as "
                          "keys (name:, quant:, train:, eval:), see edgeft/demo/recipe.yaml")
    unknown = set(recipe) - set(RECIPE_KEYS)
    if unknown:
        raise EdgeftError(f"{path}: unknown release recipe keys {sorted(map(str, unknown))}; use name, quant, "
                          "description, train (edgeft train settings) and eval (metric, system, shots, max_tokens, "
                          "gates)")
    check_release_recipe(recipe, str(path))
    return recipe


RECIPE_KEYS = ("name", "quant", "train", "eval", "description")
# What the eval and imatrix stages read from `eval:` (a key outside this list is a typo found before training).
EVAL_KEYS = ("metric", "system", "shots", "max_tokens", "gates", "probe", "context", "context_k",
             "requests_per_day", "imatrix_examples")


def check_release_recipe(recipe: dict, source: str) -> None:
    """Everything in a release recipe that can be checked without a model, checked before the first stage runs:
    the train settings, the eval keys, the gate names and thresholds, the metric name, the quant and the name."""
    from convert.quant import parse_file_type
    from edgeft.train.recipe import resolve_recipe
    from runtime.gates import resolve_gates
    from runtime.metrics import split_metric_spec

    for key in ("train", "eval"):
        if recipe.get(key) is not None and not isinstance(recipe[key], dict):
            raise EdgeftError(f"{source}: {key}: must be a mapping of settings, not {recipe[key]!r}")
    resolve_recipe(dict(recipe.get("train") or {}))
    ev = recipe.get("eval") or {}
    unknown = sorted(map(str, set(ev) - set(EVAL_KEYS)))
    if unknown:
        raise EdgeftError(f"{source}: eval: unknown keys {unknown}; known: {', '.join(EVAL_KEYS)}")
    if ev.get("gates") is not None and not isinstance(ev["gates"], dict):
        raise EdgeftError(f"{source}: eval.gates must be a mapping like {{min_gain: 5}}")
    try:
        resolve_gates(dict(ev.get("gates") or {}))
        split_metric_spec(str(ev.get("metric", "exact")))
    except EdgeftError as exc:
        raise EdgeftError(f"{source}: eval: {exc}") from None
    for key in ("shots", "max_tokens", "context_k", "imatrix_examples"):
        if key in ev and (not isinstance(ev[key], int) or isinstance(ev[key], bool) or ev[key] < (key != "shots")):
            raise EdgeftError(f"{source}: eval.{key}={ev[key]!r} must be a whole number"
                              f"{' of at least 0' if key == 'shots' else ' of at least 1'}")
    if recipe.get("quant") is not None:
        parse_file_type(str(recipe["quant"]))
    if recipe.get("name") is not None:
        check_release_name(str(recipe["name"]))


def resolve_settings(*, base=None, data=None, eval_path=None, quant=None, name=None, recipe_path=None,
                     out="out", release_root="release") -> Settings:
    """Command line > recipe > defaults; no BASE means the built-in demo (its base, data and recipe)."""
    demo = not base
    recipe = load_release_recipe(Path(recipe_path) if recipe_path else None, demo)
    if demo:
        base = DEMO_DIR / "base"
        data = data or DEMO_DIR / "data" / "train.jsonl"
        eval_path = eval_path or DEMO_DIR / "data" / "eval.jsonl"
    if not data or not eval_path:
        raise EdgeftError("release with BASE= needs DATA= (training JSONL) and EVAL= (held-out JSONL)")
    base = Path(base)
    name = name or recipe.get("name") or ("edgeft-demo" if demo else base.name)
    quant = (quant or recipe.get("quant") or "Q4_K_M").upper()
    from convert.quant import parse_file_type

    parse_file_type(quant)  # an unknown QUANT is one line listing llama.cpp's menu, before any stage runs
    from convert.quant import parse_file_type

    parse_file_type(quant)  # a typo in QUANT= is found now, not after training
    check_release_name(name)
    return Settings(base=base, data=Path(data), eval=Path(eval_path), quant=quant, name=name,
                    out=Path(out) / name, release_root=Path(release_root), recipe=recipe,
                    recipe_path=Path(recipe_path) if recipe_path else None, demo=demo)


def free_cores() -> int:
    """Cores not already busy (1-minute load average), at least 1. On a shared 2-core box two torch threads
    fighting other processes measured ~5x slower per step than one thread; on an idle box all cores are used."""
    cpus = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, min(cpus, cpus - busy + 1))


def _torch_threads() -> int:
    import torch

    threads = int(os.environ.get("EDGEFT_THREADS", 0)) or free_cores()
    torch.set_num_threads(threads)
    return threads


def _expand(template: str | None, settings: Settings) -> str | None:
    return None if template is None else template.format(data_dir=settings.data.parent, base=settings.base)


# ---- stages: each returns nothing and writes its outputs atomically ------------------------------------------

def stage_settings(s: Settings) -> None:
    """Rewrite settings.json only when it changes, so make reruns everything after a change of BASE, QUANT..."""
    text = json.dumps(s.as_json(), indent=2, sort_keys=True) + "\n"
    path = s.path("settings")
    if path.is_file() and path.read_text() == text:
        return
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def stage_check(s: Settings) -> None:
    from edgeft.data.check import check_dataset

    report = check_dataset(s.data, eval_path=s.eval)
    lines = report.lines()
    shown = [line for line in lines if ": error:" in line][:20] + [line for line in lines if ": warning:" in line][:5]
    for line in shown + [line for line in lines if ": error:" not in line and ": warning:" not in line]:
        print(line)
    if len(lines) > len(shown):
        print(f"(every finding is in {s.path('check')} and `edgeft data check {s.data} --eval {s.eval}`)")
    if report.errors:
        raise EdgeftError(f"data check found {len(report.errors)} error(s) in {s.data} / {s.eval}: "
                          f"{report.errors[0]}; fix the data (edgeft data check --fix)")
    # Gold answers the eval's metric cannot score are found now, not after training and quantizing.
    from runtime.examples import read_examples
    from runtime.metrics import parse_metric, refuse_unscoreable

    spec = _expand((s.recipe.get("eval") or {}).get("metric", "exact"), s)
    refuse_unscoreable(parse_metric(spec), read_examples(s.eval), s.eval, spec)
    with atomic_file(s.path("check")) as tmp:
        tmp.write_text(json.dumps({"errors": report.errors, "warnings": report.warnings,
                                   "stats": report.stats}, indent=2, default=str))


def stage_train(s: Settings) -> None:
    from edgeft.train import checkpoint
    from edgeft.train import train

    final = s.path("adapter")
    # Train in a side folder: train() writes checkpoints as it goes, and a SIGKILLed run resumes from them.
    partial = final.with_name(final.name + ".partial")
    resume = partial.is_dir() and checkpoint.latest_checkpoint(partial) is not None
    _torch_threads()
    train(s.base, s.data, partial, eval_path=s.eval, config=dict(s.recipe.get("train") or {}),
          overwrite=not resume, resume=resume)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def stage_merge(s: Settings) -> None:
    from edgeft.merge import merge_adapter

    merge_adapter(s.base, s.path("adapter"), s.path("merged"), overwrite=True)


def _imatrix(model_dir: Path, s: Settings, out: Path) -> None:
    from edgeft.imatrix import compute_imatrix

    compute_imatrix(model_dir, s.data, out, max_examples=(s.recipe.get("eval") or {}).get("imatrix_examples", 256),
                    threads=_torch_threads())


def stage_imatrix(s: Settings) -> None:
    _imatrix(s.path("merged"), s, s.path("imatrix"))


def stage_base_imatrix(s: Settings) -> None:
    _imatrix(s.base, s, s.path("base_imatrix"))


def stage_f16(s: Settings) -> None:
    from convert import convert_model

    convert_model(s.path("merged"), s.path("f16"), outtype="f16")


def stage_model(s: Settings) -> None:
    from convert import convert_model

    # Always with the imatrix of the training data (what `--imatrix auto` computes): the i-quants llama.cpp refuses
    # without one (QUANT=IQ2_M, IQ3_XXS...) just work, and the K-quants and IQ4_XS gain from it.
    convert_model(s.path("merged"), s.path("model"), outtype=s.quant, imatrix=s.path("imatrix"))
    try:
        _chat_parity(s)  # fail here, not after eval: a GGUF that chats unlike training is not worth measuring
    except EdgeftError:
        s.path("model").unlink()  # so the stage is not seen as done
        raise


def _chat_parity(s: Settings) -> dict:
    from edgeft.data.io import read_conversations
    from edgeft.release_parity import check_chat_parity

    return check_chat_parity(s.path("model"), s.path("merged"), trained_template=_chat_template(s.path("adapter")),
                             conversations=[c["messages"] for c in read_conversations(s.eval)])


def stage_base_gguf(s: Settings) -> None:
    from convert import convert_model

    # The baseline runs at the same quant and with its own imatrix: the comparison is fine-tune vs base, not vs F16.
    convert_model(s.base, s.path("base_gguf"), outtype=s.quant, imatrix=s.path("base_imatrix"))


def stage_lora(s: Settings) -> None:
    from convert.lora import convert_lora

    convert_lora(s.path("adapter"), s.path("lora"), base_dir=s.base)


def stage_eval(s: Settings) -> None:
    """Writes the report even when a gate fails: the publish stage refuses, the report stays for reading."""
    from runtime.evaluate import run_eval

    ev = dict(s.recipe.get("eval") or {})
    gates = dict(ev.get("gates") or {})
    # Weights ship only when fine-tuning beat the strongest rung of the prompted base's ladder (issue 17).
    gates.setdefault("earned", 0)
    run_eval(s.path("model"), s.eval, s.path("eval"), baseline=s.path("base_gguf"),
             metric=_expand(ev.get("metric", "exact"), s), system=ev.get("system"), shots=int(ev.get("shots", 0)),
             shots_from=s.data if ev.get("shots") else None, probe=_expand(ev.get("probe"), s),
             reference=s.path("f16"), hf=s.path("merged"), gates=gates,
             max_tokens=int(ev.get("max_tokens", 256)), threads=_llama_threads(),
             context=_expand(ev.get("context"), s), context_k=int(ev.get("context_k", 3)),
             requests_per_day=ev.get("requests_per_day"))


def _context_files(s: Settings) -> list[Path]:
    context = _expand((s.recipe.get("eval") or {}).get("context"), s)
    return [Path(context)] if context else []


def _llama_threads() -> int:
    return int(os.environ.get("EDGEFT_THREADS", 0)) or free_cores()


def stage_bench(s: Settings) -> None:
    from runtime.throughput import measure

    threads = _llama_threads()
    rows = {who: measure(s.path(key), threads=threads, **BENCH_SETTINGS)
            for who, key in (("finetune", "model"), ("base", "base_gguf"))}
    with atomic_file(s.path("bench")) as tmp:
        tmp.write_text(json.dumps({"settings": BENCH_SETTINGS, **rows}, indent=2))


def stage_publish(s: Settings) -> None:
    from edgeft.release import publish_release, refuse_failed_gates
    from edgeft.release_metrics import metrics_from_outputs

    report = json.loads((s.path("eval") / "report.json").read_text())
    # A failed gate is final: refuse before the chat-parity check and the rest spend minutes on it.
    refuse_failed_gates(report.get("gates", []), s.release_root / s.name, report_dir=s.path("eval"))
    bench = json.loads(s.path("bench").read_text())
    metrics = metrics_from_outputs(report, bench, s.path("adapter"), quant=s.quant)
    metrics["chat_parity"] = _chat_parity(s)  # the file that ships, checked again: raises on any difference
    if s.recipe.get("description"):
        metrics["description"] = s.recipe["description"]
    ev = s.recipe.get("eval") or {}
    lora = s.path("lora")
    publish_release(
        s.name, s.release_root, gguf=s.path("model"), base_dir=s.base, quant=s.quant,
        recipe={"release": s.recipe, "train_resolved": _read_yaml(s.path("adapter") / "recipe.yaml")},
        data_files={"train": s.data, "eval": s.eval}, metrics=metrics, gates=report.get("gates", []),
        adapter=lora if lora.is_file() else None, system_prompt=ev.get("system"),
        chat_template=_chat_template(s.path("merged")), report_dir=s.path("eval"))
    print(f"published {s.release_root / s.name}")


def _read_yaml(path: Path):
    from edgeft.data.io import read_yaml

    return read_yaml(path, "resolved train recipe") if path.is_file() else None


def _chat_template(model_dir: Path) -> str | None:
    from convert.vocab.chat_template import chat_template_of

    return chat_template_of(model_dir)  # the adapter's is the template training rendered


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Settings], None]
    inputs: Callable[[Settings], list[Path]]
    output: str  # LAYOUT key; for folders, the file inside that marks completion
    marker: str | None = None
    optional: bool = False  # skipped (with a note) when its module is not installed


def _base_files(s: Settings) -> list[Path]:
    return sorted(p for p in s.base.iterdir() if p.is_file()) if s.base.is_dir() else [s.base / "config.json"]


STAGES = [
    Stage("check", stage_check, lambda s: [s.path("settings"), s.data, s.eval], "check"),
    Stage("train", stage_train, lambda s: [s.path("check"), s.data, s.eval, *_base_files(s)], "adapter",
          "adapter_config.json"),
    Stage("merge", stage_merge, lambda s: [s.path("adapter") / "adapter_config.json"], "merged", "config.json"),
    Stage("imatrix", stage_imatrix, lambda s: [s.path("merged") / "config.json", s.data], "imatrix"),
    Stage("f16", stage_f16, lambda s: [s.path("merged") / "config.json"], "f16"),
    Stage("model", stage_model, lambda s: [s.path("merged") / "config.json", s.path("imatrix")], "model"),
    Stage("base_imatrix", stage_base_imatrix, lambda s: [s.path("settings"), *_base_files(s), s.data], "base_imatrix"),
    Stage("base_gguf", stage_base_gguf, lambda s: [*_base_files(s), s.path("base_imatrix")], "base_gguf"),
    Stage("lora", stage_lora, lambda s: [s.path("adapter") / "adapter_config.json"], "lora", optional=True),
    Stage("eval", stage_eval, lambda s: [s.path("model"), s.path("base_gguf"), s.path("f16"), s.eval, s.data,
                                         *_context_files(s)], "eval", "report.json"),
    Stage("bench", stage_bench, lambda s: [s.path("model"), s.path("base_gguf")], "bench"),
    Stage("publish", stage_publish, lambda s: [s.path("eval") / "report.json", s.path("bench"), s.path("model"),
                                               *([s.path("lora")] if s.path("lora").is_file() else [])], "publish"),
]
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def stage_output(stage: Stage, s: Settings) -> Path:
    if stage.name == "publish":
        return s.release_root / s.name / "manifest.json"
    out = s.path(stage.output)
    return out / stage.marker if stage.marker else out


def run_stage(name: str, s: Settings) -> None:
    stage = STAGE_BY_NAME.get(name) or STAGE_BY_NAME.get(name.replace("-", "_"))
    if stage is None:
        raise EdgeftError(f"unknown release stage {name!r}; stages: settings, {', '.join(STAGE_BY_NAME)}")
    if stage.optional and not _module_available(stage):
        print(f"{name}: skipped (module not installed)")
        return
    stage.run(s)


def _module_available(stage: Stage) -> bool:
    import importlib.util

    return importlib.util.find_spec("convert.lora") is not None if stage.name == "lora" else True


def _stale(stage: Stage, s: Settings) -> bool:
    output = stage_output(stage, s)
    if not output.exists():
        return True
    newest_input = max((p.stat().st_mtime for p in stage.inputs(s) if p.exists()), default=0.0)
    return newest_input > output.stat().st_mtime


def run_pipeline(s: Settings, log=print) -> Path:
    """Run the stages in order, each only when its output is missing or older than one of its inputs."""
    if s.demo:
        from edgeft.demo import build_demo

        build_demo(DEMO_DIR)
    s.out.mkdir(parents=True, exist_ok=True)
    stage_settings(s)
    for stage in STAGES:
        if stage.optional and not _module_available(stage):
            continue
        if not _stale(stage, s):
            log(f"{stage.name}: up to date")
            continue
        started = time.time()
        log(f"{stage.name}: running")
        stage.run(s)
        log(f"{stage.name}: done in {time.time() - started:.0f}s")
    return s.release_root / s.name
