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

}  // namespace

std::string encode_record(const Record& r) {
  json j = {{"v", 1},
            {"holder", r.holder},
            {"nonce", r.nonce},
            {"term", r.term},
            {"priority", r.priority},
            {"acquired_at", r.acquired_at},
            {"renewed_at", r.renewed_at}};
  if (!r.metadata.empty()) j["metadata"] = r.metadata;
  // replace: instance ids and metadata are not guaranteed UTF-8.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<Record> decode_record(const std::string& value) noexcept {
  try {
    if (value.empty() || value.size() > kMaxRecordBytes || !nesting_within(value, 8)) return std::nullopt;
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
    if (r.holder.empty() || r.nonce.empty()) return std::nullopt;
    if (const auto t = j.find("term"); t != j.end()) {
      if (!t->is_number_unsigned()) return std::nullopt;
      r.term = t->get<std::uint64_t>();
    }
    if (const auto p = j.find("priority"); p != j.end()) {
      if (!p->is_number_integer()) return std::nullopt;
      const auto v = p->get<std::int64_t>();
      if (v < -1000000 || v > 1000000) return std::nullopt;
      r.priority = static_cast<int>(v);
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
