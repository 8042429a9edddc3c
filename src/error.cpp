#include "leader/error.h"

#include <string>

namespace leader {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "leader"; }
  std::string message(int value) const override {
    switch (static_cast<Errc>(value)) {
      case Errc::ok:
        return "ok";
      case Errc::timeout:
        return "timed out (the operation may still be applied)";
      case Errc::no_responders:
        return "no responders (JetStream unavailable or electing a stream leader)";
      case Errc::disconnected:
        return "disconnected from the server";
      case Errc::closed:
        return "connection closed";
      case Errc::permission_denied:
        return "permission denied";
      case Errc::bucket_mismatch:
        return "existing bucket's configuration differs";
      case Errc::jetstream_unavailable:
        return "JetStream is not available";
      case Errc::conflict:
        return "revision conflict";
      case Errc::not_found:
        return "not found";
      case Errc::other:
        return "error";
      case Errc::bucket_missing:
        return "bucket missing and cannot be created";
    }
    return "unknown leader error";
  }
};

}  // namespace

const std::error_category& error_category() noexcept {
  static const Category category;
  return category;
}

std::error_code make_error_code(Errc e) noexcept { return {static_cast<int>(e), error_category()}; }

bool is_transient(std::error_code ec) noexcept {
  if (ec.category() != error_category()) return false;
  switch (static_cast<Errc>(ec.value())) {
    case Errc::timeout:
    case Errc::no_responders:
    case Errc::disconnected:
      return true;
    default:
      return false;
  }
}

ConfigError::ConfigError(std::string field, const std::string& message)
    : std::invalid_argument("leader config: " + field + ": " + message), field_(std::move(field)) {}

Error::Error(std::error_code ec, const std::string& message) : std::system_error(ec, message) {}

}  // namespace leader
