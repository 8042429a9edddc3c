#pragma once

// The subcommands of leader-bench-e2e. Each reads its flags, runs its
// series and writes <out>/<name>.csv (raw samples, one row per run) and
// <out>/<name>.json (what was run and the summaries).

#include "common.h"

namespace leader::bench {

/// graceful: the leader's stop() (with release) -> the next on_promote.
int run_graceful(Flags& flags);
/// crash: SIGKILL of the leader -> the next on_promote, and the gap past
/// the lease's expiry (next promote - (last renewal + TTL)).
int run_crash(Flags& flags);
/// contention: many candidates: time to the first leader, creates per
/// takeover.
int run_contention(Flags& flags);
/// scale: N roles of examples/multi-role on one connection: CPU, memory,
/// threads, messages per second, and the time for all roles of a killed
/// process to move.
int run_scale(Flags& flags);
/// report: docs/BENCHMARKS.md from a results directory.
int run_report(Flags& flags);

}  // namespace leader::bench
