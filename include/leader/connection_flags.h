#pragma once

// The connection flags and environment variables shared by the command-line
// tools (leaderctl, examples/control-manager, examples/multi-role), so that
// every one of them connects the same way.

#include <string>

#include "leader/connection.h"

namespace leader {

/// Takes the connection flags out of `argv` and returns `base` with them
/// applied. A flag not given falls back to its environment variable, and
/// then to `base`; an empty variable counts as unset.
///
///   flag                    environment           ConnectionOptions field
///   --nats-url URL          NATS_URL              url
///   --user NAME             NATS_USER             user
///   --password PASSWORD     NATS_PASSWORD         password
///   --token TOKEN           NATS_TOKEN            token
///   --nkey PUBLIC_KEY       NATS_NKEY             nkey
///   --nkey-seed FILE        NATS_NKEY_SEED        nkey_seed_file
///   --creds FILE            NATS_CREDS            creds_file
///   --tls                   (none)                tls = true
///   --tls-ca FILE           NATS_TLS_CA           tls_ca_file
///   --tls-cert FILE         NATS_TLS_CERT         tls_cert_file
///   --tls-key FILE          NATS_TLS_KEY          tls_key_file
///   --tls-server-name NAME  NATS_TLS_SERVER_NAME  tls_server_name
///
/// A value follows as the next argument or after '=' (`--user=alice`);
/// `--tls` takes none. Given twice, the last one counts. Scanning stops at
/// "--", which stays with everything after it. The other arguments keep
/// their order in `argv[1..argc)`, `argc` is updated and `argv[argc]` is
/// set to null. The values are not checked here: `ConnectionOptions::validate()`
/// and `Connection::connect()` do.
///
/// Throws `ConfigError` (field: the flag) for a flag without a value, or
/// `--tls` with one.
ConnectionOptions consume_connection_flags(int& argc, char** argv, ConnectionOptions base = {});

/// Help text of the flags above, one per line, indented by two spaces and
/// ending with a newline, for a tool's usage text.
const char* connection_flags_help() noexcept;

}  // namespace leader
