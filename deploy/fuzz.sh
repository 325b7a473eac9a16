#!/usr/bin/env bash
# deploy/fuzz.sh [SECONDS]: builds the libFuzzer harnesses (tests/fuzz/, clang,
# ASan + UBSan) in build-fuzz/ and runs each for SECONDS (default 60), one at a
# time, starting from its committed seeds (tests/fuzz/corpus/<target>/). New
# inputs accumulate in build-fuzz/corpus/<target>/ (kept between runs); a
# crash, leak, UBSan report or timeout stops that harness and is kept in
# build-fuzz/crashes/<target>/. Prints executions and coverage per harness and
# exits 1 if any harness failed. To keep a crash fixed, put the file in
# tests/fuzz/regressions/<target>/ (the ctest fuzz_<target> replays it).
#   env: GLMTP_FUZZ_BUILD (build dir), GLMTP_FUZZ_TARGETS (space-separated subset),
#        GLMTP_FUZZ_SEED (libFuzzer's -seed: the same search every run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
build=${GLMTP_FUZZ_BUILD:-build-fuzz}
# One per input strangers control. Slot for when it exists: http (the OpenAI
# HTTP front's request parser): add it here and in tests/fuzz/CMakeLists.txt.
targets=(${GLMTP_FUZZ_TARGETS:-safetensors st_index config genconfig tokenizer chat jsonl serve image})

command -v clang >/dev/null || { echo "fuzz: clang not found (deploy/install-deps.sh installs it)" >&2; exit 1; }
mkdir -p "$build"
# -O1: fast enough to fuzz, still debuggable; asserts stay on (no NDEBUG).
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS_DEBUG="-g -O1" \
      -DGLMTP_FUZZ=ON -DGLMTP_MPI=OFF -DGLMTP_CUDA=OFF -DGLMTP_NATIVE=OFF -DGLMTP_SERVE=ON >"$build/cmake.log" 2>&1 \
  || { cat "$build/cmake.log" >&2; exit 1; }
cmake --build "$build" -j"$(nproc)" --target fuzz_all >"$build/build.log" 2>&1 \
  || { tail -40 "$build/build.log" >&2; exit 1; }

failed=0
rows=()
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz: $bin not built" >&2; exit 1; }
  work="$build/corpus/$t" crashes="$build/crashes/$t" log="$build/logs/$t.log"
  mkdir -p "$work" "$crashes" "$build/logs"
  echo "fuzz: $t for ${secs}s" >&2
  opts=()
  case $t in safetensors|st_index|config|genconfig|chat|jsonl) opts=(-dict=tests/fuzz/json.dict) ;; esac
  # A fixed seed repeats one search (CI: a submission's result does not depend on the draw); without one,
  # each run explores new ground.
  [ -n "${GLMTP_FUZZ_SEED:-}" ] && opts+=(-seed="$GLMTP_FUZZ_SEED")
  # Past crashes are read with the seeds: clang's UBSan sees what GCC's (the ctests) does not (float-cast-overflow).
  inputs=("tests/fuzz/corpus/$t")
  [ -d "tests/fuzz/regressions/$t" ] && inputs+=("tests/fuzz/regressions/$t")
  rc=0
  "$bin" "$work" "${inputs[@]}" "${opts[@]}" -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
         -rss_limit_mb=2560 -artifact_prefix="$crashes/" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  # The last status line's figures (none when it stopped in the seeds).
  cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$log" | tail -1)
  ft=$(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' "$log" | tail -1)
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' "$log" | tail -1)
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="FAILED (rc $rc): $(ls -t "$crashes" | head -1)"
    failed=1
    { grep -m1 -E 'ERROR: |runtime error|fuzz check failed' "$log" || tail -5 "$log"; } >&2
  fi
  rows+=("$(printf '%-12s %6s %12s %9s %7s %7s %7s  %s' "$t" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
            "${ft:-?}" "${corp:-?}" "$result")")
done

echo "# glmtp fuzz: ${#targets[@]} harnesses x ${secs}s, clang $(clang -dumpversion), ASan + UBSan, logs in $build/logs/"
printf '%-12s %6s %12s %9s %7s %7s %7s  %s\n' harness time executions exec/s cov ft corpus result
printf '%-12s %6s %12s %9s %7s %7s %7s  %s\n' "" "(s)" "" "" "(edges)" "(feat)" "(inputs)" ""
for r in "${rows[@]}"; do echo "$r"; done
if [ "$failed" -ne 0 ]; then
  echo "# FAILED: crash inputs in $build/crashes/ (replay: $build/tests/fuzz/fuzz_TARGET FILE)"
  exit 1
fi
echo "# OK: no crash"
