"""What a release is made of (base, data, eval, quant, name, recipe) and where its work files live.

Command line > recipe > defaults; no BASE means the built-in demo (its base, data and recipe). Everything in a
release recipe that can be checked without a model is checked here, before the first stage runs.

Work files live in OUT/NAME/, each where the stage table (edgeft.release.graph) says its stage writes it; the
release in RELEASE_DIR/NAME/.

Example:
    settings = resolve_settings(recipe_path="edgeft/demo/recipe.yaml")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeft.errors import EdgeftError
from edgeft.fsutil import refuse_own_input
from edgeft.release.graph import RELEASE, STAGE_BY_NAME
from edgeft.release.publish import check_release_name

DEMO_DIR = Path(".cache/demo")
DEMO_RECIPE = Path(__file__).parent.parent / "demo" / "recipe.yaml"
# When the user brings a model but no recipe: the training defaults, and a fine-tune may not lose to its base.
GENERIC_RECIPE = {"train": {}, "eval": {"metric": "exact", "shots": 3, "gates": {"min_gain": 0}}}
BENCH_SETTINGS = {"n_prompt": 256, "n_gen": 64, "repeat": 3}


@dataclass
class Settings:
    base: Path
    data: Path
    eval: Path
    quant: str
    name: str
    out: Path           # work folder OUT/NAME
    release_root: Path
    recipe: dict = field(default_factory=dict)
    recipe_path: Path | None = None
    demo: bool = False

    def path(self, stage: str) -> Path:
        """The file or folder that `stage` writes."""
        output = STAGE_BY_NAME[stage].output
        return self.release_root / self.name if output == RELEASE else self.out / output.format(quant=self.quant)

    def as_args(self) -> list[str]:
        """The `edgeft release` options that resolve to these settings again (what each make stage is given)."""
        args = [] if self.demo else ["--base", str(self.base)]
        args += ["--data", str(self.data), "--eval", str(self.eval), "--quant", self.quant, "--name", self.name,
                 "--out", str(self.out.parent), "--release-dir", str(self.release_root)]
        return args + (["--recipe", str(self.recipe_path)] if self.recipe_path else [])

    def as_json(self) -> dict:
        return {"base": str(self.base), "data": str(self.data), "eval": str(self.eval), "quant": self.quant,
                "name": self.name, "out": str(self.out), "release_root": str(self.release_root),
                "recipe": self.recipe, "demo": self.demo}



def load_release_recipe(path: Path | None, demo: bool) -> dict:
    from edgeft.data.io import read_yaml

    if path is None:
        path = DEMO_RECIPE if demo else None
    if path is None:
        return json.loads(json.dumps(GENERIC_RECIPE))
    recipe = read_yaml(path, "release recipe")
    recipe = {} if recipe is None else recipe
    if not isinstance(recipe, dict):
        raise EdgeftError(f"{path}: the release recipe is a {type(recipe).__name__}, not a mapping; write it as "
                          "keys (name:, quant:, train:, eval:), see edgeft/demo/recipe.yaml")
    unknown = set(recipe) - set(RECIPE_KEYS)
    if unknown:
        raise EdgeftError(f"{path}: unknown release recipe keys {sorted(map(str, unknown))}; use name, quant, "
                          "description, train (edgeft train settings) and eval (metric, system, shots, max_tokens, "
                          "gates)")
    check_release_recipe(recipe, str(path))
    return recipe


RECIPE_KEYS = ("name", "quant", "train", "eval", "description")
# What the eval and imatrix stages read from `eval:` (a key outside this list is a typo found before training).
EVAL_KEYS = ("metric", "system", "shots", "max_tokens", "gates", "probe", "context", "context_k",
             "requests_per_day", "imatrix_examples")


def check_release_recipe(recipe: dict, source: str) -> None:
    """Everything in a release recipe that can be checked without a model, checked before the first stage runs:
    the train settings, the eval keys, the gate names and thresholds, the metric name, the quant and the name."""
    from convert.quant import parse_file_type
    from edgeft.train.recipe import resolve_recipe
    from runtime.eval_settings import EvalSettings, check_requests_per_day
    from runtime.gates import resolve_gates
    from runtime.metrics import split_metric_spec

    for key in ("train", "eval"):
        if recipe.get(key) is not None and not isinstance(recipe[key], dict):
            raise EdgeftError(f"{source}: {key}: must be a mapping of settings, not {recipe[key]!r}")
    resolve_recipe(dict(recipe.get("train") or {}))
    ev = recipe.get("eval") or {}
    unknown = sorted(map(str, set(ev) - set(EVAL_KEYS)))
    if unknown:
        raise EdgeftError(f"{source}: eval: unknown keys {unknown}; known: {', '.join(EVAL_KEYS)}")
    if ev.get("gates") is not None and not isinstance(ev["gates"], dict):
        raise EdgeftError(f"{source}: eval.gates must be a mapping like {{min_gain: 5}}")
    try:
        resolve_gates(dict(ev.get("gates") or {}))
        split_metric_spec(str(ev.get("metric", "exact")))
    except EdgeftError as exc:
        raise EdgeftError(f"{source}: eval: {exc}") from None
    # Text the eval and the card use as it is: a list or a number here failed in the eval stage, after training.
    texts = {f"eval.{key}": ev[key] for key in ("system", "probe", "context") if ev.get(key) is not None}
    if recipe.get("description") is not None:
        texts["description"] = recipe["description"]
    for key, value in texts.items():
        if not isinstance(value, str):
            raise EdgeftError(f"{source}: {key}={value!r} must be text (a string)")
    for key in ("shots", "max_tokens", "context_k", "imatrix_examples"):
        if key in ev and (not isinstance(ev[key], int) or isinstance(ev[key], bool) or ev[key] < (key != "shots")):
            raise EdgeftError(f"{source}: eval.{key}={ev[key]!r} must be a whole number"
                              f"{' of at least 0' if key == 'shots' else ' of at least 1'}")
    try:
        check_requests_per_day(ev.get("requests_per_day"))
        # What needs what (eval.context_k without eval.context...), as the eval stage will judge it: with a baseline.
        EvalSettings(baseline="the release's base", system=ev.get("system"), shots=ev.get("shots", 0),
                     shots_from="the release's data" if ev.get("shots") else None, context=ev.get("context"),
                     context_k=ev.get("context_k")).check()
    except EdgeftError as exc:
        raise EdgeftError(f"{source}: eval.{exc}") from None
    if recipe.get("quant") is not None:
        parse_file_type(str(recipe["quant"]))
    if recipe.get("name") is not None:
        check_release_name(str(recipe["name"]))


def resolve_settings(*, base=None, data=None, eval_path=None, quant=None, name=None, recipe_path=None,
                     out="out", release_root="release") -> Settings:
    """Command line > recipe > defaults; no BASE means the built-in demo (its base, data and recipe)."""
    demo = not base
    recipe = load_release_recipe(Path(recipe_path) if recipe_path else None, demo)
    if demo:
        base = DEMO_DIR / "base"
        data = data or DEMO_DIR / "data" / "train.jsonl"
        eval_path = eval_path or DEMO_DIR / "data" / "eval.jsonl"
    if not data or not eval_path:
        raise EdgeftError("release with BASE= needs DATA= (training JSONL) and EVAL= (held-out JSONL)")
    base = Path(base)
    name = name or recipe.get("name") or ("edgeft-demo" if demo else base.name)
    quant = (quant or recipe.get("quant") or "Q4_K_M").upper()
    from convert.quant import parse_file_type

    parse_file_type(quant)  # an unknown QUANT is one line listing llama.cpp's menu, before any stage runs
    check_release_name(name)
    # The settings stage writes into OUT/NAME first, and the publish stage replaces RELEASE_DIR/NAME whole.
    inputs = {"base model folder": base, "training data": data, "eval data": eval_path, "recipe": recipe_path}
    refuse_own_input(Path(out) / name, inputs, option="--out")
    refuse_own_input(Path(release_root) / name, inputs, option="--release-dir")
    return Settings(base=base, data=Path(data), eval=Path(eval_path), quant=quant, name=name,
                    out=Path(out) / name, release_root=Path(release_root), recipe=recipe,
                    recipe_path=Path(recipe_path) if recipe_path else None, demo=demo)


def expand(template: str | None, settings: Settings) -> str | None:
    return None if template is None else template.format(data_dir=settings.data.parent, base=settings.base)
