#include "metrics_sink.h"

namespace leader::detail {
namespace {

class NullMetrics final : public ElectionMetrics {
 public:
  void acquire_attempt(std::string_view) override {}
  void promoted(std::uint64_t, std::optional<Duration>) override {}
  void demoted(DemoteReason, Duration) override {}
  void heartbeat(Duration) override {}
  void heartbeat_failure(std::string_view) override {}
  void revision_regression() override {}
  void connection(ConnectionState) override {}
  void lease_remaining(Duration) override {}
  void callback(std::string_view, Duration, bool) override {}
  void token_validation(std::string_view) override {}
  void health_check_failure() override {}
};

}  // namespace

ElectionMetrics& null_metrics() noexcept {
  static NullMetrics metrics;
  return metrics;
}

}  // namespace leader::detail
