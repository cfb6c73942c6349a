"""Shared pytest fixtures: the offline model factory, cached across the session (and across runs on disk)."""

from __future__ import annotations

import os

import pytest

# Shared checks live in helper modules; rewrite their asserts too, so a failure shows the values as in a test.
pytest.register_assert_rewrite("tests.convert_helpers", "tests.train_helpers", "tests.hostile")

# Tests never touch a hub: make any accidental download fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def fixture_model():
    """`fixture_model("qwen2", aligned=True)` -> Path of a cached tiny HF model folder (see tests/factory.py)."""
    from tests.factory import build_model

    return build_model


@pytest.fixture(scope="session")
def fixture_tokenizer():
    """`fixture_tokenizer("spm-gemma")` -> Path of a cached tokenizer folder."""
    from tests.factory import build_tokenizer

    return build_tokenizer


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if training gets as far as loading a tokenizer or a model: every refusal under test must come
    before that (a refusal after a multi-GB load is one the user waited for)."""
    import edgeft.train.model

    def reached(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded: the refusal should have come first")

    monkeypatch.setattr(edgeft.train.model, "load_tokenizer", reached)
    monkeypatch.setattr(edgeft.train.model, "load_training_model", reached)
