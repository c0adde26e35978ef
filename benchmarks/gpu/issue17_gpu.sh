#!/usr/bin/env bash
# One lent-GPU session for issue 17: train the 168 px DINOv2 ViT-S SaiT checkpoint (train_vision.sh's recipe, AS-ViT
# left out), send it home in float16 shards, then time SaiT top-K 0.45 against the dense model under
# torch.compile (inductor, CUDA graphs) with benchmarks/gpu_compile_speed.py.
#
#   bash benchmarks/gpu/issue17_gpu.sh UPLOAD_DIR OUT_DIR COMMIT
#
# UPLOAD_DIR holds backbone/ (transfer.py pack of the converted DINOv2 cache) and pool/ (transfer.py pool).
# OUT_DIR receives sait.tar.* (the packed checkpoint, split to 15 MB), the fine-tuning JSON, the speed JSON + PNG
# and the log. Environment: TRAIN_SIZE (default 25000), SPEED_TIMEOUT (s, default 280), SPEED_BUDGET (s, default
# 150), SPEED_ARGS (more options of gpu_compile_speed.py); DEVICE, EPOCHS, SAIT_STEPS, TEST_SIZE only for a quick CPU check of the pipeline.
set -euo pipefail
upload=${1:?usage: issue17_gpu.sh UPLOAD_DIR OUT_DIR COMMIT}
out=${2:?usage: issue17_gpu.sh UPLOAD_DIR OUT_DIR COMMIT}
commit=${3:?usage: issue17_gpu.sh UPLOAD_DIR OUT_DIR COMMIT}
here=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRIMFORMER_CACHE=/tmp/cache TRIMFORMER_FASHION_MNIST="$upload/pool"
runs=/tmp/runs
mkdir -p "$runs" "$out" /tmp/cache
python3 "$here/benchmarks/gpu/transfer.py" unpack "$upload/backbone" /tmp/cache/dinov2-vits14-imgfocus
python3 "$here/benchmarks/finetune_vit_fmnist.py" --device "${DEVICE:-cuda}" --workers 8 \
  --resolution 168 --train-size "${TRAIN_SIZE:-25000}" --epochs "${EPOCHS:-3}" --batch-size 64 --eval-batch-size 128 \
  --lr-backbone 3e-5 --lr-head 3e-3 --test-size "${TEST_SIZE:-2000}" \
  --out "$runs/fmnist_vit168" --results "$out/fmnist_vit168_finetune_gpu.json"
python3 "$here/benchmarks/vision_pruning.py" --only-train --base "$runs/fmnist_vit168" --runs "$runs/vision168" \
  --train-images "${TRAIN_SIZE:-25000}" --train-batch-size 64 --lr 2e-5 \
  --sait-steps "${SAIT_STEPS:-2000}" --sait-train-levels 0.3,0.4,0.5,0.6,0.7 --asvit-steps 1 --asvit-rho 0.55
python3 "$here/benchmarks/gpu/transfer.py" pack "$runs/vision168/sait" /tmp/sait_pack
tar cf - -C /tmp/sait_pack . | split -b 15M - "$out/sait.tar."
timeout "${SPEED_TIMEOUT:-280}" python3 "$here/benchmarks/gpu_compile_speed.py" --checkpoint "$runs/vision168/sait" \
  --commit "$commit" --budget-s "${SPEED_BUDGET:-150}" --out-dir "$out" ${SPEED_ARGS:-} || echo "gpu_compile_speed: exit $?"
