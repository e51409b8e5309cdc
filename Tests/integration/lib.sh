# Shared set-up for the integration scripts: run from the repository, find the built binaries, a scratch folder,
# and background processes that are stopped (and the folder removed) however the script ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${LB_BIN:-$(swift build --show-bin-path)}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$work/lbd.log" ] && cat "$work/lbd.log" >&2; exit 1; }
# `… | grep -q` stops reading at the first match; the writer then dies of SIGPIPE and pipefail fails the pipeline
# (a flake: it depends on whether the writer had finished). `… | holds PATTERN` reads everything.
holds() { grep "$@" > /dev/null; }
