"""`edgeft train`: QLoRA/LoRA fine-tuning with a plain PyTorch loop (edgeft/train/loop.py).

AdamW + cosine schedule with warmup, gradient accumulation to the recipe's effective batch, loss on assistant
tokens only (normalised by the number of such tokens in the whole optimizer step, over all processes), held-out
eval every N steps with best checkpoint and early stop, resumable checkpoints every N steps.

Multi-process: under `torchrun` each process trains on its share of every optimizer step and the LoRA gradients
are summed with one all-reduce per step (gloo on CPU, NCCL on CUDA) before identical optimizer steps; rank 0
writes. That is DDP's arithmetic for these parameters; doing it by hand keeps it correct with 4-bit frozen weights
and gradient checkpointing, where DDP's module wrapper needs special settings (its hooks fire on recomputation).

The package: recipe (settings, CLI > YAML > defaults), model (tokenizer, base and LoRA), batches (tokenized
examples and the batch plan), loop (the optimizer loop), checkpoint (resumable and best checkpoints), world (the
process group), plots (loss.png). This module checks every input before a model is loaded, then runs the loop.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path

from convert.fingerprint import INPUTS_FILE
from convert.common.errors import EdgeftError, environment_error
from convert.common.fsutil import atomic_file, check_writable, empty_folder, hold_folder, is_empty_folder, refuse_own_input
from edgeft.identity import check_resume_inputs, training_inputs
from edgeft.train import checkpoint as ckpt
from edgeft.train.model import bitsandbytes_problem, check_base
from edgeft.train.recipe import RESUME_MAY_CHANGE, Recipe, resolve_recipe, save_recipe
from edgeft.train.world import is_main_process


def train(base, data, out_dir, *, eval_path=None, config=None, overwrite: bool = False, resume: bool = False,
          progress: bool = True, **overrides) -> Path:
    """Fine-tune `base` on `data`; write the peft adapter plus recipe.yaml, metrics.jsonl, loss.png,
    chat_template.jinja and summary.json into `out_dir` and return it. Settings: overrides > `config` > defaults."""
    base = check_base(base)
    out_dir, data = Path(out_dir), Path(data)
    # --overwrite replaces the whole folder, so then it must not hold the data or the recipe either.
    refuse_own_input(out_dir, {"base model folder": base, "training data": data, "eval data": eval_path,
                               "recipe": config if not isinstance(config, dict) else None}, around=overwrite)
    recipe, size_note = _resolve(out_dir, config, resume, overrides, base)
    split = preflight(data, eval_path, recipe)  # invalid data stops here, before any model is loaded
    _check_from_adapter(recipe, base)
    check_writable(out_dir)  # a read-only or full output folder is found now, not after the model loaded
    if recipe.method == "qlora":
        problem = bitsandbytes_problem()
        if problem:
            raise EdgeftError(f"--method qlora needs bitsandbytes 4-bit, which does not run here ({problem}); "
                              "install bitsandbytes>=0.50.2 or pass --method lora")
    from edgeft.train.precision import check_optimizer, resolve_precision

    precision = resolve_precision(recipe.precision)  # an explicit bf16 this machine lacks: one line, nothing loaded
    check_optimizer(recipe.optimizer)
    # The folder is held from here to the end (rank 0 holds it for all): what it holds is judged under the hold, so
    # a second run, or an --overwrite of a live one, is refused instead of training into the same files.
    held = hold_folder(out_dir, holder="another edgeft train", advice="wait for it to end, or choose another -o") \
        if is_main_process() else contextlib.nullcontext()
    with held:
        _check_out_dir(out_dir, overwrite=overwrite, resume=resume)
        if resume:
            check_resume_inputs(out_dir, base, data, eval_path)
        return _train_held(base, data, eval_path, out_dir, recipe, overwrite=overwrite, resume=resume,
                           progress=progress, split=split, size_note=size_note, precision=precision)


def _train_held(base: Path, data: Path, eval_path, out_dir: Path, recipe: Recipe, *, overwrite: bool, resume: bool,
                progress: bool, split, size_note, precision) -> Path:
    from edgeft.train.world import World

    # Every process has passed the checks above before the group forms, so none sees another's outputs.
    world = World()
    fresh = not resume and (overwrite or is_empty_folder(out_dir))
    try:
        # Here too: with several processes, or an effective_batch the base's size chose, a step is effective_batch.
        recipe.grad_accum(world.size, "recipe" if world.size == 1 else f"torchrun ({world.size} processes)")
        if world.is_main and overwrite and not resume and out_dir.exists():
            empty_folder(out_dir)  # not the folder itself: the hold is on it
        world.barrier()
        return _run(base, data, Path(eval_path) if eval_path else None, out_dir, recipe, world, resume, progress,
                    precision, split=split, size_note=size_note)
    except BaseException as exc:
        error = _failed(exc, out_dir, fresh and world.is_main)
        if error is exc:
            raise
        raise error from None
    finally:
        world.close()


def _failed(exc: BaseException, out_dir: Path, remove_partial: bool) -> BaseException:
    """What a run that died leaves: its folder when it holds a checkpoint to --resume from or the finished adapter
    (written before the final eval), otherwise nothing: a half folder of recipe.yaml and metrics.jsonl would only
    block the rerun. An OSError (full disk...) becomes one line naming the folder."""
    if (out_dir / "adapter_config.json").is_file():
        kept = "the trained adapter is kept"
    elif ckpt.latest_checkpoint(out_dir) is not None:
        kept = "the last checkpoint is kept: fix that, then rerun with --resume"
    else:
        kept = None
        if remove_partial:
            shutil.rmtree(out_dir, ignore_errors=True)
    if not isinstance(exc, OSError) or exc.errno is None:
        return exc
    return environment_error(exc, out_dir, note=kept or "nothing was written")


def _resolve(out_dir: Path, config, resume: bool, overrides: dict, base: Path) -> tuple[Recipe, str | None]:
    from edgeft.train.size import apply_size_defaults

    saved = out_dir / "recipe.yaml"
    if resume and config is None and saved.is_file():
        # A resumed run continues with the recipe it started with (the command line may still override).
        recipe = resolve_recipe(saved, **overrides)
    else:
        recipe = resolve_recipe(config, **overrides)
    recipe, size_note = apply_size_defaults(recipe, base)
    if resume and saved.is_file():
        started = resolve_recipe(saved)
        for key, value in recipe.to_dict().items():
            if key not in RESUME_MAY_CHANGE and value != getattr(started, key):
                raise EdgeftError(f"--resume {out_dir}: {key} was {getattr(started, key)!r} when the run started and "
                                  f"is {value!r} now; resume with the run's own recipe ({saved}) or start again "
                                  "with --overwrite")
    return recipe, size_note


def preflight(data: Path, eval_path, recipe: Recipe):
    """The data check and the validation split: every refusal about the data, before a model loads (train calls
    it; a sweep calls it for its trials before the first trains). Returns what `_carve` does."""
    _check_data(Path(data), eval_path, recipe)
    return _carve(Path(data), eval_path, recipe)


def _carve(data: Path, eval_path, recipe: Recipe):
    """The validation split (recipe `validation:`) and, for `select: metric`, its gold checked against the metric:
    (Carved, Validation or None), or None without a split. The eval set is only compared with, never used."""
    if recipe.validation is None:
        return None
    from edgeft.data.split import carve_validation
    from runtime.metrics import parse_metric

    scorer = parse_metric(recipe.metric) if recipe.select == "metric" else None
    carved = carve_validation(data, recipe.validation, eval_path=eval_path, seed=recipe.seed,
                              gold_problem=scorer.gold_problem if scorer else None)
    if recipe.select != "metric":
        return carved, None
    from edgeft.train.select import prepare_validation

    return carved, prepare_validation(carved.validation, recipe.metric, carved.source)


# What the next run is told about a folder an earlier run left, by ckpt.run_folder_state.
RUN_FOLDER_ADVICE = {
    "finished": "holds a finished training run (summary.json); pass --overwrite to replace it, or choose another -o",
    "resumable": "holds an unfinished training run (last checkpoint {checkpoint}); pass --resume to continue it, "
                 "--overwrite to start again, or choose another -o",
    "partial": "holds a training run that stopped before its first checkpoint (killed?), so there is nothing to "
               "resume; pass --overwrite to start again (it replaces this folder), or choose another -o",
}


def _check_out_dir(out_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Train only into a new or empty folder, a run's own folder with --resume, or over a run's folder with
    --overwrite; never into, or over, a folder that holds something else (the rule every command shares)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeftError(f"{out_dir}: exists and is not a folder; choose another -o")
    ckpt.refuse_foreign_run_folder(out_dir)
    checkpoint = ckpt.latest_checkpoint(out_dir)
    if resume and checkpoint is not None:
        return
    if is_empty_folder(out_dir):
        if resume:
            raise EdgeftError(f"{out_dir}: no checkpoint to resume from; run without --resume to start training")
        return
    if resume or not overwrite:
        advice = RUN_FOLDER_ADVICE[ckpt.run_folder_state(out_dir)].format(checkpoint=checkpoint and checkpoint.name)
        raise EdgeftError(f"{out_dir}: {'--resume finds no checkpoint: ' if resume else ''}output folder {advice}")


def _check_from_adapter(recipe: Recipe, base: Path) -> None:
    if recipe.from_adapter is None:
        return
    from convert.fingerprint import check_adapter_base

    adapter = Path(recipe.from_adapter)
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise EdgeftError(f"--from-adapter {adapter}: no adapter_config.json, so this is not a trained adapter; "
                          "pass the output folder of an edgeft train run")
    named = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    try:
        check_adapter_base(adapter, named, base)
    except EdgeftError as exc:
        raise EdgeftError(f"--from-adapter {exc}") from None


def _check_objective_data(data: Path, eval_path, recipe: Recipe) -> None:
    """Pairs for a preference objective, conversations for SFT: the wrong kind is one line before anything loads."""
    from convert.common.pairs import holds_pairs

    wanted = recipe.objective != "sft"
    for path, option in ((data, "--data"), (eval_path, "--eval")):
        if path is None or holds_pairs(path) == wanted:
            continue
        if wanted:
            raise EdgeftError(f"{path}: {option} holds conversations, and --objective {recipe.objective} trains on "
                              "preference pairs ({\"prompt\", \"chosen\", \"rejected\"} a line); pass pairs, "
                              "or train with --objective sft")
        raise EdgeftError(f"{path}: {option} holds preference pairs (prompt/chosen/rejected), and --objective sft "
                          "trains on conversations; pass --objective dpo (or orpo), or pass conversations")


def _check_data(data: Path, eval_path, recipe: Recipe) -> None:
    from edgeft.data.check import check_dataset
    from convert.common.jsonl import check_input_file

    check_input_file(data, "pass a JSONL file of conversations with --data")
    if eval_path is not None:
        check_input_file(eval_path, "pass a JSONL file with --eval or leave it out")
    if recipe.chat_template:  # read after the tokenizer loads: a wrong path is found now
        check_input_file(recipe.chat_template, "fix chat_template in the recipe", missing="chat template file not found")
    _check_objective_data(data, eval_path, recipe)
    # Schema, duplicates and train/eval contamination; token lengths are the mask builder's job during loading.
    report = check_dataset(data, eval_path=eval_path)
    if report.errors:
        more = f" (+{len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise EdgeftError(f"data check failed: {report.errors[0]}{more}; run `edgeft data check {data}` "
                          "for the full report")


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _run(base: Path, data: Path, eval_path: Path | None, out_dir: Path, recipe: Recipe, world, resume: bool,
         progress: bool, precision, *, split=None, size_note: str | None = None) -> Path:
    from edgeft.train.model import load_tokenizer, load_training_model, parameter_counts

    _seed_everything(recipe.seed)
    tok = load_tokenizer(base, recipe)
    train_examples, eval_examples = _tokenize(data, eval_path, split, tok, recipe)
    model = load_training_model(base, recipe, tok, precision)
    for p in model.parameters():
        if p.requires_grad:  # every process starts from rank 0's adapter initialisation
            world.broadcast_(p.data)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.mark_run_folder(out_dir)  # first: whatever a kill leaves here is then known for a run's
        if not resume:
            save_recipe(recipe, out_dir / "recipe.yaml")  # what --resume reads back
            with atomic_file(out_dir / INPUTS_FILE) as tmp:  # what --resume, merge and convert-lora compare with
                tmp.write_text(json.dumps(training_inputs(base, data, eval_path), indent=1), encoding="utf-8")
            (out_dir / "metrics.jsonl").write_text("", encoding="utf-8")
        if split is not None:  # what trains and what scores checkpoints, as files beside the adapter
            split[0].write(out_dir)
    world.barrier()
    run = _train_run(split, model, recipe, world, tok, train_examples, eval_examples, out_dir, progress,
                     precision=precision)
    if resume:
        ckpt.restore_latest(out_dir, run.restore)
    else:
        _seed_everything(recipe.seed + world.rank)  # different dropout masks per process
    run.loop()
    summary = run.finish(*parameter_counts(model))
    if world.is_main:
        facts = {"base": base, "data": data, "eval": eval_path, "processes": world.size,
                 "steps": f"{summary['steps']} of {summary['planned_steps']}"}
        if size_note:
            facts["defaults"] = size_note
        if split is not None:
            facts["validation"] = f"{len(split[0].validation)} examples ({split[0].source}), " \
                                  f"{len(split[0].left_out)} left out as eval text"
        save_recipe(recipe, out_dir / "recipe.yaml", extra=facts)
    world.barrier()
    return out_dir


def _tokenize(data: Path, eval_path: Path | None, split, tok, recipe: Recipe) -> tuple[list, list]:
    """Training and held-out examples, before the model loads. With a validation split the held-out loss is
    measured on it: the eval set is never looked at in training."""
    import tempfile

    from edgeft.train.batches import tokenize_conversations, tokenize_pairs

    reader = tokenize_conversations if recipe.objective == "sft" else tokenize_pairs

    def tokenize(path):
        return reader(path, tok.tokenizer, tok.chat_template, recipe.max_len) if path else []

    if split is None:
        return tokenize(data), tokenize(eval_path)
    with tempfile.TemporaryDirectory() as folder:
        trained, validation = split[0].write(Path(folder))
        return tokenize(trained), tokenize(validation)


def _train_run(split, *args, **kwargs):
    from edgeft.train.loop import TrainRun

    if args[1].objective != "sft":
        from edgeft.train.preference_run import PreferenceRun

        return PreferenceRun(*args, **kwargs)
    if split is None or split[1] is None:
        return TrainRun(*args, **kwargs)
    from edgeft.train.select import MetricRun

    return MetricRun(*args, validation=split[1], **kwargs)


def format_summary(summary: dict) -> list[str]:
    """The one-screen summary `edgeft train` prints."""
    lines = [
        f"method        {summary['method']}, {summary.get('objective', 'sft')} objective, on {summary['device']} "
        f"x{summary['processes']} process(es)",
        f"precision     {summary.get('precision_reason', 'fp32')}",
        f"trainable     {summary['trainable_params']:,} of {summary['total_params']:,} params "
        f"({summary['trainable_pct']:.3f}%)",
        f"steps         {summary['steps']} of {summary['planned_steps']}"
        + ("  (early stop: eval loss stopped improving)" if summary["stopped_early"] else ""),
    ]
    if summary.get("last_eval_loss") is not None:
        kept = " (the adapter's weights)" if summary.get("adapter_step") == summary["best_step"] else ""
        lines += [f"eval loss     {summary['last_eval_loss']:.4f} at step {summary['last_eval_step']} (held-out, "
                  "the last eval)",
                  f"best eval     {summary['best_eval_loss']:.4f} at step {summary['best_step']}{kept}"]
    else:
        lines.append("eval loss     - (no held-out data; pass --eval to measure one)")
    if summary.get("best_val_score") is not None:
        lines.append(f"best score    {100 * summary['best_val_score']:.1f}% {summary['metric']} on "
                     f"{summary['validation_n']} validation examples at step {summary['best_step']} (the adapter's "
                     "weights; review.md, validation.png)")
    if summary.get("last_batch_loss") is not None:
        lines.append(f"batch loss    {summary['last_batch_loss']:.4f} (the last training batch only, not the model)")
    lines += [
        f"throughput    {summary['tokens_per_s']:.1f} tokens/s ({summary['tokens']:,} tokens in "
        f"{summary['train_seconds']:.1f} s)",
        f"peak memory   {summary['peak_memory_mb']:.0f} MiB",
    ]
    if summary["added_tokens"]:
        lines.append(f"added tokens  {', '.join(summary['added_tokens'])} (embedding rows trained)")
    return lines
