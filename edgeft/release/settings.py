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
from dataclasses import dataclass, field, replace
from pathlib import Path

from convert.common.errors import EdgeftError
from convert.common.fsutil import refuse_own_input
from edgeft.release.graph import AUTO, RELEASE, STAGE_BY_NAME
from edgeft.release.publish import check_release_name

DEMO_DIR = Path(".cache/demo")
DEMO_RECIPE = Path(__file__).parent.parent / "demo" / "recipe.yaml"
# When the user brings a model but no recipe: the training defaults, and a fine-tune may not lose to its base.
GENERIC_RECIPE = {"train": {}, "eval": {"shots": 3, "gates": {"min_gain": 0}}}
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

    @property
    def recipe_source(self) -> str:
        return str(self.recipe_path or (DEMO_RECIPE if self.demo else "the default release recipe"))

    def eval_settings(self):
        """What the eval stage evaluates with: the recipe's eval: section over the settings the release takes from
        its own files (the base at the same quant climbs the ladder, the F16 GGUF is the KLD reference...), and the
        gates on in every release. {data_dir} and {base} in the metric, probe and context are expanded."""
        from dataclasses import fields

        from runtime.eval_settings import EvalSettings
        from runtime.gates import GATES, release_gates

        section = {k: v for k, v in (self.recipe.get("eval") or {}).items() if k != IMATRIX_EXAMPLES[0]}
        keys = tuple(item.name for item in fields(EvalSettings) if item.name not in RELEASE_SETS)
        ev = EvalSettings.from_mapping(section, where=self.recipe_source, keys=keys + (IMATRIX_EXAMPLES[0],))
        gates = release_gates(ev.gates)
        if (self.recipe.get("train") or {}).get("objective") in ("dpo", "orpo"):
            # Trained to be preferred: the shipped file must prefer as trained, against the base at the same
            # quant (no eval.pairs given: the gate's need is refused as one line before training).
            gates = {"min_pref_gain": GATES["min_pref_gain"].default, **gates}
        return replace(ev, baseline=self.path("base_gguf"), shots_from=self.data if ev.shots else None,
                       reference=self.path("f16"), hf=self.path("merge"), gates=gates,
                       metric=expand(ev.metric, self), probe=expand(ev.probe, self), context=expand(ev.context, self),
                       pairs=expand(ev.pairs, self))

    def train_config(self) -> dict:
        """The recipe's train: section as training gets it: selection by the metric (select: metric, or a sweep)
        scores with the eval's metric unless train: names its own; {data_dir} and {base} expanded."""
        config = dict(self.recipe.get("train") or {})
        if config.get("select") == "metric" or self.recipe.get("sweep"):
            config["metric"] = expand(config.get("metric") or self.eval_settings().metric, self)
        return config

    def shipped_quant(self) -> str:
        """The type the release ships: its quant, or with AUTO the one the quants stage chose."""
        if self.quant != AUTO:
            return self.quant
        from runtime.quant_report import read_report

        return read_report(self.path("quants"))["type"]

    def imatrix_examples(self) -> int:
        """Training conversations the imatrix stages run (eval.imatrix_examples)."""
        from runtime.eval_settings import SettingError

        name, default = IMATRIX_EXAMPLES
        value = (self.recipe.get("eval") or {}).get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SettingError(f"<{name}> {value!r}: must be a whole number of at least 1", name)
        return value

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
    if path is None:
        path = DEMO_RECIPE if demo else None
    if path is None:
        return json.loads(json.dumps(GENERIC_RECIPE))
    recipe = _read_recipe(Path(path), ())
    unknown = set(recipe) - set(RECIPE_KEYS)
    if unknown:
        raise EdgeftError(f"{path}: unknown release recipe keys {sorted(map(str, unknown))}; use name, quant, "
                          "description, train (edgeft train settings), eval (the eval's settings and gates), "
                          "sweep (train settings -> lists of values) and extends (a recipe to start from)")
    check_release_recipe(recipe, str(path))
    return recipe


def _read_recipe(path: Path, seen: tuple) -> dict:
    """The recipe at `path`; with `extends: other.yaml` (relative to it), that recipe with this one's keys over it,
    the train:, eval: and sweep: sections key by key (a recipe that adds a sweep to the demo's restates nothing)."""
    from convert.common.jsonl import read_yaml

    recipe = read_yaml(path, "release recipe")
    recipe = {} if recipe is None else recipe
    if not isinstance(recipe, dict):
        raise EdgeftError(f"{path}: the release recipe is a {type(recipe).__name__}, not a mapping; write it as "
                          "keys (name:, quant:, train:, eval:), see edgeft/demo/recipe.yaml")
    parent = recipe.pop("extends", None)
    if parent is None:
        return recipe
    parent_path = path.parent / str(parent)
    if not parent_path.is_file() or parent_path.resolve() in seen:
        raise EdgeftError(f"{path}: extends: {parent}: {'no such recipe' if not parent_path.is_file() else 'a cycle'}"
                          f"; name a release recipe beside it")
    merged = _read_recipe(parent_path, seen + (path.resolve(),))
    for key, value in recipe.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both else value
    return merged


RECIPE_KEYS = ("name", "quant", "train", "eval", "description", "sweep")
# The eval settings a release takes from its own files (Settings.eval_settings); a recipe's eval: sets the rest.
RELEASE_SETS = ("baseline", "shots_from", "reference", "hf", "threads")
# Read by the imatrix stages from the recipe's eval: section, beside the eval's settings.
IMATRIX_EXAMPLES = ("imatrix_examples", 256)


def check_release_recipe(recipe: dict, source: str) -> None:
    """What in a release recipe can be checked without the release's paths: the train settings, the description,
    the quant and the name (`check_eval` checks the eval: section once the paths are known)."""
    from edgeft.train.recipe import resolve_recipe

    for key in ("train", "eval"):
        if recipe.get(key) is not None and not isinstance(recipe[key], dict):
            raise EdgeftError(f"{source}: {key}: must be a mapping of settings, not {recipe[key]!r}")
    train, metric = dict(recipe.get("train") or {}), (recipe.get("eval") or {}).get("metric", "exact")
    if train.get("select") == "metric":  # scored with the eval's metric unless train: names one (train_config)
        train.setdefault("metric", metric)
    resolve_recipe(train, where=f"{source}: train")
    if "sweep" in recipe:  # a grid edgeft sweep would refuse, refused before anything trains
        from edgeft.sweep import check_grid, plan_trials

        plan_trials(train, check_grid(recipe["sweep"], f"{source}: sweep"), train.get("metric") or metric,
                    f"{source}: sweep")
    # Text the card uses as it is: a list or a number here failed in the publish stage, after training.
    if recipe.get("description") is not None and not isinstance(recipe["description"], str):
        raise EdgeftError(f"{source}: description={recipe['description']!r} must be text (a string)")
    if recipe.get("quant") is not None:
        check_quant(str(recipe["quant"]).upper())
    if recipe.get("name") is not None:
        check_release_name(str(recipe["name"]))


def check_quant(quant: str) -> None:
    """A llama.cpp type, or AUTO (the quants stage chooses it)."""
    from convert.quant import parse_file_type

    if quant == AUTO:
        return
    try:
        parse_file_type(quant)
    except EdgeftError as exc:
        raise EdgeftError(f"{exc}; or auto (the smallest file that keeps the task score)") from None


def release_key(setting: str) -> str:
    """A setting as a release user gives it: an eval: key of the recipe, or (the release's own) its plain name."""
    from dataclasses import fields

    from runtime.eval_settings import EvalSettings, recipe_key

    settable = {item.name for item in fields(EvalSettings)} - set(RELEASE_SETS) | {IMATRIX_EXAMPLES[0]}
    return recipe_key(setting) if setting in settable else setting


def check_eval(settings: Settings) -> None:
    """The recipe's eval: section as the eval stage will use it (EvalSettings.check, with the release's base as the
    baseline), and imatrix_examples: a typo or a bad value is one line naming the recipe key, before training."""
    from runtime.eval_settings import SettingError, recipe_key
    from runtime.gates import gates_on

    try:  # every name here is a key of the recipe's eval: section (a typo too)
        evaluation = settings.eval_settings()  # its errors say which file
    except SettingError as exc:
        raise EdgeftError(exc.named(recipe_key)) from None
    try:
        evaluation.check()
        gates_on(evaluation.gates, evaluation)  # a gate without what it measures (min_pref_gain: eval.pairs)
        settings.imatrix_examples()
    except SettingError as exc:
        raise EdgeftError(f"{settings.recipe_source}: {exc.named(recipe_key)}") from None


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
    check_quant(quant)  # an unknown QUANT is one line listing llama.cpp's menu, before any stage runs
    check_release_name(name)
    # The settings stage writes into OUT/NAME first, and the publish stage replaces RELEASE_DIR/NAME whole.
    inputs = {"base model folder": base, "training data": data, "eval data": eval_path, "recipe": recipe_path}
    refuse_own_input(Path(out) / name, inputs, option="--out")
    refuse_own_input(Path(release_root) / name, inputs, option="--release-dir")
    settings = Settings(base=base, data=Path(data), eval=Path(eval_path), quant=quant, name=name,
                        out=Path(out) / name, release_root=Path(release_root), recipe=recipe,
                        recipe_path=Path(recipe_path) if recipe_path else None, demo=demo)
    check_eval(settings)
    if not demo:  # the demo's files are made by its first stage (demo data); the check stage checks them again
        check_recipe_files(settings)
    return settings


def recipe_files(s: Settings) -> dict[str, Path]:
    """Every file the release recipe names, by the recipe key that names it: what the stages will read after
    training (the eval's context, probe, rubric, the metric's database or judge) or while training (the chat
    template, a validation file, the database of the metric that selects the checkpoint)."""
    from runtime.metrics import split_metric_spec

    ev, train = s.eval_settings(), s.train_config()
    validation = train.get("validation")
    named = {"eval.context": ev.context, "eval.probe": ev.probe, "eval.rubric": ev.rubric,
             "train.chat_template": train.get("chat_template"),
             "train.validation": validation if isinstance(validation, str) else None}
    for key, spec in (("eval.metric", ev.metric), ("train.metric", train.get("metric"))):
        metric, argument = split_metric_spec(str(spec or "exact"))
        if metric in ("sql-exec", "judge"):
            named[f"{key} {metric}:"] = argument  # shown as the recipe has it: eval.metric sql-exec:PATH
    return {key: Path(value) for key, value in named.items() if value}


def check_recipe_files(s: Settings) -> None:
    """One line for the first file the recipe names that is not a readable regular file, before any stage (and
    again by the check stage, before training) rather than when the stage that reads it runs."""
    source = s.recipe_source
    for key, path in recipe_files(s).items():
        if path.is_file():
            continue
        what = "is a folder" if path.is_dir() else "is not a regular file" if path.exists() else "not found"
        raise EdgeftError(f"{source}: {key}{'' if key.endswith(':') else ' '}{path}: {what}; fix the recipe or "
                          "create the file (found before training)")


def expand(template: str | None, settings: Settings) -> str | None:
    return None if template is None else template.format(data_dir=settings.data.parent, base=settings.base)


def check_eval_inputs(s: Settings) -> None:
    """What the eval stage reads besides the models, read now as it will read it (the check stage, before
    training): gold answers the metric cannot score, too few training conversations for eval.shots, a context
    corpus that is empty or not passages, a probe that is not text, fewer eval examples than a gate's 95% claim
    needs."""
    from runtime import ladder
    from runtime.examples import read_examples
    from runtime.gates import GATES
    from runtime.metrics import parse_metric, refuse_unscoreable
    from runtime.perplexity import read_probe

    settings = s.eval_settings()
    examples = read_examples(s.eval)
    refuse_unscoreable(parse_metric(settings.metric), examples, s.eval, settings.metric)
    ladder.build_rungs(examples, system=settings.system, shots=settings.shots, shots_from=settings.shots_from,
                       context=settings.context, context_k=settings.passages)
    read_probe(settings.probe)
    for name, threshold in settings.gates.items():
        least = GATES[name].min_examples if name in GATES and threshold is not None else 0
        if len(examples) < least:
            raise EdgeftError(f"{s.eval}: {len(examples)} eval examples; gate {name} needs at least {least} for a 95% "
                              f"claim: add held-out examples (or set eval.gates.{name}: null to publish without it)")
