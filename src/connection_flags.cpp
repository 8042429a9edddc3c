#include "leader/connection_flags.h"

#include <cstdlib>
#include <optional>
#include <string>

#include "leader/error.h"

namespace leader {
namespace {

struct Flag {
  const char* name;
  const char* env;
  std::string ConnectionOptions::*field;
};

// --tls is the one switch; it is handled on its own.
const Flag kFlags[] = {
    {"--nats-url", "NATS_URL", &ConnectionOptions::url},
    {"--user", "NATS_USER", &ConnectionOptions::user},
    {"--password", "NATS_PASSWORD", &ConnectionOptions::password},
    {"--token", "NATS_TOKEN", &ConnectionOptions::token},
    {"--nkey", "NATS_NKEY", &ConnectionOptions::nkey},
    {"--nkey-seed", "NATS_NKEY_SEED", &ConnectionOptions::nkey_seed_file},
    {"--creds", "NATS_CREDS", &ConnectionOptions::creds_file},
    {"--tls-ca", "NATS_TLS_CA", &ConnectionOptions::tls_ca_file},
    {"--tls-cert", "NATS_TLS_CERT", &ConnectionOptions::tls_cert_file},
    {"--tls-key", "NATS_TLS_KEY", &ConnectionOptions::tls_key_file},
    {"--tls-server-name", "NATS_TLS_SERVER_NAME", &ConnectionOptions::tls_server_name},
};

constexpr const char* kTlsFlag = "--tls";

const Flag* find_flag(const std::string& name) {
  for (const Flag& f : kFlags) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

}  // namespace

ConnectionOptions consume_connection_flags(int& argc, char** argv, ConnectionOptions base) {
  for (const Flag& f : kFlags) {
    const char* v = std::getenv(f.env);
    if (v != nullptr && v[0] != '\0') base.*f.field = v;
  }
  int kept = 1;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    std::string name = arg;
    std::optional<std::string> inline_value;
    if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
    }
    if (name == kTlsFlag) {
      if (inline_value) throw ConfigError(kTlsFlag, "takes no value");
      base.tls = true;
      continue;
    }
    const Flag* flag = find_flag(name);
    if (flag == nullptr) {
      argv[kept++] = argv[i];
      continue;
    }
    if (inline_value) {
      base.*flag->field = *inline_value;
    } else if (i + 1 < argc) {
      base.*flag->field = argv[++i];
    } else {
      throw ConfigError(flag->name, "needs a value");
    }
  }
  for (; i < argc; ++i) argv[kept++] = argv[i];
  argc = kept;
  argv[argc] = nullptr;
  return base;
}

const char* connection_flags_help() noexcept {
  return "  --nats-url URL           server URL(s), comma-separated; tls:// turns TLS on\n"
         "                           (env NATS_URL; default nats://127.0.0.1:4222)\n"
         "  --user NAME              user name (env NATS_USER), with --password\n"
         "  --password PASSWORD      password (env NATS_PASSWORD; prefer the variable:\n"
         "                           other local users can read a command line)\n"
         "  --token TOKEN            authentication token (env NATS_TOKEN; prefer the variable)\n"
         "  --nkey-seed FILE         NKey user seed file, SU... (env NATS_NKEY_SEED)\n"
         "  --nkey PUBLIC_KEY        the seed's public key, U... (env NATS_NKEY); not needed\n"
         "                           when the seed file holds it on a line of its own\n"
         "  --creds FILE             credentials file, user JWT + seed (env NATS_CREDS)\n"
         "  --tls                    use TLS (also on with any --tls-* flag)\n"
         "  --tls-ca FILE            CA certificates to trust, PEM (env NATS_TLS_CA;\n"
         "                           default: the system's trust store)\n"
         "  --tls-cert FILE          client certificate, PEM (env NATS_TLS_CERT), with --tls-key\n"
         "  --tls-key FILE           client private key, PEM (env NATS_TLS_KEY)\n"
         "  --tls-server-name NAME   host name the server's certificate must name (env\n"
         "                           NATS_TLS_SERVER_NAME; default: the URL's host)\n";
}

}  // namespace leader
