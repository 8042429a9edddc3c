#pragma once

// Judges a chaos history (history.h), per role:
// - no two leadership intervals overlap. An interval begins when on_promote
//   was recorded and ends at the earliest of its on_demote, the last lease
//   deadline its process recorded, and the death of its process;
// - fencing tokens strictly increase from one interval to the next;
// - every interval ends (by a demotion or the death of its process) once the
//   run finished;
// - every act lies inside its own term and was accepted by the fence;
// - a zombie write is rejected once a term with a higher token wrote to the
//   fence (in the fence's order: stamps taken under its lock);
// - validate_token() never confirms a term after a newer term began;
// - after each heal that owes a leader, one exists within the recovery bound:
//   a term that begins in [heal, heal + bound], or one from before the heal
//   that lasts until the window closes (heal + bound, or the next fault or
//   the finish if sooner). A leader that goes on believing for a moment after
//   the heal and then finds its key gone does not count.
// It also measures, per fault kind, the takeover time (fault to the first
// term that begins after it, before the next fault) and, per heal kind, the
// time from the heal to a leader.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "history.h"
#include "leader/fencing.h"

namespace leader::testing {

struct CheckOptions {
  /// The candidates' lease; the default recovery bound derives from it.
  std::chrono::milliseconds ttl{1000};
  /// How soon after a heal that owes one a leader must exist; 0: ttl + 1 s.
  /// A heal's own bound_ms= field takes precedence.
  std::chrono::milliseconds recovery_bound{0};
};

/// One term of one candidate, as the history shows it.
struct Interval {
  static constexpr std::int64_t kOpen = std::numeric_limits<std::int64_t>::max();
  std::string role;
  std::string instance;
  FencingToken token;
  std::int64_t start_ns = 0;
  /// The earliest of demotion, last recorded deadline and death; kOpen when
  /// none is known (still leading when the history ends).
  std::int64_t end_ns = kOpen;
  /// What ended it: "demote:<reason>", "deadline", "death", or "" (open).
  std::string ended_by;
  std::int64_t demote_ns = -1;
  std::int64_t deadline_ns = -1;
  std::int64_t death_ns = -1;
  /// Line of its promote event.
  std::size_t line_no = 0;
};

/// A broken rule: `kind` is one of overlap, token_order, unended,
/// act_outside_term, act_rejected, zombie_accepted, stale_validation,
/// no_leader, sequence, malformed.
struct Violation {
  std::string kind;
  std::string detail;
};

/// Times measured for one fault (or heal) kind, in milliseconds.
struct KindStats {
  std::size_t faults = 0;
  std::vector<double> takeover_ms;
  std::size_t heals = 0;
  std::vector<double> heal_to_leader_ms;
};

struct CheckReport {
  std::vector<Violation> violations;
  std::vector<Interval> intervals;
  std::map<std::string, KindStats> by_kind;
  std::size_t events = 0;
  std::size_t acts = 0;
  std::size_t zombies = 0;
  std::size_t zombies_rejected = 0;
  std::size_t validations = 0;
  std::size_t validations_refused = 0;
  /// True when the history has a finish event.
  bool finished = false;

  bool ok() const { return violations.empty(); }
  /// Violations of `kind`.
  std::size_t count(const std::string& kind) const;
  /// Counts, violations and the per-kind table, for a person.
  std::string summary() const;
};

/// Checks `events` (in any order; sorted by time here).
CheckReport check_history(std::vector<HistoryEvent> events, const CheckOptions& options = {});

/// The `p` quantile (0..1, nearest rank) of `values`; 0 when empty.
double quantile(std::vector<double> values, double p);

}  // namespace leader::testing
