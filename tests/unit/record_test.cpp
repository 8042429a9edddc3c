#include <gtest/gtest.h>

#include "record.h"

namespace leader::detail {
namespace {

TEST(RecordTest, RoundTrips) {
  Record r;
  r.holder = "node-a";
  r.nonce = "0123456789abcdef";
  r.term = 42;
  r.priority = -3;
  r.metadata = {{"zone", "eu-1"}, {"version", "1.2"}};
  r.acquired_at = "2026-01-01T00:00:00.000Z";
  r.renewed_at = wall_clock_now();
  const auto back = decode_record(encode_record(r));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->holder, r.holder);
  EXPECT_EQ(back->nonce, r.nonce);
  EXPECT_EQ(back->term, 42u);
  EXPECT_EQ(back->priority, -3);
  EXPECT_EQ(back->metadata, r.metadata);
  EXPECT_EQ(back->renewed_at, r.renewed_at);
}

TEST(RecordTest, NonUtf8IdsDoNotThrow) {
  Record r;
  r.holder = "bad\xff\xfe";
  r.nonce = "n";
  std::string encoded;
  EXPECT_NO_THROW(encoded = encode_record(r));
  EXPECT_TRUE(decode_record(encoded).has_value());
}

TEST(RecordTest, RejectsGarbageWithoutThrowing) {
  for (const std::string& bad :
       {std::string(), std::string("x"), std::string("{}"), std::string("[1,2]"), std::string("\"str\""),
        std::string("{\"holder\":\"a\"}"), std::string("{\"holder\":\"a\",\"nonce\":7}"),
        std::string("{\"holder\":\"a\",\"nonce\":\"n\",\"term\":\"7\"}"),
        std::string("{\"holder\":\"a\",\"nonce\":\"n\",\"priority\":1e300}"),
        std::string("{\"holder\":\"a\",\"nonce\":\"n\",\"metadata\":{\"k\":1}}"),
        std::string(kMaxRecordBytes + 1, ' '), std::string(100000, '[') + std::string(100000, ']'),
        std::string("{\"holder\":\"a\",\"nonce\":\"n\"") /* truncated */}) {
    EXPECT_FALSE(decode_record(bad).has_value()) << bad.substr(0, 60);
  }
}

TEST(RecordTest, IgnoresUnknownFields) {
  const auto r = decode_record(R"({"v":9,"holder":"a","nonce":"n","future":{"x":[1]}})");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->holder, "a");
  EXPECT_EQ(r->term, 0u);
}

}  // namespace
}  // namespace leader::detail
