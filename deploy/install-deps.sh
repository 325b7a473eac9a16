#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and run glmtp on CPU ranks.
# Idempotent: packages already present are skipped; safe to run on every CI start.
# The CUDA toolkit is not installed here (the CUDA backend builds when nvcc is found).
set -euo pipefail

pkgs=(build-essential cmake pkg-config git
      libopenmpi-dev openmpi-bin          # MPI communicator and mpirun
      libprotobuf-c-dev protobuf-c-compiler  # the serve control channel (proto/)
      libpcre2-dev                        # tokenizer pre-tokenizer regex
      libcjson-dev                        # config.json and safetensors headers
      libmicrohttpd-dev                   # serve --http: the OpenAI-compatible API (coordinator/http/)
      libjpeg-dev libpng-dev libwebp-dev  # GLM-4V image input (coordinator/image/): JPEG, PNG, WebP
      libopenblas-dev                     # bench: the plain-BLAS GEMM that prefill is compared with
      libdnnl-dev                         # oneDNN: CPU prefill GEMMs in bf16 (kernels/cpu/gemm_lib.c); Debian 12's
                                          # OpenBLAS 0.3.21 has no cblas_sbgemm
      gnuplot-nox                         # deploy/scaling.sh plots
      clang libomp-dev                    # deploy/fuzz.sh: libFuzzer harnesses (clang's OpenMP is libomp)
      libclang-rt-14-dev                  # libFuzzer + sanitizer runtimes of Debian 12's clang 14 (only a
                                          # Recommends of clang, so --no-install-recommends skips it)
      python3)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
