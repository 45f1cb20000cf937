#!/usr/bin/env bash
# Fetch, on a machine that reaches the package registries, the wheels that gpu_check.sh's
# escnn comparison installs on a GPU machine that reaches nothing (the lent H200).
#
#   bash benchmarks/gpu_wheels.sh            # for the H200 image's Python 3.12
#   bash benchmarks/gpu_wheels.sh 3.11       # for another CPython (a local dry run)
#
# They land in .whl/ at the repository's root, which this script adds to
# .git/info/exclude (ignored, so the tool's `carry` must name it: carry=[".whl"]).
#
# Why e2cnn and not escnn: escnn needs lie_learn, whose only wheels are built against
# numpy 1, and e2cnn calls numpy 1 APIs (`tostring`, `copy=False`); both therefore need
# numpy < 2 beside a scipy built for it, which the H200 image (numpy 2) lacks. With
# lie_learn the escnn set is ~71 MB, over the 64 MiB a call carries; the e2cnn set
# (e2cnn 0.2.3, numpy 1.26.4, scipy 1.16.3) is ~54 MB. e2cnn's R2Conv is the layer escnn's
# R2Conv grew from: the same basis expansion, the same regular representations.
set -euo pipefail

if [[ $# -gt 1 || "${1:-}" == -* ]]; then
    echo "usage: bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]   (default 3.12)" >&2
    exit 2
fi
version=${1:-3.12}
if ! [[ $version =~ ^3\.[0-9]+$ ]]; then
    echo "gpu_wheels: PYTHON_VERSION '$version' must look like 3.12" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
dest="$repo/.whl"
mkdir -p "$dest"
exclude="$repo/.git/info/exclude"
if [[ -d "$repo/.git" ]] && ! grep -qx '/.whl/' "$exclude" 2>/dev/null; then
    echo '/.whl/' >>"$exclude"
fi
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
    --implementation cp "${platforms[@]}" -d "$dest" \
    e2cnn==0.2.3 numpy==1.26.4 scipy==1.16.3
ls -l "$dest"
du -sh "$dest"
