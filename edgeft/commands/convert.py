"""`edgeft convert`: HF model folder -> GGUF."""

from __future__ import annotations

import click


@click.command("convert")
@click.argument("model_dir")
@click.option("-o", "--output", "out_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="GGUF file to write (written to a temporary name, renamed when complete).")
@click.option("--outtype", default="f16", show_default=True,
              help="Tensor type, llama.cpp's names: f32, f16, bf16, q8_0, q4_k_m, iq4_xs, iq2_m... (an unknown "
                   "name lists them all); iq1_*, iq2_*, iq3_xs, iq3_xxs and q2_k_s need --imatrix.")
@click.option("--imatrix", default=None,
              help="Importance matrix for quantization: an imatrix GGUF, or 'auto' to compute it (cached) from "
                   "--imatrix-data.")
@click.option("--imatrix-data", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="Calibration conversations (JSONL) for --imatrix auto: use the training data.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for quantization kernels (default: all cores).")
@click.option("--allow-pickle", is_flag=True,
              help="Accept pytorch_model*.bin pickle weights (they can run code when loaded; trusted sources only).")
@click.option("--pretokenizer", default=None,
              help="llama.cpp BPE pre-tokenizer name when auto-detection does not recognise the tokenizer.")
def convert(model_dir, out_path, outtype, imatrix, imatrix_data, threads, allow_pickle, pretokenizer):
    """Convert a local Hugging Face model folder to one GGUF file that llama.cpp runs.

    Reads safetensors lazily (sharded or not), writes llama.cpp's tokenizer, special tokens and chat template,
    and every hyper-parameter the architecture needs (llama, mistral, qwen2, qwen3, phi3, gemma2, smollm3, granite,
    olmo2, gemma3).

    \b
    Example:
      edgeft convert out/merged -o out/model-f16.gguf --outtype f16
      edgeft convert path/to/Qwen2.5-0.5B-Instruct -o qwen-q8_0.gguf --outtype q8_0
      edgeft convert out/merged -o out/model-Q4_K_M.gguf --outtype q4_k_m --imatrix auto --imatrix-data train.jsonl
    """
    from pathlib import Path

    from convert import convert_model
    from convert.common.fsutil import refuse_own_input
    from edgeft.modelref import resolve_model

    model_dir = resolve_model(model_dir)
    refuse_own_input(out_path, {"model folder": model_dir})  # before --imatrix auto's minutes of work
    if imatrix is not None and imatrix.lower() == "auto":
        # Computing the imatrix needs torch (the train extra); a file path does not.
        from edgeft.imatrix import resolve_imatrix

        imatrix = resolve_imatrix(imatrix, model_dir, data_path=imatrix_data,
                                  cache_dir=Path(out_path).resolve().parent / ".edgeft-imatrix")
    elif imatrix is not None:
        from convert.common.jsonl import check_input_file

        check_input_file(imatrix, "pass an imatrix GGUF or --imatrix auto", missing="imatrix file not found")

    convert_model(model_dir, out_path, outtype=outtype, imatrix=imatrix, threads=threads,
                  allow_pickle=allow_pickle, pretokenizer=pretokenizer, progress=True,
                  log=lambda line: click.echo(line, err=True))
