"""HF checkpoint -> GGUF. numpy + safetensors + gguf only: this package never imports torch."""
