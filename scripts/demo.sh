#!/usr/bin/env bash
# The main job, end to end on a fresh machine (README's first command):
#   1. create/reuse .venv (scripts/setup_env.sh)
#   2. synthesize a small Criteo-format click log with a planted signal (data_prep/synthesize.py)
#   3. convert it to npy + meta.json in data/demo/criteo (data_prep/criteo_to_npy.py)
#   4. grouped training of 4 members in 2 groups under TorchX on 2 ranks (the groups train in
#      parallel, one rank each), each group restoring its best epoch by val AUC
#   5. merged evaluation (every member's logits gathered to rank 0, mean logit), the report,
#      the AUC-vs-m plot and the TensorBoard run
# About 3-4 minutes on 2 CPU cores.  Idempotent: reuses .venv and the converted data
# (delete data/demo to regenerate); a rerun replaces runs/demo and checkpoints/demo.
#
# Usage:  bash scripts/demo.sh                 # CPU: 2 gloo ranks
#         RECSYS_DEVICE=gpu bash scripts/demo.sh   # min(2, #GPUs) NCCL ranks; no GPU: 2 CPU ranks
#         DEMO_ROWS=1000000 bash scripts/demo.sh   (a larger synthetic log; delete data/demo first)
#         bash scripts/demo.sh --help
set -euo pipefail
case "${1:-}" in
  -h|--help)
    cat <<'USAGE'
usage: bash scripts/demo.sh [--help]

The main job end to end: set up .venv, synthesize and convert a small Criteo-format
click log (data/demo/criteo), train 4 members in 2 groups under TorchX, and print the
merged report (runs/demo/results.md, auc_vs_m.png, TensorBoard in runs/demo).

environment:
  RECSYS_DEVICE=cpu|gpu   cpu (default): 2 gloo ranks, the groups train in parallel.
                          gpu: the CUDA stack; min(2, number of GPUs) NCCL ranks (1 GPU:
                          the groups train one after another on it); no GPU visible:
                          falls back to 2 CPU ranks and says so.
  DEMO_ROWS=N             rows of the synthetic log (default 300000; delete data/demo first)

examples:
  bash scripts/demo.sh
  RECSYS_DEVICE=gpu bash scripts/demo.sh
  DEMO_ROWS=1000000 bash scripts/demo.sh
USAGE
    exit 0 ;;
  "") ;;
  *) echo "demo: unexpected argument '$1' (see: bash scripts/demo.sh --help)" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROWS="${DEMO_ROWS:-300000}"
DATA="data/demo/criteo"
RAW="data/demo/raw/criteo_synthetic.tsv"
CONFIG="configs/demo.toml"

bash scripts/setup_env.sh
export PATH="$ROOT/.venv/bin:$PATH"   # torchx's local_cwd scheduler runs `torchrun` from PATH
PY="$ROOT/.venv/bin/python"
start=$(date +%s)

if [ -f "$DATA/meta.json" ]; then
  echo "demo: reusing $DATA (delete it to regenerate)"
else
  mkdir -p "$(dirname "$RAW")"
  echo "demo: synthesizing $ROWS Criteo rows -> $RAW"
  "$PY" data_prep/synthesize.py --dataset criteo --rows "$ROWS" --output "$RAW" --seed 0 --no-progress
  echo "demo: converting -> $DATA"
  "$PY" data_prep/criteo_to_npy.py --input "$RAW" --output "$DATA" --min-count 5 --workers 2 --no-progress
fi

# One rank per GPU: NCCL cannot put two ranks on one device ("invalid device ordinal" on a
# 1-GPU machine), so on GPU the demo runs min(2, #GPUs) ranks.
DEVICE="cpu"; NPROC=2; NGPU_RES=0
if [ "${RECSYS_DEVICE:-cpu}" = "gpu" ]; then
  NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"
  if [ "$NGPU" -ge 1 ]; then
    DEVICE="cuda"; NPROC=$(( NGPU < 2 ? NGPU : 2 )); NGPU_RES=$NPROC
  else
    echo "demo: RECSYS_DEVICE=gpu but torch sees no CUDA GPU; falling back to 2 CPU ranks (device cpu)"
  fi
fi

echo "demo: grouped training under TorchX (local_cwd, 1 node x $NPROC ranks, device $DEVICE)"
torchx run -s local_cwd torchx_components/recsys.py:grouped_train \
  --config "$CONFIG" --nnodes 1 --nproc_per_node "$NPROC" --cpu 2 --gpu "$NGPU_RES" --device "$DEVICE"

RUN_DIR="runs/demo"
if [ ! -f "$RUN_DIR/results.md" ]; then
  echo "demo: training finished but $RUN_DIR/results.md is missing; see the logs above" >&2
  exit 1
fi
echo
cat "$RUN_DIR/results.md"
echo
echo "demo: done in $(( $(date +%s) - start )) s (after setup)"
echo "  report:       $ROOT/$RUN_DIR/results.md  (and results.json; validation: val_results.md)"
echo "  AUC-vs-m:     $ROOT/$RUN_DIR/auc_vs_m.png"
echo "  TensorBoard:  .venv/bin/tensorboard --logdir $ROOT/$RUN_DIR"
echo "  checkpoints:  $ROOT/checkpoints/demo  (re-score: .venv/bin/python -m recsys.eval --config $CONFIG --checkpoint checkpoints/demo)"
echo "  serve:        .venv/bin/python -m recsys.serve --engine ray --config $CONFIG --checkpoint checkpoints/demo --port 8000  (HTTP; --sweep without --engine: in-process latency vs members)"
