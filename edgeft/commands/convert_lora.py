"""`edgeft convert-lora`: a peft LoRA adapter as a llama.cpp adapter GGUF (no torch)."""

from __future__ import annotations

import click


@click.command("convert-lora")
@click.argument("adapter_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("-o", "--output", "out_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Adapter GGUF to write.")
@click.option("--base", "base_dir", default=None,
              help="Base HF model folder (default: the adapter's base_model_name_or_path, when it is local).")
@click.option("--outtype", type=click.Choice(["f32", "f16", "q8_0"], case_sensitive=False), default="f32",
              show_default=True, help="Tensor type of lora_a/lora_b.")
def convert_lora(adapter_dir: str, out_path: str, base_dir: str | None, outtype: str) -> None:
    """Write ADAPTER_DIR (a peft LoRA adapter) as a llama.cpp LoRA adapter GGUF.

    Load it over the base GGUF with llama.cpp's `--lora adapter.gguf` or llama-cpp-python's
    `Llama(model_path=..., lora_path="adapter.gguf")`: one base, many small task adapters.

    \b
    Example:
      edgeft convert-lora out/adapter -o out/adapter.gguf --base models/Qwen2.5-0.5B-Instruct
    """
    from convert.lora import convert_lora as convert_lora_file

    from edgeft.modelref import resolve_model

    base_dir = resolve_model(base_dir, what="base model") if base_dir else None
    path = convert_lora_file(adapter_dir, out_path, base_dir=base_dir, outtype=outtype.lower())
    click.echo(f"adapter GGUF written to {path}")
