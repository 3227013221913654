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
#         RECSYS_TORCH_INDEX=<url> bash scripts/setup_env.sh   # where to take torch from
#           (on a machine whose pip would otherwise resolve torch==2.13.0 to the CUDA
#           build, point this at PyTorch's CPU wheel index; the script refuses to finish
#           with a CUDA torch on the cpu path)
# Idempotent: a second run with everything in place takes a few seconds.
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RECSYS_VENV:-$ROOT/.venv}"
DEVICE="${RECSYS_DEVICE:-cpu}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup_env: needs Python >= 3.11 (tomllib, and the pinned stack); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

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
OWN_DEPS=("numpy<2.4" "pyarrow==26.0.1" "torchx==0.7.0" "torchdata==0.11.0" tensorboard matplotlib pytest pytest-timeout "mypy==2.4.1" "ray[serve]==2.60.0")

STAMP="$VENV/.recsys-setup-$DEVICE"
WANT="$TORCH $FBGEMM $TORCHREC ${TORCHREC_DEPS[*]} ${OWN_DEPS[*]}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_env: creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# The Criteo converter's C kernels (recsys/data/criteo_kernels.c), built once per source version
# with the system C compiler; without one the converter falls back to pyarrow (--engine arrow).
build_kernels() {
  if out=$("$VPY" -m recsys.data.native 2>&1); then
    echo "setup_env: C kernels: $out"
  else
    echo "setup_env: warning: ${out#error: } (the Criteo converter will use --engine arrow)" >&2
  fi
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VPY" -c "import torchrec, fbgemm_gpu, recsys" 2>/dev/null; then
  echo "setup_env: $VENV is up to date ($DEVICE)"
  build_kernels
  exit 0
fi
# pip warns about every missing local index directory; those lines are noise.
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v -e "is ignored: it is neither a file nor a directory" -e "requires fbgemm-gpu, which is not installed" -e "dependency resolver does not currently take" || true; }
}
echo "setup_env: installing $TORCH"
if [ -n "${RECSYS_TORCH_INDEX:-}" ]; then
  pip_install --index-url "$RECSYS_TORCH_INDEX" "$TORCH"
else
  pip_install "$TORCH"
fi
echo "setup_env: installing $FBGEMM, $TORCHREC (--no-deps) and runtime deps"
pip_install "$TORCH" "$FBGEMM"
pip_install --no-deps "$TORCHREC"
pip_install "$TORCH" "${TORCHREC_DEPS[@]}" "${OWN_DEPS[@]}"
echo "setup_env: installing recsys (editable, --no-deps)"
pip_install --no-deps -e "$ROOT"
RECSYS_DEVICE="$DEVICE" "$VPY" - <<'PY'
import os, sys
import torch, torchrec, fbgemm_gpu  # noqa: F401  fail here, not in the first test
if os.environ["RECSYS_DEVICE"] == "cpu" and torch.version.cuda is not None:
    sys.exit(f"setup_env: got a CUDA build of torch ({torch.__version__}, CUDA {torch.version.cuda}) "
             "on the cpu path; remove .venv and install torch==2.13.0 from a CPU index")
print(f"setup_env: torch {torch.__version__} (cuda {torch.version.cuda}), torchrec 1.8.0, fbgemm_gpu ok")
PY
build_kernels
echo "$WANT" > "$STAMP"
