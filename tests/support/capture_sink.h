#pragma once

// An spdlog sink that keeps every line logged through it, for tests that
// check what the library logs (pass `capturing_logger(...)` in Telemetry).

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace leader::testing {

class CaptureSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  struct Line {
    spdlog::level::level_enum level = spdlog::level::off;
    std::string text;  // the message, without time or level
  };
  std::vector<Line> lines() {
    std::lock_guard<std::mutex> lock(mutex_);
    return lines_;
  }
  /// The first line containing `needle`, or an empty one (level off).
  Line find(const std::string& needle) {
    for (auto& l : lines()) {
      if (l.text.find(needle) != std::string::npos) return l;
    }
    return {};
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    lines_.push_back({msg.level, std::string(msg.payload.data(), msg.payload.size())});
  }
  void flush_() override {}

 private:
  std::vector<Line> lines_;
};

/// A logger named `name` writing to `sink` only, at every level.
inline std::shared_ptr<spdlog::logger> capturing_logger(const std::string& name,
                                                        std::shared_ptr<CaptureSink> sink) {
  auto logger = std::make_shared<spdlog::logger>(name, std::move(sink));
  logger->set_level(spdlog::level::trace);
  return logger;
}

}  // namespace leader::testing
