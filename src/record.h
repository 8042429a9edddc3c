#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace leader::detail {

/// The value stored in a role's key.
struct Record {
  std::string holder;      // instance id
  std::string nonce;       // per acquire attempt; kept by the term's renewals
  std::uint64_t term = 0;  // 0 in the create (unknown until acked); the term in renewals
  int priority = 0;
  std::map<std::string, std::string> metadata;
  std::string acquired_at;  // RFC 3339 UTC, for humans
  std::string renewed_at;   // RFC 3339 UTC, for humans
};

/// Largest value `decode_record` looks at; anything larger is garbage.
inline constexpr std::size_t kMaxRecordBytes = std::size_t{64} * 1024;

std::string encode_record(const Record& record);
/// nullopt for anything that is not a well-formed record (garbage, wrong
/// types, too large, nested too deep). Never throws.
std::optional<Record> decode_record(const std::string& value) noexcept;

/// Current wall-clock time as RFC 3339 UTC with milliseconds.
std::string wall_clock_now();

}  // namespace leader::detail
