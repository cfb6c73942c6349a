"""A faster forward for peft's LoRA Linear layers while training: base(x) + scaling * (A(dropout(x)) @ B^T) as one
addmm, the scaling folded into the matmul instead of applied to the layer's full-width output.

peft computes `result + lora_B(lora_A(dropout(x))) * scaling`: a multiply and an add over (tokens x out_features)
per adapted layer, two passes over the biggest tensors of a LoRA step that a CPU pays for in memory traffic. addmm's
alpha and its accumulate-into-input do the same arithmetic inside the matmul. Only the forward changes: the weights,
their names and peft's config are untouched, so the saved adapter is peft's format as before.

Anything but one plain LoRA adapter (DoRA and other variants, several active adapters, adapters disabled or merged,
a LoRA bias, peft's per-call keyword arguments, mixed dtypes without autocast) runs peft's own forward.
"""

from __future__ import annotations

import types


def lora_linear_classes() -> tuple[type, ...]:
    """The peft LoRA Linear classes edgeft trains: full-precision Linear, and Linear4bit where bitsandbytes is."""
    from peft.tuners.lora import Linear

    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # peft defines it only when bitsandbytes imports
        return (Linear,)
    return (Linear, Linear4bit)


def use_fused_lora_forward(model) -> int:
    """Give every LoRA Linear of `model` the fused forward (an instance attribute, so deleting it restores peft's);
    returns how many layers got it."""
    classes = lora_linear_classes()
    layers = [module for module in model.modules() if isinstance(module, classes)]
    for layer in layers:
        layer.forward = types.MethodType(fused_lora_forward, layer)
    return len(layers)


def _plain_adapter(layer, x, args, kwargs) -> str | None:
    """The one active plain-LoRA adapter the fused forward can compute for this call, or None for peft's forward."""
    import torch

    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A or adapter in layer.lora_variant or layer.lora_B[adapter].bias is not None:
        return None
    if x.dtype != layer.lora_A[adapter].weight.dtype and not torch.is_autocast_enabled(x.device.type):
        return None
    return adapter


def fused_lora_forward(self, x, *args, **kwargs):
    import torch

    adapter = _plain_adapter(self, x, args, kwargs)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    low_rank = self.lora_A[adapter](self.lora_dropout[adapter](x))
    weight_b = self.lora_B[adapter].weight
    fused = torch.addmm(result.reshape(-1, result.shape[-1]), low_rank.reshape(-1, low_rank.shape[-1]), weight_b.t(),
                        alpha=self.scaling[adapter])
    return fused.reshape(result.shape)
