#!/usr/bin/env bash
# GPU smoke check (docs/testing.md, "On a GPU"): every REVEAL backbone, the UniSRec / MMSBR / Pop baselines, every
# AVL rule, reference modes and a missing-modality handling, 2 epochs each on the synthetic demo, four runs at a
# time on one GPU. Prints one line per run: exit code, seconds, use_gpu, test result. Run from the checkout root
# with the package's requirements installed (RecBole uses the GPU when torch sees one).
# Without the package's requirements installed, see scripts/gpu_env.sh.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
OUT=${OUT:-/tmp/gpu_smoke}; LOGS=$OUT/logs; mkdir -p "$LOGS"; : > "$OUT/summary.txt"
. scripts/gpu_env.sh
run() {
  local name=$1; shift; local s=$SECONDS
  timeout 300 python3 run_recbole_reveal.py --dataset=synthetic-demo --epochs=2 --stopping_step=2 --show_progress=False \
    "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  printf '%-26s rc=%s %4ds %s | %s\n' "$name" "$rc" "$((SECONDS - s))" \
    "$(grep -o -m1 'use_gpu = [A-Za-z]*' "$LOGS/$name.log")" \
    "$(grep -m1 -o 'test result.*' "$LOGS/$name.log" | cut -c1-150)" >> "$OUT/summary.txt"
}
run M3SRec_REVEAL --model=M3SRec_REVEAL & run MISSRec_REVEAL --model=MISSRec_REVEAL &
run HM4SR_REVEAL --model=HM4SR_REVEAL & run UniSRec --model=UniSRec & wait
run MMSBR --model=MMSBR & run M3SRec_REVEAL-reference --model=M3SRec_REVEAL --avl_rule=reference &
run HM4SR_REVEAL-agm --model=HM4SR_REVEAL --avl_rule=agm & run MISSRec_REVEAL-ogm_ge --model=MISSRec_REVEAL --avl_rule=ogm_ge & wait
run M3SRec_REVEAL-learned --model=M3SRec_REVEAL --missing_modality=learned & run M3SRec-ref --model=M3SRec --reference_mode=True &
run HM4SR-ref --model=HM4SR --reference_mode=True & run Pop --model=Pop & wait
cat "$OUT/summary.txt"
! grep -q "rc=[1-9]" "$OUT/summary.txt"
