#!/usr/bin/env bash
# Carry vLLM onto a GPU machine that cannot reach a package index.
#
# The wheels are downloaded where PyPI is reachable, split into 60 MB parts in the
# git-ignored folder .vllm-wheels/ (small enough to travel with the working tree to the
# GPU machine, one part or a few per trip), joined and installed there with --no-deps.
#
#   here (PyPI reachable)           on the GPU machine (no index)
#   ---------------------           -----------------------------
#   1. scripts/vllm_wheels.sh pack
#                                   2. scripts/vllm_wheels.sh missing   (after the parts arrived)
#      add what it prints to .vllm-wheels/extra-requirements.txt here
#   3. scripts/vllm_wheels.sh pack  (again: now with the missing dependencies; repeat
#      2-3 until `missing` prints nothing, as dependencies have dependencies)
#                                   4. scripts/vllm_wheels.sh install
#                                   5. python -c "import vllm; print(vllm.__version__)"
#
# vLLM 0.32.0, the version apprentice is tested with, pins torch==2.13.0 (`pack` prints the
# pin from the wheel's METADATA): its compiled kernels load only against that torch. `missing` says first whether the
# machine's torch matches; if it does not, either carry that torch too (it then appears
# in the missing list; several GB with its CUDA libraries) or choose the vLLM release
# whose torch pin matches the machine (VLLM_VERSION=...).
#
# Environment: VLLM_VERSION (0.32.0), WHEELS (.vllm-wheels), PART_SIZE (60m),
# PY_VERSION (the GPU machine's python, e.g. 3.11; default: this python's),
# PLATFORM (manylinux_2_28_x86_64), PYTHON (python3).
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
WHEELS="${WHEELS:-.vllm-wheels}"
PART_SIZE="${PART_SIZE:-60m}"
PYTHON="${PYTHON:-python3}"
PLATFORM="${PLATFORM:-manylinux_2_28_x86_64}"
PY_VERSION="${PY_VERSION:-$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"

usage() {
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# pack: download the vLLM wheel (and the extra requirements, if listed) and split them.
pack() {
    mkdir -p "$WHEELS/download" "$WHEELS/parts"
    "$PYTHON" -m pip download "vllm==$VLLM_VERSION" --no-deps --only-binary=:all: \
        --python-version "$PY_VERSION" --platform "$PLATFORM" -d "$WHEELS/download"
    if [[ -s "$WHEELS/extra-requirements.txt" ]]; then
        "$PYTHON" -m pip download --no-deps --only-binary=:all: \
            --python-version "$PY_VERSION" --platform "$PLATFORM" --platform any \
            -r "$WHEELS/extra-requirements.txt" -d "$WHEELS/download"
    fi
    (cd "$WHEELS/download" && sha256sum -- *.whl) > "$WHEELS/parts/SHA256SUMS"
    for wheel in "$WHEELS"/download/*.whl; do
        name="$(basename "$wheel")"
        rm -f "$WHEELS/parts/$name".part-*
        split -b "$PART_SIZE" -d -a 3 "$wheel" "$WHEELS/parts/$name.part-"
    done
    echo "parts in $WHEELS/parts ($(du -sh "$WHEELS/parts" | cut -f1)):"
    ls -1 "$WHEELS/parts"
    echo "torch pin of vllm $VLLM_VERSION:"
    unzip -p "$WHEELS"/download/vllm-"$VLLM_VERSION"-*.whl '*.dist-info/METADATA' \
        | grep -E '^Requires-Dist: torch(==|>|<|~| )' || true
}

# join: rebuild every wheel from its parts and check it against SHA256SUMS.
join_parts() {
    mkdir -p "$WHEELS/joined"
    for first in "$WHEELS"/parts/*.whl.part-000; do
        name="$(basename "${first%.part-000}")"
        cat "$WHEELS/parts/$name".part-* > "$WHEELS/joined/$name"
    done
    (cd "$WHEELS/joined" && grep -F -f <(ls -1 -- *.whl) ../parts/SHA256SUMS | sha256sum -c -)
}

# missing: requirements of the carried wheels that this machine does not meet, nor carries.
missing() {
    join_parts > /dev/null
    "$PYTHON" - "$WHEELS/joined" <<'PY'
import sys, zipfile, pathlib
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

folder = pathlib.Path(sys.argv[1])
wheels = sorted(folder.glob("*.whl"))
carried = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
unmet = []
for wheel in wheels:  # vllm's requirements, and those of the dependencies carried so far
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist: "):
            continue
        req = Requirement(line.removeprefix("Requires-Dist: "))
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra, or another platform
        key = req.name.lower().replace("_", "-")
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            have = None
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        if key == "torch":
            print(f"# torch {have} is installed; {wheel.name} needs {req}", file=sys.stderr)
        if key not in carried and str(req).split(";")[0] not in unmet:
            unmet.append(str(req).split(";")[0])
print("\n".join(unmet))
PY
}

# install: join, then install every carried wheel without resolving anything online.
install() {
    join_parts
    "$PYTHON" -m pip install --no-deps --no-index "$WHEELS"/joined/*.whl
    "$PYTHON" -m pip check || echo "pip check found unmet requirements: run '$0 missing'"
    "$PYTHON" -c "import vllm; print('vllm', vllm.__version__, 'imports')"
}

case "${1:-}" in
    pack) pack ;;
    missing) missing ;;
    install) install ;;
    *) usage ;;
esac
