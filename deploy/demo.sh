#!/usr/bin/env bash
# Demo: builds glmtp, makes a tiny GLM-4-shaped model with random weights on the
# spot, and runs tensor-parallel generation on 2 CPU ranks under mpirun.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j"$(nproc)" --target glmtp
model=build/demo/tiny
./build/glmtp make-model --preset tiny --out "$model" --seed 1
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMP_NUM_THREADS=1
# [gMASK] <sop> <|user|> ... <|assistant|> as token ids (text in and out comes with the tokenizer).
mpirun -np 2 --oversubscribe ./build/glmtp generate --model "$model" \
  --ids 151331,151333,151336,198,9703,151337 --max-new-tokens 24 --temperature 0.8 --top-p 0.9 --seed 42
mpirun -np 2 --oversubscribe ./build/glmtp score --model "$model" --ids 151331,151333,151336,198,9703 --top 3
