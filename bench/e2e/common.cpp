#include "common.h"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "leader/config.h"
#include "leader/error.h"
#include "support/child_process.h"
#include "support/history_checker.h"

namespace leader::bench {

namespace {

std::int64_t clock_ns(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

std::int64_t mono_ns() { return clock_ns(CLOCK_MONOTONIC); }
std::int64_t real_ns() { return clock_ns(CLOCK_REALTIME); }

void say(const std::string& text) {
  std::fprintf(stderr, "leader-bench-e2e: %s\n", text.c_str());
  std::fflush(stderr);
}

Flags::Flags(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string name = argv[i];
    if (name.rfind("--", 0) != 0) throw UsageError{"unexpected argument '" + name + "'"};
    if (i + 1 >= argc) throw UsageError{"flag " + name + " needs a value"};
    values_[name.substr(2)] = argv[++i];
  }
}

std::optional<std::string> Flags::optional_text(const std::string& name) {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  std::string value = it->second;
  values_.erase(it);
  return value;
}

std::string Flags::text(const std::string& name, const std::string& fallback) {
  return optional_text(name).value_or(fallback);
}

long Flags::number(const std::string& name, long fallback, long min, long max) {
  const auto text = optional_text(name);
  if (!text) return fallback;
  char* end = nullptr;
  const long value = std::strtol(text->c_str(), &end, 10);
  if (text->empty() || *end != '\0' || value < min || value > max) {
    throw UsageError{"--" + name + ": '" + *text + "' is not a number in " + std::to_string(min) + ".." +
                     std::to_string(max)};
  }
  return value;
}

Millis Flags::duration(const std::string& name, Millis fallback) {
  return optional_duration(name).value_or(fallback);
}

std::optional<Millis> Flags::optional_duration(const std::string& name) {
  const auto text = optional_text(name);
  if (!text) return std::nullopt;
  try {
    return leader::parse_duration(*text, name);
  } catch (const leader::ConfigError& e) {
    throw UsageError{"--" + name + ": " + e.what()};
  }
}

void Flags::finish() const {
  if (!values_.empty()) throw UsageError{"unknown flag --" + values_.begin()->first};
}

std::string Line::field(const std::string& key) const {
  auto it = fields.find(key);
  return it == fields.end() ? std::string() : it->second;
}

std::int64_t Line::number(const std::string& key) const {
  const std::string value = field(key);
  return all_digits(value) ? std::stoll(value) : 0;
}

std::optional<Line> parse_line(const std::string& text) {
  Line line;
  line.text = text;
  std::istringstream in(text);
  std::string ns;
  if (!(in >> line.event >> ns) || all_digits(line.event) || !all_digits(ns)) return std::nullopt;
  line.ns = std::stoll(ns);
  std::string word;
  while (in >> word) {
    const auto eq = word.find('=');
    if (eq == std::string::npos) continue;
    std::string key = word.substr(0, eq);
    std::string value = word.substr(eq + 1);
    if (key == "msg") {
      std::string rest;
      std::getline(in, rest);
      value += rest;
    }
    line.fields[key] = value;
  }
  return line;
}

Process::Process(std::string id, const std::vector<std::string>& argv)
    : id_(std::move(id)),
      child_(std::make_unique<testing::ChildProcess>(argv, testing::InheritedFds::close)) {
  if (!child_->running()) throw std::runtime_error("cannot start " + argv.front() + ": " + child_->error());
}

Process::~Process() = default;

pid_t Process::pid() const { return child_->pid(); }
bool Process::running() const { return child_->running(); }

std::optional<std::string> Process::read_raw(Millis timeout) {
  // 0: only what was read already. wait_for_line() rounds what is left down
  // to whole milliseconds, so below 2 ms it would not wait at all.
  return child_->wait_for_line("", timeout <= Millis(0) ? Millis(0) : std::max(timeout, Millis(2)));
}

std::optional<Line> Process::read(Millis timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto raw = read_raw(std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now()));
    if (!raw) return std::nullopt;
    if (auto line = parse_line(*raw)) return line;
  }
}

bool Process::send(const std::string& command) { return child_->write_stdin(command + "\n"); }
void Process::signal(int sig) { child_->signal(sig); }
void Process::kill() { child_->kill(); }

bool Process::wait_exit(Millis timeout) { return child_->wait_exit(timeout).has_value() || !running(); }

Process& Fleet::add(std::unique_ptr<Process> process) {
  processes_.push_back(std::move(process));
  return *processes_.back();
}

void Fleet::remove(const std::string& id) {
  processes_.erase(std::remove_if(processes_.begin(), processes_.end(),
                                  [&](const std::unique_ptr<Process>& p) { return p->id() == id; }),
                   processes_.end());
}

Process* Fleet::find(const std::string& id) {
  for (auto& p : processes_) {
    if (p->id() == id) return p.get();
  }
  return nullptr;
}

std::vector<Process*> Fleet::all() {
  std::vector<Process*> out;
  for (auto& p : processes_) out.push_back(p.get());
  return out;
}

bool Fleet::pump(const Handler& handler, Millis timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    // Index-based: a handler may add processes.
    for (std::size_t i = 0; i < processes_.size(); ++i) {
      Process& p = *processes_[i];
      while (auto line = p.read(Millis(0))) {
        if (handler(p, *line)) return true;
      }
      if (auto line = p.read(Millis(2))) {
        if (handler(p, *line)) return true;
      }
    }
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

void Fleet::pump_for(const Handler& handler, Millis duration) {
  pump(
      [&](Process& p, const Line& line) {
        handler(p, line);
        return false;
      },
      duration);
}

Summary summarize(std::vector<double> samples) {
  Summary s;
  s.n = samples.size();
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.min = samples.front();
  s.max = samples.back();
  s.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(s.n);
  s.p50 = testing::quantile(samples, 0.50);  // nearest rank, as the chaos checker's
  s.p90 = testing::quantile(samples, 0.90);
  s.p99 = testing::quantile(samples, 0.99);
  return s;
}

nlohmann::json to_json(const Summary& s) {
  return {{"n", s.n},     {"min", s.min}, {"mean", s.mean}, {"p50", s.p50},
          {"p90", s.p90}, {"p99", s.p99}, {"max", s.max}};
}

std::vector<double> Table::column(const std::string& name) const {
  const auto it = std::find(columns_.begin(), columns_.end(), name);
  if (it == columns_.end()) throw std::logic_error("no column " + name);
  const auto index = static_cast<std::size_t>(it - columns_.begin());
  std::vector<double> out;
  out.reserve(rows_.size());
  for (const auto& row : rows_) out.push_back(row.at(index));
  return out;
}

void Table::write_csv(const std::string& path) const {
  std::ofstream out(path, std::ios::trunc);
  for (std::size_t i = 0; i < columns_.size(); ++i) out << (i ? "," : "") << columns_[i];
  out << "\n";
  for (const auto& row : rows_) {
    for (std::size_t i = 0; i < row.size(); ++i) out << (i ? "," : "") << row[i];
    out << "\n";
  }
  if (!out) throw std::runtime_error("cannot write " + path);
}

void write_json(const std::string& path, const nlohmann::json& value) {
  std::ofstream out(path, std::ios::trunc);
  out << value.dump(2) << "\n";
  if (!out) throw std::runtime_error("cannot write " + path);
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  return nlohmann::json::parse(in);
}

Millis random_between(std::mt19937_64& rng, Millis min, Millis max) {
  std::uniform_int_distribution<long long> d(min.count(), max.count());
  return Millis(d(rng));
}

std::string duration_flag(Millis d) { return std::to_string(d.count()) + "ms"; }

}  // namespace leader::bench
