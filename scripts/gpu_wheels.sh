#!/usr/bin/env bash
# The TorchRec GPU stack for the lent GPU machine: prepared here, carried over, installed there.
#
# Why: the lent machine (one H100/H200) has torch 2.11.0+cu130 but no torchrec/fbgemm and no
# network, and each device call carries at most 64 MiB of files.  The matching wheels are
# fbgemm-gpu==1.6.0 (PyPI's default build IS the CUDA 13 one: it links libcudart.so.13 and
# carries sm_80/sm_90a/sm_100a kernels; 465 MB) and torchrec==1.6.1, plus the pure-Python deps.
# 465 MB would take 9 carry calls as plain 55 MiB parts; `prepare` instead repacks every wheel's
# files into one xz-compressed tar (the .so files compress ~4x better with xz than with the
# wheel's deflate), split into 55 MiB parts: a few calls.  `install` rebuilds each wheel from
# its files, checking every file's sha256 against the manifest written here.
#
# Modes (run from anywhere; paths are relative to the repo root):
#   prepare  (this CPU machine, reaches PyPI)  pip download --no-deps the pinned wheels for the
#            GPU image's Python (--python-version, default 3.12; the image's Python is assumed
#            to be 3.11 or 3.12 -- prepare both if unsure), bundle, split, write the manifest,
#            print the carry batches.  Output: .whl/gpu/cpXY/ (git-ignored, never committed).
#   batches  print the carry batches of an existing prepare again.
#   stash    (GPU machine, every carry call)  copy whatever batches arrived into the stash
#            (--base, default $HOME/.cache/recsys-gpu), verify their sha256, say what is missing.
#   unpack   (GPU machine)  join the stashed parts, verify, rebuild the wheels in BASE/cpXY/wheels.
#   install  (GPU machine, after the last batch)  unpack, then a venv with --system-site-packages
#            (the image's torch 2.11 is used) at BASE/venv, pip install --no-index, the repo on
#            its sys.path (a .pth file), a launcher BASE/python, then `check`.
#   check    import torchrec + fbgemm_gpu, torch.cuda.is_available(), one fbgemm CUDA op.
#
# Options: --python-version X.Y (prepare/batches; default 3.12)  --plain (prepare: no bundle)
#          --wheels DIR (prepare: bundle these wheels, no download)  --out DIR (default .whl/gpu)
#          --base DIR (GPU side; default $HOME/.cache/recsys-gpu)  --python PY (default python3)
#          --system (install into PY itself instead of a venv)
#          --part-mib N / --batch-mib M (prepare: part and batch sizes; default 55 / 58 MiB)
#
# Examples:
#   bash scripts/gpu_wheels.sh prepare                          # cp312 bundle (default)
#   bash scripts/gpu_wheels.sh prepare --python-version 3.11    # cp311 bundle beside it
#   bash scripts/gpu_wheels.sh prepare --plain                  # plain wheels + split parts (more calls)
#   bash scripts/gpu_wheels.sh batches --python-version 3.12
#   bash scripts/gpu_wheels.sh stash                            # on the GPU machine, each call
#   bash scripts/gpu_wheels.sh install                          # on the GPU machine, once
#   ~/.cache/recsys-gpu/python -m recsys.bench.gpu_check --out "$OUT"
set -euo pipefail
{ # the whole script is one block, parsed before it runs: editing this file mid-run cannot derail it
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
case "$MODE" in
  -h|--help|help) usage; exit 0 ;;
  prepare|batches|stash|unpack|install|check) shift ;;
  "") usage >&2; exit 2 ;;
  *) echo "gpu_wheels: unknown mode '$MODE' (prepare|batches|stash|unpack|install|check; see --help)" >&2; exit 2 ;;
esac

PYVER="3.12"; OUTDIR="$ROOT/.whl/gpu"; PLAIN=0; BASE="${HOME:-/tmp}/.cache/recsys-gpu"; PY=""; SYSTEM=0; WHEELS=""
PART_MIB=55; BATCH_MIB=58   # each carry call < 60 MiB, with room for the working tree
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER="$2"; shift 2 ;;
    --out|--dir) OUTDIR="$(cd "$ROOT" && mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --plain) PLAIN=1; shift ;;
    --part-mib) PART_MIB="$2"; shift 2 ;;
    --batch-mib) BATCH_MIB="$2"; shift 2 ;;
    --wheels) WHEELS="$(cd "$2" && pwd)"; shift 2 ;;
    --base) BASE="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --system) SYSTEM=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_wheels: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$PY" ]; then PY="$(command -v python3 || command -v python || true)"; fi
[ -n "$PY" ] || { echo "gpu_wheels: no python3 on PATH; pass --python /path/to/python" >&2; exit 2; }
case "$PYVER" in 3.1[0-9]) ;; *) echo "gpu_wheels: --python-version must look like 3.12, got '$PYVER'" >&2; exit 2 ;; esac
TAG="cp${PYVER/./}"

# The GPU set.  torch-coupled: fbgemm-gpu 1.6.0 + torchrec 1.6.1 (the releases for torch 2.11).
# The rest: this project's runtime deps and their closure minus torch's own deps (the image has
# torch, so filelock, typing-extensions, sympy, networkx, jinja2, markupsafe, fsspec, setuptools),
# pinned to the versions the CPU .venv tests with.  pip: in case the image's Python lacks it.
TORCH_COUPLED=(fbgemm-gpu==1.6.0 torchrec==1.6.1)
DEPS=(
  tensordict==0.15.3 cloudpickle==3.1.3 pyvers==0.2.3 torchmetrics==1.0.3 lightning-utilities==0.15.3
  packaging==26.4 pyre-extensions==0.0.32 typing-inspect==0.9.0 mypy-extensions==1.2.0 iopath==0.1.10
  portalocker==4.4.2 tqdm==4.70.1 numpy==2.3.5 pyarrow==26.0.1 torchdata==0.11.0 requests==2.34.2
  urllib3==1.26.20 certifi==2026.10.19.post1 charset-normalizer==3.5.3 idna==3.20
  tensorboard==2.21.0 tensorboard-data-server==0.7.2 absl-py==2.5.1 grpcio==1.85.3 markdown==3.11.3
  protobuf==7.36.2 werkzeug==3.1.9 matplotlib==3.11.2 pillow==13.0.0 contourpy==1.3.3 cycler==0.12.1
  fonttools==4.68.0 kiwisolver==1.5.1 pyparsing==3.3.3 python-dateutil==4.0.0 tzdata==2026.6
  torchx==0.7.0 docker==7.2.0 docstring-parser==0.18.0 importlib-metadata==10.2.0 zipp==4.1.2
  lazy-importer==0.1.0 pyyaml==6.0.4 tabulate==0.10.0
  pytest==9.2.0 pytest-timeout==2.4.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
  pip==26.3
)
# What `install` asks pip for (it resolves the rest among the carried wheels and what the image has).
WANT=(tensordict "torchmetrics==1.0.3" pyre-extensions iopath tqdm "numpy<2.4" "pyarrow==26.0.1"
      "torchx==0.7.0" "torchdata==0.11.0" tensorboard matplotlib pytest pytest-timeout)

# One Python helper for the parts that need more than coreutils (bundle, batches, verify, unbundle).
helper() {
  "$PY" - "$@" <<'PY'
import hashlib, io, json, os, shutil, sys, tarfile, time, zipfile
from pathlib import Path

MIB = 1 << 20

def sha256(path, chunk=8 * MIB):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()

class Hashing(io.RawIOBase):
    """A reader that hashes what passes through it (so 1 GB members are never held in memory)."""
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()
    def readable(self): return True
    def readinto(self, b):
        n = self.f.readinto(b)
        self.h.update(memoryview(b)[:n])
        return n

def bundle(wheel_dir):
    """Every wheel's files into one (pax) tar on stdout, each with its zip attributes, MANIFEST.json
    last: each wheel's own sha256 and every file's sha256, which unbundle checks."""
    manifest = {"format": 1, "wheels": []}
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for whl in sorted(Path(wheel_dir).glob("*.whl")):
            entry = {"name": whl.name, "sha256": sha256(whl), "size": whl.stat().st_size, "files": []}
            with zipfile.ZipFile(whl) as z:
                for info in z.infolist():
                    ti = tarfile.TarInfo(f"{whl.name}/{info.filename}")
                    ti.size = info.file_size
                    ti.mode = (info.external_attr >> 16) & 0o7777 or 0o644
                    # the zip's exact name (tar drops a directory entry's trailing "/") and attributes
                    ti.pax_headers = {"RECSYS.name": info.filename, "RECSYS.external_attr": str(info.external_attr)}
                    ti.mtime = int(time.mktime(info.date_time + (0, 0, -1)))
                    with z.open(info) as raw:
                        src = Hashing(raw)
                        tar.addfile(ti, io.BufferedReader(src, 8 * MIB))
                    entry["files"].append([info.filename, src.h.hexdigest()])
            manifest["wheels"].append(entry)
        data = json.dumps(manifest, indent=0).encode()
        ti = tarfile.TarInfo("MANIFEST.json"); ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))

def plan(carry, files, batch_mib, tag):
    """First-fit-decreasing into batch directories of at most batch_mib; writes SHA256SUMS into each."""
    carry = Path(carry)
    items = sorted(((Path(f), Path(f).stat().st_size) for f in files), key=lambda x: -x[1])
    bins = []
    for path, size in items:
        if size > batch_mib * MIB:
            sys.exit(f"gpu_wheels: {path.name} is {size / MIB:.1f} MiB, over one batch ({batch_mib} MiB)")
        for b in bins:
            if b["size"] + size <= batch_mib * MIB:
                b["files"].append(path); b["size"] += size; break
        else:
            bins.append({"files": [path], "size": size})
    # bundle parts stay in order, one per batch, so a short run of calls still fills the stash in order
    bins.sort(key=lambda b: min(p.name for p in b["files"]))
    lines = []
    for i, b in enumerate(bins, 1):
        d = carry / f"batch-{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for p in b["files"]:
            dest = d / p.name
            p.replace(dest)
            lines.append(f"{sha256(dest)}  batch-{i:02d}/{p.name}  {dest.stat().st_size}")
    sums = "\n".join(lines) + "\n"
    for i in range(1, len(bins) + 1):
        (carry / f"batch-{i:02d}" / "SHA256SUMS").write_text(sums)
    return len(bins)

def batches(carry, root, tag):
    carry = Path(carry)
    dirs = sorted(carry.glob("batch-*"))
    if not dirs:
        sys.exit(f"gpu_wheels: nothing prepared under {carry}; run: bash scripts/gpu_wheels.sh prepare")
    total = 0
    print(f"carry batches for {tag} ({len(dirs)} calls, one batch each, made back to back while the machine is warm):")
    for d in dirs:
        size = sum(p.stat().st_size for p in d.iterdir())
        total += size
        rel = d.relative_to(root) if d.is_relative_to(root) else f"{d} (outside the repo: not carriable)"
        print(f"  call {d.name[-2:]}: carry [\"{rel}\"]  {size / MIB:.1f} MiB, {len(list(d.iterdir())) - 1} file(s)")
    print(f"  total {total / MIB:.1f} MiB")

def read_sums(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        digest, rel, size = line.split()
        out[rel] = (digest, int(size))
    return out

def stash(carry_root, stash_dir):
    """Copies every arrived batch file into the stash (verified); prints what is still missing."""
    stash_dir = Path(stash_dir); stash_dir.mkdir(parents=True, exist_ok=True)
    sums = None
    for d in sorted(Path(carry_root).glob("batch-*")):
        sums = read_sums(d / "SHA256SUMS")
        shutil.copy2(d / "SHA256SUMS", stash_dir / "SHA256SUMS")
        for rel, (digest, size) in sums.items():
            src = Path(carry_root) / rel
            dest = stash_dir / Path(rel).name
            if not src.is_file() or (dest.is_file() and dest.stat().st_size == size and sha256(dest) == digest):
                continue
            if sha256(src) != digest:
                sys.exit(f"gpu_wheels: {rel} arrived damaged (sha256 mismatch): carry {Path(rel).parent} again")
            shutil.copy2(src, dest)
    if sums is None and (stash_dir / "SHA256SUMS").is_file():
        sums = read_sums(stash_dir / "SHA256SUMS")
    if sums is None:
        print(f"gpu_wheels: no batch under {carry_root} and nothing stashed in {stash_dir}")
        return 1
    have = {rel for rel, (digest, size) in sums.items()
            if (stash_dir / Path(rel).name).is_file() and (stash_dir / Path(rel).name).stat().st_size == size}
    batches_all = sorted({Path(r).parent.name for r in sums})
    missing = sorted({Path(r).parent.name for r in sums if r not in have})
    print(f"gpu_wheels: stash {stash_dir}: {len(batches_all) - len(missing)}/{len(batches_all)} batches"
          + (f"; missing: {' '.join(missing)}" if missing else "; complete: run install"))
    return 0 if not missing else 3

class Parts(io.RawIOBase):
    """The bundle's parts read as one stream."""
    def __init__(self, paths):
        self.paths = list(paths); self.f = None
    def readable(self): return True
    def readinto(self, b):
        while True:
            if self.f is None:
                if not self.paths: return 0
                self.f = open(self.paths.pop(0), "rb")
            n = self.f.readinto(b)
            if n: return n
            self.f.close(); self.f = None

def unbundle(stash_dir, wheel_dir):
    """Verifies the stash, then rebuilds every wheel (stored zip, same files) into wheel_dir."""
    stash_dir, wheel_dir = Path(stash_dir), Path(wheel_dir)
    sums = read_sums(stash_dir / "SHA256SUMS")
    for rel, (digest, size) in sums.items():
        p = stash_dir / Path(rel).name
        if not p.is_file():
            sys.exit(f"gpu_wheels: {Path(rel).name} missing from {stash_dir}: carry {Path(rel).parent}, run stash, then install")
        if sha256(p) != digest:
            sys.exit(f"gpu_wheels: {p} is damaged (sha256 mismatch): carry {Path(rel).parent} again")
    names = sorted(Path(r).name for r in sums)
    shutil.rmtree(wheel_dir, ignore_errors=True); wheel_dir.mkdir(parents=True)
    if not all(n.startswith("bundle.tar.xz.part-") for n in names):  # --plain: wheels and split wheels
        groups = {}
        for n in names:
            groups.setdefault(n.split(".part-")[0], []).append(stash_dir / n)
        for name, paths in groups.items():
            with open(wheel_dir / name, "wb") as out:
                for p in sorted(paths):
                    with open(p, "rb") as f:
                        shutil.copyfileobj(f, out, 8 * MIB)
        return
    got, zips, manifest = {}, {}, None
    with tarfile.open(fileobj=io.BufferedReader(Parts([stash_dir / n for n in names]), 8 * MIB), mode="r|xz") as tar:
        for ti in tar:
            src = tar.extractfile(ti) or io.BytesIO(b"")  # None for a directory entry
            if ti.name == "MANIFEST.json":
                manifest = json.loads(src.read()); continue
            whl = ti.name.partition("/")[0]
            member = ti.pax_headers.get("RECSYS.name", ti.name.partition("/")[2])
            if whl not in zips:
                zips[whl] = zipfile.ZipFile(wheel_dir / whl, "w", zipfile.ZIP_STORED)
            info = zipfile.ZipInfo(member, time.localtime(ti.mtime)[:6])
            info.external_attr = int(ti.pax_headers.get("RECSYS.external_attr", (0o100000 | ti.mode) << 16))
            info.file_size = ti.size  # lets zipfile pick zip64 for the 1 GB members up front
            h = hashlib.sha256()
            with zips[whl].open(info, "w") as out:
                while chunk := src.read(8 * MIB):
                    h.update(chunk); out.write(chunk)
            got[(whl, member)] = h.hexdigest()
    for z in zips.values():
        z.close()
    if manifest is None:
        shutil.rmtree(wheel_dir)
        sys.exit("gpu_wheels: the bundle has no MANIFEST.json (truncated?); prepare and carry again")
    bad = [f"{w['name']}:{m}" for w in manifest["wheels"] for m, digest in w["files"]
           if got.pop((w["name"], m), None) != digest]
    bad += [f"{w}:{m} (not in the manifest)" for w, m in got]
    if bad:
        shutil.rmtree(wheel_dir)
        sys.exit(f"gpu_wheels: {len(bad)} file(s) differ from the manifest, e.g. {bad[0]}; prepare and carry again")
    print(f"gpu_wheels: rebuilt {len(manifest['wheels'])} wheels in {wheel_dir}, every file's sha256 as prepared")

cmd, *args = sys.argv[1:]
if cmd == "bundle": bundle(*args)
elif cmd == "plan": print(plan(args[0], args[3:], int(args[1]), args[2]))
elif cmd == "batches": batches(*args)
elif cmd == "stash": sys.exit(stash(*args))
elif cmd == "unbundle": unbundle(*args)
PY
}

DIR="$OUTDIR/$TAG"
case "$MODE" in
prepare)
  for tool in xz split sha256sum; do command -v "$tool" >/dev/null || { echo "gpu_wheels: needs $tool" >&2; exit 2; }; done
  rm -rf "$DIR/carry" "$DIR/tmp"; mkdir -p "$DIR/wheels" "$DIR/carry" "$DIR/tmp"
  if [ -n "$WHEELS" ]; then
    echo "gpu_wheels: bundling the wheels in $WHEELS (no download)"
    rm -rf "$DIR/wheels"; mkdir -p "$DIR/wheels"; cp "$WHEELS"/*.whl "$DIR/wheels/"
  else
  PLATFORMS=(); for p in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do PLATFORMS+=(--platform "${p}_x86_64"); done
  echo "gpu_wheels: downloading ${#TORCH_COUPLED[@]} + ${#DEPS[@]} wheels for Python $PYVER (manylinux x86_64) into $DIR/wheels"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --prefer-binary --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d "$DIR/wheels" "${TORCH_COUPLED[@]}" "${DEPS[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  # A release with no wheel on PyPI (iopath 0.1.10) comes as an sdist: build it here, and take it
  # only if it is pure Python (a compiled one would be for this machine's Python, not the image's).
  for sd in "$DIR"/wheels/*.tar.gz "$DIR"/wheels/*.zip; do
    [ -f "$sd" ] || continue
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DIR/wheels" "$sd" 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    rm "$sd"
  done
  if ls "$DIR"/wheels/*.whl | grep -v -e "-none-any.whl" -e "-${TAG}-" -e "-abi3-" | grep .; then
    echo "gpu_wheels: the wheels above are not for $TAG (built here from an sdist with a compiler?)" >&2; exit 1
  fi
  n=$(ls "$DIR/wheels"/*.whl | wc -l)
  want=$(( ${#TORCH_COUPLED[@]} + ${#DEPS[@]} ))
  [ "$n" -ge "$want" ] || { echo "gpu_wheels: expected $want wheels, got $n in $DIR/wheels" >&2; exit 1; }
  fi
  for w in "$DIR"/wheels/fbgemm_gpu-*.whl; do   # record which CUDA the fbgemm build needs
    [ -f "$w" ] || continue
    "$PY" - "$w" <<'PY'
import re, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
info = z.read("fbgemm_gpu/docs/target.default.json.py").decode()
data = z.read("fbgemm_gpu/fbgemm_gpu_tbe_utils.so")
cudart = sorted(set(re.findall(rb"libcudart\.so\.[0-9]+", data)))
archs = sorted(set(re.findall(rb"sm_[0-9]+a?", z.read("fbgemm_gpu/fbgemm_gpu_tbe_common.so"))))
print(f"gpu_wheels: {sys.argv[1].rsplit('/', 1)[-1]}: variant {' '.join(info.split())}; links {b' '.join(cudart).decode()}; kernels for {b' '.join(archs).decode()}")
PY
  done
  du -b "$DIR"/wheels/*.whl | sort -n | awk '{s+=$1} END {printf "gpu_wheels: %d wheels, %.1f MiB\n", NR, s/1048576}'
  if [ "$PLAIN" = 1 ]; then
    for w in "$DIR"/wheels/*.whl; do
      if [ "$(stat -c %s "$w")" -gt $(( BATCH_MIB * 1048576 )) ]; then
        split -b "${PART_MIB}m" -d -a 2 "$w" "$DIR/tmp/$(basename "$w").part-"
      else
        cp "$w" "$DIR/tmp/"
      fi
    done
  else
    echo "gpu_wheels: bundling (xz -6, 2 threads, niced; 10-30 min on 2 shared cores for the 2.8 GB of the GPU set)"
    helper bundle "$DIR/wheels" | nice -n 10 xz -6 -T2 -c > "$DIR/tmp/bundle.tar.xz"
    stat -c %s "$DIR/tmp/bundle.tar.xz" | awk '{printf "gpu_wheels: bundle %.1f MiB\n", $1/1048576}'
    (cd "$DIR/tmp" && split -b "${PART_MIB}m" -d -a 3 bundle.tar.xz bundle.tar.xz.part- && rm bundle.tar.xz)
  fi
  nb=$(helper plan "$DIR/carry" "$BATCH_MIB" "$TAG" "$DIR"/tmp/*)
  rmdir "$DIR/tmp"
  echo "gpu_wheels: $nb batches under $DIR/carry"
  helper batches "$DIR/carry" "$ROOT" "$TAG"
  ;;
batches)
  helper batches "$DIR/carry" "$ROOT" "$TAG"
  ;;
stash)
  found=0
  for d in "$OUTDIR"/cp3*; do
    [ -d "$d/carry" ] || continue
    found=1; rc=0; helper stash "$d/carry" "$BASE/$(basename "$d")" || rc=$?
    [ "$rc" = 0 ] || [ "$rc" = 3 ] || exit "$rc"
  done
  if [ "$found" = 0 ]; then
    for s in "$BASE"/cp3*; do [ -d "$s" ] && helper stash "$OUTDIR/none" "$s" || true; done
    echo "gpu_wheels: no batch carried in this call (looked in $OUTDIR/cp3*/carry)"
  fi
  "$PY" - <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    torch = f"torch {version('torch')}"
except PackageNotFoundError:
    torch = "NO torch here: pass --python <the image's python that has torch> to install"
print(f"gpu_wheels: {sys.executable} is Python {sys.version.split()[0]} (cp{sys.version_info[0]}{sys.version_info[1]}), {torch}")
PY
  ;;
unpack|install)
  TAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  S="$BASE/$TAG"
  if [ -d "$OUTDIR/$TAG/carry" ]; then helper stash "$OUTDIR/$TAG/carry" "$S" >/dev/null || true; fi
  if [ ! -f "$S/SHA256SUMS" ]; then
    have=$(ls -d "$BASE"/cp3* "$OUTDIR"/cp3* 2>/dev/null | xargs -n1 basename 2>/dev/null | sort -u | tr '\n' ' ')
    echo "gpu_wheels: $PY is $TAG, but nothing for $TAG was carried (found: ${have:-none}); prepare --python-version ${TAG:2:1}.${TAG:3}" >&2
    exit 2
  fi
  t0=$(date +%s)
  helper unbundle "$S" "$S/wheels"
  [ "$MODE" = unpack ] && exit 0
  if [ "$SYSTEM" = 1 ]; then VPY="$PY"; else
    VENV="$BASE/venv"
    if [ ! -x "$VENV/bin/python" ] && ! "$PY" -m venv --system-site-packages --without-pip "$VENV"; then
      echo "gpu_wheels: $PY cannot make a venv; rerun install with --system (installs into $PY itself)" >&2; exit 2
    fi
    VPY="$VENV/bin/python"
    # An image whose python is itself a venv (torch in ITS site-packages): a venv made from it
    # sees only the base interpreter's packages, so hand it the image venv's site-packages too
    # (after its own, as --system-site-packages would).
    "$PY" -c 'import site, sys; sys.prefix != sys.base_prefix and print("\n".join(site.getsitepackages()))' \
      > "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/image-venv-site.pth"
  fi
  PIP=("$VPY" -m pip)
  "$VPY" -m pip --version >/dev/null 2>&1 || PIP=("$VPY" "$(ls "$S"/wheels/pip-*.whl)/pip")
  pipq() { "${PIP[@]}" install -q --disable-pip-version-check --no-index --find-links "$S/wheels" "$@"; }
  echo "gpu_wheels: installing fbgemm-gpu 1.6.0 and torchrec 1.6.1 (--no-deps) into $("$VPY" -c 'import sys; print(sys.prefix)')"
  pipq --no-deps "$S"/wheels/fbgemm_gpu-*.whl "$S"/wheels/torchrec-*.whl
  echo "gpu_wheels: installing the runtime deps (pip keeps what the image already has)"
  if ! pipq "${WANT[@]}"; then
    echo "gpu_wheels: resolving install failed; installing every carried wheel with --no-deps instead" >&2
    pipq --no-deps $(ls "$S"/wheels/*.whl | grep -v -e /fbgemm_gpu- -e /torchrec- -e /pip-)
  fi
  site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$ROOT" > "$site/recsys-repo.pth"   # `import recsys` from any cwd, as the editable install does on CPU
  printf '#!/bin/sh\n# the interpreter with the GPU stack (scripts/gpu_wheels.sh install)\nexec "%s" "$@"\n' "$VPY" > "$BASE/python"
  chmod +x "$BASE/python"
  echo "gpu_wheels: installed in $(( $(date +%s) - t0 )) s; python: $BASE/python (-> $VPY)"
  PY="$VPY"
  ;&
check)
  "$PY" - <<'PY'
import sys
import torch
import fbgemm_gpu, torchrec  # noqa: F401
from importlib.metadata import version
print(f"gpu_wheels: python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"fbgemm_gpu {version('fbgemm_gpu')} ({getattr(fbgemm_gpu, '__variant__', '?')}); torchrec {version('torchrec')}")
if not torch.cuda.is_available():
    sys.exit("gpu_wheels: torch.cuda.is_available() is False: imports work, but there is no usable GPU")
x = torch.tensor([1, 2, 3], dtype=torch.int64, device="cuda")
got = torch.ops.fbgemm.asynchronous_complete_cumsum(x).tolist()  # an fbgemm CUDA kernel
assert got == [0, 1, 3, 6], got
nccl = torch.cuda.nccl.version()
nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
print(f"gpu_wheels: ok: {torch.cuda.get_device_name(0)}, NCCL {nccl}, an fbgemm CUDA op ran")
PY
  ;;
esac
exit 0
}
