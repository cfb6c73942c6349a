"""`edgeft import`: GGUF -> HF model folder."""

from __future__ import annotations

import click


@click.command("import")
@click.argument("gguf_path", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="HF folder to write (written to a temporary folder, renamed when complete).")
@click.option("--dtype", type=click.Choice(["f32", "bf16"], case_sensitive=False), default="f32", show_default=True,
              help="Type of the safetensors weights (quantized tensors are dequantized).")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
def import_gguf(gguf_path, out_dir, dtype, overwrite):
    """Turn a GGUF back into a Hugging Face model folder you can fine-tune.

    Writes safetensors (dequantized), config.json, generation_config.json and a tokenizer faithful to the GGUF's
    vocabulary (tokenizer.json, tokenizer_config.json, chat_template.jinja; tokenizer.model for SentencePiece), for
    the architectures `edgeft convert` writes (llama, mistral, qwen2, qwen3, phi3, gemma2, smollm3, granite, olmo2,
    gemma3).

    \b
    Example:
      edgeft import SmolLM2-135M-Instruct.Q4_1.gguf -o base/
      edgeft convert base/ -o base-f32.gguf --outtype f32
    """
    from convert.importer import import_gguf as run_import

    run_import(gguf_path, out_dir, dtype=dtype.lower(), overwrite=overwrite, progress=True,
               log=lambda line: click.echo(line, err=True))
