#include "record.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>

namespace leader::detail {
namespace {

using nlohmann::json;

// nlohmann's value destructor recurses; refuse deep nesting before parsing.
bool nesting_within(const std::string& s, int limit) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629, Table 3-7 of
// the Unicode standard), with its code point; 0 when it is not one.
std::size_t utf8_sequence(std::string_view s, std::size_t i, char32_t& cp) noexcept {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char b0 = byte(0);
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  std::size_t n = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xbf;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    n = 2;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    n = 3;
    if (b0 == 0xe0) lo = 0xa0;  // overlong
    if (b0 == 0xed) hi = 0x9f;  // surrogates
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    n = 4;
    if (b0 == 0xf0) lo = 0x90;  // overlong
    if (b0 == 0xf4) hi = 0x8f;  // past U+10FFFF
  } else {
    return 0;
  }
  if (s.size() - i < n || byte(1) < lo || byte(1) > hi) return 0;
  cp = b0 & (0x7f >> n);
  for (std::size_t k = 1; k < n; ++k) {
    if ((byte(k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(k) & 0x3f);
  }
  return n;
}

}  // namespace

const char* instance_id_problem(std::string_view id) noexcept {
  if (id.empty() || id.size() > 128) return "must be 1..128 bytes";
  bool control = false;
  for (std::size_t i = 0; i < id.size();) {
    char32_t cp = 0;
    const std::size_t n = utf8_sequence(id, i, cp);
    if (n == 0) return "must be valid UTF-8";
    control = control || cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
    i += n;
  }
  return control ? "must not contain control characters" : nullptr;
}

std::string encode_record(const Record& r) {
  json j = {{"v", 1},
            {"holder", r.holder},
            {"nonce", r.nonce},
            {"term", r.term},
            {"priority", r.priority},
            {"acquired_at", r.acquired_at},
            {"renewed_at", r.renewed_at}};
  if (!r.metadata.empty()) j["metadata"] = r.metadata;
  // replace: metadata is not guaranteed UTF-8 (instance ids are, by
  // Config::validate()).
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<Record> decode_record(const std::string& value) noexcept {
  try {
    if (value.empty() || value.size() > kMaxRecordBytes || !nesting_within(value, 8)) return std::nullopt;
    // A JSON text never holds a raw NUL (a string escapes it as \u0000), and
    // nlohmann::json ends its input at one: "{record}\0anything" would parse
    // as the record alone.
    if (value.find('\0') != std::string::npos) return std::nullopt;
    const json j = json::parse(value, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return std::nullopt;
    Record r;
    const auto holder = j.find("holder");
    const auto nonce = j.find("nonce");
    if (holder == j.end() || !holder->is_string() || nonce == j.end() || !nonce->is_string()) {
      return std::nullopt;
    }
    r.holder = holder->get<std::string>();
    r.nonce = nonce->get<std::string>();
    // A holder no instance can have is garbage (and could forge log lines).
    if (instance_id_problem(r.holder) != nullptr || r.nonce.empty()) return std::nullopt;
    if (const auto t = j.find("term"); t != j.end()) {
      if (!t->is_number_unsigned()) return std::nullopt;
      r.term = t->get<std::uint64_t>();
    }
    if (const auto p = j.find("priority"); p != j.end()) {
      // Unsigned first: read as int64, 2^64 - 1 would pass as -1.
      if (p->is_number_unsigned()) {
        const auto v = p->get<std::uint64_t>();
        if (v > 1000000) return std::nullopt;
        r.priority = static_cast<int>(v);
      } else if (p->is_number_integer()) {
        const auto v = p->get<std::int64_t>();
        if (v < -1000000 || v > 1000000) return std::nullopt;
        r.priority = static_cast<int>(v);
      } else {
        return std::nullopt;
      }
    }
    if (const auto m = j.find("metadata"); m != j.end()) {
      if (!m->is_object()) return std::nullopt;
      for (const auto& [k, v] : m->items()) {
        if (!v.is_string()) return std::nullopt;
        r.metadata.emplace(k, v.get<std::string>());
      }
    }
    if (const auto a = j.find("acquired_at"); a != j.end() && a->is_string()) {
      r.acquired_at = a->get<std::string>();
    }
    if (const auto a = j.find("renewed_at"); a != j.end() && a->is_string()) {
      r.renewed_at = a->get<std::string>();
    }
    return r;
  } catch (...) {
    return std::nullopt;
  }
}

std::string wall_clock_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z", fmt::gmtime(std::chrono::system_clock::to_time_t(now)),
                     ms);
}

}  // namespace leader::detail
