#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

namespace leader {

/// A fencing token: orders the terms of a role. Compare lexicographically
/// (epoch first). `revision` is the revision of the create that won the
/// term; `epoch` is the creation time (ms since the Unix epoch, server
/// clock) of the bucket's stream, so tokens keep increasing when a bucket is
/// deleted and re-created (its revisions restart at 1). A downstream system
/// remembers the highest token it accepted and rejects writes carrying a
/// lower one.
struct FencingToken {
  std::uint64_t epoch = 0;
  std::uint64_t revision = 0;

  /// False for the default (no term).
  bool valid() const noexcept { return revision != 0; }
  /// "<epoch>.<revision>", e.g. "1763762400123.42".
  std::string to_string() const;
  /// Parses `to_string()`'s form; nullopt for anything else.
  static std::optional<FencingToken> parse(std::string_view text) noexcept;

  friend bool operator==(const FencingToken& a, const FencingToken& b) noexcept {
    return a.epoch == b.epoch && a.revision == b.revision;
  }
  friend bool operator!=(const FencingToken& a, const FencingToken& b) noexcept { return !(a == b); }
  friend bool operator<(const FencingToken& a, const FencingToken& b) noexcept {
    return std::tie(a.epoch, a.revision) < std::tie(b.epoch, b.revision);
  }
  friend bool operator>(const FencingToken& a, const FencingToken& b) noexcept { return b < a; }
  friend bool operator<=(const FencingToken& a, const FencingToken& b) noexcept { return !(b < a); }
  friend bool operator>=(const FencingToken& a, const FencingToken& b) noexcept { return !(a < b); }
};

}  // namespace leader
