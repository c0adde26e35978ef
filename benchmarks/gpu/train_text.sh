#!/usr/bin/env bash
# 20 Newsgroups at max length 256: dense MiniLM fine-tune, then LTP and static top-k at three FLOPs targets
# (benchmarks/text_ltp.py, accuracy vs GFLOPs). Runs anywhere (about 10 h of CPU on 2 cores); the committed
# 256-token results were trained and evaluated with it on a lent GPU (fp32, no TF32), and the speed of the
# resulting checkpoints was measured on the 2-core CPU with `trimformer bench`.
#
#   bash benchmarks/gpu/train_text.sh RUNS_DIR RESULTS_DIR [MODEL]
#
# MODEL: the pretrained encoder (default minilm, the offline all-MiniLM-L6-v2). Environment: DEVICE (where
# evaluation runs, default cpu); TRIMFORMER_20NEWSGROUPS (see trimformer.assets); EPOCHS, STEPS, TRAIN_N,
# EVAL_N override the recipe (for a quick check). Writes RUNS_DIR/ng256/{dense,ltp_*,topk_*},
# RESULTS_DIR/ltp_20newsgroups_256{.json,_accuracy_vs_gflops.png,_kept_tokens.png} and RUNS_DIR/text.done.
set -euo pipefail
runs=${1:?usage: train_text.sh RUNS_DIR RESULTS_DIR [MODEL]}
results=${2:?usage: train_text.sh RUNS_DIR RESULTS_DIR [MODEL]}
model=${3:-minilm}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$runs/ng256" "$results"
extra=()
[ -n "${TRAIN_N:-}" ] && extra+=(--train-examples "$TRAIN_N")

[ -f "$runs/ng256/dense/config.json" ] || python3 -c 'import sys; from trimformer.cli import main; sys.exit(main())' \
  finetune --model "$model" --data 20newsgroups --epochs "${EPOCHS:-2}" --max-length 256 --lr 1e-4 \
  --out "$runs/ng256/dense" --resume
python3 "$here/benchmarks/text_ltp.py" --data 20newsgroups --dense "$runs/ng256/dense" --work "$runs/ng256" \
  --targets 0.7 0.5 0.35 --steps "${STEPS:-100}" --max-length 256 --eval-examples "${EVAL_N:-3000}" \
  --device "${DEVICE:-cpu}" --out "$results/ltp_20newsgroups_256" "${extra[@]}"
touch "$runs/text.done"
