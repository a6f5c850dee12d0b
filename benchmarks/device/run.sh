#!/usr/bin/env bash
# bash benchmarks/device/run.sh [gpu_check.py flags]
#
# The one command for a lent device machine (no network there): from the repository root, install gptune
# and what the image lacks from benchmarks/device/wheels/ (built here by build_wheelhouse.py, carried with
# the call), print the versions and the GPU, then run benchmarks/gpu_check.py on the installed gptune with
# its table written to $OUT. Within 8 minutes: the install takes well under a minute, gpu_check.py keeps to
# its --budget (390 s unless GPU_CHECK_BUDGET says otherwise), and a hard stop 30 s past that ends it.
# Exit status: 3 when the install fails, else gpu_check.py's (0 all passed, 1 a check failed or was
# skipped, 2 no CUDA, 124 the hard stop).
#
# Environment: PYTHON (default python3, the image's), OUT (default /tmp/gptune-device-out), GPU_CHECK_BUDGET,
# GPTUNE_WHEELS (default benchmarks/device/wheels).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gptune-device-out}
BUDGET=${GPU_CHECK_BUDGET:-390}
WHEELS=${GPTUNE_WHEELS:-benchmarks/device/wheels}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"

# When the image's site-packages cannot be written (or GPTUNE_DEVICE_VENV=1): a venv in /tmp that sees the
# image's packages through a .pth file, below its own, so pip installs beside them and leaves them alone.
overlay_venv() {
  local venv=/tmp/gptune-venv image_site
  rm -rf "$venv"  # one install per run, from the image's state
  image_site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$PY" -m venv --without-pip "$venv" || return 3
  echo "$image_site" > "$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/image.pth"
  PY=$venv/bin/python
  echo "run.sh: installing into $venv (the image's packages, from $image_site, stay visible below it)"
}

install() {
  if [ ! -f "$WHEELS/SOURCE_DIGEST" ]; then
    echo "run.sh: no wheelhouse at $WHEELS: build it with python benchmarks/device/build_wheelhouse.py and carry it"
    return 3
  fi
  if [ "${GPTUNE_DEVICE_VENV:-0}" = 1 ] || ! "$PY" -c "import os, sys, sysconfig
sys.exit(not os.access(sysconfig.get_paths()['purelib'], os.W_OK))"; then
    overlay_venv || return 3
  fi
  # what travels is resolved against the image: pip takes a wheel only for what the image lacks or has outside
  # the range asked (the fallbacks); everything else stays the image's
  local from=gptune
  if [ "$(cat "$WHEELS/SOURCE_DIGEST")" != "$("$PY" benchmarks/device/build_wheelhouse.py --digest)" ]; then
    echo "run.sh: WARNING: the gptune wheel is older than the sources here; installing gptune from the checkout"
    from=.
  fi
  # a warm machine may hold gptune from an earlier call, at the same version: pip would keep that one
  "$PY" -m pip uninstall -q -y gptune >/dev/null 2>&1
  if ! "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-cache-dir --no-build-isolation "$from"; then
    echo "run.sh: the install failed; where pip names a package the image has at a version outside the range (see"
    echo "  == image), rebuild here with python benchmarks/device/build_wheelhouse.py --with NAME and carry it again"
    return 3
  fi
  "$PY" -m pip check || echo "run.sh: pip check found the conflicts above (reported, not fatal)"
}

# The image's versions of what the plan names (before anything is installed), and whether each fits the range
# asked: an unverified one that does not fit stops the install, and this says which.
image_versions() {
  [ -f "$WHEELS/plan.json" ] || return 0
  "$PY" - "$WHEELS/plan.json" <<'PY'
import importlib.metadata as m, json, sys
from packaging.specifiers import SpecifierSet
for p in json.load(open(sys.argv[1]))["packages"]:
    try:
        have = m.version(p["name"])
    except m.PackageNotFoundError:
        have = None
    ok = have is not None and SpecifierSet(p["range"]).contains(have, prereleases=True)
    fit = "fits" if ok else ("absent" if have is None else "OUTSIDE")
    print(f"{p['name']:<16} {have or '-':<12} {p['range'] or '(any)':<28} {fit:<8} {p['kind']}")
PY
}

main() {
  echo "== image ($("$PY" -V 2>&1); name, version, range asked, fits, plan)"
  image_versions
  echo "== install ($(date -u +%H:%M:%S))"
  install || return $?
  echo "== device"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
      --format=csv
  else
    echo "(no nvidia-smi)"
  fi
  echo "== gpu_check ($(date -u +%H:%M:%S), budget ${BUDGET} s)"
  timeout --kill-after=10 $((${BUDGET%.*} + 30)) "$PY" benchmarks/gpu_check.py --installed --budget "$BUDGET" \
    --out "$OUT" "$@"
}

main "$@" 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
