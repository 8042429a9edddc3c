#include "leader/fencing.h"

#include <charconv>

namespace leader {

std::string FencingToken::to_string() const { return std::to_string(epoch) + "." + std::to_string(revision); }

std::optional<FencingToken> FencingToken::parse(std::string_view text) noexcept {
  const auto dot = text.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == text.size()) return std::nullopt;
  FencingToken t;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto a = std::from_chars(begin, begin + dot, t.epoch);
  if (a.ec != std::errc() || a.ptr != begin + dot) return std::nullopt;
  auto b = std::from_chars(begin + dot + 1, end, t.revision);
  if (b.ec != std::errc() || b.ptr != end || t.revision == 0) return std::nullopt;
  return t;
}

}  // namespace leader
