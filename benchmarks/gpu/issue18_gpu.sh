#!/usr/bin/env bash
# One lent-GPU session for issue 18: every reconstruction-PTQ scheme of benchmarks/quant_transformers.py on the
# fine-tuned DINOv2 ViT-S (the SaiT checkpoint run dense) at W4A4 and W4A8, float32 with TF32 off. The ViT rows
# take ~20 CPU minutes each here; on the GPU the whole grid fits one call.
#
#   bash benchmarks/gpu/issue18_gpu.sh UPLOAD_DIR OUT_DIR
#
# UPLOAD_DIR holds sait_pack/ (transfer.py pack of runs/vision168/sait: float16 shards, exact for that checkpoint,
# which came home from the GPU in float16), pool18/ (transfer.py pool --size 5000 --test-size 10000: the whole
# test split, so the seeded test subset is the CPU runs'; calibration images come from the 5,000-image pool) and
# whl/ (the torch-pruning wheel; the GPU machine has no registry). OUT_DIR receives quant_transformers.json and
# its PNG. Environment: ROW_ARGS (more options of quant_transformers.py).
set -euo pipefail
upload=${1:?usage: issue18_gpu.sh UPLOAD_DIR OUT_DIR}
out=${2:?usage: issue18_gpu.sh UPLOAD_DIR OUT_DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRIMFORMER_CACHE=/tmp/cache TRIMFORMER_FASHION_MNIST="$upload/pool18"
mkdir -p "$out" /tmp/cache
python3 -c "import torch_pruning" 2>/dev/null || pip install -q --no-deps --no-index "$upload"/whl/*.whl
python3 "$here/benchmarks/gpu/transfer.py" unpack "$upload/sait_pack" /tmp/sait
python3 "$here/benchmarks/quant_transformers.py" --model vit --checkpoint /tmp/sait --device cuda --threads 8 \
  --bits 4/4,4/8 --schemes rtn,pwlq_bc,pow2_layer,brecq,rapq,adaround,pwlq_adaround,brecq_fisher \
  --results "$out/quant_transformers.json" ${ROW_ARGS:-}
