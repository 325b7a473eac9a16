#!/usr/bin/env bash
# Demo: builds glmtp, makes a tiny GLM-4-shaped model with random weights on the
# spot (with the real GLM-4 tokenizer), and runs batch generation on 2 CPU ranks
# under mpirun: raw prompts and chat messages in, JSONL out. The weights are
# random, so the text is gibberish; the pipeline is the real one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j"$(nproc)" --target glmtp
demo=build/demo
mkdir -p "$demo"
./build/glmtp make-model --preset tiny --out "$demo/tiny" --seed 1 --tokenizer tests/data/glm4-tokenizer/tokenizer.model
cat > "$demo/prompts.jsonl" <<'JSONL'
{"id": "greedy", "prompt": "The capital of France is", "max_new_tokens": 16}
{"id": "chat", "messages": [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "你好，介绍一下你自己。"}], "max_new_tokens": 24}
{"id": "sampled", "prompt": "Once upon a time", "max_new_tokens": 24, "temperature": 0.8, "top_p": 0.9, "seed": 42}
{"id": "stop", "prompt": "1, 2, 3,", "max_new_tokens": 32, "stop": ["\n"]}
JSONL
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMP_NUM_THREADS=1
echo "demo: a tiny GLM-4-shaped model with RANDOM weights and the real GLM-4 tokenizer, 2 MPI ranks."
echo "demo: the text below is gibberish because the weights are random; what is real is the pipeline:"
echo "demo: tokenizer, chat template, tensor-parallel forward pass, sampling, stop strings, JSONL in and out."
mpirun -np 2 --oversubscribe ./build/glmtp generate --model "$demo/tiny" --input "$demo/prompts.jsonl" \
  --output "$demo/out.jsonl"
echo "demo: $demo/out.jsonl (one record per request: id, text, token_ids, finish_reason, usage):"
cat "$demo/out.jsonl"
echo "demo: done. Next: README.md, 'Install and first run' (cmake --install build, then glmtp --help)."
