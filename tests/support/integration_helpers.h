#pragma once

// Helpers shared by the integration tests (tests/integration): names of
// buckets unique to the running test.

#include <cstddef>
#include <string>

namespace leader::testing {

/// `name` with every character a bucket name does not allow replaced by
/// '-', cut to at most `max_length` characters.
std::string bucket_safe(std::string name, std::size_t max_length = 64);

/// A bucket name unique to the running test: "<suite>-<test>", made
/// bucket_safe() with `max_length`.
std::string bucket_for_current_test(std::size_t max_length = 64);

}  // namespace leader::testing
