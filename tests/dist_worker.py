"""Worker for test_distributed: run with torch.distributed.run --nproc_per_node 2 (gloo on CPU)."""

import json
import sys
from pathlib import Path

import torch
from conftest import make_tokenizer, synthetic_text_data, tiny_bert_config
from transformers import BertForSequenceClassification

from trimformer.methods import LTPConfig
from trimformer.pipeline import prune_ltp
from trimformer.pruning import prune
from trimformer.training import TrainConfig, get_accelerator


def main(out: Path) -> None:
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = prune(BertForSequenceClassification(tiny_bert_config(num_labels=2, vocab_size=32)),
                         LTPConfig(target_flops=0.6, soft_steps=3, hard_steps=2, calibration_batches=2))
    prune_ltp(model, synthetic_text_data(), tokenizer, model.policy.config(),
              TrainConfig(batch_size=16, lr=1e-3, max_length=32))
    acc = get_accelerator()
    checksum = sum(float(p.double().sum()) for p in model.parameters())
    (out / f"rank{acc.process_index}.json").write_text(json.dumps({
        "num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "thresholds": model.policy.thresholds().tolist(), "checksum": checksum}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
