"""`edgeft bench`: prompt-processing and generation speed of a GGUF, optionally side by side with another."""

from __future__ import annotations

import json

import click


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--vs", "other", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Second GGUF measured at the same settings (e.g. the base model).")
@click.option("-p", "--n-prompt", type=int, default=512, show_default=True, help="Prompt tokens (pp test).")
@click.option("-n", "--n-gen", type=int, default=128, show_default=True, help="Generated tokens (tg test).")
@click.option("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice).")
@click.option("--repeat", type=int, default=3, show_default=True, help="Runs per test; the median is reported.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(model, other, n_prompt, n_gen, threads, repeat, as_json):
    """Measure pp/tg tokens per second (median of --repeat), load time, file size and peak RSS.

    Each model runs in its own process, so peak RSS and cold start are its own; with --vs the two models
    alternate round by round, so background load on the machine affects both alike.

    \b
    Example:
      edgeft bench out/model-Q4_K_M.gguf --vs base-Q4_K_M.gguf -p 512 -n 128 --repeat 5
    """
    from runtime.throughput import measure, measure_pair, speed_ratio

    settings = dict(n_prompt=n_prompt, n_gen=n_gen, threads=threads, repeat=repeat)
    results = list(measure_pair(model, other, **settings)) if other else [measure(model, **settings)]
    if as_json:
        payload = {"results": results}
        if other:
            payload["ratio"] = speed_ratio(results[0], results[1])
        click.echo(json.dumps(payload, indent=2))
        return
    header = f"{'model':<40} {'size MiB':>9} {'load s':>7} {'pp' + str(n_prompt) + ' t/s':>11} " \
             f"{'tg' + str(n_gen) + ' t/s':>11} {'peak RSS MiB':>13}"
    click.echo(header)
    for row in results:
        pp = f"{row['pp_tok_s']:.1f}" if row["pp_tok_s"] else "-"
        tg = f"{row['tg_tok_s']:.1f}" if row["tg_tok_s"] else "-"
        name = row["model"] if len(row["model"]) <= 40 else "…" + row["model"][-39:]
        click.echo(f"{name:<40} {row['size_mib']:>9.1f} {row['load_s']:>7.2f} {pp:>11} {tg:>11} "
                   f"{row['peak_rss_mib']:>13.0f}")
    if other:
        ratio = speed_ratio(results[0], results[1])
        fmt = lambda value: f"{value:.3f}" if value else "-"  # noqa: E731
        click.echo(f"ratio first/second: pp {fmt(ratio['pp'])}, tg {fmt(ratio['tg'])}")
