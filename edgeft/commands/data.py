"""`edgeft data`: check, sample and split conversation JSONL before anything is trained on it."""

from __future__ import annotations

import click

FILE = click.Path(dir_okay=False, path_type=str)


@click.group("data")
def data():
    """Check, sample and split training data before anything is trained on it.

    Data is JSONL, one conversation per line: {"messages": [{"role": "user", "content": "..."}, ...]}.

    \b
    Example:
      edgeft data check train.jsonl --eval eval.jsonl --tokenizer path/to/model --max-len 2048
      edgeft data sample train.jsonl -n 50 --tokenizer path/to/model -o sample.md
      edgeft data split all.jsonl --eval-frac 0.1 -o data/
    """


@data.command("check")
@click.argument("train", metavar="TRAIN.jsonl", type=FILE)
@click.option("--eval", "eval_path", type=FILE, default=None,
              help="Eval JSONL: training examples holding its user turns or gold answers are errors.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Model folder: token lengths of the chat-rendered examples, and the template's own checks.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default=None,
              help="json: every assistant answer must parse as JSON.")
@click.option("--max-len", type=click.IntRange(min=1), default=None,
              help="Warn about examples longer than this many tokens (needs --tokenizer).")
@click.option("--near-dup-threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.8,
              show_default=True, help="Jaccard similarity (character 4-grams) above which two examples are near-duplicates.")
@click.option("--strict", is_flag=True, help="Exit non-zero on warnings too.")
@click.option("--fix", "fix_path", type=FILE, default=None,
              help="Write a cleaned copy without the examples that have errors (the input is never modified).")
@click.option("--drop-near-dups", is_flag=True, help="With --fix: drop near-duplicates too (the first one stays).")
def check(train, eval_path, tokenizer_dir, fmt, max_len, near_dup_threshold, strict, fix_path, drop_near_dups):
    """Report every problem as FILE:LINE: severity: what; exit 1 on any error (--strict: any warning).

    \b
    Errors: bad JSON, schema, role order, empty content, no final assistant turn, exact duplicates,
            non-JSON answers (--format json), training examples contaminated by --eval.
    Warnings: near-duplicates, examples over --max-len tokens.

    \b
    Example:
      edgeft data check train.jsonl --eval eval.jsonl --format json --fix clean.jsonl
    """
    from edgeft.data.check import check_dataset, fix

    if drop_near_dups and not fix_path:
        raise click.UsageError("--drop-near-dups only makes sense with --fix OUT.jsonl")
    report = check_dataset(train, eval_path=eval_path, tokenizer_dir=tokenizer_dir, fmt=fmt, max_len=max_len,
                           near_dup_threshold=near_dup_threshold)
    for line in report.lines():
        click.echo(line)
    if fix_path:
        out, dropped = fix(report, fix_path, drop_near_dups=drop_near_dups)
        click.echo(f"wrote {out}: {len(report.records) - dropped} examples kept, {dropped} dropped", err=True)
    if report.errors or (strict and report.warnings):
        raise SystemExit(1)


@data.command("sample")
@click.argument("path", metavar="FILE.jsonl", type=FILE)
@click.option("-n", "n", type=click.IntRange(min=1), default=50, show_default=True, help="Examples to draw.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the draw.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Model folder: render with its chat template and mark the tokens that carry loss.")
@click.option("-o", "--output", "out_path", required=True, type=FILE, help="Markdown file to write.")
def sample(path, n, seed, tokenizer_dir, out_path):
    """Draw random examples, rendered as the model sees them, trained spans between ⟦ and ⟧ — read them.

    \b
    Example:
      edgeft data sample train.jsonl -n 50 --tokenizer path/to/model -o sample.md
    """
    from edgeft.data.sample import write_sample

    out = write_sample(path, out_path, n=n, seed=seed, tokenizer_dir=tokenizer_dir)
    click.echo(f"wrote {out}", err=True)


@data.command("split")
@click.argument("path", metavar="FILE.jsonl", type=FILE)
@click.option("--eval-frac", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of examples for the eval side.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the assignment.")
@click.option("--near-dup-threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.8,
              show_default=True, help="Near-duplicates at or above this similarity stay on one side.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for train.jsonl, eval.jsonl and split.json.")
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty output folder.")
def split(path, eval_frac, seed, near_dup_threshold, out_dir, overwrite):
    """Split into train/eval with near-duplicates kept on one side (no paraphrase leaks into eval).

    \b
    Example:
      edgeft data split all.jsonl --eval-frac 0.1 -o data/
    """
    from edgeft.data.split import split_dataset

    result = split_dataset(path, out_dir, eval_frac=eval_frac, seed=seed, near_dup_threshold=near_dup_threshold,
                           overwrite=overwrite)
    click.echo(f"wrote {result['train_path']} ({result['train']}) and {result['eval_path']} ({result['eval']})",
               err=True)
