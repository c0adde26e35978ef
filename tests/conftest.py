"""Fixtures over the tiny seeded models and data of :mod:`trimformer.testing` (random weights, no downloads)."""

from __future__ import annotations

import pytest
import torch

from trimformer.data.text import TextDataset
from trimformer.testing import (  # noqa: F401  re-exported for the test modules
    WORDS,
    make_tokenizer,
    random_batch,
    synthetic_text_data,
    tiny_bert,
    tiny_bert_config,
    tiny_roberta,
)

# Tiny models: one thread avoids OpenMP start-up and contention costs that dwarf the work itself.
torch.set_num_threads(1)


@pytest.fixture(name="tiny_bert")
def tiny_bert_fixture():
    return tiny_bert()


@pytest.fixture(name="tiny_bert_base")
def tiny_bert_base_fixture():
    return tiny_bert(base=True)


@pytest.fixture(name="tiny_roberta")
def tiny_roberta_fixture():
    return tiny_roberta()


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def text_data() -> TextDataset:
    return synthetic_text_data()
