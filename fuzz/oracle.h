#pragma once

// The documented rules, stated again for the fuzz targets' oracles: written
// from the comments in include/leader/config.h and src/record.h, not from
// the code that enforces them, so that the two can disagree and a
// disagreement is a finding.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace leader::fuzz {

/// `s` for a report: printable ASCII as is, every other byte as \xNN.
inline std::string shown(std::string_view s, std::size_t limit = 200) {
  static const char* const hex = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < limit; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
  }
  if (s.size() > limit) out += "...";
  return out;
}

/// Ends the run with a finding; libFuzzer saves the input as a crash file.
[[noreturn]] inline void finding(const std::string& what, std::string_view input) {
  std::fprintf(stderr, "FINDING: %s\n  input: \"%s\"\n", what.c_str(), shown(input).c_str());
  std::abort();
}

/// The code points of `s` if it is well-formed UTF-8 (shortest form, no
/// surrogates, nothing past U+10FFFF), else nullopt. Decodes first and
/// judges the value after, unlike the library's byte-range table.
inline std::optional<std::vector<char32_t>> code_points(std::string_view s) {
  std::vector<char32_t> out;
  std::size_t i = 0;
  while (i < s.size()) {
    const auto lead = static_cast<unsigned char>(s[i]);
    int ones = 0;
    while (ones < 8 && (lead & (0x80 >> ones)) != 0) ++ones;
    if (ones == 1 || ones > 4) return std::nullopt;  // a continuation byte, or 5+ byte forms
    const std::size_t length = ones == 0 ? 1 : static_cast<std::size_t>(ones);
    if (i + length > s.size()) return std::nullopt;
    char32_t cp = ones == 0 ? lead : lead & (0xffu >> (ones + 1));
    for (std::size_t k = 1; k < length; ++k) {
      const auto cont = static_cast<unsigned char>(s[i + k]);
      if ((cont >> 6) != 0b10) return std::nullopt;
      cp = (cp << 6) | (cont & 0x3fu);
    }
    static const char32_t shortest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (length > 1 && cp < shortest[length]) return std::nullopt;  // overlong
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return std::nullopt;
    out.push_back(cp);
    i += length;
  }
  return out;
}

/// config.h on `instance_id` (and record.h on a holder): 1..128 bytes of
/// valid UTF-8 without control characters (U+0000..U+001F, U+007F..U+009F).
inline bool valid_instance_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  const auto cps = code_points(id);
  if (!cps) return false;
  for (const char32_t cp : *cps) {
    if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) return false;
  }
  return true;
}

/// What a message shown to a person may contain: printable ASCII only
/// (anything else is escaped as \xNN).
inline bool printable_ascii(std::string_view s) {
  for (const char c : s) {
    if (c < 0x20 || c >= 0x7f) return false;
  }
  return true;
}

}  // namespace leader::fuzz
