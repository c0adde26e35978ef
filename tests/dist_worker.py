"""Worker for test_distributed: run with torch.distributed.run --nproc_per_node 2 (gloo on CPU)."""

import json
import sys
from pathlib import Path

import torch

import trimformer
from trimformer.methods import LTPConfig
from trimformer.pruning import prune
from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert
from trimformer.train.loop import TrainConfig, get_accelerator


def main(out: Path) -> None:
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    model = prune(tiny_bert(num_labels=2, vocab_size=32),
                  LTPConfig(target_flops=0.6, soft_steps=3, hard_steps=2, calibration_batches=2))
    trimformer.fit(model, synthetic_text_data(), TrainConfig(batch_size=16, lr=1e-3, max_length=32),
                   tokenizer=tokenizer)
    acc = get_accelerator()
    checksum = sum(float(p.double().sum()) for p in model.parameters())
    (out / f"rank{acc.process_index}.json").write_text(json.dumps({
        "num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "thresholds": model.policy.thresholds().tolist(), "checksum": checksum}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
