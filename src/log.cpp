#include "log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <mutex>

namespace leader::detail {

std::shared_ptr<spdlog::logger> default_logger() {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (auto existing = spdlog::get("leader")) return existing;
  auto logger = spdlog::stderr_color_mt("leader");
  const char* level = std::getenv("LEADER_LOG_LEVEL");
  logger->set_level(level ? spdlog::level::from_str(level) : spdlog::level::info);
  return logger;
}

}  // namespace leader::detail
