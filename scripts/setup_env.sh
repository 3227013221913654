#!/usr/bin/env bash
# Creates (or reuses) .venv with the pinned TorchRec stack.
#
# Why a script and not just `pip install -e .`: torchrec's metadata requires the
# 500 MB CUDA `fbgemm-gpu` wheel, which fails to load on CPU machines, and an
# unpinned `torch` pulls a multi-GB CUDA build.  The order below avoids both:
#   1. torch==2.13.0 (the CPU build on CPU machines)
#   2. fbgemm-gpu-cpu==1.8.0  (or fbgemm-gpu==1.8.0 with RECSYS_DEVICE=gpu)
#   3. torchrec==1.8.0 with --no-deps, then its runtime deps by hand
#   4. this package with --no-deps, then the rest of its deps
#
# Usage:  bash scripts/setup_env.sh            # CPU (default)
#         RECSYS_DEVICE=gpu bash scripts/setup_env.sh
# Idempotent: a second run with everything in place takes a few seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RECSYS_VENV:-$ROOT/.venv}"
DEVICE="${RECSYS_DEVICE:-cpu}"
PY="${PYTHON:-python3}"

TORCH="torch==2.13.0"
TORCHREC="torchrec==1.8.0"
case "$DEVICE" in
  cpu) FBGEMM="fbgemm-gpu-cpu==1.8.0" ;;
  gpu) FBGEMM="fbgemm-gpu==1.8.0" ;;
  *) echo "setup_env: RECSYS_DEVICE must be cpu or gpu, got '$DEVICE'" >&2; exit 2 ;;
esac
# torchrec's runtime deps (its metadata would also pull fbgemm-gpu, so we list them).
TORCHREC_DEPS=(tensordict "torchmetrics==1.0.3" pyre-extensions tqdm iopath)
# Our own deps (keep in sync with pyproject.toml [project.dependencies]).
OWN_DEPS=("numpy<2.4" "pyarrow==26.0.1" "torchx==0.7.0" "torchdata==0.11.0" tensorboard matplotlib pytest pytest-timeout)

STAMP="$VENV/.recsys-setup-$DEVICE"
WANT="$TORCH $FBGEMM $TORCHREC ${TORCHREC_DEPS[*]} ${OWN_DEPS[*]}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_env: creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VPY" -c "import torchrec, fbgemm_gpu, recsys" 2>/dev/null; then
  echo "setup_env: $VENV is up to date ($DEVICE)"
  exit 0
fi
# pip warns about every missing local index directory; those lines are noise.
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v -e "is ignored: it is neither a file nor a directory" -e "requires fbgemm-gpu, which is not installed" -e "dependency resolver does not currently take" || true; }
}
echo "setup_env: installing $TORCH"
pip_install "$TORCH"
echo "setup_env: installing $FBGEMM, $TORCHREC (--no-deps) and runtime deps"
pip_install "$TORCH" "$FBGEMM"
pip_install --no-deps "$TORCHREC"
pip_install "$TORCH" "${TORCHREC_DEPS[@]}" "${OWN_DEPS[@]}"
echo "setup_env: installing recsys (editable, --no-deps)"
pip_install --no-deps -e "$ROOT"
"$VPY" - <<'PY'
import torch, torchrec, fbgemm_gpu  # noqa: F401  fail here, not in the first test
assert "+cu" not in torch.__version__ or torch.cuda.is_available(), torch.__version__
print(f"setup_env: torch {torch.__version__}, torchrec {torchrec.__version__ if hasattr(torchrec, '__version__') else '1.8.0'}")
PY
echo "$WANT" > "$STAMP"
