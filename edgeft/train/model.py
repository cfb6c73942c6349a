"""Loading a base for training: tokenizer + chat template (ChatML added when missing), the 4-bit or full-precision
base, and the LoRA adapter on top. torch/transformers/peft are imported inside functions (see edgeft/__init__)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from convert.common.errors import EdgeftError
from edgeft.train.lora_forward import use_fused_lora_forward
from edgeft.train.recipe import Recipe

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


def check_base(base: str | Path) -> Path:
    base = Path(base)
    if not base.is_dir():
        raise EdgeftError(f"{base}: base model folder not found; pass a local Hugging Face model folder with --base")
    if not (base / "config.json").is_file():
        raise EdgeftError(f"{base}: no config.json, so this is not a Hugging Face model folder; pass one with --base")
    return base


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def bitsandbytes_problem() -> str | None:
    """Why 4-bit NF4 cannot run here, or None. Tried for real (a tiny Linear4bit forward), not just imported."""
    try:
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        layer = layer.to(device)
        layer(torch.zeros(1, 64, device=device))
    except Exception as exc:  # any failure (missing wheel, no kernel for this device) means the same to the user
        return f"{type(exc).__name__}: {_first_line(exc) or type(exc).__name__}"[:200]
    return None


@dataclass
class TrainingTokenizer:
    tokenizer: object
    chat_template: str
    added_tokens: list[str] = field(default_factory=list)
    pad_id: int = 0


def load_tokenizer(base: Path, recipe: Recipe) -> TrainingTokenizer:
    """The tokenizer with the template training renders; ChatML tokens are added when the template needs them."""
    from edgeft.data.masking import load_tokenizer as load_hf_tokenizer
    from edgeft.data.templates import CHATML_TEMPLATE, template_for

    tokenizer = load_hf_tokenizer(base)  # the one loader: tokenizes as llama.cpp will
    if recipe.chat_template:
        path = Path(recipe.chat_template)
        if not path.is_file():
            raise EdgeftError(f"{path}: chat template file not found; fix chat_template in the recipe")
        template = path.read_text(encoding="utf-8")
    else:
        template = template_for(base, default=CHATML_TEMPLATE)
    added = []
    if template == CHATML_TEMPLATE:
        vocab = tokenizer.get_vocab()
        added = [t for t in CHATML_TOKENS if t not in vocab]
        if added:
            tokenizer.add_tokens(added, special_tokens=True)
    tokenizer.chat_template = template
    # Padding is masked out of attention and loss, so any id will do. The tokenizer itself is left as it is:
    # when it is saved with the adapter, a made-up pad token must not travel into the merged model and GGUF.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TrainingTokenizer(tokenizer, template, added, pad_id if pad_id is not None else 0)


def _device_and_dtype(precision=None):
    import os

    import torch

    if torch.cuda.is_available():
        bf16 = precision is None or precision.bf16
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}", torch.bfloat16 if bf16 else torch.float32
    # bitsandbytes' CPU 4-bit kernels want fp32 weights; bf16 on a CPU is autocast around them (edgeft.train.precision)
    return "cpu", torch.float32


def _module_leaf_name(model, module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise EdgeftError("could not locate the embedding layers in the base model; file an issue with its config.json")


def load_training_model(base: Path, recipe: Recipe, tok: TrainingTokenizer, precision=None):
    """The base (4-bit NF4 + double quant for qlora) with LoRA on the target linears; returns the peft model. On CUDA
    the frozen base is stored in the compute precision (bf16 unless fp32 was chosen); LoRA weights stay fp32."""
    import torch

    device, dtype = _device_and_dtype(precision)
    model = _load_base(base, recipe, device, dtype)
    token_indices = _trainable_token_indices(model, tok)
    model = _prepare_for_training(model, recipe)
    if recipe.from_adapter:
        model = _continue_adapter(model, recipe)
    else:
        model = _attach_lora(model, recipe, token_indices)
    use_fused_lora_forward(model)
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats(device)
    return model


def _load_base(base: Path, recipe: Recipe, device: str, dtype):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype, "device_map": {"": device}}
    if recipe.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    except (OSError, ValueError) as exc:
        raise EdgeftError(f"{base}: cannot load the base model ({_first_line(exc)}); "
                          "check the folder is a causal LM") from None


def _trainable_token_indices(model, tok: TrainingTokenizer) -> dict[str, list[int]] | None:
    """Grow the vocabulary by the added tokens; returns peft's trainable_token_indices for their rows, or None.

    New rows start at the mean embedding (transformers' default) and are trained through peft's trainable tokens,
    so the adapter carries exactly those rows to merge and GGUF."""
    if not tok.added_tokens:
        return None
    # Grow only: a base with more rows than its tokenizer (padded for speed, as Qwen's are) keeps them all, since
    # merge keeps every base row and the merged model could otherwise emit ids training cut away.
    if len(tok.tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok.tokenizer))
    new_ids = tok.tokenizer.convert_tokens_to_ids(tok.added_tokens)
    token_indices = {_module_leaf_name(model, model.get_input_embeddings()): new_ids}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        token_indices[_module_leaf_name(model, output)] = new_ids
    return token_indices


def _prepare_for_training(model, recipe: Recipe):
    from peft import prepare_model_for_kbit_training

    if recipe.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_training_layout(model)
    if recipe.use_gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs and with our manual gradient all-reduce.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    return model


def _lora_targets(model, recipe: Recipe):
    targets = recipe.target_modules
    if targets == "all-linear" and any(param.ndim == 3 for param in model.parameters()):
        targets = moe_linear_targets(model, with_router=not recipe.dropout)
        if recipe.dropout:
            import warnings

            warnings.warn("MoE base: all-linear trains attention only; peft's LoRA on the router (a raw parameter) "
                          "has no dropout, so set dropout: 0 in the recipe to train the router too")
    return targets


def _attach_lora(model, recipe: Recipe, token_indices: dict[str, list[int]] | None):
    from peft import LoraConfig, get_peft_model

    from convert.adapter_file import expert_parameters

    lora = LoraConfig(
        r=recipe.r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.dropout,
        target_modules=_lora_targets(model, recipe), use_rslora=recipe.rslora, use_dora=recipe.dora,
        trainable_token_indices=token_indices, task_type="CAUSAL_LM", bias="none")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise EdgeftError(f"target_modules={recipe.target_modules!r}: {_first_line(exc)}; "
                          "fix target_modules in the recipe") from None
    experts = expert_parameters(model.peft_config["default"].target_parameters)
    if experts:  # peft maps gate_proj/up_proj/down_proj (w1/w2/w3) of a MoE onto its stacked experts
        raise EdgeftError(f"target_modules={recipe.target_modules!r} reaches the stacked MoE experts {experts}, which "
                          "edgeft cannot merge or export yet; target attention and the router: [q_proj, k_proj, "
                          "v_proj, o_proj, gate]")
    return model


def _continue_adapter(model, recipe: Recipe):
    """The adapter of an earlier run, trained further; for DPO also loaded once more, frozen, as the reference
    (a second adapter on the same base: no second model in memory)."""
    from peft import PeftModel

    from edgeft.train.preference import REFERENCE_ADAPTER

    try:
        model = PeftModel.from_pretrained(model, recipe.from_adapter, is_trainable=True)
        if recipe.objective == "dpo":
            model.load_adapter(recipe.from_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
            model.set_adapter("default")
    except (OSError, ValueError, RuntimeError) as exc:
        raise EdgeftError(f"--from-adapter {recipe.from_adapter}: cannot load it onto this base "
                          f"({_first_line(exc)}); pass an adapter trained on this base") from None
    model.train()  # peft leaves the model in eval mode (no dropout) after loading an adapter that is not trainable
    return model


def moe_linear_targets(model, *, with_router: bool) -> list[str]:
    """"all-linear" for a MoE model (stacked 3-D experts): every linear layer but the output head, plus the router,
    whose leaf name peft turns into target_parameters `gate.weight` (peft 0.21's ParamWrapper, which refuses
    lora_dropout != 0). The experts stay frozen: a LoRA on them can be neither merged nor exported as a llama.cpp
    adapter by edgeft yet."""
    import torch

    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not head}
    names |= {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
              if with_router and type(module).__name__.endswith("Router")
              and getattr(module, "weight", None) is not None and module.weight.ndim == 2}
    return sorted(names)


def keep_training_layout(model) -> int:
    """Keep every 4-bit layer on the kernels it trains with; returns how many layers were switched.

    bitsandbytes 0.50 repacks a Linear4bit weight for its AVX512-BF16 CPU kernel the first time the layer runs in
    eval mode without grad, on CPUs that have the feature (Sapphire Rapids, Zen 4). That layout needs in_features to
    be a multiple of the 4-bit block (64), so a base with an MLP width of 160 crashed in the held-out eval after
    training, and training would continue on the repacked weight afterwards. Our evals between steps are part of
    training, so they run the training kernels on every CPU; the switch is bitsandbytes' per-layer flag."""
    import bitsandbytes as bnb

    switched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def trainable_parameters(model) -> list[tuple[str, object]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as their unpacked element count, as people quote model sizes."""
    trainable = sum(p.numel() for _, p in trainable_parameters(model))
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            state = getattr(p, "quant_state", None)
            n = state.shape.numel() if state is not None else 2 * n  # two 4-bit values per stored byte
        total += n
    return trainable, total
