#!/usr/bin/env bash
# deploy/soak.sh [SECONDS] [BUILD_DIR]: glmtp serve under glmtp-client load with random cancels and
# disconnects for SECONDS (default 180) on a tiny made-up model, tp 2 under mpirun (tests/soak.py; CI runs
# the same for 20 s). Checks that no request is lost or answered twice, every KV block is free at the end,
# open file descriptors and resident memory stay flat, and the server stops cleanly. With a single-rank
# sanitizer build (BUILD_DIR=build-asan) it runs one rank without mpirun, and LeakSanitizer must be quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-180}
build=${2:-build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
launcher=()
if grep -q '^GLMTP_MPI:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  launcher=(--mpirun "mpirun --oversubscribe")
fi
exec python3 tests/soak.py "$build/glmtp" "$build/glmtp-client" "${launcher[@]}" --seconds "$seconds"
