#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace leader::detail {

/// The value stored in a role's key.
struct Record {
  std::string holder;      // instance id (see instance_id_problem)
  std::string nonce;       // per acquire attempt; kept by the term's renewals
  std::uint64_t term = 0;  // 0 in the create (unknown until acked); the term in renewals
  int priority = 0;        // -1000000..1000000, as Config::priority
  std::map<std::string, std::string> metadata;
  std::string acquired_at;  // RFC 3339 UTC, for humans
  std::string renewed_at;   // RFC 3339 UTC, for humans
};

/// Largest value `decode_record` looks at; anything larger is garbage.
inline constexpr std::size_t kMaxRecordBytes = std::size_t{64} * 1024;

/// Why `id` is not a valid instance id, or nullptr when it is: 1..128
/// bytes of well-formed UTF-8 (no overlong forms, surrogates or code points
/// past U+10FFFF) without control characters (U+0000..U+001F,
/// U+007F..U+009F). `Config::validate()` applies it to `instance_id`, and
/// `decode_record` to a record's holder: an id that JSON cannot carry
/// unchanged could never recognise its own record.
const char* instance_id_problem(std::string_view id) noexcept;

/// JSON of `record`. Bytes that are not UTF-8 (only possible in metadata,
/// which Config does not check) are replaced by U+FFFD.
std::string encode_record(const Record& record);
/// nullopt for anything that is not a well-formed record: garbage, more
/// than kMaxRecordBytes, nested deeper than 8, holder or nonce missing or
/// not a string, a holder that is not a valid instance id, an empty nonce,
/// a term that is not an unsigned integer, a priority that is not an
/// integer in -1000000..1000000, metadata that is not an object of
/// strings. Unknown fields are ignored; timestamps of another type are
/// dropped. Never throws.
std::optional<Record> decode_record(const std::string& value) noexcept;

/// Current wall-clock time as RFC 3339 UTC with milliseconds.
std::string wall_clock_now();

}  // namespace leader::detail
