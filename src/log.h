#pragma once

#include <memory>

namespace spdlog {
class logger;
}

namespace leader::detail {

/// The library's default logger, named "leader" (stderr; level from the
/// LEADER_LOG_LEVEL environment variable, default "info"). An application
/// logger registered under that name is used instead.
std::shared_ptr<spdlog::logger> default_logger();

}  // namespace leader::detail
