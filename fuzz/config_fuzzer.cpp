// Fuzzes Config::validate() and Config::resolved() against the rules in the
// comments of include/leader/config.h, stated again below in exact 128-bit
// arithmetic: validate() must accept a config exactly when no rule is
// broken, and when it throws, name a field whose rule is broken. Messages
// must be printable ASCII, and an accepted config's resolved durations must
// fit the library's nanosecond clocks. UBSan catches any signed overflow.
//
// Input: lines `name=value` over a valid base config (role "r", instance
// "i"). Names are Config's fields; `meta=key:value` adds metadata. Numbers
// are decimal and saturate at the field's type; strings take \xNN escapes.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <string_view>

#include "leader/config.h"
#include "leader/error.h"
#include "oracle.h"

namespace {

using leader::Config;
using leader::fuzz::finding;
using std::chrono::milliseconds;
using Wide = __int128;

std::string unescape(std::string_view v) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (v[i] == '\\' && i + 3 < v.size() && v[i + 1] == 'x' && hex(v[i + 2]) >= 0 && hex(v[i + 3]) >= 0) {
      out += static_cast<char>(hex(v[i + 2]) * 16 + hex(v[i + 3]));
      i += 3;
    } else {
      out += v[i];
    }
  }
  return out;
}

// A decimal number saturated to [lo, hi]; nullopt when it is not one.
std::optional<std::int64_t> number(std::string_view v, std::int64_t lo, std::int64_t hi) {
  const bool negative = !v.empty() && v.front() == '-';
  if (negative) v.remove_prefix(1);
  if (v.empty()) return std::nullopt;
  Wide value = 0;
  for (const char c : v) {
    if (c < '0' || c > '9') return std::nullopt;
    value = std::min<Wide>(value * 10 + (c - '0'), Wide{1} << 80);
  }
  if (negative) value = -value;
  return static_cast<std::int64_t>(std::clamp<Wide>(value, lo, hi));
}

Config parse(std::string_view input) {
  Config c;
  c.role = "r";
  c.instance_id = "i";
  constexpr auto lo64 = std::numeric_limits<std::int64_t>::min();
  constexpr auto hi64 = std::numeric_limits<std::int64_t>::max();
  constexpr auto lo32 = std::numeric_limits<int>::min();
  constexpr auto hi32 = std::numeric_limits<int>::max();
  const std::pair<const char*, milliseconds Config::*> durations[] = {
      {"ttl", &Config::ttl},
      {"heartbeat_interval", &Config::heartbeat_interval},
      {"safety_margin", &Config::safety_margin},
      {"call_timeout", &Config::call_timeout},
      {"acquire_jitter", &Config::acquire_jitter},
      {"retry_initial", &Config::retry_initial},
      {"retry_max", &Config::retry_max},
      {"start_timeout", &Config::start_timeout},
      {"disconnect_grace", &Config::disconnect_grace},
      {"validation_interval", &Config::validation_interval},
      {"health_timeout", &Config::health_timeout},
      {"breaker_open", &Config::breaker_open}};
  const std::pair<const char*, int Config::*> ints[] = {{"max_health_failures", &Config::max_health_failures},
                                                        {"breaker_threshold", &Config::breaker_threshold},
                                                        {"replicas", &Config::replicas},
                                                        {"priority", &Config::priority}};
  while (!input.empty()) {
    const std::size_t end = std::min(input.find('\n'), input.size());
    const std::string_view line = input.substr(0, end);
    input.remove_prefix(std::min(end + 1, input.size()));
    const std::size_t eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string_view name = line.substr(0, eq);
    const std::string_view value = line.substr(eq + 1);
    if (name == "bucket") c.bucket = unescape(value);
    if (name == "role") c.role = unescape(value);
    if (name == "instance_id") c.instance_id = unescape(value);
    if (name == "storage") c.storage = value == "memory" ? leader::Storage::memory : leader::Storage::file;
    if (name == "priority_handover") c.priority_handover = value == "1";
    if (name == "meta") {
      const std::string kv = unescape(value);
      const std::size_t colon = std::min(kv.find(':'), kv.size());
      c.metadata[kv.substr(0, colon)] = kv.substr(std::min(colon + 1, kv.size()));
    }
    for (const auto& [field, member] : durations) {
      if (name == field) {
        if (const auto n = number(value, lo64, hi64)) c.*member = milliseconds(*n);
      }
    }
    for (const auto& [field, member] : ints) {
      if (name == field) {
        if (const auto n = number(value, lo32, hi32)) c.*member = static_cast<int>(*n);
      }
    }
  }
  return c;
}

bool key_char(unsigned char ch, std::string_view extra) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         extra.find(static_cast<char>(ch)) != std::string_view::npos;
}

// Every field whose documented rule `c` breaks (empty: valid).
std::set<std::string> broken_rules(const Config& c) {
  std::set<std::string> broken;
  const auto all_of = [](const std::string& s, std::string_view extra) {
    return std::all_of(s.begin(), s.end(),
                       [extra](char ch) { return key_char(static_cast<unsigned char>(ch), extra); });
  };
  if (c.bucket.empty() || c.bucket.size() > 64 || !all_of(c.bucket, "-_")) broken.insert("bucket");
  if (c.role.empty() || c.role.size() > 256 || !all_of(c.role, "-_=/.") || c.role.front() == '.' ||
      c.role.back() == '.' || c.role.find("..") != std::string::npos || c.role.rfind("_leader.", 0) == 0) {
    broken.insert("role");
  }
  if (!leader::fuzz::valid_instance_id(c.instance_id)) broken.insert("instance_id");

  // The derived values, as the comments define them (ms, C++ division).
  const Wide ttl = c.ttl.count();
  const Wide heartbeat = c.heartbeat_interval.count() != 0 ? c.heartbeat_interval.count() : ttl / 5;
  const Wide margin = c.safety_margin.count() != 0 ? c.safety_margin.count() : std::max<Wide>(1, ttl / 20);
  const Wide call = c.call_timeout.count() != 0 ? c.call_timeout.count() : std::max<Wide>(1, heartbeat / 2);
  const Wide retry_initial = c.retry_initial.count();
  const Wide retry_max = c.retry_max.count() != 0 ? c.retry_max.count() : heartbeat;
  const Wide health =
      c.health_timeout.count() != 0 ? c.health_timeout.count() : std::max<Wide>(1, heartbeat / 2);
  const Wide breaker_open = c.breaker_open.count() != 0 ? c.breaker_open.count() : ttl;
  const Wide validation = c.validation_interval.count();
  const Wide usable = ttl - margin;
  constexpr Wide hour = 3600 * 1000;

  if (ttl < 100 || ttl > 24 * hour) broken.insert("ttl");
  if (heartbeat <= 0 || 3 * heartbeat > ttl || 2 * heartbeat > usable) broken.insert("heartbeat_interval");
  if (margin <= 0 || 3 * margin > ttl) broken.insert("safety_margin");
  if (call <= 0 || call >= usable) broken.insert("call_timeout");
  if (c.acquire_jitter.count() < 0 || 10 * Wide{c.acquire_jitter.count()} > ttl)
    broken.insert("acquire_jitter");
  if (retry_initial <= 0 || retry_initial > hour) broken.insert("retry_initial");
  if (retry_max < retry_initial || retry_max > ttl) broken.insert("retry_max");
  if (c.start_timeout.count() <= 0 || c.start_timeout.count() > 24 * hour) broken.insert("start_timeout");
  if (c.disconnect_grace.count() < 0) broken.insert("disconnect_grace");
  if (validation < 0 || (validation > 0 && validation < 10) || validation > 24 * hour) {
    broken.insert("validation_interval");
  }
  if (health <= 0 || health > ttl) broken.insert("health_timeout");
  if (c.max_health_failures < 1 || c.max_health_failures > 1000) broken.insert("max_health_failures");
  if (c.breaker_threshold < 1 || c.breaker_threshold > 1000) broken.insert("breaker_threshold");
  if (breaker_open <= 0 || breaker_open > hour) broken.insert("breaker_open");
  if (c.priority < -1000000 || c.priority > 1000000) broken.insert("priority");
  if (c.replicas < 1 || c.replicas > 5) broken.insert("replicas");
  std::size_t meta = 0;
  for (const auto& [k, v] : c.metadata) meta += k.size() + v.size();
  if (meta > 4096) broken.insert("metadata");
  return broken;
}

std::string names(const std::set<std::string>& fields) {
  std::string out;
  for (const auto& f : fields) out += (out.empty() ? "" : ", ") + f;
  return out.empty() ? "none" : out;
}

void check_resolved(const Config& c, std::string_view input) {
  const Config r = c.resolved();
  const milliseconds durations[] = {r.ttl,
                                    r.heartbeat_interval,
                                    r.safety_margin,
                                    r.call_timeout,
                                    r.acquire_jitter,
                                    r.retry_initial,
                                    r.retry_max,
                                    r.start_timeout,
                                    r.disconnect_grace,
                                    r.validation_interval,
                                    r.health_timeout,
                                    r.breaker_open};
  for (const milliseconds d : durations) {
    // The core adds these to nanosecond time points.
    if (d < milliseconds(0) || d > std::chrono::hours(24)) {
      finding("an accepted config resolves to a duration of " + std::to_string(d.count()) + " ms", input);
    }
  }
  if (r.disconnect_grace > r.ttl - r.safety_margin)
    finding("disconnect_grace not clamped to the lease", input);
  const Config twice = r.resolved();
  if (twice.heartbeat_interval != r.heartbeat_interval || twice.call_timeout != r.call_timeout ||
      twice.disconnect_grace != r.disconnect_grace || twice.health_timeout != r.health_timeout) {
    finding("resolved() is not idempotent", input);
  }
  try {
    r.validate();
  } catch (const leader::ConfigError& e) {
    finding(
        std::string("the resolved form of an accepted config is rejected: ") + leader::fuzz::shown(e.what()),
        input);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const Config c = parse(input);
  const std::set<std::string> broken = broken_rules(c);
  try {
    c.validate();
    if (!broken.empty())
      finding("validate() accepted a config that breaks the rules of: " + names(broken), input);
    check_resolved(c, input);
  } catch (const leader::ConfigError& e) {
    const std::string message = e.what();
    if (broken.empty()) finding("validate() rejected a valid config: " + leader::fuzz::shown(message), input);
    if (broken.count(e.field()) == 0) {
      finding("validate() blamed " + e.field() + ", but the broken rules are those of " + names(broken),
              input);
    }
    if (!leader::fuzz::printable_ascii(message))
      finding("unescaped bytes in: " + leader::fuzz::shown(message), input);
    if (message.rfind("leader config: " + e.field() + ": ", 0) != 0)
      finding("message without its field", input);
    if (message.size() > 600) finding("message not cut: " + std::to_string(message.size()) + " bytes", input);
  }
  return 0;
}
