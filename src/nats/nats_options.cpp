// Credentials and TLS on nats.c's options, and what their failures mean:
// refused credentials and failed TLS handshakes at connect, permission
// violations on calls. Every message names the option to check, never the
// value of a secret.

#include "nats/nats_options.h"

#include <string.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "leader/error.h"
#include "nats/nats_internal.h"

namespace leader::detail {
namespace {

bool is_base32(char c) noexcept { return (c >= 'A' && c <= 'Z') || (c >= '2' && c <= '7'); }

bool all_base32(std::string_view s) noexcept { return std::all_of(s.begin(), s.end(), is_base32); }

std::string_view trimmed(std::string_view line) noexcept {
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!line.empty() && blank(line.front())) line.remove_prefix(1);
  while (!line.empty() && blank(line.back())) line.remove_suffix(1);
  return line;
}

/// Overwrites `s` before it is freed: the seed must not linger in freed
/// heap memory (explicit_bzero is not optimised away).
void wipe(std::string& s) noexcept {
  if (!s.empty()) explicit_bzero(s.data(), s.size());
  s.clear();
}

}  // namespace

SeedFile read_seed_file(const std::string& path) {
  SeedFile out;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    out.error = std::strerror(errno);
    return out;
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    wipe(text);
    out.error = "read error";
    return out;
  }
  out.readable = true;
  std::string_view rest(text);
  while (!rest.empty()) {
    const auto nl = rest.find('\n');
    const std::string_view line = trimmed(rest.substr(0, nl));
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    if (line.size() == 58 && line.substr(0, 2) == "SU" && all_base32(line)) out.has_seed = true;
    if (out.public_key.empty() && is_user_public_key(std::string(line))) out.public_key = line;
  }
  wipe(text);
  return out;
}

bool is_user_public_key(const std::string& s) noexcept {
  return s.size() == 56 && s[0] == 'U' && all_base32(s);
}

bool uses_tls(const ConnectionOptions& o) {
  if (o.tls || !o.tls_ca_file.empty() || !o.tls_cert_file.empty() || !o.tls_key_file.empty() ||
      !o.tls_server_name.empty()) {
    return true;
  }
  // Scheme of any URL of the list, case-insensitively, after blanks.
  std::string_view rest(o.url);
  while (true) {
    const auto comma = rest.find(',');
    std::string_view one = trimmed(rest.substr(0, comma));
    if (one.size() >= 6) {
      std::string scheme(one.substr(0, 6));
      std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (scheme == "tls://") return true;
    }
    if (comma == std::string_view::npos) return false;
    rest.remove_prefix(comma + 1);
  }
}

bool apply_security(natsOptions* opts, const ConnectionOptions& o, std::string* error) noexcept {
  try {
    natsStatus s = NATS_OK;
    const char* field = "";
    auto step = [&](const char* name, auto&& call) {
      if (s != NATS_OK) return;
      field = name;
      s = call();
    };
    if (!o.user.empty()) {
      step("user", [&] {
        return natsOptions_SetUserInfo(opts, o.user.c_str(),
                                       o.password.empty() ? nullptr : o.password.c_str());
      });
    }
    if (!o.token.empty()) step("token", [&] { return natsOptions_SetToken(opts, o.token.c_str()); });
    if (!o.nkey_seed_file.empty()) {
      // nats.c sends the public key and signs the server's nonce with the
      // seed, which it reads from the file at every connect.
      const std::string public_key = o.nkey.empty() ? read_seed_file(o.nkey_seed_file).public_key : o.nkey;
      step("nkey_seed_file",
           [&] { return natsOptions_SetNKeyFromSeed(opts, public_key.c_str(), o.nkey_seed_file.c_str()); });
    }
    if (!o.creds_file.empty()) {
      step("creds_file",
           [&] { return natsOptions_SetUserCredentialsFromFiles(opts, o.creds_file.c_str(), nullptr); });
    }
    if (uses_tls(o)) step("tls", [&] { return natsOptions_SetSecure(opts, true); });
    if (!o.tls_ca_file.empty()) {
      step("tls_ca_file", [&] { return natsOptions_LoadCATrustedCertificates(opts, o.tls_ca_file.c_str()); });
    }
    if (!o.tls_cert_file.empty()) {
      step("tls_cert_file", [&] {
        return natsOptions_LoadCertificatesChain(opts, o.tls_cert_file.c_str(), o.tls_key_file.c_str());
      });
    }
    if (!o.tls_server_name.empty()) {
      step("tls_server_name",
           [&] { return natsOptions_SetExpectedHostname(opts, o.tls_server_name.c_str()); });
    }
    if (s == NATS_OK) return true;
    if (error != nullptr) {
      const nats::Failure f = nats::capture(s);
      *error =
          std::string(field) + ": " + natsStatus_GetText(s) + (f.text.empty() ? "" : " (" + f.text + ")");
    }
    return false;
  } catch (...) {
    if (error != nullptr) *error = "credentials and TLS options: out of memory";
    return false;
  }
}

namespace nats {
namespace {

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

/// The quoted subject of "Permissions Violation for Publish to "<subject>"".
std::string_view violated_subject(std::string_view text) {
  const auto close = text.rfind('"');
  if (close == std::string_view::npos || close == 0) return {};
  const auto open = text.rfind('"', close - 1);
  if (open == std::string_view::npos) return {};
  return text.substr(open + 1, close - open - 1);
}

bool has_token(std::string_view subject, std::string_view token) {
  if (token.empty()) return false;
  while (true) {
    const auto dot = subject.find('.');
    if (subject.substr(0, dot) == token) return true;
    if (dot == std::string_view::npos) return false;
    subject.remove_prefix(dot + 1);
  }
}

/// Which credentials the server refused, for the hint.
std::string credentials_in_use(const ConnectionOptions& o) {
  if (!o.creds_file.empty()) return "creds_file";
  if (!o.nkey_seed_file.empty()) return "nkey / nkey_seed_file";
  if (!o.token.empty()) return "token";
  if (!o.user.empty()) return "user / password";
  return "none given: set user / password, token, nkey_seed_file or creds_file";
}

}  // namespace

Failure with_permission_violation(Failure f, natsConnection* nc, std::string_view op,
                                  const std::string& subject, const std::string& stream) {
  if (f.status != NATS_TIMEOUT || nc == nullptr) return f;
  const char* last = nullptr;
  if (natsConnection_GetLastError(nc, &last) != NATS_NOT_PERMITTED || last == nullptr) return f;
  const std::string text = last;
  if (!contains(text, "Permissions Violation")) return f;
  const std::string_view denied = violated_subject(text);
  bool sent_there = false;
  if (contains(text, "Subscription to")) {
    // The reply inbox: no request can get an answer.
    sent_there = denied.substr(0, 7) == "_INBOX.";
  } else if (op == "get") {
    sent_there = denied == "$JS.API.STREAM.MSG.GET." + stream;
  } else if (op == "watch") {
    sent_there = denied.substr(0, 17) == "$JS.API.CONSUMER." && has_token(denied, stream);
  } else if (op == "open") {
    sent_there = denied.substr(0, 15) == "$JS.API.STREAM." && has_token(denied, stream);
  } else {
    sent_there = !subject.empty() && denied == subject;
  }
  if (!sent_there) return f;
  f.status = NATS_NOT_PERMITTED;
  f.text = text + " (the server refused it; the request then timed out)";
  return f;
}

ConnectFailure explain_connect_failure(natsStatus status, const std::string& text,
                                       const ConnectionOptions& options) {
  ConnectFailure out;
  // A server that verifies clients completes the TLS 1.3 handshake and then
  // drops a client whose certificate it refuses (or that sent none): the
  // client sees the connection end where it expected the PONG, or its
  // CONNECT fail to write (SSL_write), whichever comes first.
  const bool dropped_after_tls = uses_tls(options) && (status == NATS_PROTOCOL_ERROR ||
                                                       (status == NATS_IO_ERROR && contains(text, "SSL_")));
  if (dropped_after_tls) {
    out.errc = Errc::permission_denied;
    out.hint = options.tls_cert_file.empty()
                   ? " (TLS: the server closed the connection: it requires a client certificate; set "
                     "tls_cert_file and tls_key_file)"
                   : " (TLS: the server closed the connection: it refused the client certificate of "
                     "tls_cert_file; is it signed by a CA the server trusts?)";
    return out;
  }
  switch (status) {
    case NATS_NO_SERVER:
    case NATS_IO_ERROR:
      out.errc = Errc::disconnected;
      out.hint = " (is nats-server running there and reachable?)";
      break;
    case NATS_TIMEOUT:
      out.errc = Errc::timeout;
      out.hint =
          " (no answer within connect_timeout " + std::to_string(options.connect_timeout.count()) + "ms)";
      break;
    case NATS_CONNECTION_AUTH_FAILED:
    case NATS_NOT_PERMITTED:
      out.errc = Errc::permission_denied;
      out.hint = " (the server refused the credentials; check " + credentials_in_use(options) + ")";
      break;
    case NATS_SSL_ERROR:
      out.errc = Errc::permission_denied;
      if (contains(text, "mismatch") || contains(text, "expected hostname")) {
        out.hint =
            " (TLS: the server's certificate does not name the host of the URL, or tls_server_name when "
            "set)";
      } else if (contains(text, "issuer") || contains(text, "self-signed") || contains(text, "self signed")) {
        out.hint =
            " (TLS: the server's certificate is not signed by a CA of tls_ca_file, or of the system's trust "
            "store when it is not set)";
      } else {
        out.hint =
            " (TLS handshake failed: check tls_ca_file, tls_cert_file, tls_key_file and tls_server_name)";
      }
      break;
    case NATS_SECURE_CONNECTION_WANTED:
      out.hint = " (TLS is on for this connection, but the server does not offer it)";
      break;
    case NATS_SECURE_CONNECTION_REQUIRED:
      out.hint = " (the server requires TLS)";
      break;
    default:
      break;
  }
  return out;
}

}  // namespace nats
}  // namespace leader::detail

namespace leader {

void apply_connection_security(void* nats_options, const ConnectionOptions& options) {
  if (nats_options == nullptr) throw ConfigError("nats_options", "must not be null (pass a natsOptions*)");
  options.validate();
  std::string error;
  if (!detail::apply_security(static_cast<natsOptions*>(nats_options), options, &error)) {
    throw Error(make_error_code(Errc::other), "cannot apply the connection options: " + error);
  }
}

}  // namespace leader
