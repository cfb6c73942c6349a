"""Checkpoint selection by the task's metric (recipe `select: metric`): loss past a couple of epochs lies.

Every eval step (each `eval_every` steps and the last) the checkpoint answers the validation split greedily
(edgeft/train/greedy.py: what the GGUF would answer) and the recipe's metric scores the answers with the eval's own
scoring (runtime.metrics). The best score is kept as `checkpoints/best` and becomes the adapter; a tie keeps the
earlier checkpoint (fewer steps: the cheaper one). Early stop counts evals without a better score. The held-out
loss on the validation split is still measured and drawn, beside the score.

Outputs next to the adapter: selection.jsonl (per checkpoint: score, loss, a sample of answers), review.md (that
sample to read, every checkpoint's answer under each question) and validation.png (score and loss against steps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_file
from edgeft.train import checkpoint as ckpt
from edgeft.train.loop import TrainRun, evaluate, record_eval
from edgeft.train.plots import read_metrics

SELECTION, REVIEW, PLOT = "selection.jsonl", "review.md", "validation.png"
REVIEW_SAMPLE = 10  # validation questions whose answers review.md shows for every checkpoint


@dataclass
class Validation:
    examples: list  # runtime.examples.Example: prompt turns and gold answer
    scorer: object  # a runtime.metrics metric
    spec: str


def validation_examples(records: Sequence, where: str) -> list:
    """Eval examples (prompt, gold = last assistant turn) from the validation split's records."""
    from runtime.examples import Example

    examples = []
    for record in records:
        messages = record.messages
        if messages[-1]["role"] != "assistant":
            raise EdgeftError(f"{where}:{record.line}: the last message must be an assistant answer to score "
                              "validation answers against; fix the example")
        examples.append(Example(record.line, messages[:-1], messages[-1]["content"]))
    return examples


def prepare_validation(records: Sequence, spec: str, where: str) -> Validation:
    """The metric and the validation gold, checked before any model loads: a gold answer the metric cannot score
    is one line naming it."""
    from runtime.metrics import parse_metric, refuse_unscoreable

    examples = validation_examples(records, where)
    scorer = parse_metric(spec)
    try:
        refuse_unscoreable(scorer, examples, where, spec)
    except EdgeftError as exc:
        raise EdgeftError(f"validation split: {exc}") from None
    return Validation(examples, scorer, spec)


def sample_indexes(n: int) -> list[int]:
    from runtime.ladder import timing_sample  # the ladder's evenly spaced pick: first, last and between

    return timing_sample(n, REVIEW_SAMPLE)


def score_answers(validation: Validation, answers: Sequence[str]) -> list[float]:
    return [validation.scorer.score(answer, example.gold, example.question).score
            for answer, example in zip(answers, validation.examples)]


class MetricRun(TrainRun):
    """The training loop with each eval scored by the metric on the validation split (rank 0 decodes)."""

    def __init__(self, *args, validation: Validation, **kwargs):
        super().__init__(*args, **kwargs)
        from edgeft.train.greedy import answer_budget

        self.validation = validation
        self.max_new_tokens = answer_budget([e.gold for e in validation.examples], self.tok)

    def _score(self) -> tuple[float, list[str], list[float]]:
        import torch

        from edgeft.train.greedy import greedy_answers

        answers, scores = [], []
        if self.world.is_main:
            answers = greedy_answers(self.model, self.tok, [e.prompt for e in self.validation.examples],
                                     max_new_tokens=self.max_new_tokens,
                                     # no gradients or activations kept: twice the training batch fits
                                     batch_size=2 * self.recipe.micro_batch)
            scores = score_answers(self.validation, answers)
        mean = torch.tensor([sum(scores) / max(1, len(scores))], dtype=torch.float64, device=self.device)
        self.world.broadcast_(mean)
        return float(mean[0]), answers, scores

    def _eval(self, done: int) -> None:
        loss = evaluate(self.model, self.eval_examples, self.recipe, pad_id=self.pad_id, device=self.device,
                        world=self.world, precision=self.precision)
        score, answers, scores = self._score()
        self._log({"step": done, "eval_loss": loss, "val_score": score})
        if self.world.is_main:
            picked = sample_indexes(len(answers))
            with open(self.out_dir / SELECTION, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": done, "score": score, "loss": loss, "sample": picked,
                                         "answers": [answers[i] for i in picked],
                                         "scores": [scores[i] for i in picked]}) + "\n")
        self.state.update(last_eval=loss, last_eval_step=done)
        # The bookkeeping keeps the lowest value: the negated score (a tie keeps the earlier, cheaper checkpoint).
        if record_eval(self.state, done, -score, self.recipe.early_stop):
            if self.world.is_main:
                ckpt.save_best(self.out_dir, model=self.model, state={"step": done, "eval_loss": loss,
                                                                      "val_score": score})
        elif self.state["stopped_early"]:
            self._log({"step": done, "early_stop": True, "best_step": self.state["best_step"]})
        self.world.barrier()

    def restore(self, path: Path) -> None:
        super().restore(path)
        if self.world.is_main:  # like metrics.jsonl: rows past the checkpoint belong to the killed run's lost steps
            selection = self.out_dir / SELECTION
            rows = [row for row in read_metrics(selection) if row["step"] <= self.state["step"]]
            selection.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    def finish(self, trainable: int, total: int) -> dict:
        summary = super().finish(trainable, total)
        rows = read_metrics(self.out_dir / SELECTION)
        best = next((row for row in rows if row["step"] == summary["best_step"]), None)
        summary.update(select="metric", metric=self.validation.spec, validation_n=len(self.validation.examples),
                       best_val_score=best and best["score"], best_eval_loss=best and best["loss"],
                       last_val_score=rows[-1]["score"] if rows else None)
        if self.world.is_main:
            with atomic_file(self.out_dir / "summary.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
            write_review(self.out_dir / REVIEW, rows, self.validation, summary["best_step"])
            plot_selection(rows, self.out_dir / PLOT, summary["best_step"], self.validation.spec)
        return summary


def write_review(path: Path, rows: list[dict], validation: Validation, chosen: int | None) -> Path:
    """The sampled validation questions, each with its gold and every checkpoint's answer, to read by hand."""
    lines = [f"# Checkpoints on the validation split ({len(validation.examples)} examples, {validation.spec})", "",
             "| step | score | validation loss |", "|---:|---:|---:|"]
    lines += [f"| {row['step']}{' (chosen)' if row['step'] == chosen else ''} | {100 * row['score']:.1f}% | "
              f"{row['loss']:.4f} |" for row in rows]
    for position, index in enumerate(rows[0]["sample"] if rows else []):
        example = validation.examples[index]
        lines += ["", f"## line {example.line}: {example.question}", "", f"gold: `{_inline(example.gold)}`", ""]
        lines += [f"- step {row['step']} {'✓' if row['scores'][position] else '✗'} `{_inline(row['answers'][position])}`"
                  for row in rows]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _inline(text: str) -> str:
    return " ".join(text.split()).replace("`", "'") or "(empty)"


def plot_selection(rows: list[dict], out_path: Path, chosen: int | None, spec: str) -> Path | None:
    """Validation score and validation loss against the optimizer step, the chosen checkpoint marked."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    fig, score_axis = plt.subplots(figsize=(7, 4), dpi=100)
    score_axis.plot(steps, [100 * row["score"] for row in rows], "o-", color="tab:green", label=f"score ({spec})")
    score_axis.set_xlabel("optimizer step")
    score_axis.set_ylabel("validation score (%)")
    loss_axis = score_axis.twinx()
    loss_axis.plot(steps, [row["loss"] for row in rows], "s--", color="tab:blue", label="validation loss")
    loss_axis.set_ylabel("validation loss")
    if chosen is not None:
        score_axis.axvline(chosen, color="grey", linestyle=":", linewidth=1)
    fig.legend(loc="upper center", ncol=2, fontsize="small")
    score_axis.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(out_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out_path)
