#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang in a build tree of their
# own and runs each for a bounded time over a copy of its seed corpus
# (fuzz/corpus/<target>/, which is never modified) with its dictionary.
# Prints the executions of each target and any finding; exits non-zero if a
# target found something (a crash, a sanitizer report, a failed oracle, a
# hang past FUZZ_UNIT_TIMEOUT) or if the build failed.
#
# Environment:
#   FUZZ_SECONDS       time per target in seconds (default 60)
#   FUZZ_TARGETS       which targets (default: "record duration config")
#   FUZZ_BUILD_DIR     build tree (default: build-fuzz, relative to the repo root)
#   FUZZ_OUT_DIR       where the run's corpora, logs and crash files go
#                      (default: $FUZZ_BUILD_DIR/fuzz-out, emptied first)
#   FUZZ_UNIT_TIMEOUT  seconds one input may take before it counts as a hang (default 10)
#   CLANG_CXX, CLANG_CC  compilers (default clang++-14, clang-14)
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-record duration config}
build_dir=${FUZZ_BUILD_DIR:-build-fuzz}
[[ "$build_dir" = /* ]] || build_dir="$repo/$build_dir"
out_dir=${FUZZ_OUT_DIR:-$build_dir/fuzz-out}
unit_timeout=${FUZZ_UNIT_TIMEOUT:-10}
cxx=${CLANG_CXX:-clang++-14}
cc=${CLANG_CC:-clang-14}

if ! command -v "$cxx" >/dev/null 2>&1 || ! command -v "$cc" >/dev/null 2>&1; then
  bash "$repo/scripts/setup.sh" || exit 1  # installs clang-14 and libclang-rt-14-dev
fi
for tool in "$cxx" "$cc"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fuzz.sh: $tool not found (scripts/setup.sh installs clang-14 and libclang-rt-14-dev)" >&2
    exit 1
  fi
done

launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

echo "==> fuzz: configure + build ($build_dir, $("$cxx" --version | head -1))"
mkdir -p "$build_dir"
cmake -S "$repo" -B "$build_dir" -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLEADER_BUILD_FUZZERS=ON -DLEADER_BUILD_TESTS=OFF \
  -DLEADER_BUILD_EXAMPLES=OFF -DLEADER_BUILD_TOOLS=OFF -DLEADER_WARNINGS_AS_ERRORS=ON -DLEADER_SANITIZE= \
  "${launcher[@]}" >"$build_dir/configure.log" 2>&1 || {
  cat "$build_dir/configure.log"
  echo "fuzz.sh: configure failed" >&2
  exit 1
}
cmake --build "$build_dir" -j"$(nproc 2>/dev/null || echo 2)" --target leader_fuzzers || {
  echo "fuzz.sh: build failed" >&2
  exit 1
}

rm -rf "$out_dir"
mkdir -p "$out_dir"
# Sanitizer reports end the run (libFuzzer then saves the input).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}

summary=()
failed=0
for target in $targets; do
  bin="$build_dir/fuzz/fuzz_$target"
  seeds="$repo/fuzz/corpus/$target"
  if [[ ! -x "$bin" || ! -d "$seeds" ]]; then
    echo "fuzz.sh: unknown target '$target' (no $bin or $seeds)" >&2
    summary+=("$(printf '  %-9s %12s  %s' "$target" - "MISSING")")
    failed=1
    continue
  fi
  corpus="$out_dir/$target/corpus"
  artifacts="$out_dir/$target/artifacts"
  log="$out_dir/$target/fuzz.log"
  mkdir -p "$corpus" "$artifacts"
  cp "$seeds"/* "$corpus"/ 2>/dev/null
  seeds_count=$(find "$seeds" -type f | wc -l)
  echo
  echo "==> fuzz_$target: ${seconds}s from $seeds_count seeds, dictionary fuzz/$target.dict"
  rc=0
  # -max_total_time bounds the run; the outer timeout catches a wedged one.
  timeout --kill-after=30 $((seconds + 120)) "$bin" -max_total_time="$seconds" -timeout="$unit_timeout" \
    -dict="$repo/fuzz/$target.dict" -artifact_prefix="$artifacts/" -print_final_stats=1 \
    "$corpus" >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  crashes=$(find "$artifacts" -type f | wc -l)
  result=ok
  if ((rc != 0 || crashes > 0)); then
    result="FINDING (exit $rc, $crashes file(s) in $artifacts)"
    failed=1
    echo "--- last lines of $log:"
    grep -E 'FINDING|ERROR|runtime error|SUMMARY|Test unit written|==[0-9]+==' "$log" | head -40
    tail -n 20 "$log"
  fi
  echo "fuzz_$target: ${runs:-?} executions (${rate:-?}/s), coverage ${cov:-?}, ${added:-?} new inputs, $result"
  summary+=("$(printf '  %-9s %12s  %8s/s  cov %-6s %s' "$target" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$result")")
done

echo
echo "================ fuzz summary (${seconds}s per target) ================"
printf '%s\n' "${summary[@]}"
if ((failed)); then
  echo "RESULT: FINDINGS (inputs and logs in $out_dir)"
  exit 1
fi
echo "RESULT: no findings"
