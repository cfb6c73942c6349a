"""`edgeft train`: QLoRA (or LoRA) fine-tuning of a local HF model on chat JSONL."""

from __future__ import annotations

import click


@click.command("train")
@click.option("--base", required=True, help="Base model: local Hugging Face folder or hub id (owner/name).")
@click.option("--data", required=True, type=click.Path(path_type=str), help="Training conversations, JSONL.")
@click.option("--eval", "eval_path", type=click.Path(path_type=str), default=None,
              help="Held-out conversations, JSONL: eval loss every eval_every steps, best checkpoint, early stop.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder: the peft adapter, recipe.yaml, metrics.jsonl, loss.png, checkpoints/.")
@click.option("--config", type=click.Path(path_type=str), default=None,
              help="Recipe YAML (see edgeft/recipes/default.yaml); command-line options override it.")
@click.option("--method", default=None, callback=lambda _ctx, _param, value: _method(value),
              help="qlora: base frozen in 4-bit NF4 (default); lora: base kept in 16/32-bit.")
@click.option("--objective", type=click.Choice(["sft", "dpo", "orpo"]), default=None,
              help="sft: conversations (default); dpo, orpo: preference pairs (prompt/chosen/rejected, TRL's format).")
@click.option("--beta", type=float, default=None, help="dpo: distance from the reference; orpo: odds-ratio weight.")
@click.option("--from-adapter", type=click.Path(path_type=str), default=None,
              help="Start from this adapter (an SFT run's folder); for dpo, a frozen copy of it is the reference.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps (overrides epochs).")
@click.option("--epochs", type=float, default=None,
              help="Passes over the training data (default 2); a fraction trains part of one (1.5: one and a half).")
@click.option("--lr", type=float, default=None,
              help="Peak learning rate (default: by the base's size, see edgeft/train/size.py).")
@click.option("-r", "--rank", "r", type=int, default=None, help="LoRA rank (default 16; alpha defaults to 2r).")
@click.option("--validation", default=None,
              help="Carve a validation split from --data: a fraction (0.1) or a JSONL file; never trained on.")
@click.option("--metric", default=None,
              help="Select the checkpoint by this metric on the validation split (exact, json-match, sql-exec:DB...): "
                   "sets select: metric (and validation: 0.1 unless one is given).")
@click.option("--seed", type=int, default=None, help="Seed: same seed, same data, same result on CPU.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
              help="Compute precision (default auto: bf16 where the CPU has AVX512-BF16/AMX or on CUDA, else fp32).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the output folder.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier training run's output folder (never a folder that is not a run's).")
def train(base, data, eval_path, out_dir, config, method, objective, beta, from_adapter, max_steps, epochs, lr, r,
          validation, metric, seed, precision, resume, overwrite):
    """Fine-tune BASE on chat conversations and save a LoRA adapter.

    QLoRA by default: the base is frozen in 4-bit NF4 with double quantization (bitsandbytes; bf16 compute on
    CUDA and on CPUs with AVX512-BF16/AMX, fp32 elsewhere: --precision) and LoRA adapters on all linear layers
    learn from the assistant tokens only. Every other setting lives in the recipe YAML; the resolved recipe is
    saved to OUT_DIR/recipe.yaml.

    \b
    Example:
      edgeft train --base path/to/hf-model --data train.jsonl --eval eval.jsonl -o out/adapter
      edgeft train --base path/to/hf-model --data train.jsonl -o out/adapter --config my-recipe.yaml --resume
      edgeft train --base path/to/hf-model --data train.jsonl -o out/adapter --validation 0.1 --metric exact
      edgeft train --base path/to/hf-model --data pairs.jsonl -o out/dpo --objective dpo --from-adapter out/adapter
      torchrun --nproc_per_node 2 -m edgeft train --base path/to/hf-model --data train.jsonl -o out/adapter
    """
    from edgeft.modelref import is_hub_id, resolve_model
    from edgeft.train import format_summary
    from edgeft.train import train as run_training
    from edgeft.train.world import is_main_process

    if is_hub_id(base):
        base = str(resolve_model(base, what="base model"))

    out = run_training(base, data, out_dir, eval_path=eval_path, config=config, overwrite=overwrite, resume=resume,
                       method=method, objective=objective, beta=beta, from_adapter=from_adapter,
                       max_steps=max_steps, epochs=epochs, lr=lr, r=r, seed=seed,
                       validation=_fraction_or_path(validation), metric=metric, select="metric" if metric else None,
                       precision=precision)
    if is_main_process():
        import json

        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        for line in format_summary(summary):
            click.echo(line)
        click.echo(f"adapter       {out}")


def _method(value: str | None) -> str | None:
    """--method is how the base is held; DPO/ORPO (what the issue tracker and other tools call a method) are objectives."""
    from edgeft.train.recipe import METHODS, OBJECTIVES

    if value is None or value in METHODS:
        return value
    hint = f" ({value} is an objective: --objective {value})" if value in OBJECTIVES else ""
    raise click.BadParameter(f"{value!r} is not one of {', '.join(METHODS)}{hint}", param_hint="'--method'")


def _fraction_or_path(value: str | None):
    try:
        return None if value is None else float(value)
    except ValueError:
        return value
