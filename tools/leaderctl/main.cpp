// leaderctl: the operator's command line for leader elections on a NATS
// JetStream KV bucket. Commands: list, watch, resign, validate (see usage()).
//
// It talks to nats.c directly. Reads that decide something (resign, validate)
// are leader-routed (js_GetLastMsg on the bucket's stream), never direct gets
// that a replica may answer with a stale value.

#include <nats/nats.h>

#include <signal.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "leader/connection_flags.h"
#include "leader/error.h"
#include "leader/fencing.h"

#include "nats/nats_internal.h"
#include "record.h"
#include "redact.h"

namespace {

using json = nlohmann::json;

/// Exit codes (documented in usage()).
enum Exit : int {
  kOk = 0,
  kFailure = 1,
  kUsage = 2,
  kNoServer = 3,
  kBucketMissing = 4,
  kUnknownRole = 5,
  kTokenMismatch = 6,
  kConflict = 7,
};

/// Reserved keys of the library (not roles).
constexpr std::string_view kReservedPrefix = "_leader.";

struct Failure {
  int code;
  std::string message;
};

[[noreturn]] void fail(int code, std::string message) { throw Failure{code, std::move(message)}; }

constexpr const char* kUsageText =
    R"TXT(leaderctl: inspect and operate leader elections on a NATS JetStream KV bucket

Usage:
  leaderctl [options] list                    every role: holder, term, fencing token, age, TTL left
  leaderctl [options] watch ROLE|--all [--count N]
                                              print leadership transitions live until SIGINT/SIGTERM
  leaderctl [options] resign ROLE --force [--term N]
                                              delete the current holder's key (compare-and-delete)
  leaderctl [options] validate ROLE TOKEN     exit 0 if TOKEN is the role's current term
  leaderctl help [COMMAND]                    this text, or a command's

Options:
  --bucket NAME      KV bucket (default: leaders)
  --json             machine-readable output (one JSON document; watch: one object per line)
  -h, --help         help (after a command: that command's help)

Connection (server, credentials and TLS):
)TXT";

constexpr const char* kUsageTail = R"TXT(
Exit codes:
  0  ok
  1  generic failure
  2  usage error (bad command, flag or argument; resign without --force)
  3  no server (connecting failed)
  4  bucket missing
  5  unknown role (no such key, or nobody leads it)
  6  token mismatch (validate)
  7  conflict (resign raced with a change of leader, or the role is not in --term N)

Secrets are never printed: passwords and tokens in messages, and credentials in URLs, are
replaced by ***.
)TXT";

constexpr const char* kListHelp = R"TXT(leaderctl list [--bucket B] [--json]

Lists every role (key) of the bucket, except the library's reserved "_leader." keys:
  holder     the instance id in the record ("?" when the record is unreadable)
  term       the revision of the create that won the term
  token      the fencing token "<epoch>.<term>"; epoch = the bucket stream's creation time (ms)
  age        time since the key was last written (create or renewal; server clock)
  ttl left   bucket TTL minus age (0 when due to expire)
A role whose key was deleted (released, resigned) is shown with holder "(none)".
)TXT";

constexpr const char* kWatchHelp = R"TXT(leaderctl watch ROLE|--all [--count N] [--json]

Prints the current leader of ROLE (or of every role with --all), then every transition,
each with a local timestamp, until SIGINT or SIGTERM (exit 0):
  leader      a new term began (holder, term, fencing token)
  no leader   the key was deleted (released or resigned)
  expired?    the bucket TTL passed without a renewal (the server sends no event for an
              expiry: this is a local timer, on the entry's server-side write time)
Renewals by the same holder are not printed. --count N exits after N printed events.
)TXT";

constexpr const char* kResignHelp = R"TXT(leaderctl resign ROLE --force [--term N] [--json]

Deletes ROLE's key if it still holds the term just read (compare-and-delete on the key's
revision; retried while only renewals of the same term intervene). Another instance may then
take the role. Requires --force: the old holder is not told; it still believes it leads until
its next renewal fails (up to one heartbeat interval, longer if it is partitioned). Downstream
systems must check its fencing token to reject its writes.
--term N resigns only the term N (the TERM column of list), so that a term that ended since
you looked is left alone.
Exit 5 if nobody leads ROLE, 7 if the role changed hands meanwhile or is not in term N.
)TXT";

constexpr const char* kValidateHelp = R"TXT(leaderctl validate ROLE TOKEN [--json]

Exit 0 if TOKEN ("<epoch>.<revision>" or a bare revision) is ROLE's current term, read
through the stream leader; 6 if it is not (stale, or another epoch), 5 if nobody leads ROLE.
)TXT";

const char* help_for(const std::string& command) {
  if (command == "list") return kListHelp;
  if (command == "watch") return kWatchHelp;
  if (command == "resign") return kResignHelp;
  if (command == "validate") return kValidateHelp;
  return nullptr;
}

/// The whole usage text: ours around the shared connection flags.
void print_usage(std::FILE* out) {
  std::fputs(kUsageText, out);
  std::fputs(leader::connection_flags_help(), out);
  std::fputs(kUsageTail, out);
}

void print_help(const std::string& command) {
  if (const char* text = help_for(command)) {
    std::fputs(text, stdout);
  } else {
    print_usage(stdout);
  }
}

struct Options {
  std::string command;
  std::vector<std::string> args;
  std::string url;
  std::string bucket = "leaders";
  bool json = false;
  bool help = false;
  bool force = false;
  bool all = false;
  std::optional<long long> count;
  std::optional<std::uint64_t> term;     // resign --term
  leader::ConnectionOptions connection;  // --nats-url, credentials, TLS (connection_flags.h)
};

bool valid_bucket(const std::string& b) {
  return !b.empty() && std::all_of(b.begin(), b.end(), [](unsigned char c) {
    return std::isalnum(c) != 0 || c == '_' || c == '-';
  });
}

bool valid_key(const std::string& k) {
  if (k.empty() || k.front() == '.' || k.back() == '.') return false;
  return std::all_of(k.begin(), k.end(), [](unsigned char c) {
    return std::isalnum(c) != 0 || c == '-' || c == '/' || c == '_' || c == '=' || c == '.';
  });
}

Options parse_args(int argc, char** argv) {
  Options o;
  try {
    o.connection = leader::consume_connection_flags(argc, argv);
  } catch (const leader::ConfigError& e) {
    fail(kUsage, e.what());
  }
  o.connection.name = "leaderctl";
  const std::map<std::string, std::string*> valued = {{"--bucket", &o.bucket}};
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (arg.rfind("--", 0) == 0) {
      const auto eq = arg.find('=');
      if (eq != std::string::npos) {
        inline_value = arg.substr(eq + 1);
        arg.resize(eq);
      }
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) fail(kUsage, arg + " needs a value");
      return argv[++i];
    };
    auto flag = [&](bool& target) {
      if (inline_value) fail(kUsage, arg + " takes no value");
      target = true;
    };
    if (auto it = valued.find(arg); it != valued.end()) {
      *it->second = value();
    } else if (arg == "--count") {
      const std::string v = value();
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (v.empty() || end == nullptr || *end != '\0' || n <= 0) {
        fail(kUsage, "--count needs a positive number");
      }
      o.count = n;
    } else if (arg == "--term") {
      const std::string v = value();
      char* end = nullptr;
      errno = 0;
      const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || !std::isdigit(static_cast<unsigned char>(v[0])) || *end != '\0' || errno != 0 ||
          n == 0) {
        fail(kUsage, "--term needs a positive revision (the TERM column of list)");
      }
      o.term = n;
    } else if (arg == "--json") {
      flag(o.json);
    } else if (arg == "-h" || arg == "--help") {
      flag(o.help);
    } else if (arg == "--force") {
      flag(o.force);
    } else if (arg == "--all") {
      flag(o.all);
    } else if (arg == "--") {
      for (++i; i < argc; ++i) positional.emplace_back(argv[i]);
    } else if (arg.size() > 1 && arg[0] == '-') {
      fail(kUsage, "unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (!positional.empty()) {
    o.command = positional.front();
    o.args.assign(positional.begin() + 1, positional.end());
  }
  return o;
}

/// Replaces every secret in `text` by "***" (belt and braces on top of
/// redact_url: nats.c error texts are not ours).
struct Scrubber {
  std::vector<std::string> secrets;
  std::string operator()(std::string text) const {
    for (const auto& s : secrets) {
      if (s.size() < 3) continue;
      for (auto pos = text.find(s); pos != std::string::npos; pos = text.find(s, pos + 3)) {
        text.replace(pos, s.size(), "***");
      }
    }
    return text;
  }
};

std::string nats_error(const std::string& what, natsStatus status) {
  std::string text = what + ": " + natsStatus_GetText(status);
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  if (detail != nullptr && detail[0] != '\0') text += std::string(" (") + detail + ")";
  return text;
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string format_duration_ms(std::int64_t ms) {
  if (ms < 0) ms = 0;
  if (ms < 1000) return fmt::format("{}ms", ms);
  if (ms < 60'000) return fmt::format("{:.1f}s", static_cast<double>(ms) / 1000.0);
  if (ms < 3'600'000) return fmt::format("{}m{:02}s", ms / 60'000, (ms / 1000) % 60);
  return fmt::format("{}h{:02}m", ms / 3'600'000, (ms / 60'000) % 60);
}

/// A role's state as read from one entry.
struct RoleState {
  std::string role;
  bool leader = false;  // false: deleted / purged (no leader)
  bool readable = true;
  std::string holder;
  std::uint64_t term = 0;
  std::uint64_t revision = 0;
  std::int64_t created_ns = 0;  // server clock
};

RoleState state_of(const std::string& role, bool deleted, std::uint64_t revision, std::int64_t created_ns,
                   const std::string& value) {
  RoleState st;
  st.role = role;
  st.revision = revision;
  st.created_ns = created_ns;
  if (deleted) return st;
  st.leader = true;
  const auto rec = leader::detail::decode_record(value);
  if (!rec) {
    st.readable = false;
    st.holder = "?";
    st.term = revision;  // best guess: unknowable from an unreadable record
    return st;
  }
  st.holder = rec->holder;
  st.term = rec->term != 0 ? rec->term : revision;
  return st;
}

class Ctl {
 public:
  explicit Ctl(const Options& o) : o_(o) {
    scrub_.secrets = {o.connection.password, o.connection.token};
    // The raw URL (it may carry credentials) and its userinfo parts.
    for (std::string_view rest = o.connection.url; !rest.empty();) {
      const auto comma = rest.find(',');
      std::string one(rest.substr(0, comma));
      const auto scheme = one.find("://");
      const auto at = one.rfind('@');
      if (at != std::string::npos) {
        const auto start = scheme == std::string::npos ? 0 : scheme + 3;
        if (at > start) {
          const std::string userinfo = one.substr(start, at - start);
          scrub_.secrets.push_back(userinfo);
          const auto colon = userinfo.find(':');
          if (colon != std::string::npos) scrub_.secrets.push_back(userinfo.substr(colon + 1));
        }
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    std::sort(scrub_.secrets.begin(), scrub_.secrets.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  }
  ~Ctl() {
    if (kv_ != nullptr) kvStore_Destroy(kv_);
    if (js_ != nullptr) jsCtx_Destroy(js_);
    if (nc_ != nullptr) natsConnection_Destroy(nc_);
  }
  Ctl(const Ctl&) = delete;
  Ctl& operator=(const Ctl&) = delete;

  const Scrubber& scrub() const { return scrub_; }

  void connect(bool keep_reconnecting) {
    natsOptions* opts = nullptr;
    natsStatus s = natsOptions_Create(&opts);
    std::string step = "options";
    auto set = [&](const char* what, auto&& call) {
      if (s != NATS_OK) return;
      step = what;
      s = call();
    };
    set("url", [&] { return natsOptions_SetURL(opts, o_.connection.url.c_str()); });
    set("name", [&] { return natsOptions_SetName(opts, o_.connection.name.c_str()); });
    set("timeout", [&] { return natsOptions_SetTimeout(opts, 2000); });
    if (keep_reconnecting) {
      set("reconnect", [&] { return natsOptions_SetMaxReconnect(opts, -1); });
      set("reconnect wait", [&] { return natsOptions_SetReconnectWait(opts, 250); });
    } else {
      set("reconnect", [&] { return natsOptions_SetAllowReconnect(opts, false); });
    }
    if (s != NATS_OK) {
      const std::string error = nats_error("connection option " + step, s);
      natsOptions_Destroy(opts);
      fail(kFailure, error);
    }
    try {
      leader::apply_connection_security(opts, o_.connection);
    } catch (const std::exception& e) {
      natsOptions_Destroy(opts);
      fail(kFailure, e.what());
    }
    s = natsConnection_Connect(&nc_, opts);
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
      nc_ = nullptr;
      natsStatus last = NATS_OK;
      const char* text = nats_GetLastError(&last);
      const auto why =
          leader::detail::nats::explain_connect_failure(s, text != nullptr ? text : "", o_.connection);
      fail(kNoServer,
           nats_error("cannot connect to " + leader::detail::redact_url(o_.connection.url), s) + why.hint);
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    s = natsConnection_JetStream(&js_, nc_, &jo);
    if (s != NATS_OK) {
      js_ = nullptr;
      fail(kFailure, nats_error("JetStream context", s));
    }
  }

  /// Reads the bucket's stream info: fencing epoch and TTL. Exit 4 if missing.
  void open_bucket(bool need_kv) {
    if (!valid_bucket(o_.bucket)) fail(kUsage, "invalid bucket name \"" + o_.bucket + "\"");
    stream_ = "KV_" + o_.bucket;
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const natsStatus s = js_GetStreamInfo(&si, js_, stream_.c_str(), nullptr, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
      fail(kBucketMissing, "bucket \"" + o_.bucket + "\" not found");
    }
    if (s != NATS_OK || si == nullptr) {
      if (s == NATS_NO_RESPONDERS) fail(kFailure, "JetStream is not enabled on the server");
      fail(kFailure, nats_error("bucket \"" + o_.bucket + "\": stream info", s));
    }
    epoch_ = si->Created > 0 ? static_cast<std::uint64_t>(si->Created / 1000000) : 0;
    max_age_ns_ = si->Config != nullptr ? si->Config->MaxAge : 0;
    jsStreamInfo_Destroy(si);
    if (need_kv) {
      kvStore* kv = nullptr;
      const natsStatus ks = js_KeyValue(&kv, js_, o_.bucket.c_str());
      if (ks != NATS_OK) fail(kFailure, nats_error("bucket \"" + o_.bucket + "\"", ks));
      kv_ = kv;
    }
  }

  std::string token_of(std::uint64_t term) const { return leader::FencingToken{epoch_, term}.to_string(); }

  /// TTL left of an entry written at `created_ns`, or -1 without a TTL.
  std::int64_t ttl_left_ms(std::int64_t created_ns, std::int64_t now) const {
    if (max_age_ns_ <= 0) return -1;
    return std::max<std::int64_t>(0, (max_age_ns_ - (now - created_ns)) / 1000000);
  }

  /// Leader-routed read of the role's last entry; nullopt if there is none.
  std::optional<RoleState> read_role(const std::string& role) {
    const std::string subject = "$KV." + o_.bucket + "." + role;
    natsMsg* msg = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const natsStatus s = js_GetLastMsg(&msg, js_, stream_.c_str(), subject.c_str(), nullptr, &jerr);
    if (s == NATS_NOT_FOUND || (s != NATS_OK && jerr == JSNoMessageFoundErr)) return std::nullopt;
    if (s != NATS_OK) fail(kFailure, nats_error("read " + subject, s));
    const char* op = nullptr;
    const bool deleted = natsMsgHeader_Get(msg, "KV-Operation", &op) == NATS_OK && op != nullptr &&
                         (std::strcmp(op, "DEL") == 0 || std::strcmp(op, "PURGE") == 0);
    const char* data = natsMsg_GetData(msg);
    const std::string value(data != nullptr ? data : "",
                            static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
    RoleState st = state_of(role, deleted, natsMsg_GetSequence(msg), natsMsg_GetTime(msg), value);
    natsMsg_Destroy(msg);
    return st;
  }

  enum class DeleteResult { ok, conflict };

  /// Publishes a delete marker if the key's last revision is `revision`.
  DeleteResult compare_and_delete(const std::string& role, std::uint64_t revision, std::uint64_t* marker) {
    const std::string subject = "$KV." + o_.bucket + "." + role;
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, subject.c_str(), nullptr, nullptr, 0);
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, "KV-Operation", "DEL");
    if (s != NATS_OK) {
      natsMsg_Destroy(msg);
      fail(kFailure, nats_error("delete " + role, s));
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 5000;
    po.ExpectLastSubjectSeq = revision;
    jsPubAck* ack = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    s = js_PublishMsg(&ack, js_, msg, &po, &jerr);
    natsMsg_Destroy(msg);
    if (s == NATS_OK && ack != nullptr) {
      *marker = ack->Sequence;
      jsPubAck_Destroy(ack);
      return DeleteResult::ok;
    }
    if (ack != nullptr) jsPubAck_Destroy(ack);
    if (jerr == JSStreamWrongLastSequenceErr) return DeleteResult::conflict;
    fail(kFailure, nats_error("delete " + role, s));
  }

  kvStore* kv() const { return kv_; }
  std::uint64_t epoch() const { return epoch_; }
  std::int64_t max_age_ns() const { return max_age_ns_; }
  const Options& options() const { return o_; }

 private:
  /// The public key for --nkey: a "U..." line of the file (nats.c needs it
  /// next to the seed and cannot derive it).
  const Options& o_;
  Scrubber scrub_;
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
  kvStore* kv_ = nullptr;
  std::string stream_;
  std::uint64_t epoch_ = 0;
  std::int64_t max_age_ns_ = 0;
};

void print_json(const json& j) {
  std::fputs((j.dump() + "\n").c_str(), stdout);
  std::fflush(stdout);
}

void print_line(const std::string& s) {
  std::fputs((s + "\n").c_str(), stdout);
  std::fflush(stdout);
}

// ---------------------------------------------------------------- list

int cmd_list(Ctl& ctl) {
  const Options& o = ctl.options();
  if (!o.args.empty()) fail(kUsage, "list takes no arguments");
  ctl.open_bucket(/*need_kv=*/true);
  kvWatchOptions wo;
  kvWatchOptions_Init(&wo);
  kvWatcher* w = nullptr;
  natsStatus s = kvStore_WatchAll(&w, ctl.kv(), &wo);
  if (s != NATS_OK) fail(kFailure, nats_error("list keys", s));
  std::map<std::string, RoleState> roles;
  for (;;) {
    kvEntry* e = nullptr;
    s = kvWatcher_Next(&e, w, 5000);
    if (s != NATS_OK) {
      kvWatcher_Destroy(w);
      fail(kFailure, nats_error("list keys", s));
    }
    if (e == nullptr) break;  // end of the replay
    const std::string key = kvEntry_Key(e);
    if (key.rfind(kReservedPrefix, 0) != 0) {
      const bool deleted = kvEntry_Operation(e) != kvOp_Put;
      const char* v = static_cast<const char*>(kvEntry_Value(e));
      const std::string value(v != nullptr ? v : "", static_cast<std::size_t>(kvEntry_ValueLen(e)));
      roles[key] = state_of(key, deleted, kvEntry_Revision(e), kvEntry_Created(e), value);
    }
    kvEntry_Destroy(e);
  }
  kvWatcher_Destroy(w);

  const std::int64_t now = now_ns();
  if (o.json) {
    json out;
    out["bucket"] = o.bucket;
    out["epoch"] = ctl.epoch();
    out["ttl_ms"] = ctl.max_age_ns() / 1000000;
    out["roles"] = json::array();
    for (const auto& [key, st] : roles) {
      json r;
      r["role"] = key;
      r["leader"] = st.leader;
      r["revision"] = st.revision;
      if (st.leader) {
        r["holder"] = st.holder;
        r["readable"] = st.readable;
        r["term"] = st.term;
        r["token"] = ctl.token_of(st.term);
        r["age_ms"] = std::max<std::int64_t>(0, (now - st.created_ns) / 1000000);
        const auto left = ctl.ttl_left_ms(st.created_ns, now);
        r["ttl_left_ms"] = left < 0 ? json(nullptr) : json(left);
      } else {
        r["holder"] = nullptr;
      }
      out["roles"].push_back(std::move(r));
    }
    print_json(out);
    return kOk;
  }
  std::vector<std::vector<std::string>> rows = {{"ROLE", "HOLDER", "TERM", "TOKEN", "AGE", "TTL LEFT"}};
  for (const auto& [key, st] : roles) {
    if (!st.leader) {
      rows.push_back({key, "(none)", "-", "-", "-", "-"});
      continue;
    }
    const auto left = ctl.ttl_left_ms(st.created_ns, now);
    rows.push_back({key, st.holder, std::to_string(st.term), ctl.token_of(st.term),
                    format_duration_ms((now - st.created_ns) / 1000000),
                    left < 0 ? "-" : format_duration_ms(left)});
  }
  std::vector<std::size_t> width(rows.front().size(), 0);
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += i + 1 < r.size() ? fmt::format("{:<{}}  ", r[i], width[i]) : r[i];
    }
    print_line(line);
  }
  if (roles.empty()) print_line(fmt::format("(no roles in bucket {})", o.bucket));
  return kOk;
}

// ---------------------------------------------------------------- watch

volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_signal(int) { g_stop = 1; }

int cmd_watch(Ctl& ctl) {
  const Options& o = ctl.options();
  std::string role;
  if (o.all) {
    if (!o.args.empty()) fail(kUsage, "watch: give a ROLE or --all, not both");
  } else {
    if (o.args.size() != 1) fail(kUsage, "watch needs one ROLE (or --all)");
    role = o.args[0];
    if (!valid_key(role)) fail(kUsage, "invalid role \"" + role + "\"");
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  ctl.open_bucket(/*need_kv=*/true);
  kvWatchOptions wo;
  kvWatchOptions_Init(&wo);
  kvWatcher* w = nullptr;
  natsStatus s = o.all ? kvStore_WatchAll(&w, ctl.kv(), &wo) : kvStore_Watch(&w, ctl.kv(), role.c_str(), &wo);
  if (s != NATS_OK) fail(kFailure, nats_error("watch", s));

  struct Known {
    enum class Kind { none, leader, expired } kind = Kind::none;
    std::string holder;
    std::uint64_t term = 0;
    std::int64_t written_ns = 0;
  };
  std::map<std::string, Known> known;
  long long printed = 0;
  bool replayed = false;

  auto emit = [&](const std::string& key, const char* event, const Known& k, std::uint64_t revision) {
    const std::string when = leader::detail::wall_clock_now();
    if (o.json) {
      json j;
      j["time"] = when;
      j["role"] = key;
      j["event"] = event;
      j["initial"] = !replayed;
      if (k.kind != Known::Kind::none) {
        j["holder"] = k.holder;
        j["term"] = k.term;
        j["token"] = ctl.token_of(k.term);
      }
      if (revision != 0) j["revision"] = revision;
      print_json(j);
    } else if (k.kind == Known::Kind::leader) {
      print_line(fmt::format("{} {}: leader {} term {} token {}", when, key, k.holder, k.term,
                             ctl.token_of(k.term)));
    } else if (k.kind == Known::Kind::expired) {
      print_line(fmt::format("{} {}: expired? {} term {} was not renewed within the TTL", when, key, k.holder,
                             k.term));
    } else {
      print_line(fmt::format("{} {}: no leader", when, key));
    }
    ++printed;
  };
  auto done = [&] { return g_stop != 0 || (o.count && printed >= *o.count); };

  int rc = kOk;
  while (!done()) {
    // Wake for signals, and for the next local expiry.
    std::int64_t wait_ms = 200;
    const std::int64_t now = now_ns();
    if (ctl.max_age_ns() > 0) {
      for (const auto& [key, k] : known) {
        if (k.kind != Known::Kind::leader) continue;
        const std::int64_t due = (k.written_ns + ctl.max_age_ns() - now) / 1000000 + 1;
        wait_ms = std::max<std::int64_t>(1, std::min(wait_ms, due));
      }
    }
    kvEntry* e = nullptr;
    s = kvWatcher_Next(&e, w, wait_ms);
    if (g_stop != 0) {
      if (e != nullptr) kvEntry_Destroy(e);
      break;
    }
    if (s == NATS_OK && e == nullptr) {
      if (!replayed && !o.all && known.empty()) {
        replayed = false;
        emit(role, "no_leader", Known{}, 0);
      }
      replayed = true;
    } else if (s == NATS_OK) {
      const std::string key = kvEntry_Key(e);
      if (key.rfind(kReservedPrefix, 0) != 0) {
        const bool deleted = kvEntry_Operation(e) != kvOp_Put;
        const char* v = static_cast<const char*>(kvEntry_Value(e));
        const std::string value(v != nullptr ? v : "", static_cast<std::size_t>(kvEntry_ValueLen(e)));
        const RoleState st = state_of(key, deleted, kvEntry_Revision(e), kvEntry_Created(e), value);
        Known& k = known[key];
        if (!st.leader) {
          const bool changed = k.kind != Known::Kind::none || !replayed;
          k = Known{};
          if (changed) emit(key, "no_leader", k, st.revision);
        } else {
          const bool same_term = k.kind == Known::Kind::leader && k.holder == st.holder && k.term == st.term;
          k.kind = Known::Kind::leader;
          k.holder = st.holder;
          k.term = st.term;
          k.written_ns = st.created_ns;
          if (!same_term) emit(key, "leader", k, st.revision);
        }
      }
      kvEntry_Destroy(e);
    } else if (s != NATS_TIMEOUT) {
      rc = kFailure;
      std::fprintf(stderr, "leaderctl: %s\n", ctl.scrub()(nats_error("watch", s)).c_str());
      break;
    }
    if (ctl.max_age_ns() > 0) {
      const std::int64_t t = now_ns();
      for (auto& [key, k] : known) {
        if (done()) break;
        if (k.kind == Known::Kind::leader && t > k.written_ns + ctl.max_age_ns()) {
          k.kind = Known::Kind::expired;
          emit(key, "expired", k, 0);
        }
      }
    }
  }
  kvWatcher_Stop(w);
  kvWatcher_Destroy(w);
  return rc;
}

// ---------------------------------------------------------------- resign

constexpr const char* kResignRefusal =
    "resign deletes the leader's key behind its back; add --force to do it.\n"
    "  The old holder is not told: it believes it leads until its next renewal fails\n"
    "  (up to a heartbeat interval; longer if it is partitioned), while another instance\n"
    "  may already lead. Downstream systems must check fencing tokens to reject its writes.";

int cmd_resign(Ctl& ctl) {
  const Options& o = ctl.options();
  if (o.args.size() != 1) fail(kUsage, "resign needs one ROLE");
  const std::string role = o.args[0];
  if (!valid_key(role)) fail(kUsage, "invalid role \"" + role + "\"");
  if (!o.force) fail(kUsage, kResignRefusal);
  ctl.open_bucket(/*need_kv=*/false);
  auto current = ctl.read_role(role);
  if (!current || !current->leader) fail(kUnknownRole, "nobody leads role \"" + role + "\"");
  if (o.term && current->term != *o.term) {
    fail(kConflict, fmt::format("role \"{}\" is in term {} of {}, not term {}; nothing deleted", role,
                                current->term, current->holder, *o.term));
  }
  const RoleState target = *current;
  for (int attempt = 0; attempt < 10; ++attempt) {
    std::uint64_t marker = 0;
    if (ctl.compare_and_delete(role, current->revision, &marker) == Ctl::DeleteResult::ok) {
      if (o.json) {
        print_json({{"role", role},
                    {"resigned", true},
                    {"holder", target.holder},
                    {"term", target.term},
                    {"token", ctl.token_of(target.term)},
                    {"revision", marker}});
      } else {
        print_line(fmt::format("resigned {}: deleted the key of {} (term {}, token {}) at revision {}", role,
                               target.holder, target.term, ctl.token_of(target.term), marker));
        print_line(
            fmt::format("note: {} still believes it leads until its next renewal fails; reject tokens <= {}",
                        target.holder, ctl.token_of(target.term)));
      }
      return kOk;
    }
    // Raced: retry while only renewals of the same term intervened.
    current = ctl.read_role(role);
    if (!current || !current->leader || current->holder != target.holder || current->term != target.term) {
      std::string now = !current || !current->leader
                            ? std::string("nobody leads it now")
                            : fmt::format("now {} leads, term {}", current->holder, current->term);
      fail(kConflict, fmt::format("role \"{}\" changed while resigning {} (term {}): {}; nothing deleted",
                                  role, target.holder, target.term, now));
    }
  }
  fail(kConflict, "role \"" + role + "\": kept racing with renewals; nothing deleted");
}

// ---------------------------------------------------------------- validate

/// TOKEN of validate: "<epoch>.<revision>" or a bare revision.
std::pair<std::optional<std::uint64_t>, std::uint64_t> parse_token(const std::string& text) {
  std::optional<std::uint64_t> epoch;
  std::uint64_t revision = 0;
  if (text.find('.') != std::string::npos) {
    const auto t = leader::FencingToken::parse(text);
    if (!t || !t->valid()) {
      fail(kUsage, "invalid token \"" + text + "\" (want <epoch>.<revision> or a revision)");
    }
    epoch = t->epoch;
    revision = t->revision;
  } else {
    const bool digits =
        !text.empty() && text.size() <= 20 &&
        std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = digits ? std::strtoull(text.c_str(), &end, 10) : 0;
    if (!digits || errno != 0 || v == 0) {
      fail(kUsage, "invalid token \"" + text + "\" (want <epoch>.<revision> or a revision)");
    }
    revision = v;
  }
  return {epoch, revision};
}

int cmd_validate(Ctl& ctl) {
  const Options& o = ctl.options();
  if (o.args.size() != 2) fail(kUsage, "validate needs ROLE and TOKEN");
  const std::string role = o.args[0];
  const std::string text = o.args[1];
  if (!valid_key(role)) fail(kUsage, "invalid role \"" + role + "\"");
  const auto [epoch, revision] = parse_token(text);
  ctl.open_bucket(/*need_kv=*/false);
  const auto current = ctl.read_role(role);
  if (!current || !current->leader) fail(kUnknownRole, "nobody leads role \"" + role + "\"");
  if (!current->readable) fail(kFailure, "role \"" + role + "\": the current record is unreadable");
  const bool ok = current->term == revision && (!epoch || *epoch == ctl.epoch());
  const std::string current_token = ctl.token_of(current->term);
  if (o.json) {
    print_json({{"role", role},
                {"token", text},
                {"valid", ok},
                {"current_token", current_token},
                {"holder", current->holder}});
  } else if (ok) {
    print_line(fmt::format("valid: {} is the current term of {} (held by {})", text, role, current->holder));
  } else {
    print_line(fmt::format("mismatch: {} is not the current term of {}; current token {} (held by {})", text,
                           role, current_token, current->holder));
  }
  return ok ? kOk : kTokenMismatch;
}

/// Every usage check that needs no server, so that bad input is exit 2
/// whether or not a server is reachable.
void check_usage(const Options& o) {
  if (o.count && o.command != "watch") fail(kUsage, "--count is for watch");
  if (o.term && o.command != "resign") fail(kUsage, "--term is for resign");
  if (o.all && o.command != "watch") fail(kUsage, "--all is for watch");
  if (o.force && o.command != "resign") fail(kUsage, "--force is for resign");
  if (!valid_bucket(o.bucket)) fail(kUsage, "invalid bucket name \"" + o.bucket + "\"");
  std::size_t want = 0;
  if (o.command == "watch") want = o.all ? 0 : 1;
  if (o.command == "resign") want = 1;
  if (o.command == "validate") want = 2;
  if (o.args.size() != want) {
    fail(kUsage, o.command == "watch" && o.all
                     ? std::string("watch: give a ROLE or --all, not both")
                     : fmt::format("{} takes {} argument(s), got {}", o.command, want, o.args.size()));
  }
  if (want > 0 && !valid_key(o.args[0])) fail(kUsage, "invalid role \"" + o.args[0] + "\"");
  if (o.command == "validate") parse_token(o.args[1]);
  if (o.command == "resign" && !o.force) fail(kUsage, kResignRefusal);
  try {
    o.connection.validate();
  } catch (const leader::ConfigError& e) {
    fail(kUsage, e.what());
  }
}

int run(const Options& o) {
  if (o.command.empty() || o.command == "help") {
    if (o.command.empty() && !o.help) {
      print_usage(stderr);
      return kUsage;
    }
    print_help(o.args.empty() ? "" : o.args[0]);
    return kOk;
  }
  if (o.command != "list" && o.command != "watch" && o.command != "resign" && o.command != "validate") {
    fail(kUsage, "unknown command \"" + o.command + "\" (see leaderctl --help)");
  }
  if (o.help) {
    print_help(o.command);
    return kOk;
  }
  check_usage(o);
  Ctl ctl(o);
  try {
    ctl.connect(/*keep_reconnecting=*/o.command == "watch");
    if (o.command == "list") return cmd_list(ctl);
    if (o.command == "watch") return cmd_watch(ctl);
    if (o.command == "resign") return cmd_resign(ctl);
    return cmd_validate(ctl);
  } catch (Failure& f) {
    f.message = ctl.scrub()(std::move(f.message));
    throw;
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool json_mode = false;
  for (int i = 1; i < argc; ++i) json_mode = json_mode || std::strcmp(argv[i], "--json") == 0;
  int rc = kFailure;
  try {
    rc = run(parse_args(argc, argv));
  } catch (const Failure& f) {
    std::fprintf(stderr, "leaderctl: %s\n", f.message.c_str());
    if (f.code == kUsage && f.message.rfind("resign deletes", 0) != 0 &&
        f.message.find("--help") == std::string::npos) {
      std::fputs("(see leaderctl --help)\n", stderr);
    }
    if (json_mode) print_json({{"error", f.message}, {"exit_code", f.code}});
    rc = f.code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "leaderctl: %s\n", e.what());
    rc = kFailure;
  }
  nats_Close();
  return rc;
}
