#include "kv.h"

namespace leader::detail {

std::unique_ptr<Watch> KvStore::watch_all(WatchHandler, KvResult* error) {
  if (error != nullptr) {
    error->outcome = KvOutcome::other;
    error->message = "this store cannot watch a whole bucket";
  }
  return nullptr;
}

const char* to_string(KvOutcome o) noexcept {
  switch (o) {
    case KvOutcome::ok:
      return "ok";
    case KvOutcome::conflict:
      return "conflict";
    case KvOutcome::not_found:
      return "not_found";
    case KvOutcome::timeout:
      return "timeout";
    case KvOutcome::no_responders:
      return "no_responders";
    case KvOutcome::disconnected:
      return "disconnected";
    case KvOutcome::closed:
      return "closed";
    case KvOutcome::permission_denied:
      return "permission_denied";
    case KvOutcome::other:
      return "other";
  }
  return "other";
}

std::error_code to_error_code(KvOutcome o) noexcept {
  switch (o) {
    case KvOutcome::ok:
      return {};
    case KvOutcome::conflict:
      return make_error_code(Errc::conflict);
    case KvOutcome::not_found:
      return make_error_code(Errc::not_found);
    case KvOutcome::timeout:
      return make_error_code(Errc::timeout);
    case KvOutcome::no_responders:
      return make_error_code(Errc::no_responders);
    case KvOutcome::disconnected:
      return make_error_code(Errc::disconnected);
    case KvOutcome::closed:
      return make_error_code(Errc::closed);
    case KvOutcome::permission_denied:
      return make_error_code(Errc::permission_denied);
    case KvOutcome::other:
      return make_error_code(Errc::other);
  }
  return make_error_code(Errc::other);
}

}  // namespace leader::detail
