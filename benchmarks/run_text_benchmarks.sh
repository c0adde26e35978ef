#!/usr/bin/env bash
# Reproduces every committed text result in benchmarks/results/ (about 1.5 h on 2 CPU cores).
# Each step is skipped or resumed when its outputs exist, so the script can be re-run after an interruption.
# Dense fine-tunes and pruned checkpoints go to runs/ (not committed); rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
R=benchmarks/results
mkdir -p "$R" runs/ng runs/rt

# bench_pair CHECKPOINT DATA MAX_LENGTH STEM TITLE [extra bench options]: batch 32 and batch 1, then the plot.
bench_pair() {
  local ckpt=$1 data=$2 length=$3 stem=$4 title=$5
  shift 5
  for B in 32 1; do
    N=$([ "$B" = 1 ] && echo 64 || echo 256)
    trimformer bench "$ckpt" --data "$data" --batch-size "$B" --num-samples "$N" --max-length "$length" \
        --repeats 3 "$@" --json "$R/${stem}_b$B.json"
  done
  python benchmarks/plot_speed.py "$R/$stem.png" "$title" "$R/${stem}_b32.json" "$R/${stem}_b1.json"
}

# 20 Newsgroups: full training set, max length 128 (256 below).
[ -f runs/ng/dense/config.json ] || trimformer finetune --data 20newsgroups --epochs 2 --max-length 128 \
    --lr 1e-4 --out runs/ng/dense --resume
python benchmarks/text_ltp.py --data 20newsgroups --dense runs/ng/dense --work runs/ng --targets 0.7 0.5 0.35 \
    --steps 100 --max-length 128 --eval-examples 3000 --out "$R/ltp_20newsgroups"
bench_pair runs/ng/ltp_0.5 20newsgroups 128 bench_20newsgroups "20 Newsgroups, LTP at 0.5 FLOPs" --accuracy-limit 500

# Rotten Tomatoes: short snippets, max length 64.
[ -f runs/rt/dense/config.json ] || trimformer finetune --data rotten_tomatoes --epochs 1 --max-length 64 \
    --lr 1e-4 --out runs/rt/dense --resume
python benchmarks/text_ltp.py --data rotten_tomatoes --dense runs/rt/dense --work runs/rt --targets 0.7 0.5 0.35 \
    --steps 50 --max-length 64 --out "$R/ltp_rotten_tomatoes"
bench_pair runs/rt/ltp_0.5 rotten_tomatoes 64 bench_rotten_tomatoes "Rotten Tomatoes, LTP at 0.5 FLOPs"

# A second 20 Newsgroups batch-32 timing (5 repetitions, accuracy on the whole test split).
trimformer bench runs/ng/ltp_0.5 --data 20newsgroups --batch-size 32 --num-samples 256 --max-length 128 \
    --repeats 5 --json "$R/bench_20newsgroups_b32_repeat.json"
# And a second batch-1 timing (5 repetitions): batch-1 latency moves most with the load on a shared machine.
trimformer bench runs/ng/ltp_0.5 --data 20newsgroups --batch-size 1 --num-samples 64 --max-length 128 \
    --repeats 5 --accuracy-limit 500 --json "$R/bench_20newsgroups_b1_repeat.json"

# 20 Newsgroups at max length 256: the models come from benchmarks/gpu/train_text.sh (trained on a GPU; on
# 2 CPU cores it takes many hours), in runs/ng256/.
if [ -f runs/ng256/ltp_0.5/trimformer.json ]; then
  bench_pair runs/ng256/ltp_0.5 20newsgroups 256 bench_20newsgroups_256 \
      "20 Newsgroups, max length 256, LTP at 0.5 FLOPs" --accuracy-limit 500
fi

python benchmarks/summarize_text.py > "$R/text_summary.md"
