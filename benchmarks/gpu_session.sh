#!/usr/bin/env bash
# One call on a GPU machine available for a limited time: measure, then train what the results store lacks.
#
#   DATA=<folder with tiktok/ and ml100k/> OUT=<folder> [BUDGET=540] [BENCH_S=120] bash benchmarks/gpu_session.sh
#
# A check of the script itself, in seconds on a CPU (tests/test_bench.py runs it): DEVICE=cpu RUNS=1
# BENCH_DATA=synthetic-small STORE=<empty folder> REPRODUCE_ARGS=--quick ONLY=<a quick analysis>.
#
# Runs from the repository root with the machine's python3 (CUDA PyTorch, numpy, scipy, pandas, tqdm;
# diffmm is imported from the checkout, not installed; plotting libraries are not needed). In order,
# each step bounded so that the whole call ends within BUDGET seconds:
#   1. `bench`: one TikTok epoch by phase on the GPU, fp32                        -> $OUT/bench.json
#      and again with the CPU's chunk sizes (DIFFMM_DEVICE_CHUNK_BYTES=0)    -> $OUT/bench_cpu_chunks.json
#   2. `bench --sweep`: runs/hour of 1, 4, 8 and 16 concurrent TikTok runs sharing the GPU
#                                                                                 -> $OUT/sweep.json
#   3. `reproduce --train-only` with the N that finishes most runs in the time left: the paper's
#      analyses, what figures/results lacks; finished runs' records           -> $OUT/results.tgz
# Where the GPU machine receives a copy of the checkout, the datasets can travel with it: copy tiktok/
# and ml100k/ into a folder of the checkout that git ignores (e.g. .gpu/datasets, listed in
# .git/info/exclude) and point DATA there.
# Back on the workstation: `tar xzf results.tgz -C figures/results`, then `reproduce --render-only`.
# Every step's output is also in $OUT/log.txt.
set -uo pipefail
: "${DATA:?set DATA to a folder holding tiktok/ and ml100k/}" "${OUT:?set OUT}"
BUDGET=${BUDGET:-540} DEVICE=${DEVICE:-cuda} RUNS=${RUNS:-1,4,8,16} ONLY=${ONLY:-}
BENCH_DATA=${BENCH_DATA:-tiktok} STORE=${STORE:-figures/results} REPRODUCE_ARGS=${REPRODUCE_ARGS:-}
PY=${PY:-python3} BENCH_S=${BENCH_S:-120}  # each one-epoch bench's bound
export PYTHONUNBUFFERED=1 DIFFMM_DATA=$DATA
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
log() { echo "[$(($(date +%s) - start)) s] $*" | tee -a "$OUT/log.txt"; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: tar reads $OUT/new.txt after -C
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/log.txt" || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$OUT/log.txt"

log "1. one epoch by phase"
timeout $BENCH_S $PY -m diffmm bench --data $BENCH_DATA --epochs 3 --device $DEVICE 2>&1 | tee -a "$OUT/log.txt" \
  | tail -n 1 > "$OUT/bench.json"
log "1b. the same with the CPU's chunk sizes (InfoNCE, denoiser batches): what one chunk saves"
DIFFMM_DEVICE_CHUNK_BYTES=0 timeout $BENCH_S $PY -m diffmm bench --data $BENCH_DATA --epochs 3 --device $DEVICE 2>&1 \
  | tee -a "$OUT/log.txt" | tail -n 1 > "$OUT/bench_cpu_chunks.json"

log "2. concurrent runs sharing the GPU"
timeout $(($(left) / 2)) $PY -m diffmm bench --sweep --data $BENCH_DATA --epochs 2 --device $DEVICE --runs $RUNS \
  2>&1 | tee -a "$OUT/log.txt" | tail -n 1 > "$OUT/sweep.json"

(cd "$STORE" 2>/dev/null && ls */*.json) > "$OUT/.before" 2>/dev/null
remaining=$(($(left) - 30))  # 30 s to pack the records
jobs=$($PY - "$OUT/sweep.json" "$remaining" <<'EOF'
import json, sys
# the number of concurrent runs that finishes most 50-epoch runs in the time left (a run that cannot
# finish in time is wasted); 4 when the sweep gave nothing
try:
    rows = json.load(open(sys.argv[1]))["sweep"]
except (OSError, ValueError, KeyError):
    rows = []
seconds = int(sys.argv[2])
finished = {r["jobs"]: r["jobs"] * int(seconds // (r["epoch_s"] * r["run_epochs"] + 15)) for r in rows}
print(max(finished, key=lambda n: (finished[n], -n)) if finished and max(finished.values()) > 0 else 4)
EOF
)
log "3. reproduce --train-only --jobs $jobs for ${remaining} s"
timeout "$remaining" $PY -m diffmm reproduce --train-only --device "$DEVICE" --jobs "$jobs" --data-root "$DATA" \
  --work "${WORK:-/tmp/diffmm-work}" --store "$STORE" --no-progress ${ONLY:+--only "$ONLY"} $REPRODUCE_ARGS 2>&1 | tee -a "$OUT/log.txt"

(cd "$STORE" 2>/dev/null && ls */*.json) | sort | comm -13 <(sort "$OUT/.before") - > "$OUT/new.txt"
log "$(wc -l < "$OUT/new.txt") new records"
[ -s "$OUT/new.txt" ] && tar czf "$OUT/results.tgz" -C "$STORE" -T "$OUT/new.txt"
rm -f "$OUT/.before"
log "done"
