#include "history.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <system_error>

namespace leader::testing {
namespace {

bool needs_escape(char c) {
  return c == '%' || c == ' ' || c == '=' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

template <typename Int>
std::optional<Int> to_int(std::string_view text) {
  Int value{};
  const auto* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

std::string format_line(std::int64_t at_ns, const std::string& source, std::string_view event,
                        const HistoryFields& fields) {
  std::string line = std::to_string(at_ns);
  line += ' ';
  line += escape_value(source);
  line += ' ';
  line += escape_value(event);
  for (const auto& [key, value] : fields) {
    line += ' ';
    line += escape_value(key);
    line += '=';
    line += escape_value(value);
  }
  line += '\n';
  return line;
}

}  // namespace

std::int64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::string escape_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    if (!needs_escape(c)) {
      out += c;
      continue;
    }
    char buf[4];
    std::snprintf(buf, sizeof(buf), "%%%02X", static_cast<unsigned char>(c));
    out += buf;
  }
  return out;
}

std::string unescape_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (value[i] == '%' && i + 2 < value.size()) {
      const int hi = hex_digit(value[i + 1]);
      const int lo = hex_digit(value[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += value[i];
  }
  return out;
}

std::string HistoryEvent::get(const std::string& key, const std::string& fallback) const {
  const auto it = fields.find(key);
  return it == fields.end() ? fallback : it->second;
}

std::int64_t HistoryEvent::number(const std::string& key, std::int64_t fallback) const {
  const auto it = fields.find(key);
  if (it == fields.end()) return fallback;
  return to_int<std::int64_t>(it->second).value_or(fallback);
}

std::string HistoryEvent::to_line() const {
  HistoryFields ordered(fields.begin(), fields.end());
  std::string line = format_line(at_ns, source, event, ordered);
  line.pop_back();
  return line;
}

std::optional<HistoryEvent> parse_history_line(std::string_view line) {
  std::vector<std::string_view> words;
  std::size_t pos = 0;
  while (pos < line.size()) {
    const auto end = line.find(' ', pos);
    const auto word = line.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    if (!word.empty()) words.push_back(word);
    if (end == std::string_view::npos) break;
    pos = end + 1;
  }
  if (words.size() < 3) return std::nullopt;
  const auto at = to_int<std::int64_t>(words[0]);
  if (!at) return std::nullopt;
  HistoryEvent event;
  event.at_ns = *at;
  event.source = unescape_value(words[1]);
  event.event = unescape_value(words[2]);
  for (std::size_t i = 3; i < words.size(); ++i) {
    const auto eq = words[i].find('=');
    if (eq == std::string_view::npos || eq == 0) return std::nullopt;
    event.fields[unescape_value(words[i].substr(0, eq))] = unescape_value(words[i].substr(eq + 1));
  }
  return event;
}

HistoryWriter::HistoryWriter(const std::string& path, std::string source) : source_(std::move(source)) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "HistoryWriter: open " + path);
}

HistoryWriter::~HistoryWriter() {
  if (fd_ >= 0) ::close(fd_);
}

std::int64_t HistoryWriter::append(std::string_view event, const HistoryFields& fields) {
  const std::int64_t now = monotonic_ns();
  append_at(now, event, fields);
  return now;
}

bool HistoryWriter::append_at(std::int64_t at_ns, std::string_view event, const HistoryFields& fields) {
  const std::string line = format_line(at_ns, source_, event, fields);
  // One write of the whole line: O_APPEND makes it land at the end as a
  // unit. A short write (a full disk) is reported, not retried, as a second
  // write could interleave with another writer's line.
  for (;;) {
    const ssize_t n = ::write(fd_, line.data(), line.size());
    if (n < 0 && errno == EINTR) continue;
    return n == static_cast<ssize_t>(line.size());
  }
}

std::vector<HistoryEvent> HistoryReader::poll() {
  std::vector<HistoryEvent> out;
  std::ifstream in(path_, std::ios::binary);
  if (!in) return out;
  in.seekg(static_cast<std::streamoff>(offset_));
  std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  offset_ += chunk.size();
  partial_ += chunk;
  std::size_t pos = 0;
  while (true) {
    const auto eol = partial_.find('\n', pos);
    if (eol == std::string::npos) break;
    const std::string_view line(partial_.data() + pos, eol - pos);
    ++line_no_;
    auto event = parse_history_line(line);
    if (!event) {
      event = HistoryEvent{};
      event->source = "reader";
      event->event = "malformed";
      event->fields["text"] = std::string(line);
    }
    event->line_no = line_no_;
    out.push_back(std::move(*event));
    pos = eol + 1;
  }
  partial_.erase(0, pos);
  return out;
}

std::vector<HistoryEvent> read_history(const std::string& path) { return HistoryReader(path).poll(); }

}  // namespace leader::testing
