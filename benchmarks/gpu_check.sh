#!/usr/bin/env bash
# Every CUDA check of symconv in one call, for a machine with one CUDA GPU.
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # the real check (about 10 min in all)
#   bash benchmarks/gpu_check.sh OUT_DIR --dry-run  # the same parts, tiny, on the CPU
#
# Installs what is missing (torch with CUDA, the project, the test extras; offline it uses
# what is there and the source tree), then runs each part under its own time limit, so one
# hang cannot eat the rest:
#
#   env            versions, GPU name, nvidia-smi
#   tests          the CUDA tests: every test parametrized over devices, run for 'cuda'
#   bench_symmetric, bench_twist, bench_group: batch 64, against nn.Conv2d
#   bench_escnn    bench_group.py --escnn: escnn's (else e2cnn's) R2Conv beside GroupConv2d,
#                  installed into a throwaway venv over this Python's packages
#   compare        `symconv compare` (the default job) and `--model resnet` on the GPU
#
# Everything lands in OUT_DIR: one log per part, the benchmark tables as Markdown, the
# compare results (tables, JSON, plots; no checkpoints) and summary.txt (each part's exit
# code and seconds). The exit code is the number of failed parts.
set -uo pipefail

usage="usage: bash benchmarks/gpu_check.sh OUT_DIR [--dry-run]"
if [[ $# -lt 1 || $# -gt 2 || "$1" == -* ]]; then
    echo "$usage" >&2
    exit 2
fi
out=$1
dry=0
if [[ $# -eq 2 ]]; then
    if [[ "$2" != "--dry-run" ]]; then
        echo "gpu_check: unknown option '$2'; $usage" >&2
        exit 2
    fi
    dry=1
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" || { echo "gpu_check: cannot create OUT_DIR '$out'" >&2; exit 2; }
out=$(cd "$out" && pwd)
cd "$repo" || exit 2
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
summary="$out/summary.txt"
: >"$summary"
failed=0
t_start=$SECONDS

log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

# part NAME LIMIT_S COMMAND...: run COMMAND with a time limit, output to OUT_DIR/NAME.log.
part() {
    local name=$1 limit=$2
    shift 2
    log "$name (limit ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) verdict=ok
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        verdict="TIMED OUT after ${limit}s"
    elif [[ $rc -ne 0 ]]; then
        verdict="FAILED (exit $rc)"
    fi
    [[ $verdict == ok ]] || failed=$((failed + 1))
    printf '%-16s %-26s %4ds\n' "$name" "$verdict" "$dt" | tee -a "$summary"
    tail -n 3 "$out/$name.log" | sed 's/^/    /'
}

# -- install what is missing ------------------------------------------------------------------
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
if [[ $dry -eq 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
    >/dev/null 2>&1; then
    log "no CUDA-enabled torch: installing torch (an unpinned torch is a CUDA build)"
    "$PY" -m pip install -q torch || { echo "gpu_check: cannot install a CUDA torch" >&2; exit 2; }
fi
if ! "$PY" -c "import symconv, sys; sys.exit(not symconv.__file__.startswith('$repo/'))" \
    >/dev/null 2>&1; then
    if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e "$repo" >"$out/install.log" 2>&1
    then
        log "could not pip-install the project (offline?): using the source tree on PYTHONPATH"
        export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
missing=()
for mod in pytest hypothesis pytest_timeout tqdm matplotlib; do has "$mod" || missing+=("$mod"); done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    pkgs=("${missing[@]//pytest_timeout/pytest-timeout}")
    "$PY" -m pip install -q "${pkgs[@]}" >>"$out/install.log" 2>&1 ||
        log "could not install ${pkgs[*]}: the parts that need them will say so"
fi

if [[ $dry -eq 1 ]]; then
    device=cpu batch=2 tests_k="cpu and (reference or autocast)" twist_shapes=16/8
    sym_args=(--shapes 16/8 --no-3d --rounds 1 --min-time 0.01)
    cmp_args=(--limit 64 --epochs 1 --width 8)
    grp_args=(--shapes 16/8 --rounds 1 --min-time 0.01)
    # One thread: tiny steps on a shared CPU otherwise spend their time waiting for threads.
    twist_args=(--repeats 3 --threads 1)
else
    device=cuda batch=64 tests_k=cuda twist_shapes=64/56,128/28,256/14,512/7
    sym_args=(--rounds 5 --min-time 0.08)
    cmp_args=()
    grp_args=(--rounds 5 --min-time 0.05)
    twist_args=(--repeats 10)
fi

# -- the parts ----------------------------------------------------------------------------
part env 30 bash -c "
    $PY - <<'EOF'
import platform, torch, symconv
print('python', platform.python_version(), '| torch', torch.__version__,
      '| symconv', symconv.__version__, 'from', symconv.__file__)
print('cuda', torch.version.cuda, '| available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('GPU', p.name, f'{p.total_memory / 2**30:.0f} GiB', p.multi_processor_count, 'SMs')
EOF
    nvidia-smi 2>/dev/null || true"
if [[ $dry -eq 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: torch sees no CUDA GPU; nothing to check (try --dry-run)" >&2
    exit 2
fi
part tests 120 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -k "$tests_k" \
    --junitxml="$out/tests.xml" tests
part bench_symmetric 100 "$PY" benchmarks/bench_symmetric.py --device "$device" \
    --batch "$batch" "${sym_args[@]}" --markdown "$out/bench_symmetric.md"
part bench_twist 80 "$PY" benchmarks/bench_twist.py --device "$device" --batch "$batch" \
    "${twist_args[@]}" --shapes "$twist_shapes"
part bench_group 120 "$PY" benchmarks/bench_group.py --device "$device" --batch "$batch" \
    "${grp_args[@]}" --markdown "$out/bench_group.md"
part compare 60 "$PY" -m symconv compare --device "$device" --no-progress \
    --out "$out/compare-cnn" "${cmp_args[@]}"
part compare_resnet 90 "$PY" -m symconv compare --device "$device" --no-progress \
    --model resnet --out "$out/compare-resnet" "${cmp_args[@]}"
# Checkpoints are large and not results.
rm -rf "$out"/compare-*/checkpoints
# Last, so that a caller's time limit costs only this part: escnn's R2Conv beside
# GroupConv2d. escnn needs py3nj, which builds only with a Fortran compiler; e2cnn 0.2.3 has
# the same layers but wants numpy < 2. Both go into a throwaway venv that sees this Python's
# packages (the CUDA torch) through a .pth file, behind its own, so the main environment is
# never touched. The dry run installs nothing: it runs the --escnn path with this Python.
escnn_bench() {
    local venv site
    venv=$(mktemp -d)/venv
    "$PY" -m venv "$venv" || return 1
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PY" -c 'import sysconfig as s; print(s.get_paths()["purelib"]); print(s.get_paths()["platlib"])' \
        >"$site/gpu_check_parent.pth"
    "$venv/bin/python" -m pip install -q escnn || {
        echo "escnn did not install (py3nj needs gfortran); trying e2cnn 0.2.3"
        "$venv/bin/python" -m pip install -q e2cnn==0.2.3 "numpy<2"
    } || echo "neither escnn nor e2cnn installed: the benchmark says it skips"
    PYTHONPATH="$repo/src" "$venv/bin/python" benchmarks/bench_group.py --device "$device" \
        --batch "$batch" --groups hr,r --rounds 3 --min-time 0.05 --escnn \
        --markdown "$out/bench_escnn.md"
}
if [[ $dry -eq 1 ]]; then
    part bench_escnn 120 "$PY" benchmarks/bench_group.py --device "$device" --batch "$batch" \
        "${grp_args[@]}" --groups hr --escnn --markdown "$out/bench_escnn.md"
else
    export -f escnn_bench
    export PY repo device batch out
    part bench_escnn 300 bash -c escnn_bench
fi

printf '%-16s %-26s %4ds\n' total "$failed failed part(s)" $((SECONDS - t_start)) | tee -a "$summary"
exit "$failed"
