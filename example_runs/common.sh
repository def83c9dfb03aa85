# Shared by the example_runs/*.sh scripts (sourced, not run). Settings, each overridable from the environment:
#   PYTHON   the interpreter (default: the project's .venv if it exists, else python3)
#   OUT      where runs go (--output_dir; default Results)
#   EXTRA    flags added to every training command, e.g. EXTRA="--gpu_devices cpu --num_workers 4"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-Results}
EXTRA=${EXTRA:-}

# Print a command, then run it.
run() {
    echo "+ $*" >&2
    "$@"
}

# The newest run folder of project $1 (runs are named by their start time).
newest_run() {
    local found
    found=$(ls -d "$OUT/$1"/*/ 2>/dev/null | sort | tail -n 1)
    if [ -z "$found" ]; then
        echo "no run of project $1 under $OUT: run the quick recipe first" >&2
        return 1
    fi
    echo "${found%/}"
}

# The runs table of project $1 (best first), the flags that differ across its runs, and runs $2 and $3 in detail.
show_comparison() {
    run $PYTHON -m utils.runs "$OUT" --proj "$1" --sort best --desc
    run $PYTHON -m utils.runs "$OUT" --proj "$1" --diff
    run $PYTHON -m utils.configcmp "$2" "$3"
}

# Run each recipe named on the command line (default: quick); 'all' runs every one in order.
dispatch() {
    local recipes=("$@")
    [ ${#recipes[@]} -eq 0 ] && recipes=(quick)
    [ "${recipes[0]}" = all ] && recipes=(quick full resume eval compare)
    for recipe in "${recipes[@]}"; do
        case "$recipe" in
            quick|full|resume|eval|compare) "recipe_$recipe" ;;
            *) echo "unknown recipe '$recipe': choose quick, full, resume, eval, compare or all" >&2; exit 2 ;;
        esac
    done
}
