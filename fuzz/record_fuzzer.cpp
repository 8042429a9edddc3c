// Fuzzes the record codec (src/record.h). Any bytes may sit in a role's
// key, so decode_record must never crash, throw or hang, and must accept
// exactly the documented records: checked against the input read again
// with nlohmann::json and the rules of record.h stated in fuzz/oracle.h.
// The same bytes also build a Record that must survive encode -> decode
// unchanged whenever it is one the rules allow.

#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "oracle.h"
#include "record.h"

namespace {

using leader::detail::Record;
using leader::fuzz::finding;
using nlohmann::json;

constexpr int kMaxDepth = 8;  // record.h: "nested deeper than 8" is garbage

// Measures nesting while parsing, and gives up past the limit, so deep
// input never reaches a recursive destructor.
struct DepthProbe : nlohmann::json_sax<json> {
  int depth = 0;
  bool too_deep = false;
  bool open() {
    too_deep = too_deep || ++depth > kMaxDepth;
    return !too_deep;
  }
  bool close() {
    --depth;
    return true;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return open(); }
  bool key(string_t&) override { return true; }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }
};

bool same(const Record& a, const Record& b) {
  return a.holder == b.holder && a.nonce == b.nonce && a.term == b.term && a.priority == b.priority &&
         a.metadata == b.metadata && a.acquired_at == b.acquired_at && a.renewed_at == b.renewed_at;
}

// The record the rules make of `j`, or nullopt where they reject it.
std::optional<Record> expected_record(const json& j) {
  if (!j.is_object()) return std::nullopt;
  const auto holder = j.find("holder");
  const auto nonce = j.find("nonce");
  if (holder == j.end() || !holder->is_string() || nonce == j.end() || !nonce->is_string())
    return std::nullopt;
  Record r;
  r.holder = holder->get<std::string>();
  r.nonce = nonce->get<std::string>();
  if (!leader::fuzz::valid_instance_id(r.holder) || r.nonce.empty()) return std::nullopt;
  if (const auto t = j.find("term"); t != j.end()) {
    if (t->type() != json::value_t::number_unsigned) return std::nullopt;
    r.term = t->get<std::uint64_t>();
  }
  if (const auto p = j.find("priority"); p != j.end()) {
    // Compared as exact integers of either sign: no conversion can wrap.
    if (p->type() == json::value_t::number_unsigned) {
      if (p->get<std::uint64_t>() > 1000000) return std::nullopt;
      r.priority = static_cast<int>(p->get<std::uint64_t>());
    } else if (p->type() == json::value_t::number_integer) {
      const std::int64_t v = p->get<std::int64_t>();
      if (v < -1000000 || v > 1000000) return std::nullopt;
      r.priority = static_cast<int>(v);
    } else {
      return std::nullopt;
    }
  }
  if (const auto m = j.find("metadata"); m != j.end()) {
    if (!m->is_object()) return std::nullopt;
    for (const auto& [k, v] : m->items()) {
      if (!v.is_string()) return std::nullopt;
      r.metadata[k] = v.get<std::string>();
    }
  }
  for (const auto& [name, field] :
       {std::pair{"acquired_at", &Record::acquired_at}, std::pair{"renewed_at", &Record::renewed_at}}) {
    if (const auto a = j.find(name); a != j.end() && a->is_string()) r.*field = a->get<std::string>();
  }
  return r;
}

void check_decode(const std::string& input) {
  const std::optional<Record> got = leader::detail::decode_record(input);
  std::optional<Record> want;
  // RFC 8259 has no raw NUL in a JSON text; nlohmann::json would stop
  // reading at one, so the oracle states that rule itself.
  const bool json_text = input.find('\0') == std::string::npos;
  if (!input.empty() && input.size() <= leader::detail::kMaxRecordBytes && json_text) {
    DepthProbe probe;
    json::sax_parse(input, &probe, json::input_format_t::json, /*strict=*/true);
    if (!probe.too_deep) {
      const json j = json::parse(input, nullptr, /*allow_exceptions=*/false);
      if (!j.is_discarded()) want = expected_record(j);
    }
  }
  if (got.has_value() != want.has_value()) {
    finding(
        got ? "decode_record accepted a record the rules reject" : "decode_record rejected a valid record",
        input);
  }
  if (!got) return;
  if (!same(*got, *want)) finding("decode_record read a field differently from the JSON", input);
  // A decoded record re-encodes to one that decodes to the same, and the
  // encoding is canonical.
  const std::string encoded = leader::detail::encode_record(*got);
  if (encoded.size() > leader::detail::kMaxRecordBytes) return;  // only reachable with near-limit input
  const auto again = leader::detail::decode_record(encoded);
  if (!again || !same(*again, *got)) finding("a decoded record did not survive encode -> decode", input);
  if (leader::detail::encode_record(*again) != encoded) finding("encode_record is not canonical", input);
}

bool all_utf8(const Record& r) {
  if (!leader::fuzz::code_points(r.nonce) || !leader::fuzz::code_points(r.acquired_at) ||
      !leader::fuzz::code_points(r.renewed_at)) {
    return false;
  }
  for (const auto& [k, v] : r.metadata) {
    if (!leader::fuzz::code_points(k) || !leader::fuzz::code_points(v)) return false;
  }
  return true;
}

void check_encode(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  Record r;
  r.holder = in.ConsumeRandomLengthString(160);
  r.nonce = in.ConsumeRandomLengthString(40);
  r.term = in.ConsumeIntegral<std::uint64_t>();
  r.priority = in.ConsumeBool() ? in.ConsumeIntegralInRange(-1000000, 1000000) : in.ConsumeIntegral<int>();
  const int entries = in.ConsumeIntegralInRange(0, 4);
  for (int i = 0; i < entries; ++i)
    r.metadata[in.ConsumeRandomLengthString(16)] = in.ConsumeRandomLengthString(32);
  r.acquired_at = in.ConsumeRandomLengthString(32);
  r.renewed_at = in.ConsumeRemainingBytesAsString();
  const std::string encoded = leader::detail::encode_record(r);
  const auto back = leader::detail::decode_record(encoded);
  const bool holder_utf8 = leader::fuzz::code_points(r.holder).has_value();
  if (!holder_utf8) {
    // Why Config requires UTF-8 ids: such an id never comes back unchanged.
    if (back && back->holder == r.holder) finding("a non-UTF-8 holder came back unchanged", r.holder);
    return;
  }
  const bool allowed = leader::fuzz::valid_instance_id(r.holder) && !r.nonce.empty() &&
                       r.priority >= -1000000 && r.priority <= 1000000 &&
                       encoded.size() <= leader::detail::kMaxRecordBytes;
  if (!allowed) {
    if (back) finding("a record the rules reject was decoded from its encoding", encoded);
    return;
  }
  if (!back) finding("an allowed record was not decoded from its own encoding", encoded);
  if (all_utf8(r) && !same(*back, r)) finding("an allowed record changed in encode -> decode", encoded);
  if (back->holder != r.holder || back->nonce.empty() || back->term != r.term ||
      back->priority != r.priority) {
    finding("encode -> decode changed the holder, term or priority", encoded);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check_decode(std::string(reinterpret_cast<const char*>(data), size));
  check_encode(data, size);
  return 0;
}
