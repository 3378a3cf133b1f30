#!/usr/bin/env bash
# Builds PAL (running scripts/setup.sh first, which installs what is missing) and runs the
# tests with CTest. Labels: unit, parity, e2e, slow.
#
#   scripts/test.sh                    Debian flavour, every label
#   scripts/test.sh -L unit            only the unit label (any ctest -L regex)
#   scripts/test.sh --torch pip        against PyPI's torch wheel (LibTorch 2.x with CUDA)
#   scripts/test.sh --sanitize         ASan + UBSan build (build/sanitize); default label: unit
#   scripts/test.sh --fuzz [SECONDS]   libFuzzer targets with clang, SECONDS each (default 60)
#   scripts/test.sh -- ARGS...         extra arguments for ctest (e.g. -R Config --output-on-failure)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
setup_args=()
label=""
fuzz=0
fuzz_seconds=60
sanitize=0
ctest_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) setup_args+=(--torch "${2:?--torch needs debian or pip}"); shift 2 ;;
    --torch=*) setup_args+=("$1"); shift ;;
    --sanitize) sanitize=1; setup_args+=(--sanitize); shift ;;
    -L|--label) label=${2:?-L needs a label}; shift 2 ;;
    --fuzz)
      fuzz=1; shift
      if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then fuzz_seconds=$1; shift; fi ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; ctest_extra=("$@"); break ;;
    *) echo "test.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "test.sh: $*" >&2; }

if [ "$fuzz" = 1 ]; then
  # libFuzzer comes with clang's runtime; the parsers under test need no LibTorch.
  "$root/scripts/setup.sh" --no-build
  need=()
  for p in clang libclang-rt-14-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { log "install as root: apt-get install -y ${need[*]}"; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  build=$root/build/fuzz
  cmake -S "$root" -B "$build" -G Ninja -DPAL_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build"
  failed=0
  for target in fuzz_safetensors_header fuzz_config; do
    corpus_name=${target#fuzz_}; corpus_name=${corpus_name%_header}
    seeds=$root/tests/fuzz/corpus/$corpus_name
    work=$build/corpus-$corpus_name; mkdir -p "$work" "$build/crashes"
    log "fuzzing $target for ${fuzz_seconds}s (seeds: tests/fuzz/corpus/$corpus_name)"
    if "$build/$target" "$work" "$seeds" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
         -artifact_prefix="$build/crashes/$target-" -print_final_stats=1 >"$build/$target.log" 2>&1; then
      log "$target: $(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$build/$target.log" | grep -Eo '[0-9]+') inputs, no failure"
    else
      failed=1; tail -40 "$build/$target.log" >&2; log "$target FAILED: reproducer in $build/crashes/"
    fi
  done
  exit $failed
fi

# Set before the build too: test discovery runs the instrumented test binary.
if [ "$sanitize" = 1 ]; then
  [ -n "$label" ] || label=unit
  # LibTorch itself is not instrumented and keeps allocations alive to the end of the
  # process by design; leak reports are limited to PAL's own code by the suppressions.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/sanitizer/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi

# A label run that needs neither the CUDA tests nor the packaging test builds only the test
# executable and the tools it runs (not pal-bench, pal_cuda_tests): less to compile in CI.
if [ -n "$label" ] && ! [[ "$label" =~ cuda|e2e ]]; then setup_args+=(--targets pal_tests); fi
"$root/scripts/setup.sh" "${setup_args[@]}"
build=$("$root/scripts/setup.sh" "${setup_args[@]}" --print-build-dir)

args=(--test-dir "$build" --output-on-failure -j "$(nproc)")
[ -n "$label" ] && args+=(-L "$label")
log "running ctest in $build${label:+ (label $label)}"
ctest "${args[@]}" "${ctest_extra[@]}"
