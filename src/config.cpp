#include "leader/config.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <limits>

#include "leader/error.h"
#include "record.h"

namespace leader {
namespace {

using std::chrono::milliseconds;

std::string show(milliseconds d) { return fmt::format("{}ms", d.count()); }

// A string printed back to a person: control characters, quotes and every
// byte outside printable ASCII escaped as \xNN, long values cut, so a
// hostile value can neither forge log lines nor put invalid UTF-8 into a
// message.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size() && i < 80; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > 80) out += "...";
  return out + "\"";
}

// ASCII only: std::isalnum follows the C locale, which an application may
// have changed.
bool ascii_alnum(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// a - b, saturated: resolved() runs before validate() has checked a range.
milliseconds minus(milliseconds a, milliseconds b) {
  milliseconds::rep out = 0;
  if (__builtin_sub_overflow(a.count(), b.count(), &out)) {
    return b.count() < 0 ? milliseconds::max() : milliseconds::min();
  }
  return milliseconds(out);
}

// NATS KV bucket names: [A-Za-z0-9_-]+ (nats.c validBucketName).
void check_bucket(const std::string& bucket) {
  if (bucket.empty() || bucket.size() > 64) {
    throw ConfigError("bucket", fmt::format("{} must be 1..64 characters", quoted(bucket)));
  }
  for (unsigned char c : bucket) {
    if (!(ascii_alnum(c) || c == '_' || c == '-')) {
      throw ConfigError("bucket",
                        fmt::format("{} may contain only letters, digits, '-' and '_'", quoted(bucket)));
    }
  }
}

// NATS KV keys: [-/_=.A-Za-z0-9]+, not starting or ending with '.', no
// empty tokens (nats.c validKey plus the subject rules).
void check_role(const std::string& role) {
  if (role.empty() || role.size() > 256) {
    throw ConfigError("role", fmt::format("{} must be 1..256 characters", quoted(role)));
  }
  for (unsigned char c : role) {
    if (!(ascii_alnum(c) || c == '-' || c == '/' || c == '_' || c == '=' || c == '.')) {
      throw ConfigError("role",
                        fmt::format("{} may contain only letters, digits and - / _ = .", quoted(role)));
    }
  }
  if (role.rfind("_leader.", 0) == 0) {
    throw ConfigError("role", fmt::format("{} must not start with \"_leader.\" (reserved)", quoted(role)));
  }
  if (role.front() == '.' || role.back() == '.' || role.find("..") != std::string::npos) {
    throw ConfigError("role",
                      fmt::format("{} must not start or end with '.' or contain \"..\"", quoted(role)));
  }
}

void check_instance(const std::string& id) {
  if (const char* problem = detail::instance_id_problem(id)) {
    throw ConfigError("instance_id", fmt::format("{} {}", quoted(id), problem));
  }
}

}  // namespace

Config Config::resolved() const {
  Config c = *this;
  if (c.heartbeat_interval.count() == 0) c.heartbeat_interval = c.ttl / 5;
  if (c.safety_margin.count() == 0) c.safety_margin = std::max(milliseconds(1), c.ttl / 20);
  if (c.call_timeout.count() == 0) c.call_timeout = std::max(milliseconds(1), c.heartbeat_interval / 2);
  if (c.retry_max.count() == 0) c.retry_max = c.heartbeat_interval;
  // Never past the lease deadline: a longer grace is clamped (the driver
  // warns at start when it was).
  const milliseconds usable = minus(c.ttl, c.safety_margin);
  if (c.disconnect_grace.count() == 0 || c.disconnect_grace > usable) c.disconnect_grace = usable;
  if (c.health_timeout.count() == 0) c.health_timeout = std::max(milliseconds(1), c.heartbeat_interval / 2);
  if (c.breaker_open.count() == 0) c.breaker_open = c.ttl;
  return c;
}

void Config::validate() const {
  check_bucket(bucket);
  check_role(role);
  check_instance(instance_id);
  const Config c = resolved();
  if (c.ttl < milliseconds(100) || c.ttl > std::chrono::hours(24)) {
    throw ConfigError("ttl", fmt::format("{} must be between 100ms and 24h", show(c.ttl)));
  }
  if (c.heartbeat_interval <= milliseconds(0)) {
    throw ConfigError("heartbeat_interval", fmt::format("{} must be positive", show(c.heartbeat_interval)));
  }
  if (c.safety_margin <= milliseconds(0) || c.safety_margin > c.ttl / 3) {
    throw ConfigError("safety_margin", fmt::format("{} must be positive and at most ttl / 3 ({})",
                                                   show(c.safety_margin), show(c.ttl / 3)));
  }
  const milliseconds usable = c.ttl - c.safety_margin;
  // Divided rather than multiplied, so a huge heartbeat cannot overflow:
  // for integers h * 3 <= t exactly when h <= t / 3.
  if (c.heartbeat_interval > c.ttl / 3 || c.heartbeat_interval > usable / 2) {
    throw ConfigError("heartbeat_interval",
                      fmt::format("{} too long for ttl {}: need ttl >= 3 x heartbeat and heartbeat <= "
                                  "(ttl - safety_margin) / 2, so a failed renewal can be retried "
                                  "before the lease runs out",
                                  show(c.heartbeat_interval), show(c.ttl)));
  }
  if (c.call_timeout <= milliseconds(0) || c.call_timeout >= usable) {
    throw ConfigError("call_timeout", fmt::format("{} must be positive and below ttl - safety_margin ({})",
                                                  show(c.call_timeout), show(usable)));
  }
  if (c.acquire_jitter < milliseconds(0) || c.acquire_jitter > c.ttl / 10) {
    throw ConfigError("acquire_jitter", fmt::format("{} must be between 0 and ttl / 10 ({})",
                                                    show(c.acquire_jitter), show(c.ttl / 10)));
  }
  // At most 1 h: the backoff doubles it up to 2^20 times in nanoseconds.
  if (c.retry_initial <= milliseconds(0) || c.retry_initial > std::chrono::hours(1)) {
    throw ConfigError("retry_initial",
                      fmt::format("{} must be positive and at most 1h", show(c.retry_initial)));
  }
  if (c.retry_max < c.retry_initial || c.retry_max > c.ttl) {
    throw ConfigError("retry_max", fmt::format("{} must be between retry_initial ({}) and ttl ({})",
                                               show(c.retry_max), show(c.retry_initial), show(c.ttl)));
  }
  // Upper bounds keep every duration within the nanosecond clocks.
  if (c.start_timeout <= milliseconds(0) || c.start_timeout > std::chrono::hours(24)) {
    throw ConfigError("start_timeout",
                      fmt::format("{} must be positive and at most 24h", show(c.start_timeout)));
  }
  if (disconnect_grace < milliseconds(0)) {
    throw ConfigError("disconnect_grace", fmt::format("{} must not be negative", show(disconnect_grace)));
  }
  if (c.validation_interval < milliseconds(0) ||
      (c.validation_interval.count() > 0 && c.validation_interval < milliseconds(10)) ||
      c.validation_interval > std::chrono::hours(24)) {
    throw ConfigError("validation_interval",
                      fmt::format("{} must be 0 (off) or 10ms..24h", show(c.validation_interval)));
  }
  if (c.health_timeout <= milliseconds(0) || c.health_timeout > c.ttl) {
    throw ConfigError("health_timeout",
                      fmt::format("{} must be positive and at most ttl", show(c.health_timeout)));
  }
  if (c.max_health_failures < 1 || c.max_health_failures > 1000) {
    throw ConfigError("max_health_failures",
                      fmt::format("{} must be between 1 and 1000", c.max_health_failures));
  }
  if (c.breaker_threshold < 1 || c.breaker_threshold > 1000) {
    throw ConfigError("breaker_threshold", fmt::format("{} must be between 1 and 1000", c.breaker_threshold));
  }
  if (c.breaker_open <= milliseconds(0) || c.breaker_open > std::chrono::hours(1)) {
    throw ConfigError("breaker_open",
                      fmt::format("{} must be positive and at most 1h", show(c.breaker_open)));
  }
  if (c.priority < -1000000 || c.priority > 1000000) {
    throw ConfigError("priority", fmt::format("{} must be between -1000000 and 1000000", c.priority));
  }
  if (c.replicas < 1 || c.replicas > 5) {
    throw ConfigError("replicas", fmt::format("{} must be between 1 and 5", c.replicas));
  }
  std::size_t meta_bytes = 0;
  for (const auto& [k, v] : c.metadata) meta_bytes += k.size() + v.size();
  if (meta_bytes > 4096) {
    throw ConfigError("metadata", fmt::format("{} bytes; at most 4096 bytes of keys and values", meta_bytes));
  }
}

milliseconds parse_duration(const std::string& text, const std::string& field) {
  std::size_t i = 0;
  long long value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    const int digit = text[i] - '0';
    if (value > (std::numeric_limits<long long>::max() - digit) / 10) {
      throw ConfigError(field, fmt::format("{}: number too large", quoted(text)));
    }
    value = value * 10 + digit;
    ++i;
  }
  if (i == 0) {
    throw ConfigError(field,
                      fmt::format("{} is not a duration (expected e.g. 3s, 500ms, 1m, 2h)", quoted(text)));
  }
  const std::string unit = text.substr(i);
  long long factor = 0;
  if (unit.empty() && value == 0) {
    return milliseconds{0};  // "0" needs no unit
  } else if (unit == "ms") {
    factor = 1;
  } else if (unit == "s") {
    factor = 1000;
  } else if (unit == "m") {
    factor = 60LL * 1000;
  } else if (unit == "h") {
    factor = 60LL * 60 * 1000;
  } else {
    throw ConfigError(field, fmt::format("{} has no valid unit (ms, s, m or h)", quoted(text)));
  }
  if (value > std::numeric_limits<long long>::max() / factor) {
    throw ConfigError(field, fmt::format("{}: duration too large", quoted(text)));
  }
  return milliseconds(value * factor);
}

}  // namespace leader
