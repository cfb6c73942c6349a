"""Weights that are not numbers (NaN, +-Inf) stop a command at the tensor that holds them.

A run that diverged saves an adapter of NaNs; merged, converted or quantized they make a model that answers nothing,
and nothing on the way would say so. Every tensor that merge, convert, convert-lora, quantize and import read passes
through a reader that calls `refuse_non_finite`: `SafetensorsFile` (and the pickle reader behind --allow-pickle),
`GGUFFile.dequantize`, the quantizer's slabs. It is on the path of every byte, so it costs little next to the read:
stored bits are judged without decoding them, floats by one dot product (checked value by value only when that
product is not finite, which large finite values can also cause).
"""

from __future__ import annotations

import numpy as np

from convert.common.errors import EdgeftError

# Stored half-width float format -> (its bits as an unsigned integer, the exponent bits): NaN and Inf have every
# exponent bit set, so a value is not finite exactly when its bits without the sign reach the exponent mask.
FLOAT_BITS = {"F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80)}


def has_non_finite(values: np.ndarray, stored: str | None = None) -> bool:
    """Whether `values` hold NaN or Inf: a float array, or (`stored` F32, F64, F16 or BF16) raw bytes in that format.
    Other stored formats (integers, quantized blocks) are not judged."""
    if stored in ("F32", "F64"):  # numpy floats already: the dot product is the faster pass
        return has_non_finite(np.asarray(values).reshape(-1).view(np.float32 if stored == "F32" else np.float64))
    if stored is not None:
        if stored not in FLOAT_BITS:
            return False
        kind, exponent = FLOAT_BITS[stored]
        bits = np.asarray(values).reshape(-1).view(kind)
        sign = kind(1) << kind(8 * bits.itemsize - 1)
        return bits.size > 0 and int((bits & ~sign).max()) >= exponent
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0 or not np.issubdtype(flat.dtype, np.floating):
        return False
    if flat.dtype == np.float16:  # squares overflow half precision at 256: widen first
        flat = flat.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.dot(flat, flat)):
            return False
    return not bool(np.isfinite(flat).all())


def refuse_non_finite(values: np.ndarray, name: str, where: str, *, stored: str | None = None,
                      advice: str = "the weights are damaged (a training run that diverged?); train or save them again"
                      ) -> None:
    """One line naming `where` (a file, a command) and the tensor when `values` hold NaN or Inf."""
    if has_non_finite(values, stored):
        raise EdgeftError(f"{where}: tensor {name} holds NaN or Inf values; {advice}")
