#!/usr/bin/env bash
# Peer comparison: our engine side by side with llama.cpp (llama-bench) and PyTorch, on this machine.
#
#   bash bench/peers.sh [OUTDIR]
#
# Everything downloaded or built goes to a cache outside the repository
# ($AUTONEURAL_PEER_CACHE, default $HOME/.cache/autoneural-peers); nothing from llama.cpp is vendored:
#   venv/            python3 -m venv + bench/requirements.txt (torch, timm, transformers, gguf, cmake, ninja, ...)
#   src/             llama_cpp_python-0.3.36 sdist from PyPI; its vendor/llama.cpp tree is what gets built
#   llama.cpp-build/ cmake Release, GGML_NATIVE=ON, GGML_OPENMP=ON; only llama-bench and llama-quantize
#   models/          random-weight HF checkpoint (bench/make_lfm2_checkpoint.py) and its F16/Q4_0/Q8_0 GGUFs
# The first run takes a while (venv ~3 min, llama.cpp build ~6 min on 2 idle cores, checkpoint + GGUFs ~1 min);
# later runs reuse the cache and only benchmark.
#
# Benchmarks, alternated back to back for PEERS_ROUNDS rounds (2-thread DRAM bandwidth on this machine
# changes from minute to minute, so every comparison is interleaved within a round):
#   LM:     llama-bench -p 512 -n 128 -r 1 -o json  (Q4_0, Q8_0)   vs  autoneural bench lm (w4a16 w8a16 w4a8 float)
#           at 1 and 2 threads
#   vision: PyTorch fp32 timm mobilenetv5_300m_enc 768x768 (bench/torch_vision.py)
#                                                           vs  autoneural bench vision (float w8a16 w8a8), 2 threads
# Then bench/compare.py writes OUTDIR/peers.md and OUTDIR/peers.json (medians, ratios, versions, commands).
#
# Knobs (environment):
#   AUTONEURAL           our binary (default: target/release/autoneural in the repository)
#   PEERS_SIZE           1.2b (default) or 350m          PEERS_TINY=1   smoke test: tiny model, short runs
#   PEERS_ROUNDS         rounds (default 3)              PEERS_THREADS  LM thread counts (default "1 2")
#   PEERS_PROMPT/DECODE  512 / 128                       PEERS_PRECISIONS  "w4a16 w8a16 w4a8 float"
#   PEERS_LLAMA_TYPES    "Q4_0 Q8_0" (F16 also possible)
#   PEERS_VISION_SIZE    768    PEERS_VISION_THREADS 2    PEERS_VISION_PRECISIONS "float w8a16 w8a8"
#   PEERS_VISION_RUNS    timed runs per PyTorch invocation (default 5, after 2 warmups)
#   PEERS_SKIP_LM=1 / PEERS_SKIP_VISION=1 / PEERS_SKIP_OURS=1
#   PEERS_OURS_TIMEOUT   seconds per autoneural invocation (default 1800)
#   PEERS_OURS_THREADS_FLAG  our thread-count flag (default --threads)
#   PEERS_WAIT_IDLE      before each run, wait up to this many seconds for the machine to be idle for
#                        PEERS_IDLE_WINDOW s in a row (default 300 and 8; 0 = never wait);
#                        PEERS_IDLE_THRESHOLD: "idle" = other processes use < 0.1 cores
#   PEERS_RETRY_BUSY     re-measure a run up to this many times when other processes used >= the threshold
#                        during it (default 2); the least disturbed attempt is kept, and flagged in the
#                        report if it was still disturbed
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$REPO/bench"
CACHE="${AUTONEURAL_PEER_CACHE:-$HOME/.cache/autoneural-peers}"
STAMP_UTC="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${1:-$CACHE/runs/$STAMP_UTC}"
AUTONEURAL="${AUTONEURAL:-$REPO/target/release/autoneural}"

LLAMA_PY_VERSION=0.3.36
SDIST="llama_cpp_python-$LLAMA_PY_VERSION"
TREE="$CACHE/src/$SDIST/vendor/llama.cpp"
BUILD="$CACHE/llama.cpp-build"
VENV="$CACHE/venv"
PY="$VENV/bin/python"

TINY="${PEERS_TINY:-0}"
if [ "$TINY" = 1 ]; then
    SIZE=tiny
    ROUNDS="${PEERS_ROUNDS:-1}"
    PROMPT="${PEERS_PROMPT:-64}"
    DECODE="${PEERS_DECODE:-16}"
    VISION_SIZE="${PEERS_VISION_SIZE:-256}"
    VISION_RUNS="${PEERS_VISION_RUNS:-2}"
else
    SIZE="${PEERS_SIZE:-1.2b}"
    ROUNDS="${PEERS_ROUNDS:-3}"
    PROMPT="${PEERS_PROMPT:-512}"
    DECODE="${PEERS_DECODE:-128}"
    VISION_SIZE="${PEERS_VISION_SIZE:-768}"
    VISION_RUNS="${PEERS_VISION_RUNS:-5}"
fi
THREADS="${PEERS_THREADS:-1 2}"
PRECISIONS="${PEERS_PRECISIONS:-w4a16 w8a16 w4a8 float}"
LLAMA_TYPES="${PEERS_LLAMA_TYPES:-Q4_0 Q8_0}"
VISION_THREADS="${PEERS_VISION_THREADS:-2}"
VISION_PRECISIONS="${PEERS_VISION_PRECISIONS:-float w8a16 w8a8}"
OURS_TIMEOUT="${PEERS_OURS_TIMEOUT:-1800}"
OURS_THREADS_FLAG="${PEERS_OURS_THREADS_FLAG:---threads}"
WAIT_IDLE="${PEERS_WAIT_IDLE:-300}"
IDLE_THRESHOLD="${PEERS_IDLE_THRESHOLD:-0.1}"
IDLE_WINDOW="${PEERS_IDLE_WINDOW:-8}"
RETRY_BUSY="${PEERS_RETRY_BUSY:-2}"

MODELS="$CACHE/models"
CKPT="$MODELS/lfm2-$SIZE-rand"
GGUF_PREFIX="$MODELS/lfm2-$SIZE-rand"

log() { printf '[peers %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

mkdir -p "$CACHE" "$OUT/raw"
OUT="$(cd "$OUT" && pwd)"
CMDS="$OUT/commands.txt"
: > "$CMDS"
record() { printf '%s\n' "$*" >> "$CMDS"; }   # the exact commands, for the report
T_START=$(date +%s)

# ---------------------------------------------------------------- venv
setup_venv() {
    local want; want="$(sha "$BENCH/requirements.txt")"
    if [ -x "$PY" ] && [ "$(cat "$VENV/.autoneural-stamp" 2>/dev/null)" = "$want" ]; then return; fi
    log "creating venv $VENV (bench/requirements.txt)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r "$BENCH/requirements.txt"
    echo "$want" > "$VENV/.autoneural-stamp"
}

# ---------------------------------------------------------------- llama.cpp source (PyPI sdist)
fetch_llama_src() {
    [ -f "$TREE/CMakeLists.txt" ] && return
    log "downloading the $SDIST sdist from PyPI (vendors the llama.cpp tree)"
    mkdir -p "$CACHE/src"
    # --no-binary only for this package: with ':all:' pip would also build cmake/ninja from source
    # just to prepare the sdist's metadata.
    (cd "$CACHE/src" && "$VENV/bin/pip" download -q --no-binary llama_cpp_python --no-deps \
        "llama_cpp_python==$LLAMA_PY_VERSION" -d .)
    tar -xzf "$CACHE/src/$SDIST.tar.gz" -C "$CACHE/src"
    [ -f "$TREE/CMakeLists.txt" ] || die "no llama.cpp tree in $SDIST"
}

cpu_id() { # the VM can move between hosts (Zen 4 / Zen 5): -march=native builds are tied to the CPU
    local fam model flags
    fam="$(grep -m1 '^cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')"
    model="$(grep -m1 '^model[[:space:]]' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')"
    flags="$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | sort | tr -d '\n' | sha256sum | cut -c1-8)"
    echo "family$fam-model$model-flags$flags"
}

llama_commit() {
    # the sdist carries no git metadata; its CHANGELOG names the llama.cpp commit it vendors
    grep -m1 -oE 'ggml-org/llama\.cpp@[0-9a-f]+' "$CACHE/src/$SDIST/CHANGELOG.md" | cut -d@ -f2
}

# ---------------------------------------------------------------- llama.cpp build
build_llama() {
    # GGML_NATIVE compiles for the CPU it is built on: rebuild when the VM's CPU changed
    local cfg="Release NATIVE=ON OPENMP=ON shared tree=$SDIST cpu=$(cpu_id)"
    if [ -x "$BUILD/bin/llama-bench" ] && [ -x "$BUILD/bin/llama-quantize" ] \
        && [ "$(cat "$BUILD/.autoneural-stamp" 2>/dev/null)" = "$cfg" ]; then return; fi
    local commit; commit="$(llama_commit)"
    command -v g++ > /dev/null || die "g++ is needed to build llama.cpp (apt-get install g++)"
    log "building llama.cpp $commit (llama-bench, llama-quantize) niced -> $BUILD; log: $CACHE/build.log"
    rm -rf "$BUILD"
    local t0; t0=$(date +%s)
    {
        PATH="$VENV/bin:$PATH" nice -n 19 cmake -S "$TREE" -B "$BUILD" -G Ninja \
            -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=ON \
            -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
            -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMIT="$commit" -DLLAMA_BUILD_NUMBER=1 \
            -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$BUILD/bin" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$BUILD/bin"
        PATH="$VENV/bin:$PATH" nice -n 19 cmake --build "$BUILD" --config Release -j "$(nproc)" \
            --target llama-bench llama-quantize
    } > "$CACHE/build.log" 2>&1 || die "llama.cpp build failed, see $CACHE/build.log"
    echo "$(( $(date +%s) - t0 ))" > "$BUILD/.build-seconds"
    echo "$cfg" > "$BUILD/.autoneural-stamp"
    log "llama.cpp built in $(cat "$BUILD/.build-seconds") s"
}

# ---------------------------------------------------------------- model: HF checkpoint -> GGUF
make_models() {
    local want; want="$(sha "$BENCH/make_lfm2_checkpoint.py")"
    local sizeflag=(--size "$SIZE"); [ "$SIZE" = tiny ] && sizeflag=(--tiny)
    if [ "$(cat "$CKPT/.autoneural-stamp" 2>/dev/null)" != "$want" ]; then
        log "writing the random-weight LFM2-$SIZE checkpoint -> $CKPT"
        rm -rf "$CKPT" "$GGUF_PREFIX"-*.gguf
        "$PY" "$BENCH/make_lfm2_checkpoint.py" "${sizeflag[@]}" --out "$CKPT"
        echo "$want" > "$CKPT/.autoneural-stamp"
    fi
    record "$PY bench/make_lfm2_checkpoint.py ${sizeflag[*]} --out $CKPT"
    local f16="$GGUF_PREFIX-F16.gguf"
    if [ ! -s "$f16" ]; then
        log "converting to GGUF F16 with the tree's convert_hf_to_gguf.py (get_vocab_base_pre -> \"lfm2\")"
        # The synthetic tokenizer has no registered pre-tokenizer hash, so the one monkeypatch is the
        # pre-tokenizer name; everything else is the unmodified converter of the same tree.
        { "$PY" - "$TREE" "$CKPT" "$f16.tmp" <<'EOF'
import sys
tree, ckpt, out = sys.argv[1:4]
sys.path.insert(0, tree)
sys.argv = [f"{tree}/convert_hf_to_gguf.py", ckpt, "--outtype", "f16", "--outfile", out]
import convert_hf_to_gguf as conv
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "lfm2"
conv.main()
EOF
        } > "$MODELS/convert-$SIZE.log" 2>&1 || die "convert_hf_to_gguf.py failed, see $MODELS/convert-$SIZE.log"
        mv "$f16.tmp" "$f16"
    fi
    record "python convert_hf_to_gguf.py $CKPT --outtype f16 --outfile $f16   # TextModel.get_vocab_base_pre -> \"lfm2\""
    local q
    for q in $LLAMA_TYPES; do
        [ "$q" = F16 ] && continue
        if [ ! -s "$GGUF_PREFIX-$q.gguf" ]; then
            log "llama-quantize -> $q"
            LD_LIBRARY_PATH="$BUILD/bin" "$BUILD/bin/llama-quantize" "$f16" "$GGUF_PREFIX-$q.gguf.tmp" "$q" 2 \
                > "$MODELS/quantize-$SIZE-$q.log" 2>&1 || die "llama-quantize $q failed, see $MODELS/quantize-$SIZE-$q.log"
            mv "$GGUF_PREFIX-$q.gguf.tmp" "$GGUF_PREFIX-$q.gguf"
        fi
        record "llama-quantize $f16 $GGUF_PREFIX-$q.gguf $q 2"
    done
}

# ---------------------------------------------------------------- runners
# Every run goes through bench/measure.py, which first waits (up to PEERS_WAIT_IDLE s) for the machine
# to be idle and then records how much CPU other processes used during the run (OUT/raw/<name>.load.json).
# A run writes OUT/raw/<name>.json (the tool's own JSON on success) or OUT/raw/<name>.err.json
# ({"error": ..., "exit_code": ..., "command": ...}) plus OUT/raw/<name>.log (its stderr).
write_err() { # file message exit_code command
    "$PY" -c 'import json,sys; json.dump({"error": sys.argv[2], "exit_code": int(sys.argv[3]), "command": sys.argv[4]}, open(sys.argv[1], "w"))' "$@"
}

measured() { # name timeout cmd... -> exit code of cmd; stdout in raw/<name>.stdout
    # Re-measures up to PEERS_RETRY_BUSY times when other processes used >= PEERS_IDLE_THRESHOLD cores
    # during the run, and keeps the least disturbed attempt.
    local name=$1 to=$2; shift 2
    local rc attempt=0 f best_rc=0 best=""
    local files=(stdout log load.json)
    while :; do
        rc=0
        "$PY" "$BENCH/measure.py" --stdout "$OUT/raw/$name.stdout" --stderr "$OUT/raw/$name.log" \
            --load "$OUT/raw/$name.load.json" --timeout "$to" --wait-idle "$WAIT_IDLE" \
            --idle-threshold "$IDLE_THRESHOLD" --idle-window "$IDLE_WINDOW" -- "$@" || rc=$?
        f="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["foreign_cores"])' \
            "$OUT/raw/$name.load.json" 2>/dev/null || echo 0)"
        if [ -z "$best" ] || "$PY" -c "import sys; sys.exit(0 if $f < $best else 1)"; then
            best=$f; best_rc=$rc
            for x in "${files[@]}"; do cp "$OUT/raw/$name.$x" "$OUT/raw/$name.best.$x" 2>/dev/null || true; done
        fi
        if "$PY" -c "import sys; sys.exit(0 if $f >= $IDLE_THRESHOLD else 1)" && [ "$attempt" -lt "$RETRY_BUSY" ]; then
            attempt=$((attempt + 1))
            log "  other processes used $f cores during $name; measuring it again (retry $attempt of $RETRY_BUSY)"
            continue
        fi
        break
    done
    for x in "${files[@]}"; do
        if [ -f "$OUT/raw/$name.best.$x" ]; then mv "$OUT/raw/$name.best.$x" "$OUT/raw/$name.$x"; fi
    done
    if "$PY" -c "import sys; sys.exit(0 if $best >= $IDLE_THRESHOLD else 1)"; then
        log "  WARNING: other processes used $best cores during $name (least disturbed of $((attempt + 1)) attempts; flagged in the report)"
    fi
    echo "$attempt" > "$OUT/raw/$name.retries"
    return "$best_rc"
}

run_llama() { # round type threads
    local r=$1 q=$2 t=$3 name="r$1-llama-$2-t$3"
    local cmd=("$BUILD/bin/llama-bench" -m "$GGUF_PREFIX-$q.gguf" -t "$t" -p "$PROMPT" -n "$DECODE" -r 1 -o json)
    [ "$r" = 1 ] && record "LD_LIBRARY_PATH=$BUILD/bin ${cmd[*]}"
    log "round $r: llama.cpp $q t=$t"
    local rc=0
    LD_LIBRARY_PATH="$BUILD/bin" measured "$name" 1800 "${cmd[@]}" || rc=$?
    if [ "$rc" = 0 ] && "$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' "$OUT/raw/$name.stdout" 2>/dev/null; then
        mv "$OUT/raw/$name.stdout" "$OUT/raw/$name.json"
    else
        write_err "$OUT/raw/$name.err.json" "llama-bench failed, exit code $rc (see $name.log)" "$rc" "${cmd[*]}"
        log "  llama-bench FAILED (exit $rc), see $OUT/raw/$name.log"
    fi
}

OURS_OK=1
run_ours() { # name args...
    local name=$1; shift
    local cmd=("$AUTONEURAL" "$@")
    if [ "${PEERS_SKIP_OURS:-0}" = 1 ]; then return; fi
    if [ ! -x "$AUTONEURAL" ]; then
        write_err "$OUT/raw/$name.err.json" "binary not found: $AUTONEURAL (build it with cargo build --release, or set AUTONEURAL=)" 127 "${cmd[*]}"
        OURS_OK=0; return
    fi
    log "  ours: ${*}"
    local rc=0
    measured "$name" "$OURS_TIMEOUT" "${cmd[@]}" || rc=$?
    # the result is the last stdout line that parses as a JSON object (or all of stdout)
    if [ "$rc" = 0 ] && "$PY" - "$OUT/raw/$name.stdout" "$OUT/raw/$name.json" <<'EOF'
import json, sys
obj = None
text = open(sys.argv[1]).read()
for line in text.splitlines():
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            pass
if obj is None:
    try:
        obj = json.loads(text)
    except ValueError:
        sys.exit(1)
json.dump(obj, open(sys.argv[2], "w"))
EOF
    then
        rm -f "$OUT/raw/$name.stdout"
    else
        local why="exit code $rc"
        [ "$rc" = 124 ] && why="timed out after ${OURS_TIMEOUT}s"
        [ "$rc" = 0 ] && why="exit code 0 but no JSON object on stdout"
        local tailmsg; tailmsg="$(tail -c 600 "$OUT/raw/$name.log" | tr '\n' ' ')"
        [ -n "$tailmsg" ] || tailmsg="(nothing on stderr)"
        write_err "$OUT/raw/$name.err.json" "autoneural failed: $why: $tailmsg" "$rc" "${cmd[*]}"
        log "  ours FAILED ($why): $(tail -n 2 "$OUT/raw/$name.log" | tr '\n' ' ' | cut -c1-300)"
        OURS_OK=0
    fi
}

run_torch_vision() { # round
    local r=$1 name="r$1-torch-vision"
    local cmd=("$PY" "$BENCH/torch_vision.py" --image-size "$VISION_SIZE" --threads "$VISION_THREADS"
               --warmup 2 --runs "$VISION_RUNS")
    [ "$r" = 1 ] && record "${cmd[*]}"
    log "round $r: PyTorch vision ${VISION_SIZE}px t=$VISION_THREADS"
    local rc=0
    measured "$name" 1800 "${cmd[@]}" || rc=$?
    if [ "$rc" = 0 ]; then
        mv "$OUT/raw/$name.stdout" "$OUT/raw/$name.json"
    else
        write_err "$OUT/raw/$name.err.json" "torch_vision.py failed, exit code $rc (see $name.log)" "$rc" "${cmd[*]}"
        log "  PyTorch vision FAILED (exit $rc), see $OUT/raw/$name.log"
    fi
}

peer_of() { # our LM precision -> the llama.cpp format it is compared with
    case "$1" in
        w4*) echo Q4_0 ;;
        w8*) echo Q8_0 ;;
        float) if [[ " $LLAMA_TYPES " == *" F16 "* ]]; then echo F16; else echo Q8_0; fi ;;
        *) echo Q8_0 ;;
    esac
}

# ---------------------------------------------------------------- main
on_signal() {
    trap - TERM INT
    log "interrupted (signal); writing a partial report from the runs finished so far"
    [ -f "$OUT/meta.json" ] && "$PY" "$BENCH/compare.py" "$OUT" > /dev/null 2>&1 || true
    log "partial report: $OUT/peers.md"
    exit 143
}
trap on_signal TERM INT

log "output: $OUT   cache: $CACHE   size: $SIZE   rounds: $ROUNDS"
setup_venv
fetch_llama_src
build_llama
[ "${PEERS_STOP_AFTER:-}" = build ] && { log "stopping after the llama.cpp build (PEERS_STOP_AFTER=build)"; exit 0; }
[ "${PEERS_SKIP_LM:-0}" = 1 ] || make_models
[ "${PEERS_STOP_AFTER:-}" = models ] && { log "stopping after the models (PEERS_STOP_AFTER=models)"; exit 0; }
T_BENCH=$(date +%s)

if [ "${PEERS_SKIP_OURS:-0}" != 1 ] && [ ! -x "$AUTONEURAL" ]; then
    log "WARNING: our engine binary $AUTONEURAL does not exist; only the peers will be measured"
fi

# meta.json: what compare.py needs besides the raw results
"$PY" - "$OUT/meta.json" <<EOF
import json, sys
json.dump({
    "started_utc": "$STAMP_UTC", "size": "$SIZE", "tiny": "$TINY" == "1", "rounds": $ROUNDS,
    "threads": "$THREADS".split(), "prompt": $PROMPT, "decode": $DECODE,
    "precisions": "$PRECISIONS".split(), "llama_types": "$LLAMA_TYPES".split(),
    "vision_size": $VISION_SIZE, "vision_threads": $VISION_THREADS, "vision_runs": $VISION_RUNS,
    "vision_precisions": "$VISION_PRECISIONS".split(),
    "autoneural": "$AUTONEURAL", "repo": "$REPO", "cache": "$CACHE", "checkpoint": "$CKPT",
    "llama_cpp_python": "$LLAMA_PY_VERSION", "llama_commit": "$(llama_commit)",
    "llama_build_seconds": "$(cat "$BUILD/.build-seconds" 2>/dev/null || echo)",
    "cpu_id": "$(cpu_id)", "llama_build_cpu": "$(sed -n 's/.*cpu=//p' "$BUILD/.autoneural-stamp" 2>/dev/null)",
    "llama_build_flags": "CMAKE_BUILD_TYPE=Release GGML_NATIVE=ON GGML_OPENMP=ON BUILD_SHARED_LIBS=ON LLAMA_CURL=OFF LLAMA_OPENSSL=OFF",
    "git_head": "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)",
    "git_dirty": "$(git -C "$REPO" status --porcelain -- src Cargo.toml 2>/dev/null | head -c 1)" != "",
}, open(sys.argv[1], "w"), indent=1)
EOF

if [ "${PEERS_SKIP_LM:-0}" != 1 ]; then
    for r in $(seq 1 "$ROUNDS"); do
        for t in $THREADS; do
            # each llama.cpp format is followed right away by the precisions compared with it
            # (Q4_0: w4*, Q8_0: w8* and float); precisions without a matching format run at the end
            for q in $LLAMA_TYPES "-"; do
                [ "$q" = "-" ] || run_llama "$r" "$q" "$t"
                for p in $PRECISIONS; do
                    g="$(peer_of "$p")"
                    if [ "$g" = "$q" ] || { [ "$q" = "-" ] && ! [[ " $LLAMA_TYPES " == *" $g "* ]]; }; then
                        run_ours "r$r-ours-lm-$p-t$t" bench lm --checkpoint "$CKPT" --precision "$p" "$OURS_THREADS_FLAG" "$t" \
                            --prompt "$PROMPT" --decode "$DECODE" --json
                        [ "$r" = 1 ] && record "$AUTONEURAL bench lm --checkpoint $CKPT --precision $p $OURS_THREADS_FLAG $t --prompt $PROMPT --decode $DECODE --json"
                    fi
                done
            done
        done
    done
fi

if [ "${PEERS_SKIP_VISION:-0}" != 1 ]; then
    for r in $(seq 1 "$ROUNDS"); do
        run_torch_vision "$r"
        for p in $VISION_PRECISIONS; do
            run_ours "r$r-ours-vision-$p" bench vision --image-size "$VISION_SIZE" --precision "$p" \
                "$OURS_THREADS_FLAG" "$VISION_THREADS" --json
            [ "$r" = 1 ] && record "$AUTONEURAL bench vision --image-size $VISION_SIZE --precision $p $OURS_THREADS_FLAG $VISION_THREADS --json"
        done
    done
fi

T_END=$(date +%s)
echo "{\"setup_seconds\": $((T_BENCH - T_START)), \"bench_seconds\": $((T_END - T_BENCH))}" > "$OUT/timing.json"
"$PY" "$BENCH/compare.py" "$OUT"
[ "$OURS_OK" = 1 ] || log "NOTE: some autoneural runs failed; their errors are in $OUT/raw/*.err.json and in the report"
log "done in $((T_END - T_START)) s (benchmarks $((T_END - T_BENCH)) s): $OUT/peers.md"
