#include "tcp_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <list>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace leader::testing {
namespace {

constexpr std::size_t kChunk = std::size_t{64} * 1024;
// What one direction buffers before it stops reading (back pressure).
constexpr std::size_t kMaxBuffered = 4 * kChunk;

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

/// Closes with an RST instead of a FIN: the peer's next read or write fails
/// with ECONNRESET, as when a network path is cut and the far end is gone.
void reset(int fd) {
  if (fd < 0) return;
  const linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  ::close(fd);
}

/// A blocking connect to the loopback port (answers at once: refused when
/// nothing listens, accepted by the kernel's backlog even when the server
/// process is stopped); -1 on failure.
int connect_upstream(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const sockaddr_in addr = loopback_address(port);
  while (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno == EINTR) continue;
    ::close(fd);
    return -1;
  }
  set_nonblocking(fd);
  return fd;
}

/// One proxied connection: the accepted client side and our connection to
/// the upstream, with what each direction has read but not yet written.
struct Link {
  int client = -1;
  int upstream = -1;
  std::string to_upstream;
  std::string to_client;
  bool dead = false;
  bool parse = false;       // client bytes go through forward_ops()
  std::string from_client;  // parse: the start of an operation not complete yet

  void close_both(bool with_reset) {
    if (with_reset) {
      reset(client);
      reset(upstream);
    } else {
      if (client >= 0) ::close(client);
      if (upstream >= 0) ::close(upstream);
    }
    client = upstream = -1;
    dead = true;
  }
};

/// Moves bytes from `from` into `buffer`; false on end of stream or error
/// (`error` tells which).
bool read_into(int from, std::string& buffer, bool& error) {
  char chunk[kChunk];
  for (;;) {
    const ssize_t n = ::read(from, chunk, sizeof(chunk));
    if (n > 0) {
      buffer.append(chunk, static_cast<std::size_t>(n));
      return true;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    error = n < 0;
    return false;
  }
}

/// Moves the complete NATS client operations at the front of `in` to `out`,
/// except the PUB / HPUB ones `drop(subject)` says to drop; an incomplete
/// one stays in `in`. An operation is a line ending in CRLF, and for PUB
/// and HPUB also the payload whose size ends that line, and its CRLF.
template <typename Drop>
void forward_ops(std::string& in, std::string& out, Drop&& drop) {
  std::size_t pos = 0;
  for (;;) {
    const std::size_t eol = in.find("\r\n", pos);
    if (eol == std::string::npos) break;
    std::vector<std::string> words;
    std::size_t i = pos;
    while (i < eol) {
      while (i < eol && (in[i] == ' ' || in[i] == '\t')) ++i;
      const std::size_t start = i;
      while (i < eol && in[i] != ' ' && in[i] != '\t') ++i;
      if (i > start) words.emplace_back(in, start, i - start);
    }
    std::string op = words.empty() ? std::string() : words[0];
    for (char& c : op) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    std::size_t end = eol + 2;
    bool dropped = false;
    const std::string& last = words.empty() ? op : words.back();
    const bool sized =
        !last.empty() && last.size() <= 9 && last.find_first_not_of("0123456789") == std::string::npos;
    if ((op == "PUB" || op == "HPUB") && words.size() >= 3 && sized) {
      end += std::stoul(last) + 2;
      if (in.size() < end) break;  // the payload is not all here yet
      dropped = drop(words[1]);
    }
    if (!dropped) out.append(in, pos, end - pos);
    pos = end;
  }
  in.erase(0, pos);
}

/// Writes what it can of `buffer` to `to`; false on error.
bool write_from(int to, std::string& buffer) {
  while (!buffer.empty()) {
    const ssize_t n = ::send(to, buffer.data(), buffer.size(), MSG_NOSIGNAL);
    if (n > 0) {
      buffer.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
  return true;
}

short events_for(const std::string& outgoing, const std::string& incoming) {
  short ev = 0;
  if (!outgoing.empty()) ev |= POLLOUT;
  if (incoming.size() < kMaxBuffered) ev |= POLLIN;
  return ev;
}

}  // namespace

sockaddr_in loopback_address(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

const char* to_string(TcpProxy::Mode mode) noexcept {
  switch (mode) {
    case TcpProxy::Mode::pass:
      return "pass";
    case TcpProxy::Mode::drop:
      return "drop";
    case TcpProxy::Mode::blackhole:
      return "blackhole";
  }
  return "?";
}

TcpProxy::TcpProxy(int upstream_port) : upstream_port_(upstream_port) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) throw std::system_error(errno, std::generic_category(), "TcpProxy: socket");
  sockaddr_in addr = loopback_address(0);
  socklen_t len = sizeof(addr);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 64) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      ::pipe2(wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0) {
    const int err = errno;
    ::close(listen_fd_);
    throw std::system_error(err, std::generic_category(), "TcpProxy: listen on 127.0.0.1");
  }
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { run(); });
}

TcpProxy::~TcpProxy() {
  stopping_ = true;
  wake();
  thread_.join();
  ::close(listen_fd_);
  ::close(wake_fds_[0]);
  ::close(wake_fds_[1]);
}

std::string TcpProxy::url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

void TcpProxy::wake() {
  const char c = 1;
  // A full pipe already wakes the thread.
  [[maybe_unused]] const ssize_t n = ::write(wake_fds_[1], &c, 1);
}

void TcpProxy::drop_publishes(std::string prefix, int count) {
  std::lock_guard<std::mutex> lock(mu_);
  drop_prefix_ = std::move(prefix);
  drop_budget_ = count;
  parse_new_ = true;
}

void TcpProxy::set_mode(Mode mode) {
  std::unique_lock<std::mutex> lock(mu_);
  mode_ = mode;
  const std::uint64_t request = ++requested_;
  wake();
  applied_cv_.wait(lock, [&] { return applied_ >= request; });
}

void TcpProxy::run() {
  std::list<Link> links;
  std::vector<pollfd> fds;
  std::vector<Link*> polled;  // the link of fds[2 + 2k] and fds[3 + 2k]
  while (!stopping_) {
    Mode mode;
    {
      std::lock_guard<std::mutex> lock(mu_);
      mode = mode_;
      if (mode == Mode::drop) {
        for (Link& l : links) l.close_both(/*with_reset=*/true);
        links.clear();
      }
      applied_ = requested_;
    }
    applied_cv_.notify_all();

    fds.clear();
    polled.clear();
    fds.push_back({wake_fds_[0], POLLIN, 0});
    fds.push_back({listen_fd_, static_cast<short>(mode == Mode::blackhole ? 0 : POLLIN), 0});
    if (mode == Mode::pass) {
      for (Link& l : links) {
        fds.push_back({l.client, events_for(l.to_client, l.to_upstream), 0});
        fds.push_back({l.upstream, events_for(l.to_upstream, l.to_client), 0});
        polled.push_back(&l);
      }
    }
    if (::poll(fds.data(), fds.size(), -1) < 0) continue;  // EINTR

    if ((fds[0].revents & POLLIN) != 0) {
      char buf[64];
      while (::read(wake_fds_[0], buf, sizeof(buf)) > 0) {
      }
      continue;  // re-read the mode before anything else
    }
    if ((fds[1].revents & POLLIN) != 0) {
      for (;;) {
        const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (client < 0) break;
        ++accepted_;
        if (mode == Mode::drop) {
          reset(client);
          continue;
        }
        const int upstream = connect_upstream(upstream_port_);
        if (upstream < 0) {
          reset(client);  // as the server would refuse it
          continue;
        }
        Link link{client, upstream, {}, {}, false, false, {}};
        {
          std::lock_guard<std::mutex> lock(mu_);
          link.parse = parse_new_;
        }
        links.push_back(std::move(link));
      }
    }
    for (std::size_t k = 0; k < polled.size(); ++k) {
      Link& l = *polled[k];
      const short client_ev = fds[2 + 2 * k].revents;
      const short upstream_ev = fds[3 + 2 * k].revents;
      bool error = false;
      bool alive = true;
      if ((client_ev & (POLLIN | POLLHUP | POLLERR)) != 0) {
        alive = read_into(l.client, l.parse ? l.from_client : l.to_upstream, error);
        if (l.parse) {
          forward_ops(l.from_client, l.to_upstream, [this](const std::string& subject) {
            std::lock_guard<std::mutex> lock(mu_);
            if (drop_budget_ <= 0 || subject.compare(0, drop_prefix_.size(), drop_prefix_) != 0) return false;
            --drop_budget_;
            ++dropped_;
            return true;
          });
        }
      }
      if (alive && (upstream_ev & (POLLIN | POLLHUP | POLLERR)) != 0) {
        alive = read_into(l.upstream, l.to_client, error);
      }
      if (alive) alive = write_from(l.upstream, l.to_upstream) && write_from(l.client, l.to_client);
      if (!alive) l.close_both(/*with_reset=*/error);
    }
    links.remove_if([](const Link& l) { return l.dead; });
  }
  for (Link& l : links) l.close_both(/*with_reset=*/true);
}

}  // namespace leader::testing
