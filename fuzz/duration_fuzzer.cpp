// Fuzzes parse_duration (include/leader/config.h) against an exact oracle:
// the documented grammar (ASCII digits, then ms, s, m or h; "0" needs no
// unit) evaluated in 128-bit arithmetic, accepted exactly when the value
// fits in std::chrono::milliseconds. A rejection must be a ConfigError for
// the given field whose message shows the input escaped.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "leader/config.h"
#include "leader/error.h"
#include "oracle.h"

namespace {

using leader::fuzz::finding;

// The value in milliseconds the grammar gives `text`, or nullopt.
std::optional<std::int64_t> expected_ms(const std::string& text) {
  using Wide = unsigned __int128;
  constexpr Wide kLimit = static_cast<Wide>(std::numeric_limits<std::int64_t>::max());
  std::size_t digits = 0;
  Wide value = 0;
  bool huge = false;  // past any factor * int64 max: stop accumulating
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
    if (!huge) value = value * 10 + static_cast<Wide>(text[digits] - '0');
    huge = huge || value > kLimit * 3600000;
    ++digits;
  }
  if (digits == 0) return std::nullopt;
  const std::string unit = text.substr(digits);
  Wide factor = 0;
  if (unit.empty()) {
    if (huge || value != 0) return std::nullopt;
    return 0;
  }
  if (unit == "ms") factor = 1;
  if (unit == "s") factor = 1000;
  if (unit == "m") factor = 60 * 1000;
  if (unit == "h") factor = 60 * 60 * 1000;
  if (factor == 0 || huge || value * factor > kLimit) return std::nullopt;
  return static_cast<std::int64_t>(value * factor);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::optional<std::int64_t> want = expected_ms(text);
  try {
    const std::chrono::milliseconds got = leader::parse_duration(text, "ttl");
    if (!want)
      finding("parse_duration accepted what the grammar rejects: " + std::to_string(got.count()), text);
    if (got.count() != *want) {
      finding("parse_duration gave " + std::to_string(got.count()) + " ms, not " + std::to_string(*want),
              text);
    }
  } catch (const leader::ConfigError& e) {
    const std::string message = e.what();
    if (want)
      finding("parse_duration rejected " + std::to_string(*want) + " ms: " + leader::fuzz::shown(message),
              text);
    if (e.field() != "ttl") finding("ConfigError names field " + e.field() + ", not ttl", text);
    if (!leader::fuzz::printable_ascii(message))
      finding("unescaped bytes in: " + leader::fuzz::shown(message), text);
    if (message.rfind("leader config: ttl: ", 0) != 0) finding("message without its field: " + message, text);
    if (message.size() > 500) finding("message not cut: " + std::to_string(message.size()) + " bytes", text);
  }
  // Anything else thrown escapes and ends the run: a finding too.
  return 0;
}
