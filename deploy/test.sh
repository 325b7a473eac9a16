#!/usr/bin/env bash
# Installs dependencies, builds glmtp (MPI build, and a single-rank ASan+UBSan
# build for the parsers), and runs the whole ctest suite on both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure

# Sanitizers: the safetensors/config parsers meet hostile input in bad_input.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DGLMTP_MPI=OFF -DGLMTP_ASAN=ON -DGLMTP_NATIVE=OFF -DGLMTP_CUDA=OFF
cmake --build build-asan -j"$jobs"
ctest --test-dir build-asan --output-on-failure
