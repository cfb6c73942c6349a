"""The release's stage graph, the one table of it: what each stage writes (under OUT/NAME) and what it reads.

`edgeft release` (and `make release`, which calls it) writes this table as a makefile with the release's own paths
and lets make run it (edgeft.release.pipeline), so a second run does nothing and touching the training data reruns
from training on. A stage NAME is the function `stage_NAME` of edgeft.release.stages.

Example:
    [stage.name for stage in STAGES if "train" in stage.inputs]   # ['merge', 'lora', 'publish']
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.report import EVAL_FILES

# Inputs that are not a stage's output: the training data, the eval data, the base model's files, and the
# recipe's context corpus (eval.context).
DATA, EVAL, BASE, CONTEXT = "<data>", "<eval>", "<base>", "<context>"  # not stage names: "eval" is one
RELEASE = "<release>"  # the published folder RELEASE_DIR/NAME, not a work file


@dataclass(frozen=True)
class Stage:
    name: str
    output: str  # a file or folder under OUT/NAME ("{quant}": the release's quant), or RELEASE
    inputs: tuple[str, ...] = ()  # names of other stages (their outputs), or DATA / EVAL / BASE / CONTEXT
    # Stages that must have run (and passed) first, though their output's time does not make this one stale: make's
    # order-only prerequisites. Training waits for the data check, but a check rerun for an eval setting must not
    # retrain.
    after: tuple[str, ...] = ()
    marker: str | None = None  # for a folder: the file inside it whose presence says the stage finished
    # Run by `edgeft release` itself before make, every time; it rewrites its output only when the content changes,
    # so what reads it reruns only after a change (a make rule that always runs would look to `make -n` as a change).
    always: bool = False
    # Only in a release whose quant is this one (AUTO: the sweep that chooses it); None: in every release. An input
    # naming a stage that is not in the release is no input of it.
    only_quant: str | None = None


AUTO = "AUTO"  # `quant: auto`: ship the smallest file that keeps the task score (the quants stage chooses it)
STAGES = (
    # Each settings file holds what its readers read, so an iteration pays only for what it changed: settings.json
    # is everything (the check, the quant sweep, the eval and the card read it), train-settings.json what training
    # reads (a changed gate or system prompt re-evaluates, it does not retrain), base-settings.json what the
    # base's stages and the imatrix read.
    Stage("settings", "settings.json", always=True),
    Stage("train_settings", "train-settings.json", always=True),
    Stage("base_settings", "base-settings.json", always=True),
    Stage("check", "data-check.json", ("settings", DATA, EVAL)),
    Stage("train", "adapter", ("train_settings", DATA, EVAL, BASE), marker="adapter_config.json", after=("check",)),
    Stage("merge", "merged", ("train",), marker="config.json"),
    Stage("imatrix", "imatrix.gguf", ("merge", "base_settings", DATA)),
    Stage("f16", "model-F16.gguf", ("merge",)),
    # The fine-tune's task score at each candidate quant, from the one F16 and imatrix (runtime.quant_sweep).
    Stage("quants", "quants", ("f16", "imatrix", "settings", EVAL), marker="quants.json", only_quant=AUTO),
    Stage("model", "model-{quant}.gguf", ("merge", "imatrix", "quants")),
    Stage("base_imatrix", "base-imatrix.gguf", ("base_settings", BASE, DATA)),
    Stage("base_gguf", "base-{quant}.gguf", ("base_imatrix", BASE, "quants")),
    Stage("lora", "adapter.gguf", ("train",)),
    Stage("eval", "eval", ("model", "base_gguf", "f16", "settings", EVAL, DATA, CONTEXT), marker=EVAL_FILES["report"]),
    Stage("bench", "bench.json", ("model", "base_gguf")),
    Stage("publish", RELEASE, ("eval", "bench", "model", "lora", "train", "settings"), marker="manifest.json"),
)
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def release_stages(quant: str) -> tuple[Stage, ...]:
    """The stages a release of `quant` runs, in the table's order."""
    return tuple(stage for stage in STAGES if stage.only_quant in (None, quant))
