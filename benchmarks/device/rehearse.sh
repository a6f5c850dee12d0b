#!/usr/bin/env bash
# bash benchmarks/device/rehearse.sh [VENV [gpu_check.py flags]]
#
# The device run, rehearsed on a CPU machine: a virtual environment (default /tmp/gptune-device-image, made
# once with PYTHON312, default python3.12) holding only the device image's packages that the plan names, at the
# image's versions where image.txt gives them (torch 2.11.0, transformers 5.17.0, accelerate 1.15.0 ...; the
# others at the registry's newest), then run.sh with that python, offline (no pip configuration, no index),
# and gpu_check.py --cpu-smoke. Needs the wheelhouse (build_wheelhouse.py) and, the first time, the registry.
# Before each rehearsal the packages the wheelhouse carries are uninstalled from the venv, so the install
# starts from what the image has. GPTUNE_DEVICE_VENV=1 rehearses the overlay venv (read-only image) instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-/tmp/gptune-device-image}
shift || true
WHEELS=${GPTUNE_WHEELS:-benchmarks/device/wheels}
[ -f "$WHEELS/plan.json" ] || { echo "rehearse.sh: no $WHEELS/plan.json: run build_wheelhouse.py first"; exit 3; }

# "name==version" (or "name") for each package the plan leaves to the image, then what the carried ones are
read_plan() {
  python3 - "$WHEELS/plan.json" benchmarks/device/image.txt "$1" <<'PY'
import json, sys
plan, image, what = json.load(open(sys.argv[1]))["packages"], {}, sys.argv[3]
for line in open(sys.argv[2]):
    name, _, version = line.split("#", 1)[0].strip().partition("==")
    if name:
        image[name] = version
for p in plan:
    if what == "image" and p["kind"] != "carry":
        print(p["name"] + ("==" + image[p["name"]] if image.get(p["name"]) else ""))
    elif what == "carried" and p["kind"] == "carry":
        print(p["name"])
PY
}

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON312:-python3.12}" -m venv "$VENV"
  # setuptools: the image has it (run.sh's install from the checkout builds with it)
  # shellcheck disable=SC2046
  "$VENV/bin/python" -m pip install -q setuptools $(read_plan image)
fi
# shellcheck disable=SC2046
"$VENV/bin/python" -m pip uninstall -q -y gptune $(read_plan carried) 2>/dev/null || true
echo "rehearse.sh: $VENV ($("$VENV/bin/python" -V)) holds, before the install:"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|accelerate|peft|tokenizers|datasets|evaluate|fsspec|pyarrow|numpy|huggingface.hub) ' || true
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 \
  PYTHON="$VENV/bin/python" OUT="${OUT:-/tmp/gptune-device-rehearsal-out}" bash benchmarks/device/run.sh --cpu-smoke "$@"
