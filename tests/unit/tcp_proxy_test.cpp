// The chaos tests' loopback TCP proxy (tests/support/tcp_proxy.h) in front
// of an echo server of the test's own: it forwards both ways, a blackhole
// forwards nothing and closes nothing until it heals, and drop resets what
// is open and refuses what comes.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tcp_proxy.h"

namespace leader::testing {
namespace {

using namespace std::chrono_literals;

/// Echoes every byte back, on a thread of its own, to any number of clients.
class EchoServer {
 public:
  EchoServer() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = loopback_address(0);
    socklen_t len = sizeof(addr);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listen_fd_, 16) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "echo server: cannot listen";
    }
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~EchoServer() {
    stop_ = true;
    thread_.join();
    for (const int fd : clients_) ::close(fd);
    ::close(listen_fd_);
  }
  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;
  int port() const { return port_; }

 private:
  void run() {
    while (!stop_) {
      std::vector<pollfd> fds = {{listen_fd_, POLLIN, 0}};
      for (const int fd : clients_) fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      if ((fds[0].revents & POLLIN) != 0) {
        const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (client >= 0) clients_.push_back(client);
      }
      for (std::size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        char buf[4096];
        const ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
        if (n > 0) {
          ::send(fds[i].fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
        } else {
          ::close(fds[i].fd);
          std::erase(clients_, fds[i].fd);
        }
      }
    }
  }
  int listen_fd_ = -1;
  int port_ = 0;
  std::vector<int> clients_;  // the server thread's
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

/// A client connection; -1 when the connect failed.
int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const sockaddr_in addr = loopback_address(port);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// What arrives on `fd` within `wait`: the bytes read, "" at end of stream
/// or on an error (`closed` set), nullopt when nothing came.
std::optional<std::string> receive(int fd, std::chrono::milliseconds wait, bool* closed = nullptr) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) return std::nullopt;
  char buf[4096];
  const ssize_t n = ::read(fd, buf, sizeof(buf));
  if (n <= 0) {
    if (closed != nullptr) *closed = true;
    return std::string();
  }
  return std::string(buf, static_cast<std::size_t>(n));
}

bool send_text(int fd, const std::string& text) {
  return ::send(fd, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size());
}

TEST(TcpProxyTest, ForwardsBothWays) {
  EchoServer echo;
  TcpProxy proxy(echo.port());
  EXPECT_EQ(proxy.url(), "nats://127.0.0.1:" + std::to_string(proxy.port()));
  const int fd = connect_to(proxy.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_text(fd, "hello"));
  EXPECT_EQ(receive(fd, 5s), "hello");
  const std::string big(100000, 'b');  // more than one chunk each way
  ASSERT_TRUE(send_text(fd, big));
  std::string back;
  while (back.size() < big.size()) {
    const auto got = receive(fd, 5s);
    ASSERT_TRUE(got && !got->empty()) << "after " << back.size() << " bytes";
    back += *got;
  }
  EXPECT_EQ(back, big);
  EXPECT_EQ(proxy.accepted(), 1u);
  ::close(fd);
}

/// A client connected to the echo server through the proxy, one round trip
/// done.
class TcpProxyModeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = connect_to(proxy_.port());
    ASSERT_GE(fd_, 0);
    ASSERT_TRUE(send_text(fd_, "a"));
    ASSERT_EQ(receive(fd_, 5s), "a");
  }
  void TearDown() override {
    if (fd_ >= 0) ::close(fd_);
  }
  EchoServer echo_;
  TcpProxy proxy_{echo_.port()};
  int fd_ = -1;
};

TEST_F(TcpProxyModeTest, BlackholeForwardsNothingClosesNothingAndHeals) {
  proxy_.set_mode(TcpProxy::Mode::blackhole);
  EXPECT_EQ(proxy_.mode(), TcpProxy::Mode::blackhole);
  ASSERT_TRUE(send_text(fd_, "b"));
  EXPECT_EQ(receive(fd_, 300ms), std::nullopt) << "nothing forwarded, nothing closed";
  // A new connection waits in the backlog and gets nothing either.
  const int late = connect_to(proxy_.port());
  ASSERT_GE(late, 0);
  ASSERT_TRUE(send_text(late, "c"));
  EXPECT_EQ(receive(late, 300ms), std::nullopt);

  proxy_.set_mode(TcpProxy::Mode::pass);
  EXPECT_EQ(receive(fd_, 5s), "b") << "what was sent flows once it heals";
  EXPECT_EQ(receive(late, 5s), "c");
  ::close(late);
}

TEST_F(TcpProxyModeTest, DropResetsOpenConnectionsAndRefusesNewOnesUntilHealed) {
  proxy_.set_mode(TcpProxy::Mode::drop);
  bool closed = false;
  EXPECT_EQ(receive(fd_, 5s, &closed), "");
  EXPECT_TRUE(closed) << "the open connection was reset";

  const int refused = connect_to(proxy_.port());
  if (refused >= 0) {  // accepted by the kernel, then reset by the proxy
    closed = false;
    send_text(refused, "x");
    EXPECT_EQ(receive(refused, 5s, &closed), "");
    EXPECT_TRUE(closed);
    ::close(refused);
  }

  proxy_.set_mode(TcpProxy::Mode::pass);
  const int again = connect_to(proxy_.port());
  ASSERT_GE(again, 0);
  ASSERT_TRUE(send_text(again, "back"));
  EXPECT_EQ(receive(again, 5s), "back");
  ::close(again);
}

TEST(TcpProxyTest, DropsTheNextPublishesToASubjectPrefixWholeAndPassesTheRest) {
  EchoServer echo;
  TcpProxy proxy(echo.port());
  const int before = connect_to(proxy.port());  // connected before: not parsed
  ASSERT_GE(before, 0);
  ASSERT_TRUE(send_text(before, "a"));  // a round trip: the proxy has accepted it
  ASSERT_EQ(receive(before, 5s), "a");
  proxy.drop_publishes("$JS.API.STREAM.INFO.", 2);
  const int fd = connect_to(proxy.port());
  ASSERT_GE(fd, 0);
  // Split across writes, with a payload that holds CRLF and a PUB look-alike.
  const std::string kept1 = "PUB $JS.API.STREAM.CREATE.KV_b _INBOX.1 5\r\nab\r\nc\r\n";
  const std::string gone1 = "PUB $JS.API.STREAM.INFO.KV_b _INBOX.2 11\r\nPUB x 1\r\nyy\r\n";
  const std::string gone2 = "HPUB $JS.API.STREAM.INFO.KV_b _INBOX.3 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
  const std::string kept2 = "PING\r\nsub foo 1\r\nPUB $JS.API.STREAM.INFO.KV_b _INBOX.4 0\r\n\r\n";
  const std::string all = kept1 + gone1 + gone2 + kept2;
  for (std::size_t i = 0; i < all.size(); i += 7) {
    ASSERT_TRUE(send_text(fd, all.substr(i, 7)));
    std::this_thread::sleep_for(1ms);
  }
  const std::string want = kept1 + kept2;  // the third INFO is past the budget
  std::string got;
  while (got.size() < want.size()) {
    const auto part = receive(fd, 5s);
    ASSERT_TRUE(part && !part->empty()) << "got so far: " << got;
    got += *part;
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(proxy.dropped_publishes(), 2u);
  // The earlier connection passes bytes as they are, even a bare word.
  ASSERT_TRUE(send_text(before, "PUB $JS.API.STREAM.INFO.x 0\r\n\r\nraw"));
  std::string raw;
  while (raw.size() < 34) {
    const auto part = receive(before, 5s);
    ASSERT_TRUE(part && !part->empty()) << raw;
    raw += *part;
  }
  EXPECT_EQ(raw, "PUB $JS.API.STREAM.INFO.x 0\r\n\r\nraw");
  ::close(before);
  ::close(fd);
}

TEST(TcpProxyTest, AnUpstreamThatIsDownResetsTheClient) {
  int port = 0;
  {
    EchoServer gone;
    port = gone.port();
  }
  TcpProxy proxy(port);
  const int fd = connect_to(proxy.port());
  ASSERT_GE(fd, 0);
  bool closed = false;
  EXPECT_EQ(receive(fd, 5s, &closed), "");
  EXPECT_TRUE(closed);
  ::close(fd);
}

}  // namespace
}  // namespace leader::testing
