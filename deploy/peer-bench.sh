#!/usr/bin/env bash
# glmtp against HF transformers on the same bf16 weights, in the same run: 512-token prefill and batch-1
# decode at that context, alternating the two engines round by round, with per-round ratios and medians
# (deploy/peer_bench.py does the rounds). Optional: needs PyTorch and transformers (>= 4.46, GlmForCausalLM)
# in $PYTHON; without them it says so and exits 0.
#
#   deploy/peer-bench.sh [--glmtp PATH (default build/glmtp, else glmtp on PATH)]
#                        [--model DIR (HF layout) | --preset glm-4-9b-chat --layers 4]
#                        [--len 512] [--reps 3] [--decode-steps 16] [--json FILE]
#   PYTHON=/path/to/venv/bin/python deploy/peer-bench.sh   picks the interpreter (default python3)
# Without --model a random-weight checkpoint (make-model --layout hf --dtype bf16 --seed 1) is made once
# in ${TMPDIR:-/tmp}/glmtp-peer-PRESET-LN and kept for later runs (about 4 GB for 4 layers of glm-4-9b-chat).
#   deploy/peer-bench.sh --help   prints this
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
glmtp=build/glmtp; [ -x "$glmtp" ] || glmtp=$(command -v glmtp || echo build/glmtp)
model=""; preset=glm-4-9b-chat; layers=4
py_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --glmtp) glmtp=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --len|--reps|--decode-steps|--json) py_args+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "peer-bench.sh: unknown option '$1' (deploy/peer-bench.sh --help)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
if ! "$python" -c 'import torch, transformers' 2>/dev/null; then
  echo "peer-bench.sh: $python cannot import torch and transformers: skipped (pip install torch transformers" \
       "safetensors, then PYTHON=that interpreter)" >&2
  exit 0
fi
[ -x "$glmtp" ] || { echo "peer-bench.sh: no glmtp at '$glmtp' (--glmtp PATH)" >&2; exit 2; }
if [ -z "$model" ]; then
  model=${TMPDIR:-/tmp}/glmtp-peer-$preset-L$layers
  if [ ! -f "$model/config.json" ]; then
    echo "peer-bench.sh: making $model (random bf16 weights, HF layout)" >&2
    "$glmtp" make-model --preset "$preset" --layers "$layers" --layout hf --dtype bf16 --seed 1 --out "$model" --quiet
  fi
fi
exec "$python" "$here/peer_bench.py" "$glmtp" "$model" "${py_args[@]}"
