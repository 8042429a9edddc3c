#include "history_checker.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>
#include <utility>

namespace leader::testing {
namespace {

constexpr const char* kHarness = "harness";

double to_ms(std::int64_t ns) { return static_cast<double>(ns) / 1e6; }

std::string ms_text(std::int64_t ns) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f ms", to_ms(ns));
  return buf;
}

std::string describe(const Interval& i) {
  std::string end = i.end_ns == Interval::kOpen ? "open" : std::to_string(i.end_ns);
  return i.instance + " term " + i.token.to_string() + " [" + std::to_string(i.start_ns) + ", " + end +
         "] (" + (i.ended_by.empty() ? "never ended" : "ended by " + i.ended_by) + ", line " +
         std::to_string(i.line_no) + ")";
}

FencingToken token_of(const HistoryEvent& e, const std::string& key = "token") {
  return FencingToken::parse(e.get(key)).value_or(FencingToken{});
}

struct Checker {
  const CheckOptions& options;
  std::vector<HistoryEvent> events;
  CheckReport report;
  // Intervals of each instance, in the order they began.
  std::map<std::string, std::vector<std::size_t>> by_instance;

  void violation(std::string kind, std::string detail) {
    report.violations.push_back(Violation{std::move(kind), std::move(detail)});
  }

  Interval* open_interval(const std::string& instance) {
    const auto it = by_instance.find(instance);
    if (it == by_instance.end() || it->second.empty()) return nullptr;
    Interval& last = report.intervals[it->second.back()];
    return last.demote_ns < 0 && last.death_ns < 0 ? &last : nullptr;
  }

  Interval* find_interval(const std::string& instance, const FencingToken& token) {
    const auto it = by_instance.find(instance);
    if (it == by_instance.end()) return nullptr;
    for (auto idx = it->second.rbegin(); idx != it->second.rend(); ++idx) {
      if (report.intervals[*idx].token == token) return &report.intervals[*idx];
    }
    return nullptr;
  }

  void note_deadline(const HistoryEvent& e) {
    Interval* i = find_interval(e.source, token_of(e));
    const std::int64_t deadline = e.number("deadline", -1);
    if (i == nullptr || deadline < 0) return;
    i->deadline_ns = std::max(i->deadline_ns, deadline);
  }

  void build_intervals() {
    for (const HistoryEvent& e : events) {
      if (e.event == "malformed") {
        violation("malformed", "line " + std::to_string(e.line_no) + ": " + e.get("text"));
        continue;
      }
      if (e.source == kHarness) {
        if (e.event == "finish") report.finished = true;
        if (e.event == "kill" || e.event == "exit") died(e.get("instance"), e.at_ns);
        continue;
      }
      if (e.event == "promote") {
        if (Interval* open = open_interval(e.source)) {
          violation("sequence", "line " + std::to_string(e.line_no) + ": " + e.source + " promoted to " +
                                    e.get("token") + " while " + describe(*open) + " had not ended");
          open->demote_ns = e.at_ns;
          open->ended_by = "promote";
        }
        Interval i;
        i.role = e.get("role");
        i.instance = e.source;
        i.token = token_of(e);
        i.start_ns = e.at_ns;
        i.deadline_ns = e.number("deadline", -1);
        i.line_no = e.line_no;
        by_instance[e.source].push_back(report.intervals.size());
        report.intervals.push_back(std::move(i));
      } else if (e.event == "lease" || e.event == "act") {
        note_deadline(e);
      } else if (e.event == "demote") {
        Interval* open = open_interval(e.source);
        if (open == nullptr || open->token != token_of(e)) {
          violation("sequence", "line " + std::to_string(e.line_no) + ": " + e.source + " demoted from " +
                                    e.get("token") + " without an open term of that token");
          continue;
        }
        open->demote_ns = e.at_ns;
        open->ended_by = "demote:" + e.get("reason");
      } else if (e.event == "exit") {
        died(e.source, e.at_ns);
      }
    }
    for (Interval& i : report.intervals) {
      // The earliest of what is known. A deadline alone (no demotion, no
      // death) ends a term that is still running or whose process is
      // paused: it believed no longer, unless a renewal it never recorded
      // moved the deadline while it was stopped or being killed.
      i.end_ns = Interval::kOpen;
      const std::string demoted_by = i.ended_by;
      i.ended_by.clear();
      auto consider = [&i](std::int64_t t, const std::string& what) {
        if (t >= 0 && t < i.end_ns) {
          i.end_ns = std::max(t, i.start_ns);
          i.ended_by = what;
        }
      };
      consider(i.demote_ns, demoted_by);
      consider(i.death_ns, "death");
      consider(i.deadline_ns, "deadline");
      if (report.finished && i.demote_ns < 0 && i.death_ns < 0) {
        violation("unended", describe(i) + ": neither demoted nor dead when the run finished");
      }
    }
  }

  void died(const std::string& instance, std::int64_t at) {
    if (Interval* open = open_interval(instance)) open->death_ns = at;
  }

  std::map<std::string, std::vector<const Interval*>> by_role() const {
    std::map<std::string, std::vector<const Interval*>> roles;
    for (const Interval& i : report.intervals) roles[i.role].push_back(&i);
    for (auto& [role, list] : roles) {
      std::stable_sort(list.begin(), list.end(),
                       [](const Interval* a, const Interval* b) { return a->start_ns < b->start_ns; });
    }
    return roles;
  }

  void check_overlaps_and_tokens() {
    for (const auto& [role, list] : by_role()) {
      const Interval* longest = nullptr;  // of those begun so far, the one ending last
      const Interval* previous = nullptr;
      for (const Interval* i : list) {
        if (longest != nullptr && i->start_ns < longest->end_ns) {
          const std::string by =
              longest->end_ns == Interval::kOpen ? "still open" : ms_text(longest->end_ns - i->start_ns);
          std::string detail = "role " + role + ": " + describe(*i);
          detail += " began while " + describe(*longest);
          detail += " still led (by " + by + ")";
          violation("overlap", std::move(detail));
        }
        if (previous != nullptr && !(previous->token < i->token)) {
          violation("token_order", "role " + role + ": " + describe(*i) + " follows " + describe(*previous));
        }
        if (longest == nullptr || i->end_ns > longest->end_ns) longest = i;
        previous = i;
      }
    }
  }

  void check_acts_and_fence() {
    // Accepted fence writes per role, in the fence's order.
    std::map<std::string, std::vector<std::pair<std::int64_t, FencingToken>>> accepted;
    for (const HistoryEvent& e : events) {
      if ((e.event == "act" || e.event == "zombie") && e.get("accepted") == "1") {
        accepted[e.get("role")].emplace_back(e.at_ns, token_of(e));
      }
    }
    for (const HistoryEvent& e : events) {
      if (e.source == kHarness) continue;
      const std::string where = "line " + std::to_string(e.line_no) + ": " + e.to_line();
      if (e.event == "act") {
        ++report.acts;
        const Interval* i = find_interval(e.source, token_of(e));
        if (i == nullptr) {
          violation("act_outside_term", where + ": no such term of " + e.source);
        } else if (e.at_ns < i->start_ns || e.at_ns > i->end_ns) {
          violation("act_outside_term", where + ": outside " + describe(*i));
        }
        if (e.get("accepted") != "1") {
          violation("act_rejected",
                    where + ": the fence had accepted " + e.get("highest") + " while this term still led");
        }
      } else if (e.event == "zombie") {
        ++report.zombies;
        if (e.get("accepted") != "1") {
          ++report.zombies_rejected;
          continue;
        }
        const FencingToken mine = token_of(e);
        for (const auto& [at, token] : accepted[e.get("role")]) {
          if (at < e.at_ns && mine < token) {
            violation("zombie_accepted", where + ": accepted after the fence took " + token.to_string() +
                                             " at " + std::to_string(at));
            break;
          }
        }
      } else if (e.event == "validate") {
        ++report.validations;
        if (e.get("valid") != "1") {
          ++report.validations_refused;
          continue;
        }
        const FencingToken mine = token_of(e);
        for (const Interval& i : report.intervals) {
          if (i.role == e.get("role") && mine < i.token && i.start_ns < e.at_ns) {
            violation("stale_validation", where + ": confirmed after " + describe(i) + " began");
            break;
          }
        }
      }
    }
  }

  /// Stamps of the faults, and of the finish, in order: where a heal's
  /// window closes at the latest.
  std::vector<std::int64_t> boundaries() const {
    std::vector<std::int64_t> out;
    for (const HistoryEvent& e : events) {
      if (e.source == kHarness && (e.event == "fault" || e.event == "finish")) out.push_back(e.at_ns);
    }
    return out;
  }

  void check_availability_and_times() {
    const auto roles = by_role();
    std::set<std::string> role_names;
    for (const HistoryEvent& e : events) {
      if (e.source != kHarness && !e.get("role").empty()) role_names.insert(e.get("role"));
    }
    const auto bounds = boundaries();
    const std::int64_t last_at = events.empty() ? 0 : events.back().at_ns;
    const auto next_boundary = [&](std::int64_t after) {
      const auto it = std::upper_bound(bounds.begin(), bounds.end(), after);
      return it == bounds.end() ? Interval::kOpen : *it;
    };
    const std::chrono::milliseconds default_bound =
        options.recovery_bound.count() > 0 ? options.recovery_bound : options.ttl + std::chrono::seconds(1);

    for (const HistoryEvent& e : events) {
      if (e.source != kHarness) continue;
      if (e.event == "fault") {
        KindStats& stats = report.by_kind[e.get("kind")];
        ++stats.faults;
        const std::int64_t until = next_boundary(e.at_ns);
        for (const auto& [role, list] : roles) {
          for (const Interval* i : list) {
            if (i->start_ns > e.at_ns && i->start_ns < until) {
              stats.takeover_ms.push_back(to_ms(i->start_ns - e.at_ns));
              break;
            }
          }
        }
        continue;
      }
      if (e.event != "heal") continue;
      KindStats& stats = report.by_kind[e.get("kind")];
      ++stats.heals;
      if (e.get("quorum") != "1") continue;
      // Owed: within the bound. Not owed (expect=0): measured all the same,
      // up to the next fault.
      const bool owed = e.get("expect") == "1";
      const std::int64_t bound =
          owed ? std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::milliseconds(e.number("bound_ms", default_bound.count())))
                     .count()
               : Interval::kOpen - e.at_ns;
      const std::int64_t window_end = std::min(e.at_ns + bound, next_boundary(e.at_ns));
      // An owed leader may begin late in its window even when the next
      // fault came sooner; a measured one, only before that fault.
      const std::int64_t latest_start = owed ? e.at_ns + bound : window_end;
      for (const std::string& role : role_names) {
        std::optional<double> took;
        const auto it = roles.find(role);
        if (it != roles.end()) {
          for (const Interval* i : it->second) {
            if (i->start_ns < e.at_ns && i->end_ns >= window_end) {
              took = 0;
              break;
            }
            if (i->start_ns >= e.at_ns && i->start_ns <= latest_start) {
              took = to_ms(i->start_ns - e.at_ns);
              break;
            }
          }
        }
        if (took) {
          stats.heal_to_leader_ms.push_back(*took);
        } else if (owed && (report.finished || window_end <= last_at)) {
          violation("no_leader", "role " + role + ": no leader within " + ms_text(bound) + " of line " +
                                     std::to_string(e.line_no) + ": " + e.to_line());
        }
      }
    }
  }
};

std::string stats_text(const std::vector<double>& values) {
  if (values.empty()) return "-";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.0f / %.0f / %.0f / %.0f (n=%zu)",
                *std::min_element(values.begin(), values.end()), quantile(values, 0.5), quantile(values, 0.9),
                *std::max_element(values.begin(), values.end()), values.size());
  return buf;
}

}  // namespace

double quantile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = std::ceil(p * static_cast<double>(values.size()));
  const auto index = static_cast<std::size_t>(std::max(rank, 1.0)) - 1;
  return values[std::min(index, values.size() - 1)];
}

std::size_t CheckReport::count(const std::string& kind) const {
  return static_cast<std::size_t>(std::count_if(violations.begin(), violations.end(),
                                                [&](const Violation& v) { return v.kind == kind; }));
}

std::string CheckReport::summary() const {
  std::string out;
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "%zu events, %zu terms, %zu acts, %zu zombie writes (%zu rejected), %zu validations after "
                "resume (%zu refused), %s; overlaps: %zu; violations: %zu\n",
                events, intervals.size(), acts, zombies, zombies_rejected, validations, validations_refused,
                finished ? "finished" : "not finished", count("overlap"), violations.size());
  out += buf;
  if (!by_kind.empty()) {
    std::snprintf(buf, sizeof(buf), "  %-36s %6s %-34s %5s %-34s\n", "kind", "faults",
                  "takeover ms min/p50/p90/max", "heals", "heal->leader ms min/p50/p90/max");
    out += buf;
  }
  for (const auto& [kind, s] : by_kind) {
    std::snprintf(buf, sizeof(buf), "  %-36s %6zu %-34s %5zu %-34s\n", kind.c_str(), s.faults,
                  stats_text(s.takeover_ms).c_str(), s.heals, stats_text(s.heal_to_leader_ms).c_str());
    out += buf;
  }
  for (const Violation& v : violations) out += "  VIOLATION " + v.kind + ": " + v.detail + "\n";
  return out;
}

CheckReport check_history(std::vector<HistoryEvent> events, const CheckOptions& options) {
  std::stable_sort(events.begin(), events.end(),
                   [](const HistoryEvent& a, const HistoryEvent& b) { return a.at_ns < b.at_ns; });
  Checker checker{options, std::move(events), {}, {}};
  checker.report.events = checker.events.size();
  checker.build_intervals();
  checker.check_overlaps_and_tokens();
  checker.check_acts_and_fence();
  checker.check_availability_and_times();
  return std::move(checker.report);
}

}  // namespace leader::testing
