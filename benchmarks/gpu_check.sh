#!/usr/bin/env bash
# Every CUDA check of symconv in one call, for a machine with one CUDA GPU.
#
#   bash benchmarks/gpu_check.sh OUT_DIR                  # the real check (limits: 15 min in all)
#   bash benchmarks/gpu_check.sh OUT_DIR --parts tests,bench_group,bench_escnn
#   bash benchmarks/gpu_check.sh OUT_DIR --dry-run        # the same parts, tiny, on the CPU
#
# Installs what is missing (torch with CUDA, the project, the test extras; offline it uses
# what is there and the source tree), then runs each part under its own time limit, so one
# hang cannot eat the rest:
#
#   env            versions, GPU name, nvidia-smi (always run)
#   tests          the CUDA tests: every test parametrized over devices, run for 'cuda'
#   bench_symmetric, bench_twist, bench_group: batch 64, against nn.Conv2d
#   compare        `symconv compare` (the default job) on the GPU
#   compare_resnet the same with `--model resnet`
#   bench_escnn    bench_group.py --escnn: e2cnn's R2Conv beside GroupConv2d, installed from
#                  the wheels in .whl/ (benchmarks/gpu_wheels.sh fetches them; a machine that
#                  reaches no registry needs them carried) into a throwaway venv
#
# Everything lands in OUT_DIR: one log per part, the benchmark tables as Markdown, the
# compare results (tables, JSON, plots; no checkpoints) and summary.txt (each part's exit
# code and seconds). The exit code is the number of failed parts.
set -uo pipefail

all_parts=(tests bench_symmetric bench_twist bench_group compare compare_resnet bench_escnn)
usage="usage: bash benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--parts NAME,...]
parts: ${all_parts[*]}"
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "$usage" >&2
    exit 2
fi
out=$1
shift
dry=0
selected=("${all_parts[@]}")
while [[ $# -gt 0 ]]; do
    case $1 in
    --dry-run) dry=1 ;;
    --parts)
        if [[ $# -lt 2 || -z "$2" ]]; then
            echo "gpu_check: --parts needs a comma-separated list; $usage" >&2
            exit 2
        fi
        IFS=, read -r -a selected <<<"$2"
        for name in "${selected[@]}"; do
            if [[ " ${all_parts[*]} " != *" $name "* ]]; then
                echo "gpu_check: --parts: unknown part '$name'; $usage" >&2
                exit 2
            fi
        done
        shift
        ;;
    *)
        echo "gpu_check: unknown option '$1'; $usage" >&2
        exit 2
        ;;
    esac
    shift
done
wanted() { [[ " ${selected[*]} " == *" $1 "* ]]; }
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
    [[ $name == env ]] || wanted "$name" || return 0
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
part tests 180 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -k "$tests_k" \
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
# Last, so that a caller's time limit costs only this part: e2cnn's R2Conv beside
# GroupConv2d. e2cnn needs numpy < 2 and a scipy built for it (benchmarks/gpu_wheels.sh says
# why not escnn); they go into a throwaway venv that sees this Python's packages (the CUDA
# torch) through a .pth file, behind its own, so the main environment is never touched.
# The wheels come from .whl/ (carried to a machine that reaches no registry), else
# gpu_wheels.sh fetches them for this Python (not in a dry run, which uses the wheels when
# they are there and otherwise runs the --escnn path with whatever this Python has).
escnn_bench() {
    local venv site rc
    if ! compgen -G "$repo/.whl/numpy-*-$tag-*.whl" >/dev/null; then
        echo "no $tag wheels in $repo/.whl: fetching them with benchmarks/gpu_wheels.sh"
        bash "$repo/benchmarks/gpu_wheels.sh" "$pyver" || {
            echo "gpu_check: no e2cnn wheels for $tag; run benchmarks/gpu_wheels.sh where a" \
                "package registry is reachable and carry .whl" >&2
            return 1
        }
    fi
    venv=$(mktemp -d)/venv
    # shellcheck disable=SC2064  # the path is known now
    trap "rm -rf '${venv%/venv}'" RETURN
    "$PY" -m venv "$venv" || return 1
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PY" -c 'import sysconfig as s; print(s.get_paths()["purelib"]); print(s.get_paths()["platlib"])' \
        >"$site/gpu_check_parent.pth"
    "$venv/bin/python" -m pip install -q --no-index --no-deps "$repo"/.whl/e2cnn-*.whl \
        "$repo"/.whl/numpy-*-"$tag"-*.whl "$repo"/.whl/scipy-*-"$tag"-*.whl || return 1
    "$venv/bin/python" -c 'from importlib.metadata import version as v
print(*(f"{n} {v(n)}" for n in ("e2cnn", "numpy", "scipy", "torch")))' || return 1
    PYTHONPATH="$repo/src" "$venv/bin/python" benchmarks/bench_group.py --device "$device" \
        --batch "$batch" "$@" --escnn --markdown "$out/bench_escnn.md"
}
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
tag=cp${pyver/./}
export -f escnn_bench
export PY repo device batch out pyver tag
if [[ $dry -eq 0 ]]; then
    part bench_escnn 240 bash -c 'escnn_bench "$@"' escnn_bench --groups hr,r --rounds 3 \
        --min-time 0.05
elif compgen -G "$repo/.whl/numpy-*-$tag-*.whl" >/dev/null; then
    part bench_escnn 120 bash -c 'escnn_bench "$@"' escnn_bench "${grp_args[@]}" --groups hr
else  # a dry run fetches nothing: the --escnn path with whatever this Python has
    part bench_escnn 120 "$PY" benchmarks/bench_group.py --device "$device" --batch "$batch" \
        "${grp_args[@]}" --groups hr --escnn --markdown "$out/bench_escnn.md"
fi

printf '%-16s %-26s %4ds\n' total "$failed failed part(s)" $((SECONDS - t_start)) | tee -a "$summary"
exit "$failed"
