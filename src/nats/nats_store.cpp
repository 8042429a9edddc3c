// KvStore and Watch on nats.c. Reads are leader-routed (js_GetLastMsg, never
// direct get); writes are JetStream publishes with expectations, so every
// outcome comes with an exact jsErrCode; a watch is an ordered push consumer
// delivered on nats.c's shared delivery pool.

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "nats/nats_internal.h"

namespace leader::detail::nats {
namespace {

using namespace std::chrono_literals;
using TimePoint = std::chrono::steady_clock::time_point;

constexpr const char* kOpHeader = "KV-Operation";
/// Bound of creating a watch (subscribe + consumer info); kv.h gives watch()
/// no timeout of its own.
constexpr auto kWatchSetupTimeout = std::chrono::seconds(5);

TimePoint deadline_after(Duration timeout) {
  if (timeout < Duration::zero()) timeout = Duration::zero();
  if (timeout > std::chrono::hours(24)) timeout = std::chrono::hours(24);
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout);
}

EntryOp op_of(natsMsg* msg) {
  const char* v = nullptr;
  if (natsMsgHeader_Get(msg, kOpHeader, &v) == NATS_OK && v != nullptr) {
    if (std::strcmp(v, "DEL") == 0) return EntryOp::del;
    if (std::strcmp(v, "PURGE") == 0) return EntryOp::purge;
  }
  return EntryOp::put;
}

KvEntry entry_of(natsMsg* msg, const std::string& key, std::uint64_t revision, std::int64_t created_ns) {
  KvEntry e;
  e.key = key;
  e.revision = revision;
  e.created_ns = created_ns;
  e.op = op_of(msg);
  if (e.op == EntryOp::put) {
    const char* data = natsMsg_GetData(msg);
    const int len = natsMsg_GetDataLength(msg);
    if (data != nullptr && len > 0) e.value.assign(data, static_cast<std::size_t>(len));
  }
  return e;
}

/// Re-checks, `delay` from now, a replay that has not ended. Its last
/// message can expire after the consumer counted it as pending and before
/// it was sent: then no message ends the replay. When the key has no
/// message any more, the replay is over.
void schedule_replay_check(Core* core, std::weak_ptr<WatchCore> weak, std::string stream, std::string subject,
                           std::chrono::milliseconds delay) {
  // `core` outlives the task: ~Core stops the Deferred thread first.
  core->deferred.post(
      [core, weak, stream, subject, delay] {
        auto watch = weak.lock();
        if (!watch || watch->settled()) return;
        if (core->gate() == KvOutcome::ok) {
          jsOptions jo;
          jsOptions_Init(&jo);
          jo.Wait = 1000;
          natsMsg* raw = nullptr;
          jsErrCode jerr = static_cast<jsErrCode>(0);
          natsStatus s = js_GetLastMsg(&raw, core->js, stream.c_str(), subject.c_str(), &jo, &jerr);
          MsgPtr msg(raw);
          if (s == NATS_NOT_FOUND && jerr == JSNoMessageFoundErr) {
            watch->replay_was_empty();
            return;
          }
          if (s == NATS_NOT_FOUND && jerr == JSStreamNotFoundErr) {
            watch->fail(KvOutcome::not_found, "watch of key \"" + watch->key() + "\" in bucket \"" +
                                                  watch->bucket() + "\": the bucket was deleted");
            return;
          }
        }
        schedule_replay_check(core, weak, stream, subject,
                              std::min<std::chrono::milliseconds>(delay * 2, 30s));
      },
      delay);
}

class NatsWatch final : public Watch {
 public:
  NatsWatch(std::shared_ptr<Core> core, std::shared_ptr<WatchCore> watch, std::uint64_t id,
            SubscriptionPtr sub)
      : core_(std::move(core)), watch_(std::move(watch)), id_(id), sub_(std::move(sub)) {}

  ~NatsWatch() override {
    watch_->stop();
    core_->events->remove_watch(id_);
    core_->retire(sub_.release());  // never destroyed while the reader may be inside it
  }

 private:
  std::shared_ptr<Core> core_;  // declared first: outlives the subscription
  std::shared_ptr<WatchCore> watch_;
  std::uint64_t id_;
  SubscriptionPtr sub_;
};

class NatsKvStore final : public KvStore {
 public:
  NatsKvStore(std::shared_ptr<Core> core, std::string bucket)
      : core_(std::move(core)), bucket_(std::move(bucket)), stream_("KV_" + bucket_) {}

  KvResult get(const std::string& key, Duration timeout) override {
    try {
      return get_until(key, deadline_after(timeout));
    } catch (...) {
      return unexpected("get", key);
    }
  }

  KvResult create(const std::string& key, const std::string& value, std::optional<std::uint64_t> last_marker,
                  Duration timeout) override {
    try {
      // 0 is no revision: a create without a marker expects no message.
      std::uint64_t marker = 0;
      if (last_marker.has_value()) marker = *last_marker;
      return create_until(key, value, marker, deadline_after(timeout));
    } catch (...) {
      return unexpected("create", key);
    }
  }

  KvResult update(const std::string& key, const std::string& value, std::uint64_t expected,
                  Duration timeout) override {
    try {
      if (expected == 0) {
        return failed("update", key, KvOutcome::other,
                      "expected revision 0 is no revision (it would make the write "
                      "unconditional)");
      }
      return publish("update", key, &value, expected, deadline_after(timeout));
    } catch (...) {
      return unexpected("update", key);
    }
  }

  KvResult erase(const std::string& key, std::uint64_t expected, Duration timeout) override {
    try {
      if (expected == 0) {
        return failed("erase", key, KvOutcome::other,
                      "expected revision 0 is no revision (it would make the delete "
                      "unconditional)");
      }
      return publish("erase", key, nullptr, expected, deadline_after(timeout));
    } catch (...) {
      return unexpected("erase", key);
    }
  }

  std::unique_ptr<Watch> watch(const std::string& key, WatchHandler handler, KvResult* error) override {
    try {
      return watch_impl(key, std::move(handler), error);
    } catch (...) {
      if (error != nullptr) *error = unexpected("watch", key);
      return nullptr;
    }
  }

  std::unique_ptr<Watch> watch_all(WatchHandler handler, KvResult* error) override {
    try {
      return watch_impl(">", std::move(handler), error);
    } catch (...) {
      if (error != nullptr) *error = unexpected("watch", ">");
      return nullptr;
    }
  }

 private:
  std::string subject(const std::string& key) const { return "$KV." + bucket_ + "." + key; }

  std::string what(const char* op, const std::string& key) const {
    return std::string(op) + " of key \"" + key + "\" in bucket \"" + bucket_ + "\" (" + subject(key) + ")";
  }

  KvResult failed(const char* op, const std::string& key, KvOutcome outcome,
                  const std::string& detail) const {
    KvResult r;
    r.outcome = outcome;
    r.message = what(op, key) + ": " + detail;
    return r;
  }

  KvResult failed(const char* op, const std::string& key, const Failure& failure) const {
    const Failure f = with_permission_violation(failure, core_->nc, op, subject(key), stream_);
    const auto outcome = classify(f, natsConnection_Status(core_->nc));
    return failed(op, key, outcome == KvOutcome::ok ? KvOutcome::other : outcome, describe(outcome, f));
  }

  KvResult unexpected(const char* op, const std::string& key) const noexcept {
    KvResult r;
    r.outcome = KvOutcome::other;
    try {
      r.message = what(op, key) + ": unexpected internal error";
    } catch (...) {
    }
    return r;
  }

  /// Checks the connection and the time left; nullopt when the call may go.
  std::optional<KvResult> precheck(const char* op, const std::string& key, TimePoint deadline) const {
    const auto gate = core_->gate();
    if (gate != KvOutcome::ok) {
      return failed(op, key, gate,
                    std::string(to_string(gate)) + " (not connected to " + core_->server_url() + ")");
    }
    if (ms_left(deadline) == 0) {
      return failed(op, key, KvOutcome::timeout, "timeout (no time left for the call)");
    }
    return std::nullopt;
  }

  KvResult get_until(const std::string& key, TimePoint deadline) const {
    if (auto r = precheck("get", key, deadline)) return *r;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = ms_left(deadline);
    natsMsg* raw = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const std::string subj = subject(key);
    natsStatus s = js_GetLastMsg(&raw, core_->js, stream_.c_str(), subj.c_str(), &jo, &jerr);
    MsgPtr msg(raw);
    if (s != NATS_OK || !msg) {
      return failed("get", key, capture(s == NATS_OK ? NATS_ERR : s, static_cast<int>(jerr)));
    }
    KvResult r;
    r.outcome = KvOutcome::ok;
    r.entry = entry_of(msg.get(), key, natsMsg_GetSequence(msg.get()), natsMsg_GetTime(msg.get()));
    r.revision = r.entry->revision;
    return r;
  }

  /// One publish on the key's subject: a put of `*value`, or a delete marker
  /// when `value` is null. Expects the subject's last sequence to be
  /// `expect_last`, or no message at all when it is nullopt.
  KvResult publish(const char* op, const std::string& key, const std::string* value,
                   std::optional<std::uint64_t> expect_last, TimePoint deadline) const {
    if (auto r = precheck(op, key, deadline)) return *r;
    if (value != nullptr && value->size() > static_cast<std::size_t>(INT_MAX)) {
      return failed(op, key, KvOutcome::other, "value too large");
    }
    const std::string subj = subject(key);
    natsMsg* raw = nullptr;
    natsStatus s = natsMsg_Create(&raw, subj.c_str(), nullptr, value != nullptr ? value->data() : nullptr,
                                  value != nullptr ? static_cast<int>(value->size()) : 0);
    MsgPtr msg(raw);
    if (s == NATS_OK && value == nullptr) s = natsMsgHeader_Set(msg.get(), kOpHeader, "DEL");
    if (s != NATS_OK) {
      const auto f = capture(s);
      return failed(op, key, KvOutcome::other, describe(KvOutcome::other, f));
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ms_left(deadline);
    if (expect_last) {
      po.ExpectLastSubjectSeq = *expect_last;
    } else {
      po.ExpectNoMessage = true;
    }
    jsPubAck* raw_ack = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    s = js_PublishMsg(&raw_ack, core_->js, msg.get(), &po, &jerr);
    PubAckPtr ack(raw_ack);
    if (s != NATS_OK || !ack) {
      return failed(op, key, capture(s == NATS_OK ? NATS_ERR : s, static_cast<int>(jerr)));
    }
    KvResult r;
    r.outcome = KvOutcome::ok;
    r.revision = ack->Sequence;
    return r;
  }

  /// Best effort, within the deadline: attaches the key's latest entry to a
  /// conflict when it is a live value.
  void attach_live_entry(KvResult* r, const std::string& key, TimePoint deadline) const {
    if (ms_left(deadline) == 0) return;
    auto g = get_until(key, deadline);
    if (g.ok() && g.entry && g.entry->op == EntryOp::put) r->entry = std::move(g.entry);
  }

  KvResult create_until(const std::string& key, const std::string& value, std::uint64_t marker,
                        TimePoint deadline) const {
    if (marker != 0) {
      auto r = publish("create", key, &value, marker, deadline);
      if (r.outcome == KvOutcome::conflict) attach_live_entry(&r, key, deadline);
      return r;
    }
    auto r = publish("create", key, &value, std::nullopt, deadline);
    if (r.outcome != KvOutcome::conflict) return r;

    // The key has a message: a live value (a real conflict) or a delete /
    // purge marker, which a create may replace. Leader-routed, so the
    // marker's revision is current.
    auto g = get_until(key, deadline);
    if (g.outcome == KvOutcome::not_found) {
      // Expired in between: one more plain create.
      auto again = publish("create", key, &value, std::nullopt, deadline);
      if (again.outcome == KvOutcome::conflict) attach_live_entry(&again, key, deadline);
      return again;
    }
    if (!g.ok() || !g.entry) {
      r.message += "; reading the current entry failed: " + g.message;
      return r;
    }
    if (g.entry->op == EntryOp::put) {
      r.entry = std::move(g.entry);
      return r;
    }
    auto over = publish("create", key, &value, g.entry->revision, deadline);
    if (over.outcome == KvOutcome::conflict) attach_live_entry(&over, key, deadline);
    return over;
  }

  /// `key` ">": every key of the bucket.
  std::unique_ptr<Watch> watch_impl(const std::string& key, WatchHandler handler, KvResult* error) {
    auto fail = [&](KvResult r) -> std::unique_ptr<Watch> {
      if (error != nullptr) *error = std::move(r);
      return nullptr;
    };
    if (!handler) return fail(failed("watch", key, KvOutcome::other, "no handler given"));
    const auto deadline = deadline_after(kWatchSetupTimeout);
    if (auto r = precheck("watch", key, deadline)) return fail(std::move(*r));

    // A bucket watch names each entry's key from its subject.
    auto core = std::make_shared<WatchCore>(bucket_, key == ">" ? std::string() : key, std::move(handler));
    core->self = core;  // released by nats.c's completion callback
    const auto id = core_->events->add_watch(core);

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = ms_left(deadline);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream_.c_str();  // no stream lookup round trip
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverLastPerSubject;
    const std::string subj = subject(key);
    natsSubscription* raw = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s =
        js_Subscribe(&raw, core_->js, subj.c_str(), &WatchCore::on_message, core.get(), &jo, &so, &jerr);
    if (s != NATS_OK || raw == nullptr) {
      const auto f = capture(s == NATS_OK ? NATS_ERR : s, static_cast<int>(jerr));
      core_->events->remove_watch(id);
      core->self.reset();
      return fail(failed("watch", key, f));
    }
    SubscriptionPtr sub(raw);
    if (natsSubscription_SetOnCompleteCB(raw, &WatchCore::on_complete, core.get()) != NATS_OK) {
      // Already closed (the connection went away): nats.c will not report
      // completion, so the closure lives as long as the connection's state.
      core_->events->bury(std::move(core->self));
    }
    core_->events->bind_subscription(id, raw);

    // The replay ends with the message whose NumPending is 0. When the key
    // has no message there is no such message: the consumer's info says so
    // (nothing delivered, nothing pending); anything later is live.
    jsOptions ci_opts;
    jsOptions_Init(&ci_opts);
    ci_opts.Wait = std::max<std::int64_t>(1, ms_left(deadline));
    jsConsumerInfo* raw_ci = nullptr;
    jerr = static_cast<jsErrCode>(0);
    s = natsSubscription_GetConsumerInfo(&raw_ci, raw, &ci_opts, &jerr);
    ConsumerInfoPtr ci(raw_ci);
    if (s != NATS_OK || !ci) {
      const auto f = capture(s == NATS_OK ? NATS_ERR : s, static_cast<int>(jerr));
      core->stop();
      core_->events->remove_watch(id);
      core_->retire(sub.release());
      auto r = failed("watch", key, f);
      r.message += " (reading the watch's consumer info)";
      return fail(std::move(r));
    }
    if (ci->Delivered.Consumer == 0 && ci->NumPending == 0) {
      core_->deferred.post([core] { core->replay_was_empty(); });
    } else {
      schedule_replay_check(core_.get(), core, stream_, subj, 1s);
    }
    return std::make_unique<NatsWatch>(core_, std::move(core), id, std::move(sub));
  }

  std::shared_ptr<Core> core_;
  const std::string bucket_;
  const std::string stream_;
};

}  // namespace

void WatchCore::on_message(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  MsgPtr owned(msg);
  static_cast<WatchCore*>(closure)->handle(owned.get());
}

void WatchCore::on_complete(void* closure) {
  // The last reference may go here; nats.c calls nothing of this
  // subscription afterwards.
  std::shared_ptr<WatchCore> last = std::move(static_cast<WatchCore*>(closure)->self);
}

void WatchCore::handle(natsMsg* msg) {
  jsMsgMetaData* raw = nullptr;
  natsStatus s = natsMsg_GetMetaData(&raw, msg);
  MetaDataPtr meta(raw);
  if (s != NATS_OK || !meta) {
    const auto f = capture(s == NATS_OK ? NATS_ERR : s);
    fail(KvOutcome::other, "watch of key \"" + key_ + "\" in bucket \"" + bucket_ +
                               "\": unreadable message metadata: " + describe(KvOutcome::other, f));
    return;
  }
  WatchEvent event;
  event.kind = WatchEvent::Kind::entry;
  std::string key = key_;
  if (key.empty()) {
    // A bucket watch: the key is the subject past "$KV.<bucket>.".
    const char* subj = natsMsg_GetSubject(msg);
    const std::size_t prefix = 4 + bucket_.size() + 1;
    if (subj != nullptr && std::strlen(subj) > prefix) key.assign(subj + prefix);
  }
  event.entry = entry_of(msg, key, meta->Sequence.Stream, meta->Timestamp);
  const bool caught_up = meta->NumPending == 0;

  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_ || failed_) return;
  // An ordered consumer never redelivers; this only guards a reset.
  if (event.entry.revision > last_revision_) {
    last_revision_ = event.entry.revision;
    deliver(event);
  }
  if (caught_up && !replay_done_) {
    replay_done_ = true;
    WatchEvent done;
    done.kind = WatchEvent::Kind::replay_done;
    deliver(done);
  }
}

void WatchCore::replay_was_empty() {
  std::lock_guard<std::mutex> lock(mu_);
  if (replay_done_) return;
  replay_done_ = true;
  WatchEvent done;
  done.kind = WatchEvent::Kind::replay_done;
  deliver(done);
}

bool WatchCore::settled() {
  if (delivering_.load() == std::this_thread::get_id()) return true;
  std::lock_guard<std::mutex> lock(mu_);
  return replay_done_ || stopped_ || failed_;
}

void WatchCore::fail(KvOutcome outcome, const std::string& message) {
  if (delivering_.load() == std::this_thread::get_id()) return;  // re-entered from the handler: cannot happen
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_ || failed_) return;
  WatchEvent event;
  event.kind = WatchEvent::Kind::error;
  event.error = outcome;
  event.message = message;
  deliver(event);
  failed_ = true;
}

void WatchCore::stop() noexcept {
  if (delivering_.load() == std::this_thread::get_id()) {
    stopped_ = true;  // called from the handler, which holds mu_
    return;
  }
  WatchHandler dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    dropped = std::move(handler_);
  }
}

void WatchCore::deliver(const WatchEvent& event) noexcept {
  if (stopped_ || failed_ || !handler_) return;
  delivering_.store(std::this_thread::get_id());
  try {
    handler_(event);
  } catch (...) {
    // Handlers must not throw; the boundary never lets an exception out.
  }
  delivering_.store(std::thread::id{});
}

std::shared_ptr<KvStore> make_store(std::shared_ptr<Core> core, std::string bucket) {
  return std::make_shared<NatsKvStore>(std::move(core), std::move(bucket));
}

}  // namespace leader::detail::nats
