// leader_chaos_check: re-checks kept chaos histories (LEADER_CHAOS_KEEP, or
// a failed scenario's directory) and prints the report of each; with several,
// also the takeover and heal-to-leader times of all of them together.
//
//   leader_chaos_check <history> <ttl_ms> [<history> <ttl_ms> ...]
//
// Exit code: 0 when no history breaks a rule, 1 when one does, 2 on bad
// usage or an unreadable file.

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "history.h"
#include "history_checker.h"

int main(int argc, char** argv) {
  using leader::testing::CheckReport;
  if (argc < 3 || (argc - 1) % 2 != 0) {
    std::fputs("usage: leader_chaos_check <history> <ttl_ms> [<history> <ttl_ms> ...]\n", stderr);
    return 2;
  }
  CheckReport all;
  bool ok = true;
  int histories = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string path = argv[i];
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      std::fprintf(stderr, "leader_chaos_check: cannot read %s\n", path.c_str());
      return 2;
    }
    leader::testing::CheckOptions options;
    try {
      options.ttl = std::chrono::milliseconds(std::stoll(argv[i + 1]));
    } catch (const std::exception&) {
      std::fprintf(stderr, "leader_chaos_check: bad ttl_ms '%s'\n", argv[i + 1]);
      return 2;
    }
    const CheckReport report = leader::testing::check_history(leader::testing::read_history(path), options);
    std::printf("%s (ttl %s ms):\n%s\n", path.c_str(), argv[i + 1], report.summary().c_str());
    ok = ok && report.ok();
    ++histories;
    all.events += report.events;
    all.acts += report.acts;
    all.zombies += report.zombies;
    all.zombies_rejected += report.zombies_rejected;
    all.validations += report.validations;
    all.validations_refused += report.validations_refused;
    all.finished = report.finished;
    all.intervals.insert(all.intervals.end(), report.intervals.begin(), report.intervals.end());
    all.violations.insert(all.violations.end(), report.violations.begin(), report.violations.end());
    for (const auto& [kind, s] : report.by_kind) {
      auto& into = all.by_kind[kind];
      into.faults += s.faults;
      into.heals += s.heals;
      into.takeover_ms.insert(into.takeover_ms.end(), s.takeover_ms.begin(), s.takeover_ms.end());
      into.heal_to_leader_ms.insert(into.heal_to_leader_ms.end(), s.heal_to_leader_ms.begin(),
                                    s.heal_to_leader_ms.end());
    }
  }
  if (histories > 1) std::printf("all %d histories:\n%s", histories, all.summary().c_str());
  return ok ? 0 : 1;
}
