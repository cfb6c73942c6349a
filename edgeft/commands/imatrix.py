"""`edgeft imatrix`: importance matrix of a HF model over your conversations, in llama.cpp's format."""

from __future__ import annotations

import click


@click.command("imatrix")
@click.argument("model_dir")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Calibration conversations, JSONL ({\"messages\": [...]} per line) - e.g. the training data.")
@click.option("-o", "--output", "out_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="imatrix GGUF to write.")
@click.option("--chat-template", default=None, help="Template text or .jinja file (default: the model's own).")
@click.option("--max-examples", type=int, default=None, help="Use at most this many conversations.")
@click.option("--max-tokens", type=int, default=None, help="Stop after this many tokens.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
def imatrix(model_dir, data_path, out_path, chat_template, max_examples, max_tokens, threads):
    """Compute which input channels of every linear layer matter (sum of squared activations), for quantization.

    The file is accepted by `edgeft quantize --imatrix`, `edgeft convert --imatrix` and llama-quantize.

    \b
    Example:
      edgeft imatrix out/merged --data train.jsonl -o out/imatrix.gguf
      edgeft convert out/merged -o out/model-Q4_K_M.gguf --outtype q4_k_m --imatrix out/imatrix.gguf
    """
    from edgeft.imatrix import compute_imatrix
    from edgeft.modelref import resolve_model

    compute_imatrix(resolve_model(model_dir), data_path, out_path, chat_template=chat_template,
                    max_examples=max_examples, max_tokens=max_tokens, threads=threads, log=lambda line: click.echo(line, err=True))
