#include "redact.h"

namespace leader::detail {
namespace {

// One URL of a list: the userinfo is everything between the scheme and the
// last '@'. Searching the whole entry rather than the authority only keeps
// a password with an unescaped '/', '?' or '#' hidden too (NATS URLs have no
// path).
void redact_one(std::string_view url, std::string& out) {
  std::size_t authority = 0;
  if (const auto scheme = url.find("://"); scheme != std::string_view::npos) authority = scheme + 3;
  const auto at = url.rfind('@');
  if (at == std::string_view::npos || at < authority) {
    out.append(url);
    return;
  }
  // Keep leading blanks of a list entry ("a, user:pw@b") outside the mask.
  std::size_t start = authority;
  while (start < at && (url[start] == ' ' || url[start] == '\t')) ++start;
  out.append(url.substr(0, start));
  out.append("***");
  out.append(url.substr(at));
}

}  // namespace

std::string redact_url(std::string_view url) {
  std::string out;
  out.reserve(url.size());
  std::size_t begin = 0;
  while (true) {
    const auto comma = url.find(',', begin);
    redact_one(url.substr(begin, comma == std::string_view::npos ? std::string_view::npos : comma - begin),
               out);
    if (comma == std::string_view::npos) break;
    out.push_back(',');
    begin = comma + 1;
  }
  return out;
}

}  // namespace leader::detail
