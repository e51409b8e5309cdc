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
# wait_until CONDITION: true once the shell condition holds, checked every 0.1 s for at most 10 s; false if it never
# does (the caller fails with what it waited for).
wait_until() { for _ in $(seq 100); do eval "$1" && return 0; sleep 0.1; done; return 1; }
# make_study DIR COUNT SIDE: COUNT DICOM images (SIDE×SIDE RGB, deterministic pixels) of one study and series in
# DIR/image00.dcm…, wrapped by dcmtk's img2dcm.
make_study() {
    local out=$1 count=$2 side=$3 bmp
    bmp=$(mktemp -d)
    mkdir -p "$out"
    python3 Tests/integration/make-study.py "$bmp" "$count" "$side"
    img2dcm -i BMP "$bmp/image00.bmp" "$out/image00.dcm" || fail "cannot make the test study"
    for image in "$bmp"/image*.bmp; do
        [ "$(basename "$image")" = image00.bmp ] && continue
        img2dcm -i BMP --study-from "$out/image00.dcm" --series-from "$out/image00.dcm" "$image" \
            "$out/$(basename "$image" .bmp).dcm" || fail "cannot make the test study"
    done
    rm -rf "$bmp"
}
