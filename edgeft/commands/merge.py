"""`edgeft merge`: fold a LoRA adapter into the full-precision base ("merge high, quantize after")."""

from __future__ import annotations

import click


@click.command("merge")
@click.option("--base", "base_dir", required=True,
              help="Base model: the local HF folder the adapter was trained on (full precision, not 4-bit).")
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder for the merged HF model.")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "f16", "f32"], case_sensitive=False), default="auto",
              show_default=True, help="Dtype of the merged weights; auto keeps each tensor's stored dtype.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--no-nf4-report", is_flag=True, help="Skip the comparison with a merge into the NF4-dequantized base.")
def merge(base_dir: str, adapter_dir: str, out_dir: str, dtype: str, overwrite: bool, no_nf4_report: bool) -> None:
    """Merge a LoRA adapter into the base's full-precision weights, shard by shard.

    W = W0 + s·B·A (s = alpha/r; rsLoRA alpha/sqrt(r); DoRA magnitudes applied), written as sharded safetensors
    with config, tokenizer files, chat template and generation config. Also logs how far a merge into the
    NF4-dequantized base would have landed from this one.

    \b
    Example:
      edgeft merge --base models/Qwen2.5-0.5B-Instruct --adapter out/adapter -o out/merged
    """
    from edgeft.merge import merge_adapter

    from edgeft.modelref import resolve_model

    path = merge_adapter(resolve_model(base_dir, what="base model"), adapter_dir, out_dir, dtype=dtype, overwrite=overwrite,
                         nf4_report=not no_nf4_report, progress=True, log=lambda line: click.echo(line, err=True))
    click.echo(f"merged model written to {path}")
