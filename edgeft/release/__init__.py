"""`make release`: from a base, training data and a recipe to release/NAME/ (one GGUF, manifest, model card).

    graph.py      the stage table: which stage reads what and writes where
    settings.py   what a release is made of (base, data, eval, quant, name, recipe, the eval's settings)
    pipeline.py   the table written as a makefile for this release, run by make; one stage by name
    stages.py     how each stage is done
    parity.py     the chat-template and token parity check of the GGUF that ships
    metrics.py    the manifest's metrics, gathered from the eval report, the bench and the training run
    publish.py    release/NAME/ assembled atomically: files, manifest.json with sha256s, the digest beside it
    verify.py     a published folder checked: files, the manifest's own digest, the card, the gates and verdict
    card.py       the model card (README.md) and the Ollama Modelfile
"""
