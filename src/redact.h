#pragma once

// Credentials must never reach a log line or an error message: a NATS URL
// may carry them (nats://user:password@host, nats://token@host).

#include <string>
#include <string_view>

namespace leader::detail {

/// `url` with the userinfo of every URL in it (a comma-separated list is
/// fine) replaced by "***": "nats://user:pw@h:4222,nats://tok@h2" ->
/// "nats://***@h:4222,nats://***@h2". The userinfo runs to the last '@' of
/// an entry, so a password with an unescaped '@', '/' or '?' stays hidden
/// (one with a ',' cannot: nats.c splits the list there too). A URL without
/// a scheme ("user:pw@h") is redacted too; text without '@' is returned as is.
std::string redact_url(std::string_view url);

}  // namespace leader::detail
