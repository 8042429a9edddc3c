#include "fence.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "history.h"

namespace leader::chaos {
namespace {

/// Holds an exclusive flock for its lifetime.
class FileLock {
 public:
  explicit FileLock(int fd) : fd_(fd) {
    while (::flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  ~FileLock() { ::flock(fd_, LOCK_UN); }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_;
};

FencingToken read_token(int fd) {
  char buf[64];
  ssize_t n = 0;
  while ((n = ::pread(fd, buf, sizeof(buf) - 1, 0)) < 0 && errno == EINTR) {
  }
  if (n <= 0) return {};
  std::string text(buf, static_cast<std::size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return FencingToken::parse(text).value_or(FencingToken{});
}

void write_token(int fd, const FencingToken& token) {
  const std::string text = token.to_string() + "\n";
  // The file only grows or keeps its length while tokens rise within an
  // epoch; truncating first keeps a shorter token readable when it does not.
  if (::ftruncate(fd, 0) != 0) return;
  while (::pwrite(fd, text.data(), text.size(), 0) < 0 && errno == EINTR) {
  }
}

}  // namespace

FenceFile::FenceFile(const std::string& path) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "FenceFile: open " + path);
}

FenceFile::~FenceFile() {
  if (fd_ >= 0) ::close(fd_);
}

FenceOutcome FenceFile::write(const FencingToken& token, const std::function<bool()>& guard) {
  FenceOutcome out;
  const FileLock lock(fd_);
  out.at_ns = testing::monotonic_ns();
  if (guard && !guard()) return out;
  out.attempted = true;
  out.highest = read_token(fd_);
  out.accepted = !out.highest.valid() || !(token < out.highest);
  if (out.accepted && token != out.highest) write_token(fd_, token);
  return out;
}

}  // namespace leader::chaos
