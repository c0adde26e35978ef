#!/usr/bin/env bash
# Train the 168 px DINOv2 ViT-S/14 Fashion-MNIST models of the vision benchmarks: the plain fine-tuned
# classifier, then SaiT (one checkpoint, every sparsity level) and AS-ViT from it. Runs anywhere (CPU: many
# hours on 2 cores); the committed checkpoints were trained with it on a lent GPU and every number reported
# from them was measured on the 2-core CPU (benchmarks/vision_pruning.py, benchmarks/vision_speed.py).
#
#   bash benchmarks/gpu/train_vision.sh RUNS_DIR RESULTS_DIR
#
# Environment: TRIMFORMER_FASHION_MNIST (the data folder; see transfer.py pool), TRIMFORMER_CACHE (the
# converted DINOv2 backbone), DEVICE (default auto), WORKERS (DataLoader workers, default 0); TRAIN_SIZE,
# EPOCHS, TEST_SIZE, SAIT_STEPS, ASVIT_STEPS override the recipe (for a quick check).
# Writes RUNS_DIR/{fmnist_vit168,vision168/sait,vision168/asvit}, marker files RUNS_DIR/plain.done and
# RUNS_DIR/pruning.done (checkpoints are written
# atomically: SaiT's folder appears before AS-ViT starts), and RESULTS_DIR/fmnist_vit168_finetune.json.
set -euo pipefail
runs=${1:?usage: train_vision.sh RUNS_DIR RESULTS_DIR}
results=${2:?usage: train_vision.sh RUNS_DIR RESULTS_DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$runs" "$results"

python3 "$here/benchmarks/finetune_vit_fmnist.py" --device "${DEVICE:-auto}" --workers "${WORKERS:-0}" \
  --resolution 168 --train-size "${TRAIN_SIZE:-30000}" --epochs "${EPOCHS:-3}" --batch-size 64 --eval-batch-size 128 \
  --lr-backbone 3e-5 --lr-head 3e-3 --test-size "${TEST_SIZE:-2000}" \
  --out "$runs/fmnist_vit168" --results "$results/fmnist_vit168_finetune.json"
touch "$runs/plain.done"

python3 "$here/benchmarks/vision_pruning.py" --only-train --base "$runs/fmnist_vit168" --runs "$runs/vision168" \
  --train-images "${TRAIN_SIZE:-30000}" --train-batch-size 64 --lr 2e-5 \
  --sait-steps "${SAIT_STEPS:-2000}" --sait-train-levels 0.3,0.4,0.5,0.6,0.7 --asvit-steps "${ASVIT_STEPS:-1200}" --asvit-rho 0.55
touch "$runs/pruning.done"
