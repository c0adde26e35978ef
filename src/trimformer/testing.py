"""Tiny models and data for tests and examples: random weights, seeded, no downloads. Every test builds its models
here, so one change of a default reaches the whole suite.

Sizes follow timm's ``test_vit`` idea: small enough for a CPU in milliseconds, big enough to have heads, several
blocks and padding. ``seed=None`` leaves the global generator as it is (the caller seeds).
"""

from __future__ import annotations

import random
from types import MappingProxyType

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from trimformer.data.text import TextDataset

WORDS = ("good", "bad", "great", "awful", "movie", "plot", "actor", "boring", "fun", "the", "a", "was", "is",
         "very", "not", "film", "scene", "story", "love", "hate")
VISION_FAMILIES = ("vit", "deit", "deit_teacher", "dinov2")


def _seed(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


def tiny_bert_config(**overrides) -> BertConfig:
    """3 blocks, 4 heads, hidden 32, a 64-word vocabulary, 3 labels, eager attention."""
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, num_labels=3, attn_implementation="eager")
    return BertConfig(**{**base, **overrides})


def tiny_bert(seed: int | None = 0, base: bool = False, pooler: bool = True,
              **overrides) -> BertForSequenceClassification | BertModel:
    """A tiny BERT classifier (``base``: the bare encoder, with its pooler unless ``pooler`` is False), in eval mode."""
    _seed(seed)
    config = tiny_bert_config(**overrides)
    return (BertModel(config, add_pooling_layer=pooler) if base else BertForSequenceClassification(config)).eval()


def tiny_roberta(seed: int | None = 0) -> RobertaForSequenceClassification:
    """A tiny RoBERTa classifier (2 labels), in eval mode."""
    _seed(seed)
    config = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=70, num_labels=2, pad_token_id=1,
                           attn_implementation="eager")
    return RobertaForSequenceClassification(config).eval()


def tiny_vision_config(family: str = "vit", **overrides) -> ViTConfig | DeiTConfig | Dinov2Config:
    """4 blocks, 4 heads, hidden 32, 32 px images in 8 px patches (16 patches), 5 labels; Dinov2 with LayerScale."""
    if family not in VISION_FAMILIES:
        raise ValueError(f"family must be one of {VISION_FAMILIES}, got {family!r}")
    base = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8, num_labels=5)
    if family == "dinov2":
        return Dinov2Config(**{**base, "mlp_ratio": 2, "layerscale_value": 0.5, **overrides})
    config_type = ViTConfig if family == "vit" else DeiTConfig
    return config_type(**{**base, "intermediate_size": 64, **overrides})


_CLASSIFIERS = MappingProxyType({"vit": ViTForImageClassification, "deit": DeiTForImageClassification,
                                 "deit_teacher": DeiTForImageClassificationWithTeacher,
                                 "dinov2": Dinov2ForImageClassification})
_BASES = MappingProxyType({"vit": ViTModel, "deit": DeiTModel, "deit_teacher": DeiTModel, "dinov2": Dinov2Model})


def tiny_vision_model(family: str = "vit", seed: int | None = 0, base: bool = False, pooler: bool = True,
                      **overrides):
    """A tiny ViT / DeiT / Dinov2 classifier (``base``: the bare encoder; ViT and DeiT with their pooler unless
    ``pooler`` is False), in eval mode. Dinov2's LayerScale factors are drawn in [0.2, 1.5] so that an engine that
    skipped them would show."""
    _seed(seed)
    config = tiny_vision_config(family, **overrides)
    if base and family != "dinov2":
        model = _BASES[family](config, add_pooling_layer=pooler)
    else:
        model = (_BASES if base else _CLASSIFIERS)[family](config)
    if family == "dinov2":
        encoder = model.encoder if base else model.dinov2.encoder
        with torch.no_grad():
            for layer in encoder.layer:
                layer.layer_scale1.lambda1.uniform_(0.2, 1.5)
                layer.layer_scale2.lambda1.uniform_(0.2, 1.5)
    return model.eval()


def random_pixels(batch: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Normal noise images [batch, 3, size, size] from their own generator."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def random_batch(batch: int = 4, length: int = 20, vocab: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and a right-padded attention mask with varied real lengths (row 0 unpadded; [CLS]-like id 2)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 2
    return ids * mask, mask


def make_tokenizer() -> BertTokenizerFast:
    """A WordPiece tokenizer over the few words of :func:`synthetic_text_data`."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})


def synthetic_text_data(n: int = 96, seed: int = 0, pairs: bool = False, regression: bool = False) -> TextDataset:
    """Sentiment-like texts: label 1 when 'good/great/fun/love' outnumber the negative words.

    ``pairs``: sentence pairs, labelled 'same' when both texts lean the same way, else 'different'.
    ``regression``: float targets instead (the positive-minus-negative word count over 4, of both texts).
    """
    rng = random.Random(seed)
    pos, neg = {"good", "great", "fun", "love"}, {"bad", "awful", "boring", "hate"}

    def sentence() -> tuple[str, int]:
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 30))]
        return " ".join(words), sum(w in pos for w in words) - sum(w in neg for w in words)

    texts, seconds, labels = [], [], []
    for _ in range(n):
        text, score = sentence()
        texts.append(text)
        if pairs:
            second, score2 = sentence()
            seconds.append(second)
            labels.append(score + score2 if regression else int((score > 0) == (score2 > 0)))
        else:
            labels.append(score if regression else int(score > 0))
    if regression:
        return TextDataset(texts, [y / 4 for y in labels], None, "synthetic", seconds if pairs else None)
    names = ["different", "same"] if pairs else ["neg", "pos"]
    return TextDataset(texts, labels, names, "synthetic", seconds if pairs else None)


def tiny_cnn(kind: str = "resnet", seed: int | None = 0):
    """A tiny :mod:`trimformer.vision.cnn_zoo` CNN ("resnet": 2 stages x 1 basic block, widths 8/16;
    "mobilenetv2": 3 inverted residuals) for 1-channel images, in eval mode, built by ``build_cnn`` (so its
    architecture is recorded). Batch-norm scales are drawn in [0.2, 1.5] and running statistics perturbed, as in a
    trained network, so that BN-scale criteria see distinct channels and a wrong recalibration would show."""
    from trimformer.vision.cnn_zoo import build_cnn

    _seed(seed)
    if kind == "resnet":
        model = build_cnn("resnet", widths=(8, 16), blocks_per_stage=1)
    elif kind == "mobilenetv2":
        model = build_cnn("mobilenetv2", settings=((1, 8, 1, 1), (2, 12, 2, 2)), stem=8, last=32)
    else:
        raise ValueError(f"tiny_cnn builds 'resnet' or 'mobilenetv2', got {kind!r}")
    return _trained_batchnorms(model).eval()


def tiny_mobilenet_cnn(num_classes: int = 10, image_size: int = 16, seed: int | None = 0):
    """A tiny :class:`trimformer.vision.cnn.MobileNetCNN` (stem 8, two depthwise-separable blocks of 16 channels) for
    1-channel ``image_size`` px images, in eval mode, batch norms drawn as in :func:`tiny_cnn`: the CNN that
    ``trimformer.save`` writes as a checkpoint."""
    from trimformer.vision.cnn import CNNConfig, MobileNetCNN

    _seed(seed)
    config = CNNConfig(image_size=image_size, num_classes=num_classes, stem_channels=8, blocks=((16, 1), (16, 2)))
    return _trained_batchnorms(MobileNetCNN(config)).eval()


def _trained_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm scales in [0.2, 1.5], shifts and running statistics perturbed, as in a trained network."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def tiny_plain_cnn(seed: int | None = 0) -> torch.nn.Sequential:
    """A tiny CNN without batch norms (conv-ReLU x2, pool, linear) for 1-channel images: what BN-based methods
    refuse."""
    _seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def tiny_image_data(n: int = 64, size: int = 16, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 1-channel images (n, 1, size, size) and labels (n,): one fixed random pattern per class plus noise,
    from their own generator."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 1, size, size, generator=torch.Generator().manual_seed(1234))
    labels = torch.arange(n) % classes
    images = patterns[labels] + 0.5 * torch.randn(n, 1, size, size, generator=gen)
    return images, labels
