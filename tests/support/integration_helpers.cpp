#include "integration_helpers.h"

#include <cctype>

#include <gtest/gtest.h>

namespace leader::testing {

std::string bucket_safe(std::string name, std::size_t max_length) {
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '-';
  }
  if (name.size() > max_length) name.resize(max_length);
  return name;
}

std::string bucket_for_current_test(std::size_t max_length) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return bucket_safe(std::string(info->test_suite_name()) + "-" + info->name(), max_length);
}

}  // namespace leader::testing
