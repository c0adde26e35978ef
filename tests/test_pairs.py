"""Sentence pairs: read from files (text_pair or --columns), tokenised as pairs, and every [SEP] of a pair is
protected from pruning like [CLS]."""

import json

import pytest
import torch

from trimformer import prune
from trimformer.data.text import load_text_file, text_collate
from trimformer.methods import LTPConfig, TopKConfig
from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert


def test_a_text_pair_column_is_read_and_tokenised_as_a_pair(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"text": "good fun", "text_pair": "bad movie", "label": "no"}) + "\n"
                    + json.dumps({"text": "great", "text_pair": "love it", "label": "yes"}) + "\n")
    data = load_text_file(path)
    assert data.text_pairs == ["bad movie", "love it"] and data[0] == (("good fun", "bad movie"), 0)
    batch = text_collate(make_tokenizer(), 32)([data[0], data[1]])
    sep = make_tokenizer().sep_token_id
    assert ((batch["input_ids"] == sep).sum(1) == 2).all()  # [CLS] a [SEP] b [SEP]
    assert (batch["token_type_ids"] == 1).any()
    assert batch["special_tokens_mask"].sum().item() == 6 + int((batch["attention_mask"] == 0).sum())


def test_columns_name_a_pair_by_role(tmp_path):
    path = tmp_path / "nli.csv"
    path.write_text("premise,hypothesis,gold\na good movie,it is good,entail\nawful,it is great,contradict\n")
    data = load_text_file(path, columns="premise,hypothesis,gold")
    assert data.texts == ["a good movie", "awful"] and data.text_pairs == ["it is good", "it is great"]
    assert data.label_names == ["contradict", "entail"]
    single = load_text_file(path, columns={"text": "hypothesis", "label": "gold"})
    assert single.text_pairs is None and single.texts == ["it is good", "it is great"]
    with pytest.raises(ValueError, match="TEXT,PAIR,LABEL"):
        load_text_file(path, columns="premise")


def _pair_batch(n: int = 8) -> dict[str, torch.Tensor]:
    data = synthetic_text_data(n, seed=3, pairs=True)
    return text_collate(make_tokenizer(), 64)([data[i] for i in range(n)])


@pytest.mark.parametrize("config", [LTPConfig(final_threshold=0.5, target_flops=None),
                                    TopKConfig(final_keep_rate=0.05, target_flops=None)],
                         ids=["ltp", "topk"])
@pytest.mark.parametrize("mode", ["packed", "masked"])
def test_no_sep_is_ever_dropped_under_aggressive_pruning(config, mode):
    batch = _pair_batch()
    batch.pop("labels")
    model = prune(tiny_bert(base=True), config, mode=mode).eval()
    with torch.no_grad():
        out = model(**batch)
        unprotected = model(**{k: v for k, v in batch.items() if k != "special_tokens_mask"})
    survived = out.last_hidden_state.abs().sum(-1) > 0  # [B, N] at original positions; dropped tokens are zero
    sep = batch["input_ids"] == make_tokenizer().sep_token_id
    assert survived[sep].all() and survived[:, 0].all()
    # the pruning is aggressive: without protection [SEP]s go, and with it few other tokens survive
    unprotected_survived = unprotected.last_hidden_state.abs().sum(-1) > 0
    assert not unprotected_survived[sep].all()
    assert (out.n_out[:, -1] < batch["attention_mask"].sum(1)).all()
    assert (survived & (batch["attention_mask"] == 0)).sum() == 0  # padding never comes back to life


def test_pairs_packed_equals_masked_and_padding_is_respected():
    batch = _pair_batch()
    labels = batch.pop("labels")
    model = prune(tiny_bert(), LTPConfig(final_threshold=0.05, target_flops=None)).eval()
    with torch.no_grad():
        packed = model(**batch, labels=labels)
        with model.options(mode="masked"):
            masked = model(**batch, labels=labels)
    torch.testing.assert_close(packed.logits, masked.logits, atol=1e-5, rtol=1e-4)
    assert torch.equal(packed.n_out, masked.n_out)
    assert torch.equal(packed.n_in[:, 0], batch["attention_mask"].sum(1).to(packed.n_in.dtype))
    # a padded row gives the same logits as the same row alone (no padding)
    row = int(batch["attention_mask"].sum(1).argmin())
    length = int(batch["attention_mask"][row].sum())
    alone = {k: v[row:row + 1, :length] for k, v in batch.items()}
    with torch.no_grad():
        single = model(**alone)
    torch.testing.assert_close(single.logits[0], packed.logits[row], atol=1e-5, rtol=1e-4)
