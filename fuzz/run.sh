#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/fuzz_targets (not part of CI; see docs/RELIABILITY.md).
#
#   bash fuzz/run.sh [TARGET...]        targets: model_loader quantized_loader image npy (default: all)
#
# Environment: FUZZ_RUNS (executions per target, default 1000000), FUZZ_SECONDS (time cap per
# target, default 3600), FUZZ_OUT (default target/fuzz-results).
#
# cargo-fuzz needs a nightly compiler (-Z flags, sanitizers). The script installs nightly with
# rustup when it can; where it cannot (no access to static.rust-lang.org), it runs the installed
# stable toolchain with RUSTC_BOOTSTRAP=1, which accepts the same flags and ships the same
# AddressSanitizer runtime. cargo-fuzz itself comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
RUNS="${FUZZ_RUNS:-1000000}"
SECONDS_CAP="${FUZZ_SECONDS:-3600}"
OUT="${FUZZ_OUT:-$ROOT/target/fuzz-results}"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(model_loader quantized_loader image npy)

log() { printf '[fuzz %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

TC=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly' \
    || timeout 120 rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    TC=(+nightly)
    log "toolchain: nightly"
else
    export RUSTC_BOOTSTRAP=1
    log "toolchain: $(rustc --version) with RUSTC_BOOTSTRAP=1 (nightly not installable here)"
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# ---- seeds: small real inputs of each kind, rebuilt from files in the repository
SEEDS="$OUT/seeds"
SEP="$(mktemp)"
printf '\n\0--autoneural-fuzz-file--\0\n' > "$SEP"
join_files() { # out file...
    local out=$1; shift
    : > "$out"
    local first=1 f
    for f in "$@"; do
        [ "$first" = 1 ] || cat "$SEP" >> "$out"
        first=0
        cat "$f" >> "$out"
    done
}
rm -rf "$SEEDS"
mkdir -p "$SEEDS"/{model_loader,quantized_loader,image,npy}
cp fuzz/seeds/image/* "$SEEDS/image/"
cp assets/sample_dashboard.png "$SEEDS/image/"
cp fuzz/seeds/npy/* "$SEEDS/npy/"
for m in text_one_token lfm2_plain_text; do
    d="tests/golden/$m/model"
    join_files "$SEEDS/model_loader/$m" "$d/config.json" "$d/tokenizer.json" "$d/model.safetensors"
done
log "building the engine to quantize a seed model"
cargo build --release --quiet
Q="$(mktemp -d)"
mkdir -p "$Q/calib"
cp assets/sample_dashboard.png "$Q/calib/a.png"
echo "What speed is shown?" > "$Q/calib/prompts.txt"
for scheme in default w8a8; do
    target/release/autoneural quantize --model tests/golden/text_one_token/model \
        --calibration "$Q/calib" --scheme "$scheme" --rounding nearest --out "$Q/q-$scheme" > /dev/null
    join_files "$SEEDS/quantized_loader/$scheme" "$Q/q-$scheme/config.json" "$Q/q-$scheme/graph.json" \
        "$Q/q-$scheme/quantized.safetensors"
done
rm -rf "$Q" "$SEP"

# ---- run
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
printf 'target\texecutions\tseconds\tcrashes\n' > "$SUMMARY"
for t in "${TARGETS[@]}"; do
    corpus="$OUT/corpus/$t"
    mkdir -p "$corpus"
    log "$t: up to $RUNS executions or $SECONDS_CAP s"
    rc=0
    cargo "${TC[@]}" fuzz run --fuzz-dir fuzz "$t" "$corpus" "$SEEDS/$t" -- \
        -runs="$RUNS" -max_total_time="$SECONDS_CAP" -rss_limit_mb=4096 -malloc_limit_mb=2048 \
        -timeout=20 -print_final_stats=1 > "$OUT/$t.log" 2>&1 || rc=$?
    execs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$OUT/$t.log" | grep -oE '[0-9]+$' | tail -1)"
    secs="$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$OUT/$t.log" | grep -oE 'in [0-9]+' | grep -oE '[0-9]+' | tail -1)"
    crashes=0
    [ "$rc" = 0 ] || crashes=1
    printf '%s\t%s\t%s\t%s\n' "$t" "${execs:-?}" "${secs:-?}" "$crashes" >> "$SUMMARY"
    if [ "$rc" != 0 ]; then
        log "$t: FAILED (exit $rc); the reproducer is in fuzz/artifacts/$t, the log in $OUT/$t.log"
    else
        log "$t: ${execs:-?} executions in ${secs:-?} s, no crash"
    fi
done
column -t "$SUMMARY" >&2
