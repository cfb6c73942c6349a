"""Everything that loads a GGUF through llama-cpp-python. This package never imports torch."""
