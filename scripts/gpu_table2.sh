#!/usr/bin/env bash
# Table 2 on the demo (docs/results-demo.md) on one GPU: the same runs as
#   python run_experiments.py seeds --dataset synthetic-demo --n_seeds 3 --set epochs=20 --models <the 14 rows>
# but each (model, seed) in its own process, up to $JOBS at a time, all on the one GPU. Records are saved under
# $WORK/results/synthetic-demo/seeds/runs/ as each run ends and packed into $OUT/runs.tgz every 15 s and at the
# end (one file: a lent machine may hand back only a few files, and a run cut by its time limit keeps what
# finished). Unpack it into results/synthetic-demo/seeds/runs/ on any machine and `run_experiments.py seeds ...
# --no_run` prints the table. Without the package's requirements installed, see scripts/gpu_env.sh.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export OUT=${OUT:-/tmp/gpu_table2} WORK=${WORK:-/tmp/gpu_table2_work}; JOBS=${JOBS:-14}
mkdir -p "$OUT" "$WORK/logs"
RUNS=$WORK/results/synthetic-demo/seeds/runs
pack() { [ -d "$RUNS" ] && tar czf "$OUT/.runs.tgz" -C "$RUNS" . && mv "$OUT/.runs.tgz" "$OUT/runs.tgz"; }
(while sleep 15; do pack; done) & PACKER=$!
. scripts/gpu_env.sh
# Slowest first, so the last wave is short.
MODELS=${MODELS:-"MMSBR HM4SR_REVEAL M3SRec_REVEAL UniSRec MISSRec_REVEAL M3SRec HM4SR MISSRec BERT4Rec STOSA SASRec VBPR LightGCN Pop"}
for m in $MODELS; do for s in 2020 2021 2022; do echo "$m $s"; done; done |
  xargs -P "$JOBS" -L 1 sh -c 'start=$(date +%s)
    python3 run_experiments.py seeds --dataset synthetic-demo --seeds "$1" --set epochs=20 --models "$0" \
      --out "$WORK/results" > "$WORK/logs/$0-$1.log" 2>&1
    echo "$0 seed $1 rc=$? $(( $(date +%s) - start ))s" | tee -a "$WORK/summary.txt"'
kill $PACKER; pack; cp "$WORK/summary.txt" "$OUT/"
echo "$(ls "$RUNS" | wc -l) records in $OUT/runs.tgz"
