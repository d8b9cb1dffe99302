#!/usr/bin/env bash
# The runtime's CI: build and test the C runtime several ways (run from anywhere; works from the repo root).
#
#   runtime/ci.sh [--no-cross] [--no-sanitize]
#
#   1. native   make WERROR=1 into runtime/build; test_reader + test_kernels (auto kernel, then
#               REELPACK_NO_SIMD=1), the export list of libreelpack.so, an rp-rank smoke test
#   2. asan     SANITIZE=1 (ASan + UBSan) into runtime/build-asan; the same tests and smoke test
#   3. clang    when clang is installed: CC=clang WERROR=1 into runtime/build-clang; the tests
#      cmake    when cmake is installed: CMakeLists.txt into runtime/build-cmake; ctest
#   4. aarch64  when aarch64-linux-gnu-gcc and qemu-aarch64 are installed: CROSS=aarch64-linux-gnu-
#               STATIC=1 into runtime/build-aarch64; the tests and smoke test under qemu-aarch64
#               (test_kernels covers the NEON and portable paths), and the stripped aarch64 sizes
#
# Exits nonzero on the first failure. Prints the time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RT=$ROOT/runtime
JOBS=$(nproc 2>/dev/null || echo 2)
CROSS_ON=1
SANITIZE_ON=1
for arg in "$@"; do
    case "$arg" in
        --no-cross) CROSS_ON=0 ;;
        --no-sanitize) SANITIZE_ON=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "runtime/ci.sh: unknown argument '$arg' (use --no-cross, --no-sanitize)" >&2; exit 2 ;;
    esac
done

STEP=""
T_ALL=$(date +%s%N)
T_STEP=$T_ALL
trap 'rc=$?; if [ "$rc" -ne 0 ]; then echo "runtime/ci.sh: FAILED in step: ${STEP:-setup} (exit $rc)" >&2; fi' EXIT
secs() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
begin() { STEP=$1; T_STEP=$(date +%s%N); echo "==> runtime ci: $1"; }
end() { echo "<== runtime ci: $STEP ok ($(secs "$T_STEP") s)"; }
mk() { make -C "$RT" -j"$JOBS" --no-print-directory "$@"; }

# Binary packs from the golden vectors (hex text), plus hostile files, for the rp-rank smoke test.
SMOKE=$RT/build/smoke
make_smoke_inputs() {
    rm -rf "$SMOKE"
    mkdir -p "$SMOKE"
    local hex
    for hex in "$ROOT"/tests/format/vectors/*.hex; do
        local out="$SMOKE/$(basename "$hex" .hex).rpk"
        if command -v python3 >/dev/null 2>&1; then
            python3 -c 'import sys; open(sys.argv[2], "wb").write(bytes.fromhex(open(sys.argv[1]).read()))' "$hex" "$out"
        elif command -v xxd >/dev/null 2>&1; then
            xxd -r -p "$hex" > "$out"
        else
            echo "runtime/ci.sh: neither python3 nor xxd: cannot decode the golden vectors" >&2
            return 1
        fi
    done
    head -c 100 "$SMOKE/pq_two_layers_parity.rpk" > "$SMOKE/cut.rpk"
    head -c 4000 /dev/zero | tr '\0' 'x' > "$SMOKE/garbage.rpk"
    { printf 'RPAK\r\n\032\n'; head -c 2000 /dev/zero | tr '\0' '\377'; } > "$SMOKE/magic_garbage.rpk"
    : > "$SMOKE/empty.rpk"
    # one byte of the last block flipped (the codes end just before the trailing sections)
    cp "$SMOKE/sq8_one_layer.rpk" "$SMOKE/flipped.rpk"
    printf '\xff' | dd of="$SMOKE/flipped.rpk" bs=1 seek=300 conv=notrunc status=none
    # two queries of dim 4 (little-endian float32)
    printf '\x00\x00\x80\x3f\x00\x00\x00\x3f\x00\x00\x80\xbf\x00\x00\x00\x40\x00\x00\x80\xbf\x00\x00\x00\x00\x00\x00\x40\x40\x00\x00\x00\x00' > "$SMOKE/q4.f32"
    printf '\x00\x00\x80\x3f\x00\x00\x00' > "$SMOKE/q_bad.f32"
}

# rp-rank smoke test: $1 = build folder, rest = runner prefix (qemu) or nothing.
smoke() {
    local bin=$1/rp-rank
    shift
    local run=("$@")
    local out T=$'\t'
    "${run[@]}" "$bin" --version
    "${run[@]}" "$bin" --help > /dev/null
    # --check: one line per file, exit 0, never a crash
    out=$("${run[@]}" "$bin" --check "$SMOKE"/*.rpk 2>/dev/null)
    echo "$out" | sed "s|$SMOKE/||"
    [ "$(echo "$out" | wc -l)" -eq "$(ls "$SMOKE"/*.rpk | wc -l)" ] || { echo "rp-rank --check: wrong line count" >&2; return 1; }
    grep -q "sq8_one_layer.rpk${T}OK${T}n_items=6${T}layers=1${T}truncated=0${T}section_problems=0${T}bad=${T}status=RP_OK" <<< "$out" \
        || { echo "rp-rank --check: sq8_one_layer.rpk not OK" >&2; return 1; }
    grep -q "pq_two_layers_parity.rpk${T}OK${T}n_items=9${T}layers=2${T}" <<< "$out" || { echo "rp-rank --check: pq_two_layers_parity.rpk not OK" >&2; return 1; }
    grep -q "garbage.rpk${T}OPEN_FAIL${T}RP_E_" <<< "$out" || { echo "rp-rank --check: garbage.rpk opened" >&2; return 1; }
    grep -q "empty.rpk${T}OPEN_FAIL${T}RP_E_" <<< "$out" || { echo "rp-rank --check: empty.rpk opened" >&2; return 1; }
    # ranking: two queries, k=3 -> 6 lines; JSON; a bench; errors exit 1 (runtime) or 2 (usage)
    out=$("${run[@]}" "$bin" "$SMOKE/sq8_one_layer.rpk" "$SMOKE/q4.f32" -k 3 --exclude 7)
    echo "$out"
    [ "$(echo "$out" | wc -l)" -eq 6 ] || { echo "rp-rank: expected 6 result lines" >&2; return 1; }
    if echo "$out" | awk '$3 == 7' | grep -q .; then echo "rp-rank: excluded id 7 returned" >&2; return 1; fi
    out=$("${run[@]}" "$bin" "$SMOKE/pq_two_layers_parity.rpk" "$SMOKE/q4.f32" -k 2 --layer 1 --json)
    echo "$out"
    if command -v python3 >/dev/null 2>&1; then
        echo "$out" | python3 -c 'import json, sys; d = json.load(sys.stdin); assert len(d["queries"]) == 2 and all(len(q["ids"]) == 2 for q in d["queries"]), d'
    fi
    "${run[@]}" "$bin" "$SMOKE/sq8_one_layer.rpk" "$SMOKE/q4.f32" -k 2 --bench 20
    local rc
    rc=0; "${run[@]}" "$bin" "$SMOKE/sq8_one_layer.rpk" "$SMOKE/q_bad.f32" 2>/dev/null || rc=$?
    [ "$rc" -eq 1 ] || { echo "rp-rank: a bad query file gave exit $rc, not 1" >&2; return 1; }
    rc=0; "${run[@]}" "$bin" "$SMOKE/sq8_one_layer.rpk" "$SMOKE/q4.f32" -k 7 2>/dev/null || rc=$?
    [ "$rc" -eq 1 ] || { echo "rp-rank: k > n_items gave exit $rc, not 1" >&2; return 1; }
    rc=0; "${run[@]}" "$bin" "$SMOKE/cut.rpk" "$SMOKE/q4.f32" 2>/dev/null || rc=$?
    [ "$rc" -eq 1 ] || { echo "rp-rank: a cut pack gave exit $rc, not 1" >&2; return 1; }
    rc=0; "${run[@]}" "$bin" --no-such-option 2>/dev/null || rc=$?
    [ "$rc" -eq 2 ] || { echo "rp-rank: a usage error gave exit $rc, not 2" >&2; return 1; }
    echo "rp-rank smoke test ok"
}

# ---- 1. native (-Werror) ---------------------------------------------------------------------------
begin "native build (WERROR=1) + tests"
cc_name=$(${CC:-cc} --version 2>/dev/null | head -n 1 || true)
echo "compiler: ${CC:-cc}: $cc_name; jobs: $JOBS"
mk WERROR=1 all
mk WERROR=1 test
REELPACK_NO_SIMD=1 mk WERROR=1 test
mk WERROR=1 check-exports
make_smoke_inputs
smoke "$RT/build"
end

# ---- 2. ASan + UBSan ------------------------------------------------------------------------------
if [ "$SANITIZE_ON" = 1 ]; then
    begin "ASan+UBSan build (SANITIZE=1) + tests"
    export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    mk SANITIZE=1 WERROR=1 BUILD="$RT/build-asan" all
    mk SANITIZE=1 WERROR=1 BUILD="$RT/build-asan" test
    smoke "$RT/build-asan"
    end
fi

# ---- 3. clang (when installed) ------------------------------------------------------------------
if command -v clang >/dev/null 2>&1; then
    begin "clang build (WERROR=1) + tests"
    mk CC=clang WERROR=1 BUILD="$RT/build-clang" all
    mk CC=clang WERROR=1 BUILD="$RT/build-clang" test
    end
else
    echo "(runtime ci: clang not installed: clang build skipped)"
fi

# ---- 3b. CMake (when installed): the CMakeLists.txt build and its ctest run ----------------------
if command -v cmake >/dev/null 2>&1 && command -v ctest >/dev/null 2>&1; then
    begin "CMake build (REELPACK_WERROR=ON) + ctest"
    mkdir -p "$RT/build-cmake"
    cmake -S "$RT" -B "$RT/build-cmake" -DREELPACK_WERROR=ON > "$RT/build-cmake/configure.log" 2>&1 \
        || { cat "$RT/build-cmake/configure.log" >&2; exit 1; }
    cmake --build "$RT/build-cmake" -j "$JOBS"
    ctest --test-dir "$RT/build-cmake" --output-on-failure
    end
else
    echo "(runtime ci: cmake not installed: CMake build skipped)"
fi

# ---- 4. aarch64 cross build under qemu -----------------------------------------------------------
if [ "$CROSS_ON" = 1 ] && command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1; then
    begin "aarch64 cross build (CROSS=aarch64-linux-gnu- STATIC=1) + tests under qemu-aarch64"
    A64=$RT/build-aarch64
    mk CROSS=aarch64-linux-gnu- STATIC=1 WERROR=1 BUILD="$A64" all
    mk CROSS=aarch64-linux-gnu- STATIC=1 WERROR=1 BUILD="$A64" test
    mk CROSS=aarch64-linux-gnu- STATIC=1 BUILD="$A64" WERROR=1 check-exports
    file "$A64/rp-rank" 2>/dev/null || true
    smoke "$A64" qemu-aarch64 -L /usr/aarch64-linux-gnu
    mkdir -p "$A64/stripped"
    cp "$A64/libreelpack.so" "$A64/libreelpack.a" "$A64/stripped/"
    aarch64-linux-gnu-strip "$A64/stripped/libreelpack.so"
    aarch64-linux-gnu-strip --strip-unneeded "$A64/stripped/libreelpack.a"
    echo "aarch64 sizes (bytes):"
    echo "  libreelpack.so stripped: $(wc -c < "$A64/stripped/libreelpack.so")"
    echo "  libreelpack.a  stripped: $(wc -c < "$A64/stripped/libreelpack.a")"
    aarch64-linux-gnu-size -t "$A64/stripped/libreelpack.a" | sed 's/^/  /'
    end
elif [ "$CROSS_ON" = 1 ]; then
    echo "(runtime ci: aarch64-linux-gnu-gcc or qemu-aarch64 not installed: cross build skipped)"
fi

STEP=""
echo "runtime ci: all steps ok ($(secs "$T_ALL") s)"
