"""The training loop: one optimizer step = every process's share of the step's micro-batches, one gradient
all-reduce, clip, AdamW, cosine LR. Then maybe eval (best checkpoint, early stop) and maybe a checkpoint."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from pathlib import Path

from convert.common.errors import EdgeftError
from convert.common.fsutil import make_temp
from edgeft.train import checkpoint as ckpt
from edgeft.train.batches import label_count, plan_epoch
from edgeft.train.forward import eval_batches, shared_prefix_mask_form, step_batches, token_loss_sum
from edgeft.train.plots import read_metrics
from edgeft.train.precision import Precision, make_optimizer
from edgeft.train.recipe import Recipe
from edgeft.train.world import World

METRICS = "metrics.jsonl"


def cosine_with_warmup(warmup_steps: int, total_steps: int):
    """LR factor per step: linear warmup up to 1, then cosine decay towards 0 at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def sync_gradients(params, world: World) -> None:
    """Sum the trainable gradients over processes with one flat all-reduce (what DDP does for these params)."""
    import torch

    if world.size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = world.sum_(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def evaluate(model, examples: list[dict], recipe: Recipe, *, pad_id: int, device, world: World,
             precision: Precision | None = None) -> float:
    """Mean loss per assistant token over the held-out set (each process takes every world-th forward pass)."""
    import torch

    totals = torch.zeros(2, dtype=torch.float64, device=device)
    model.eval()
    with torch.no_grad():
        for batch in eval_batches(examples, packing=recipe.packing, micro_batch=recipe.micro_batch,
                                  max_len=recipe.max_len, pad_id=pad_id, device=device,
                                  mask=shared_prefix_mask_form(model, recipe), rank=world.rank, size=world.size):
            totals[0] += token_loss_sum(model, batch, precision).double()
            totals[1] += (batch["targets"] != -100).sum()
    model.train()
    world.sum_(totals)
    return float(totals[0] / totals[1].clamp(min=1))


def record_eval(state: dict, step: int, loss: float, patience: int | None) -> bool:
    """Update the best-eval bookkeeping in `state`; True when `loss` is a new best.

    After `patience` evals in a row without a new best, `stopped_early` is set: the held-out loss has stopped
    improving (typically rising from epoch 3 on), so more steps would only fit the training set.
    """
    if state["best_eval"] is None or loss < state["best_eval"]:
        state.update(best_eval=loss, best_step=step, evals_without_best=0)
        return True
    state["evals_without_best"] += 1
    if patience and state["evals_without_best"] >= patience:
        state["stopped_early"] = True
    return False


def peak_memory_mb(device) -> float:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class TrainRun:
    def __init__(self, model, recipe: Recipe, world: World, tok, train_examples, eval_examples, out_dir: Path,
                 progress: bool = True, precision: Precision | None = None):
        import torch

        self.model, self.recipe, self.world, self.tok = model, recipe, world, tok
        self.train_examples, self.eval_examples, self.out_dir = train_examples, eval_examples, Path(out_dir)
        self.progress = progress
        self.precision = precision or Precision("fp32", "fp32", "asked for")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.pad_id = tok.pad_id
        self.mask_form = shared_prefix_mask_form(model, recipe)
        self.optimizer = make_optimizer(recipe.optimizer, self.params, lr=recipe.lr,
                                        weight_decay=recipe.weight_decay)
        self.lengths = [self.example_length(e) for e in train_examples]
        self._plans: dict[int, object] = {}
        self.steps_per_epoch = len(self.plan(0).steps)
        self.total_steps = recipe.max_steps or max(1, math.ceil(recipe.epochs * self.steps_per_epoch))
        warmup = max(1, math.ceil(recipe.warmup_ratio * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(warmup, self.total_steps))
        self.state = {"step": 0, "tokens": 0, "train_seconds": 0.0, "best_eval": None, "best_step": None,
                      "evals_without_best": 0, "stopped_early": False, "last_loss": None, "last_eval": None,
                      "last_eval_step": None}

    @staticmethod
    def example_length(example: dict) -> int:
        return len(example["input_ids"])

    def plan(self, epoch: int):
        if epoch not in self._plans:
            self._plans = {epoch: plan_epoch(self.lengths, micro_batch=self.recipe.micro_batch,
                                             accum=self.recipe.grad_accum(self.world.size), world=self.world.size,
                                             seed=self.recipe.seed, epoch=epoch,
                                             group_by_length=self.recipe.group_by_length)}
        return self._plans[epoch]

    def restore(self, path: Path) -> None:
        state, rng_states = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer,
                                                 scheduler=self.scheduler)
        if len(rng_states) != self.world.size:
            raise EdgeftError(f"{path}: written by {len(rng_states)} processes, resumed with {self.world.size}; "
                              "resume with the same --nproc_per_node")
        ckpt.restore_rng(rng_states[self.world.rank])
        self.state.update(state)
        if self.world.is_main:  # metrics after the checkpoint belong to the killed run's lost steps
            metrics = self.out_dir / METRICS
            rows = [row for row in read_metrics(metrics) if row["step"] <= state["step"]]
            metrics.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    def _log(self, row: dict) -> None:
        if self.world.is_main:
            with open(self.out_dir / METRICS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def step(self, step: int) -> float:
        import torch

        epoch, index = divmod(step, self.steps_per_epoch)
        mine = [[self.train_examples[i] for i in mb] for mb in self.plan(epoch).for_rank(index, self.world.rank,
                                                                                         self.world.size)]
        loss = self.accumulate(mine)
        sync_gradients(self.params, self.world)
        if self.recipe.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.recipe.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def accumulate(self, mine: list[list[dict]]) -> float:
        """Forward and backward this process's micro-batches of the step; the step's loss (all processes).
        The one place the objective lives: a preference run overrides it (edgeft/train/preference_run.py)."""
        import torch

        labelled = torch.tensor([float(sum(label_count(e) for mb in mine for e in mb))], dtype=torch.float64,
                                device=self.device)
        n_labels = max(1.0, float(self.world.sum_(labelled)[0]))
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed loss, conversation tokens
        totals[1] = sum(len(e["input_ids"]) for mb in mine for e in mb)
        for batch in step_batches(mine, packing=self.recipe.packing, micro_batch=self.recipe.micro_batch,
                                  max_len=self.recipe.max_len, pad_id=self.pad_id, device=self.device,
                                  mask=self.mask_form):
            summed = token_loss_sum(self.model, batch, self.precision)
            (summed / n_labels).backward()
            totals[0] += summed.detach().double()
        self.world.sum_(totals)
        self.state["tokens"] += int(totals[1])
        return float(totals[0]) / n_labels

    def held_out(self) -> tuple[float, dict]:
        """The held-out loss that selects the best checkpoint, and other held-out figures to log beside it."""
        return evaluate(self.model, self.eval_examples, self.recipe, pad_id=self.pad_id, device=self.device,
                        world=self.world, precision=self.precision), {}

    def loop(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc="train", unit="step",
                   disable=not (self.progress and self.world.is_main))
        try:
            self._steps(bar)
        finally:
            bar.close()  # before an error is printed, so the one-line error gets a line of its own

    def _steps(self, bar) -> None:
        for step in range(self.state["step"], self.total_steps):
            lr = self.scheduler.get_last_lr()[0]
            started = time.perf_counter()
            loss = self.step(step)
            ckpt.refuse_diverged(loss, step + 1, self.out_dir)
            self.state["train_seconds"] += time.perf_counter() - started
            self.state["step"] = done = step + 1
            self.state["last_loss"] = loss
            if done % self.recipe.log_every == 0 or done == self.total_steps:
                self._log({"step": done, "epoch": round(done / self.steps_per_epoch, 4), "loss": loss, "lr": lr,
                           "tokens": self.state["tokens"],
                           "tokens_per_s": self.state["tokens"] / max(1e-9, self.state["train_seconds"])})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if done == self.total_steps and self.world.is_main:
                # The trained weights are on disk before the final eval: a crash or kill there loses nothing.
                self._write_adapter()
            if self.eval_examples and (done % self.recipe.eval_every == 0 or done == self.total_steps):
                self._eval(done)
            if done % self.recipe.save_every == 0 and done < self.total_steps:
                self._checkpoint(done)
            if self.state["stopped_early"]:
                break

    def _eval(self, done: int) -> None:
        loss, figures = self.held_out()
        self._log({"step": done, "eval_loss": loss, **figures})
        self.state.update(last_eval=loss, last_eval_step=done)
        if record_eval(self.state, done, loss, self.recipe.early_stop):
            if self.world.is_main:
                ckpt.save_best(self.out_dir, model=self.model, state={"step": done, "eval_loss": loss})
        elif self.state["stopped_early"]:
            self._log({"step": done, "early_stop": True, "best_step": self.state["best_step"]})
        self.world.barrier()

    def _checkpoint(self, done: int) -> None:
        rng_states = self.world.gather(ckpt.capture_rng())
        if self.world.is_main:
            ckpt.save_checkpoint(self.out_dir, done, model=self.model, optimizer=self.optimizer,
                                 scheduler=self.scheduler, rng_states=rng_states, state=dict(self.state),
                                 keep=self.recipe.keep_checkpoints)
        self.world.barrier()

    def finish(self, trainable: int, total: int) -> dict:
        """Load the best weights if asked, write the adapter and the reports (rank 0); return the summary."""
        best = ckpt.best_checkpoint(self.out_dir)
        keep_best = bool(self.eval_examples) and self.recipe.keep == "best" and best is not None
        if keep_best:
            ckpt.load_trainable_state(self.model, best / "trainable.safetensors")
        summary = {
            "method": self.recipe.method, "objective": self.recipe.objective, "processes": self.world.size,
            "device": str(self.device),
            "precision": self.precision.compute, "precision_reason": self.precision.describe(),
            "packing": self.recipe.packing, "shared_prefixes": self.mask_form is not None,
            "steps": self.state["step"], "planned_steps": self.total_steps,
            "trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / max(1, total),
            "tokens": self.state["tokens"], "train_seconds": self.state["train_seconds"],
            "tokens_per_s": self.state["tokens"] / max(1e-9, self.state["train_seconds"]),
            "peak_memory_mb": peak_memory_mb(self.device),
            # The last optimizer step's batch: one batch (in the demo often a generic chat one, 0.25 where the
            # held-out loss was 0.016), so it is named for what it is, and the held-out figures sit beside it.
            "last_batch_loss": self.state["last_loss"],
            "last_eval_loss": self.state["last_eval"], "last_eval_step": self.state["last_eval_step"],
            "best_eval_loss": self.state["best_eval"], "best_step": self.state["best_step"],
            "adapter_step": self.state["best_step"] if keep_best else self.state["step"],
            "stopped_early": self.state["stopped_early"], "added_tokens": self.tok.added_tokens,
        }
        if self.world.is_main:
            self._write_adapter()
            from edgeft.train.plots import plot_loss

            plot_loss(self.out_dir / METRICS, self.out_dir / "loss.png")
            from convert.common.fsutil import atomic_file

            with atomic_file(self.out_dir / "summary.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary

    def _write_adapter(self) -> None:
        """Adapter files are renamed into OUT_DIR one by one, adapter_config.json last: peft (and our merge) only
        sees an adapter once every file it names is complete."""
        tmp = make_temp(self.out_dir / "adapter", directory=True)  # also clears one a killed run left
        try:
            # Resized vocabularies travel as trainable-token rows inside the adapter, not as whole embeddings.
            # Only the trained adapter: a DPO reference adapter ("ref") is the starting point, not the result.
            self.model.save_pretrained(str(tmp), save_embedding_layers=False, selected_adapters=["default"])
            if self.tok.added_tokens:
                self._save_tokenizer(tmp)
            # The exact template training rendered: merge, convert and eval read it from here.
            (tmp / "chat_template.jinja").write_text(self.tok.chat_template, encoding="utf-8")
            for name in sorted(os.listdir(tmp), key=lambda n: n == "adapter_config.json"):
                os.replace(tmp / name, self.out_dir / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _save_tokenizer(self, folder: Path) -> None:
        """The grown tokenizer, which merge copies into the merged folder, saying what training read from the base
        where transformers 5's save_pretrained does not: the BOS training fed (add_bos_token, which it drops) and
        tokenizer.model (which it does not write; a SentencePiece vocabulary cannot be converted without it)."""
        from runtime.hf_tokenizer import llama_cpp_bos_id
        from convert.vocab.special import state_add_bos

        tokenizer = self.tok.tokenizer
        tokenizer.save_pretrained(str(folder))
        bos_id = llama_cpp_bos_id(tokenizer)
        state_add_bos(folder, None if bos_id is None else tokenizer.convert_ids_to_tokens(bos_id))
        spm_model = Path(tokenizer.name_or_path) / "tokenizer.model"
        if spm_model.is_file() and not (folder / "tokenizer.model").exists():
            shutil.copyfile(spm_model, folder / "tokenizer.model")
