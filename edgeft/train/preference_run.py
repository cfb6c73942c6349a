"""The SFT training loop (edgeft/train/loop.py) on preference pairs: the same batch plan, optimizer, schedule,
checkpoints, resume, best-checkpoint and early stop; only what one step computes and what is logged differ.

An example is a pair {"chosen": example, "rejected": example}; a micro-batch of n pairs is one forward of its 2n
sequences, packed as SFT packs (recipe `packing`, `share_prefixes`: a pair's two answers read one copy of their
prompt), or padded with packing off. Logged per step: the loss, rewards, reward margin and accuracy, preference
accuracy; per eval: the held-out preference loss (what selects the best checkpoint) and the same figures on the
held-out pairs.
"""

from __future__ import annotations

from edgeft.train.batches import label_count
from edgeft.train.loop import TrainRun
from edgeft.train.preference import PairLayout, PreferenceLoss, pair_stats


class PreferenceRun(TrainRun):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        layout = PairLayout(self.recipe.packing, self.recipe.max_len, self.mask_form)
        self.loss_fn = PreferenceLoss(self.recipe.objective, self.recipe.beta, self.pad_id, self.precision, layout)
        self.step_figures: dict = {}

    @staticmethod
    def example_length(example: dict) -> int:
        return max(len(example["chosen"]["input_ids"]), len(example["rejected"]["input_ids"]))

    def _counts(self, micro_batches: list[list[dict]]) -> tuple[float, float]:
        """(pairs, chosen labelled tokens) over every process: what the step's loss is normalised by."""
        import torch

        counts = torch.tensor([float(sum(len(mb) for mb in micro_batches)),
                               float(sum(label_count(p["chosen"]) for mb in micro_batches for p in mb))],
                              dtype=torch.float64, device=self.device)
        counts = self.world.sum_(counts)
        return max(1.0, float(counts[0])), max(1.0, float(counts[1]))

    def accumulate(self, mine: list[list[dict]]) -> float:
        import torch

        n_pairs, n_tokens = self._counts(mine)
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, tokens fed
        outputs = []
        for pairs in mine:
            out = self.loss_fn(self.model, pairs, self.device, n_pairs=n_pairs, n_chosen_tokens=n_tokens)
            out["loss"].backward()
            totals[0] += out["loss"].detach().double()
            totals[1] += sum(len(p[side]["input_ids"]) for p in pairs for side in ("chosen", "rejected"))
            outputs.append(out)
        self.world.sum_(totals)
        self.state["tokens"] += int(totals[1])
        self.step_figures = pair_stats(outputs) if outputs else {}  # this process's pairs
        return float(totals[0])

    def held_out(self) -> tuple[float, dict]:
        """Every process scores all held-out pairs (they are few), so the figures need no gathering."""
        import torch

        examples = self.eval_examples
        size = self.recipe.micro_batch
        n_tokens = max(1.0, float(sum(label_count(p["chosen"]) for p in examples)))
        loss, outputs = 0.0, []
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(examples), size):
                out = self.loss_fn(self.model, examples[start:start + size], self.device, n_pairs=len(examples),
                                   n_chosen_tokens=n_tokens)
                loss += float(out["loss"])
                outputs.append(out)
        self.model.train()
        return loss, {f"eval_{key}": value for key, value in pair_stats(outputs).items()}

    def _log(self, row: dict) -> None:
        if "loss" in row:
            row = {**row, **self.step_figures}
        super()._log(row)
