#!/usr/bin/env bash
# Multi-rank scaling sweep: glmtp bench at tp = 1, 2, 4, 8 (up to --max-tp),
# a CSV of speed-up and efficiency against ideal, and a PNG plot (gnuplot).
#
#   deploy/scaling.sh [--glmtp PATH (default build/glmtp, else glmtp on PATH)] [--preset glm-4-9b-chat --layers 2 | --model DIR]
#                     [--mode decode|prefill] [--max-tp 8] [--oversubscribe] [--out DIR] [-- extra bench options]
# On a CPU machine with fewer cores than ranks, --oversubscribe lets mpirun place them
# (each rank then gets one thread: the figures show communication cost, not speed-up).
#   deploy/scaling.sh --help   prints this
set -euo pipefail
glmtp=build/glmtp; [ -x "$glmtp" ] || glmtp=$(command -v glmtp || echo build/glmtp); model=(--preset glm-4-9b-chat --layers 2); mode=decode; max_tp=8; over=""; out=scaling-out
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --glmtp) glmtp=$2; shift 2 ;;
    --preset) model=(--preset "$2"); shift 2 ;;
    --layers) model+=(--layers "$2"); shift 2 ;;
    --model) model=(--model "$2"); shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --max-tp) max_tp=$2; shift 2 ;;
    --oversubscribe) over=--oversubscribe; shift ;;
    --out) out=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scaling.sh: unknown option '$1' (deploy/scaling.sh --help)" >&2; exit 2 ;;
  esac
done
case "$mode" in decode|prefill) ;; *) echo "scaling.sh: --mode must be decode or prefill" >&2; exit 2 ;; esac
mkdir -p "$out"
[ "$(id -u)" -ne 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cores=$(nproc)
for tp in 1 2 4 8; do
  [ "$tp" -le "$max_tp" ] || break
  threads=$(( cores / tp )); [ "$threads" -ge 1 ] || threads=1
  if [ "$mode" = decode ]; then args=(--batch 1 --context 64); else args=(--lens 256); fi
  echo "scaling.sh: tp=$tp ($threads threads per rank)" >&2
  # --bind-to none: Open MPI binds each rank to one core by default, which would
  # squeeze a rank's OpenMP threads onto that core.
  mpirun $over --bind-to none -np "$tp" "$glmtp" bench "$mode" "${model[@]}" "${args[@]}" --threads "$threads" \
    --json "$out/tp$tp.json" "${extra[@]}" > "$out/tp$tp.txt"
done
python3 - "$out" "$mode" <<'PY'
import glob, json, os, sys
out, mode = sys.argv[1], sys.argv[2]
runs = sorted((json.load(open(f)) for f in glob.glob(os.path.join(out, "tp*.json"))), key=lambda j: j["tp"])
key = "step_ms" if mode == "decode" else "seconds"
base = runs[0]["results"][0][key]
with open(os.path.join(out, "scaling.csv"), "w") as f:
    f.write("tp,time,tokens_per_s,speedup,ideal,efficiency,allreduce_share,limit_ratio\n")
    for j in runs:
        r = j["results"][0]
        s = base / r[key]
        f.write(f"{j['tp']},{r[key]:.6g},{r['tokens_per_s']:.6g},{s:.4f},{j['tp']},{s / j['tp']:.4f},"
                f"{r['allreduce_share']:.4f},{r['ratio']:.4f}\n")
print(open(os.path.join(out, "scaling.csv")).read(), end="")
PY
gnuplot <<GP
set terminal pngcairo size 800,500
set output "$out/scaling.png"
set datafile separator ","
set key autotitle columnhead left top
set title "glmtp $mode scaling (${model[*]})"
set xlabel "tensor-parallel ranks"
set ylabel "speed-up vs tp=1"
set y2label "efficiency"
set y2tics
set yrange [0:*]
set y2range [0:1.1]
set xtics (1, 2, 4, 8)
plot "$out/scaling.csv" using 1:4 with linespoints title "speed-up", \
     "" using 1:5 with lines dashtype 2 title "ideal", \
     "" using 1:6 axes x1y2 with linespoints title "efficiency"
GP
echo "scaling.sh: wrote $out/scaling.csv and $out/scaling.png" >&2
