"""`edgeft quantize`: GGUF -> GGUF with llama.cpp's quant types, per-tensor policy and kernels."""

from __future__ import annotations

import click


@click.command("quantize")
@click.argument("in_path", metavar="IN.gguf", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", "out_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="GGUF file to write (appears only when complete).")
@click.option("--type", "type_name", required=True,
              help="llama.cpp quant type: F32 F16 BF16 Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0 IQ4_XS Q3_K_M IQ3_M Q2_K IQ2_M "
                   "IQ1_S... (all of llama-quantize's; an unknown name lists them).")
@click.option("--imatrix", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Importance-matrix GGUF (from `edgeft imatrix` or llama-imatrix); IQ1_*, IQ2_*, IQ3_XS, IQ3_XXS "
                   "and Q2_K_S need one.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Kernel threads (default: all cores).")
def quantize(in_path, out_path, type_name, imatrix, threads):
    """Quantize an F32/F16/BF16 GGUF the way llama-quantize does: same type per tensor, same bytes.

    \b
    Example:
      edgeft quantize out/model-f16.gguf -o out/model-Q4_K_M.gguf --type Q4_K_M --imatrix out/imatrix.gguf
    """
    from convert.quant import parse_file_type
    from convert.quant.gguf_io import quantize_gguf

    file_type = parse_file_type(type_name)  # unknown type: one line listing the menu, before any work
    quantize_gguf(in_path, out_path, file_type, imatrix=imatrix, threads=threads, progress=True)
    click.echo(f"wrote {out_path} ({file_type.name})", err=True)
