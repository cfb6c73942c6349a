"""Which arithmetic training runs in: fp32, or bf16 autocast where the hardware does bf16 matmuls natively.

The frozen base may be stored in bf16 on CUDA, but the LoRA weights the optimizer updates, and its state, stay fp32
in every mode (peft keeps adapter weights in fp32; autocast only changes what the matmuls compute in). A CPU
without AVX512-BF16 or AMX emulates bf16 matmuls, slower than fp32, so `auto` keeps fp32 there and an explicit
`bf16` is refused rather than silently slowing the run down.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from convert.common.errors import EdgeftError

# /proc/cpuinfo flags that mean the CPU multiplies bf16 natively (torch's own probe is preferred when it has one).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16() -> bool:
    """True where the CPU has AVX512-BF16 or AMX (Sapphire Rapids and later, Zen 4 and later)."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        return any(probe() for probe in probes)
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def cuda_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class Precision:
    setting: str  # what the recipe asked for: auto | fp32 | bf16
    compute: str  # what runs: fp32 | bf16
    reason: str  # why, for the summary

    @property
    def bf16(self) -> bool:
        return self.compute == "bf16"

    def autocast(self, device):
        """The context a forward runs in: bf16 autocast, or nothing at all for fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)

    def describe(self) -> str:
        return f"{self.compute} ({self.setting}: {self.reason})"


def resolve_precision(setting: str) -> Precision:
    """`auto` -> bf16 where the device multiplies bf16 natively, else fp32; `bf16` where it cannot is one line."""
    import torch

    on_cuda = torch.cuda.is_available()
    native = cuda_has_bf16() if on_cuda else cpu_has_bf16()
    device = "this GPU" if on_cuda else "this CPU"
    if setting == "fp32":
        return Precision(setting, "fp32", "asked for")
    if native:
        why = "GPU bf16" if on_cuda else "CPU has AVX512-BF16 or AMX"
        return Precision(setting, "bf16", "asked for" if setting == "bf16" else why)
    lacks = "has no bf16 support" if on_cuda else "has no AVX512-BF16 or AMX"
    if setting == "bf16":
        raise EdgeftError(f"--precision bf16: {device} {lacks}, so bf16 matmuls would be emulated and slower than "
                          "fp32; use --precision auto (picks fp32 here) or fp32")
    return Precision(setting, "fp32", f"{device} {lacks}")


def check_optimizer(name: str) -> None:
    """Refuse, before any model loads, an optimizer this machine cannot run."""
    import torch

    if name == "paged_adamw_8bit" and not torch.cuda.is_available():
        raise EdgeftError(f"optimizer={name}: bitsandbytes' paged 8-bit AdamW runs on CUDA only and this machine has "
                          "no GPU; set optimizer: adamw in the recipe")


def make_optimizer(name: str, params, *, lr: float, weight_decay: float):
    """AdamW, or bitsandbytes' paged 8-bit AdamW on CUDA (QLoRA's optimizer: its state pages out under pressure)."""
    import torch

    check_optimizer(name)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    import bitsandbytes as bnb

    return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay)
