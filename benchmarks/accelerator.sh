#!/usr/bin/env bash
# Measure memjax on whatever accelerator JAX sees, in one command, into one folder.
#
#   benchmarks/accelerator.sh --data-dir PATH/TO/omniglot [--out DIR] [--minutes M] [--tables "copy mann-table1 ..."]
#   benchmarks/accelerator.sh --smoke --data-dir PATH/TO/omniglot     # CPU smoke test, tiny budgets (~10 min on 2 cores)
#   MEMJAX_ACCEL_SMOKE=1 benchmarks/accelerator.sh ...                # the same as --smoke
#
# 1. environment.txt: jax.devices(), nvidia-smi, the memjax commit;
# 2. throughput/: the throughput suite for the three models against their PyTorch references
#    (python -m benchmarks.throughput --models ntm,mann,metanet; the reference is skipped when
#    torch is not installed; --smoke: --quick);
# 3. TABLE/: for each results table, `python -m memjax.reproduce TABLE --train` with a fixed training
#    budget of --minutes per table (split over the table's rows), then the evaluation on
#    --episodes test sequences/episodes (default 1,000, the experiments' protocol); TABLE.json,
#    TABLE.png, the training runs (train/NAME) and log.txt;
# 4. summary.md: one line per step with its exit code and wall time.
# --smoke trains shrunken models (--train-args) on the small1 split for a few seconds and evaluates
# on a handful of episodes (reproduce --quick): it checks the plumbing, it measures nothing.
# A failing step is logged and the script goes on; it exits 1 if any step failed.

set -u
cd "$(dirname "$0")/.."

OUT="runs/accelerator/$(date +%Y%m%d-%H%M%S)"
DATA_DIR="${MEMJAX_DATA_DIR:-}"
MINUTES=10
EPISODES=1000
TABLES="copy mann-table1 mann-table2 metanet-table1 metanet-table3 metanet-table4"
SMOKE="${MEMJAX_ACCEL_SMOKE:-0}"
PYTHON="${PYTHON:-python}"

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --minutes) MINUTES="$2"; shift 2 ;;
    --episodes) EPISODES="$2"; shift 2 ;;
    --tables) TABLES="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "$SMOKE" = "1" ]; then
  MINUTES="${MEMJAX_ACCEL_SMOKE_MINUTES:-0.1}"
fi

mkdir -p "$OUT" || exit 2
SUMMARY="$OUT/summary.md"
FAILED=0
{
  echo "# memjax on an accelerator: $(date -Iseconds)"
  echo
  echo "mode: $([ "$SMOKE" = 1 ] && echo "smoke (tiny models and budgets; measures nothing)" || echo "full"), "\
"training budget per table: $MINUTES min, test episodes: $([ "$SMOKE" = 1 ] && echo quick || echo "$EPISODES")"
  echo
  echo "| step | exit code | wall time (s) | output |"
  echo "|---|---|---|---|"
} > "$SUMMARY"

# step NAME LOG COMMAND...: run, log stdout+stderr, record the exit code and time.
step() {
  local name="$1" log="$2"; shift 2
  local t0 rc
  echo "== $name: $*" | tee -a "$log"
  t0=$(date +%s)
  "$@" >> "$log" 2>&1
  rc=$?
  echo "| $name | $rc | $(( $(date +%s) - t0 )) | $(dirname "$log" | sed "s|^$OUT/\{0,1\}||")/ |" >> "$SUMMARY"
  [ "$rc" = 0 ] || { FAILED=1; echo "   $name failed (exit $rc), see $log"; }
  return 0
}

{
  echo "date: $(date -Iseconds)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  "$PYTHON" -c "import jax, memjax; print('jax', jax.__version__, 'memjax', memjax.__version__); print('devices:', jax.devices())"
  command -v nvidia-smi > /dev/null && nvidia-smi
  echo "cpu cores: $(nproc 2>/dev/null || echo unknown)"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# 2. Throughput of the three models.
mkdir -p "$OUT/throughput"
if [ "$SMOKE" = "1" ]; then
  step throughput "$OUT/throughput/log.txt" "$PYTHON" -m benchmarks.throughput --models ntm,mann,metanet --quick \
    --out "$OUT/throughput"
else
  step throughput "$OUT/throughput/log.txt" "$PYTHON" -m benchmarks.throughput --models ntm,mann,metanet \
    --out "$OUT/throughput"
fi

# 3. A short --train of each table, then its evaluation.
smoke_args() {  # shrunken models on the small1 split (smoke only)
  case "$1" in
    copy) echo "--memory-size 16 --word-size 6 --controller-features 16 --eval-every 20" ;;
    mann-*) echo "--memory-size 16 --word-size 8 --read-heads 2 --controller-features 16 --batch-size 4 \
--train-split small1 --test-split small1 --eval-batch 8" ;;
    metanet-*) echo "--filters 4 --num-blocks 1 --hidden 8 --fast-layers fc --num-query 2 \
--train-split small1 --test-split small1" ;;
  esac
}
for table in $TABLES; do
  rows=$("$PYTHON" -c "import sys; from memjax.reproduce import TABLES; print(len(TABLES[sys.argv[1]].rows))" "$table") \
    || { echo "error: unknown table $table" >&2; FAILED=1; continue; }
  per_row=$("$PYTHON" -c "import sys; print(round(float(sys.argv[1]) / int(sys.argv[2]), 4))" "$MINUTES" "$rows")
  args=("$table" --train --max-minutes "$per_row" --out "$OUT/$table" --no-progress)
  [ -n "$DATA_DIR" ] && args+=(--data-dir "$DATA_DIR")
  if [ "$SMOKE" = "1" ]; then
    args+=(--quick --train-args "$(smoke_args "$table")")
  else
    args+=(--episodes "$EPISODES")
  fi
  mkdir -p "$OUT/$table"
  step "$table" "$OUT/$table/log.txt" "$PYTHON" -m memjax.reproduce "${args[@]}"
done

echo
cat "$SUMMARY"
echo "everything is in $OUT"
exit "$FAILED"
