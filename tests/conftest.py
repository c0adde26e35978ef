"""Tiny seeded models, tokenizer and data (random weights, no downloads)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from trimformer.data.text import TextDataset

# Tiny models: one thread avoids OpenMP start-up and contention costs that dwarf the work itself.
torch.set_num_threads(1)

WORDS = ["good", "bad", "great", "awful", "movie", "plot", "actor", "boring", "fun", "the", "a", "was", "is",
         "very", "not", "film", "scene", "story", "love", "hate"]


def tiny_bert_config(**kw) -> BertConfig:
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, num_labels=3, attn_implementation="eager")
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def tiny_bert_base() -> BertModel:
    torch.manual_seed(0)
    return BertModel(tiny_bert_config()).eval()


@pytest.fixture
def tiny_roberta() -> RobertaForSequenceClassification:
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=70, num_labels=2, pad_token_id=1,
                        attn_implementation="eager")
    return RobertaForSequenceClassification(cfg).eval()


def random_batch(batch: int = 4, length: int = 20, vocab: int = 64, seed: int = 0):
    """input_ids and a right-padded attention mask with varied real lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 2  # [CLS]-like
    return ids * mask, mask


@pytest.fixture
def tokenizer() -> BertTokenizerFast:
    return make_tokenizer()


def make_tokenizer() -> BertTokenizerFast:
    """A WordPiece tokenizer over the few words of the synthetic data."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})


def synthetic_text_data(n: int = 96, seed: int = 0) -> TextDataset:
    """Sentiment-like texts: label 1 when 'good/great/fun/love' outnumber the negative words."""
    rng = random.Random(seed)
    pos, neg = {"good", "great", "fun", "love"}, {"bad", "awful", "boring", "hate"}
    texts, labels = [], []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 30))]
        score = sum(w in pos for w in words) - sum(w in neg for w in words)
        texts.append(" ".join(words))
        labels.append(int(score > 0))
    return TextDataset(texts, labels, ["neg", "pos"], "synthetic")


@pytest.fixture
def text_data() -> TextDataset:
    return synthetic_text_data()
