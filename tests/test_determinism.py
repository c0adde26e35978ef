"""A run is a function of its seed: the new classifier head, fine-tuning and pruning give bit-identical weights and
predictions twice in one process, whatever the global random state was before (the demo's accuracies moved
from run to run while the head was initialised from the unseeded global generator)."""

import pytest
import torch

import trimformer
from trimformer.checkpoint import load_model
from trimformer.data.text import text_collate
from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert
from trimformer.train.finetune import finetune_dense
from trimformer.train.loop import TrainConfig

LABELS = ["neg", "pos"]  # synthetic_text_data's classes
CONFIG = TrainConfig(batch_size=8, lr=1e-3, max_length=32)


@pytest.fixture(name="encoder_dir")
def encoder_dir_fixture(tmp_path):
    """A bare pretrained-style encoder folder (no classification head), as the demo's MiniLM is."""
    tiny_bert(base=True, vocab_size=32).save_pretrained(tmp_path / "enc")
    make_tokenizer().save_pretrained(tmp_path / "enc")
    return tmp_path / "enc"


def _head(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.model.state_dict().items() if k.startswith("classifier.")}


def test_new_head_depends_on_the_seed_only(encoder_dir):
    torch.manual_seed(1)
    first, _, _ = load_model(encoder_dir, label_names=LABELS)
    torch.manual_seed(2)  # another global state: the head must not follow it
    before = torch.random.get_rng_state()
    second, _, _ = load_model(encoder_dir, label_names=LABELS)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is left alone
    other, _, _ = load_model(encoder_dir, label_names=LABELS, seed=1)
    a, b, c = _head(first), _head(second), _head(other)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed does choose the head


def _short_run(encoder_dir, noise: int) -> tuple[dict[str, torch.Tensor], list[int], list[dict]]:
    """The demo's pipeline in miniature: new head, dense fine-tuning, LTP to a FLOPs target, evaluation."""
    torch.manual_seed(noise)  # whatever ran before in the process
    torch.rand(noise + 1)
    data, tokenizer = synthetic_text_data(48), make_tokenizer()
    model, _, _ = load_model(encoder_dir, label_names=LABELS)
    logs = finetune_dense(model.model, data, text_collate(tokenizer, CONFIG.max_length), CONFIG, 4)
    pruned = trimformer.prune(model.model, trimformer.LTPConfig(target_flops=0.6, soft_steps=2, hard_steps=2,
                                                                calibration_batches=2))
    history = trimformer.fit(pruned, data, CONFIG, tokenizer=tokenizer)
    result = trimformer.evaluate(pruned, data, tokenizer, CONFIG.max_length)
    state = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
    return state, result.predictions, [*logs, {"thresholds": history["thresholds"]}]


def test_short_demo_run_is_bit_identical_twice_in_one_process(encoder_dir):
    (state_a, pred_a, logs_a), (state_b, pred_b, logs_b) = _short_run(encoder_dir, 3), _short_run(encoder_dir, 7)
    assert logs_a == logs_b and pred_a == pred_b
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_finetune_follows_the_train_seed(encoder_dir):
    data, tokenizer = synthetic_text_data(48), make_tokenizer()

    def run(seed: int) -> list[dict]:
        model, _, _ = load_model(encoder_dir, label_names=LABELS)
        config = TrainConfig(batch_size=8, lr=1e-3, max_length=32, seed=seed)
        return finetune_dense(model.model, data, text_collate(tokenizer, 32), config, 3)

    assert run(0) == run(0)
    assert run(0) != run(1)  # the seed reaches the order of the examples
