#include "fenced_store.h"

#include <nats/nats.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

namespace control_manager {

namespace {

/// "<what>: <status text> (<last error>)".
std::string nats_error(const char* what, natsStatus status) {
  std::string text = std::string(what) + ": " + natsStatus_GetText(status);
  natsStatus last = NATS_OK;
  const char* detail = nats_GetLastError(&last);
  if (detail != nullptr && detail[0] != '\0') text += std::string(" (") + detail + ")";
  return text;
}

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// The key as last read.
struct Current {
  /// Revision of the key's last entry (a value or a delete marker); 0 when
  /// the key never existed (or was purged away).
  std::uint64_t revision = 0;
  /// False when there is no value (never written, deleted or purged).
  bool present = false;
  leader::FencingToken token;
  std::uint64_t n = 0;
};

}  // namespace

struct FencedStore::Impl {
  Options options;
  std::string stream;   // KV_<bucket>
  std::string subject;  // $KV.<bucket>.<key>
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  std::mt19937_64 rng{std::random_device{}()};

  ~Impl() {
    if (js != nullptr) jsCtx_Destroy(js);
    if (nc != nullptr) natsConnection_Destroy(nc);
  }

  void connect() {
    natsOptions* opts = nullptr;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetURL(opts, options.url.c_str());
    if (s == NATS_OK) s = natsOptions_SetName(opts, options.name.c_str());
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 2000);
    // Reconnect quickly and forever; notice a hung server within seconds.
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 100);
    if (s == NATS_OK) s = natsOptions_SetPingInterval(opts, 1000);
    if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(opts, 2);
    if (s == NATS_OK) {
      try {
        leader::apply_connection_security(opts, options.security);
      } catch (...) {
        natsOptions_Destroy(opts);
        throw;
      }
    }
    if (s == NATS_OK) s = natsConnection_Connect(&nc, opts);
    const std::string error = s == NATS_OK ? "" : nats_error("state store: connect", s);
    natsOptions_Destroy(opts);
    if (s != NATS_OK) throw std::runtime_error(error);

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = options.timeout.count();
    s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK) throw std::runtime_error(nats_error("state store: JetStream context", s));
  }

  /// Uses the bucket if it exists, else creates it (two instances creating
  /// it at once with the same configuration both succeed).
  void open_bucket() {
    kvStore* kv = nullptr;
    natsStatus s = js_KeyValue(&kv, js, options.bucket.c_str());
    if (s != NATS_OK) {
      kvConfig cfg;
      kvConfig_Init(&cfg);
      cfg.Bucket = options.bucket.c_str();
      cfg.Description = "control-manager reconcile state, fenced by the leader's token";
      cfg.History = 5;
      cfg.StorageType = js_FileStorage;
      kv = nullptr;
      s = js_CreateKeyValue(&kv, js, &cfg);
      if (s != NATS_OK) {
        // Created meanwhile by someone with another configuration.
        const std::string error = nats_error(("state store: create bucket " + options.bucket).c_str(), s);
        kv = nullptr;
        if (js_KeyValue(&kv, js, options.bucket.c_str()) != NATS_OK) throw std::runtime_error(error);
      }
    }
    kvStore_Destroy(kv);
  }

  /// Reads the key through the stream leader (never a replica's possibly
  /// stale copy; a stale read would only cost a compare-and-swap conflict,
  /// but a decision deserves a current read).
  bool read(Current& out, std::string& error) {
    out = Current{};
    natsMsg* msg = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const natsStatus s = js_GetLastMsg(&msg, js, stream.c_str(), subject.c_str(), nullptr, &jerr);
    if (s == NATS_NOT_FOUND || (s != NATS_OK && jerr == JSNoMessageFoundErr)) return true;
    if (s != NATS_OK) {
      error = nats_error(("read " + subject).c_str(), s);
      return false;
    }
    out.revision = natsMsg_GetSequence(msg);
    const char* op = nullptr;
    if (natsMsgHeader_Get(msg, "KV-Operation", &op) == NATS_OK && op != nullptr &&
        (std::strcmp(op, "DEL") == 0 || std::strcmp(op, "PURGE") == 0)) {
      natsMsg_Destroy(msg);
      return true;
    }
    const char* data = natsMsg_GetData(msg);
    const std::string value(data != nullptr ? data : "",
                            static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
    natsMsg_Destroy(msg);

    // Fail closed: a value whose token cannot be read is never overwritten.
    const auto json = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
    if (!json.is_object() || !json.contains("token") || !json["token"].is_string()) {
      error = "the state at revision " + std::to_string(out.revision) + " has no readable token: " + value;
      return false;
    }
    const auto token = leader::FencingToken::parse(json["token"].get<std::string>());
    if (!token) {
      error = "the state at revision " + std::to_string(out.revision) + " has a malformed token: " + value;
      return false;
    }
    out.present = true;
    out.token = *token;
    if (json.contains("n") && json["n"].is_number_unsigned()) out.n = json["n"].get<std::uint64_t>();
    return true;
  }

  enum class PublishResult { ok, conflict, failed };

  /// Publishes `value` expecting the key's last revision to be `revision`
  /// (0: expecting no entry at all).
  PublishResult publish(const std::string& value, std::uint64_t revision, std::uint64_t& new_revision,
                        std::string& error) {
    natsMsg* msg = nullptr;
    natsStatus s =
        natsMsg_Create(&msg, subject.c_str(), nullptr, value.data(), static_cast<int>(value.size()));
    if (s != NATS_OK) {
      error = nats_error("create message", s);
      return PublishResult::failed;
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = options.timeout.count();
    if (revision != 0) {
      po.ExpectLastSubjectSeq = revision;
    } else {
      po.ExpectNoMessage = true;
    }
    jsPubAck* ack = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    s = js_PublishMsg(&ack, js, msg, &po, &jerr);
    natsMsg_Destroy(msg);
    if (s == NATS_OK) {
      new_revision = ack->Sequence;
      jsPubAck_Destroy(ack);
      return PublishResult::ok;
    }
    if (jerr == JSStreamWrongLastSequenceErr) return PublishResult::conflict;
    error = nats_error(("write " + subject).c_str(), s);
    if (s == NATS_TIMEOUT) error += "; the write may still be applied";
    return PublishResult::failed;
  }

  std::string nonce() {
    char buf[17];
    std::snprintf(buf, sizeof(buf), "%016" PRIx64, static_cast<std::uint64_t>(rng()));
    return buf;
  }
};

std::unique_ptr<FencedStore> FencedStore::open(const Options& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->stream = "KV_" + options.bucket;
  impl->subject = "$KV." + options.bucket + "." + options.key;
  impl->connect();
  impl->open_bucket();
  return std::unique_ptr<FencedStore>(new FencedStore(std::move(impl)));
}

FencedStore::FencedStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FencedStore::~FencedStore() = default;

WriteOutcome FencedStore::write(const leader::FencingToken& mine) {
  WriteOutcome outcome;
  Impl& s = *impl_;
  for (int attempt = 0; attempt < s.options.max_attempts; ++attempt) {
    Current current;
    if (!s.read(current, outcome.error)) return outcome;
    if (!write_allowed(mine,
                       current.present ? std::optional<leader::FencingToken>(current.token) : std::nullopt)) {
      outcome.kind = WriteOutcome::Kind::fenced;
      outcome.highest = current.token;
      return outcome;
    }
    const std::uint64_t n = current.n + 1;
    const nlohmann::json record = {{"token", mine.to_string()},
                                   {"holder", s.options.holder},
                                   {"n", n},
                                   {"nonce", s.nonce()},
                                   {"at_ms", unix_ms()}};
    std::uint64_t revision = 0;
    switch (s.publish(record.dump(), current.revision, revision, outcome.error)) {
      case Impl::PublishResult::ok:
        outcome.kind = WriteOutcome::Kind::written;
        outcome.n = n;
        outcome.revision = revision;
        return outcome;
      case Impl::PublishResult::conflict:
        // Another writer got in between the read and the write: read what
        // it wrote and decide again.
        continue;
      case Impl::PublishResult::failed:
        return outcome;
    }
  }
  outcome.error =
      "gave up after " + std::to_string(s.options.max_attempts) + " compare-and-swap conflicts in a row";
  return outcome;
}

}  // namespace control_manager
