"""HF checkpoint -> GGUF. numpy + safetensors + gguf only: this package never imports torch.

    from convert import convert_model
    convert_model("path/to/hf-model", "model-f16.gguf", outtype="f16")
"""

from convert.pipeline import convert_model

__all__ = ["convert_model"]
