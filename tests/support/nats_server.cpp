#include "support/nats_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace leader::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kStartTimeout = 10s;
constexpr auto kStopTimeout = 5s;

std::string tail_of_file(const std::string& path, std::size_t max_bytes = 8192) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "(no server log at " + path + ")";
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
  return text;
}

bool port_accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

/// Reaps `pid` if it exited; true when it is gone.
bool reaped(pid_t pid, int* status) {
  for (;;) {
    const pid_t r = ::waitpid(pid, status, WNOHANG);
    if (r == pid) return true;
    if (r == 0) return false;
    if (errno == EINTR) continue;
    return true;  // ECHILD: not ours any more
  }
}

/// The state letter of /proc/<pid>/stat ('R', 'S', 'T' for stopped, ...);
/// '?' when unreadable.
char process_state(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return '?';
  const auto paren = line.rfind(')');  // the command name may contain spaces
  if (paren == std::string::npos || paren + 2 >= line.size()) return '?';
  return line[paren + 2];
}

void reap_blocking(pid_t pid) {
  while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "free_port: socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(), "free_port: bind");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string nats_server_binary() {
  if (const char* env = std::getenv("NATS_SERVER_BIN"); env != nullptr && *env != '\0') return env;
  std::string path;
  if (const char* env = std::getenv("PATH"); env != nullptr) path = env;
  // Debian installs it in /usr/sbin, which a user's PATH may lack.
  path += ":/usr/sbin:/usr/local/sbin:/usr/local/bin:/usr/bin";
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/nats-server";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  throw std::runtime_error("nats-server not found in PATH or /usr/sbin: install it or set NATS_SERVER_BIN");
}

NatsServer::NatsServer() : NatsServer(Options{}) {}

NatsServer::NatsServer(Options options) : options_(std::move(options)) {
  std::string base = "/tmp";
  if (const char* tmp = std::getenv("TMPDIR"); tmp != nullptr && *tmp != '\0') base = tmp;
  std::string tmpl = base + "/leader-nats-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    throw std::system_error(errno, std::generic_category(), "NatsServer: mkdtemp in " + base);
  }
  dir_ = buf.data();
  // Another process may take the port between free_port() and the
  // server's bind: try a few ports.
  for (int attempt = 0;; ++attempt) {
    port_ = free_port();
    try {
      launch();
      return;
    } catch (...) {
      const bool port_taken =
          tail_of_file(dir_ + "/server.log").find("address already in use") != std::string::npos;
      if (!port_taken || attempt == 4) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        throw;
      }
    }
  }
}

NatsServer::~NatsServer() {
  kill();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string NatsServer::url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

void NatsServer::launch() {
  const std::string conf = dir_ + "/server.conf";
  const std::string log = dir_ + "/server.log";
  {
    std::ofstream out(conf, std::ios::trunc);
    out << "listen: 127.0.0.1:" << port_ << "\n";
    if (options_.jetstream) out << "jetstream {\n  store_dir: \"" << dir_ << "/jetstream\"\n}\n";
    out << options_.extra_config << "\n";
    if (!out) throw std::runtime_error("NatsServer: cannot write " + conf);
  }
  {
    // Separates the runs of this server in its log.
    std::ofstream out(log, std::ios::app);
    out << "--- launch on port " << port_ << " ---\n";
  }
  const std::string binary = nats_server_binary();
  // Everything the child needs is prepared before fork(): between fork and
  // exec it only makes async-signal-safe calls.
  std::vector<std::string> args = {binary, "-c", conf};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), "NatsServer: fork");
  if (pid == 0) {
    ::setpgid(0, 0);
    // Dies with the test process even when that one cannot run destructors
    // (a crash, a sanitizer abort, SIGKILL). Tied to the forking thread:
    // create servers on a thread that outlives them.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) _exit(127);
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    const int in = ::open("/dev/null", O_RDONLY);
    if (out >= 0) {
      ::dup2(out, STDOUT_FILENO);
      ::dup2(out, STDERR_FILENO);
    }
    if (in >= 0) ::dup2(in, STDIN_FILENO);
    ::execv(binary.c_str(), argv.data());
    _exit(127);
  }
  ::setpgid(pid, pid);  // also in the parent, so it holds before we go on
  pid_ = pid;

  const auto deadline = Clock::now() + kStartTimeout;
  for (;;) {
    int status = 0;
    if (reaped(pid_, &status)) {
      pid_ = -1;
      throw std::runtime_error("nats-server (" + binary + " -c " + conf + ") exited during startup (status " +
                               std::to_string(status) + "); its log:\n" + tail_of_file(log));
    }
    if (port_accepts(port_)) return;
    if (Clock::now() >= deadline) {
      kill();
      throw std::runtime_error("nats-server did not accept connections on 127.0.0.1:" +
                               std::to_string(port_) + " within 10 s; its log:\n" + tail_of_file(log));
    }
    std::this_thread::sleep_for(5ms);
  }
}

void NatsServer::kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  reap_blocking(pid_);
  pid_ = -1;
}

void NatsServer::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  ::kill(pid_, SIGCONT);  // a paused server must run to handle SIGTERM
  const auto deadline = Clock::now() + kStopTimeout;
  int status = 0;
  while (!reaped(pid_, &status)) {
    if (Clock::now() >= deadline) {
      kill();
      return;
    }
    std::this_thread::sleep_for(5ms);
  }
  pid_ = -1;
}

void NatsServer::restart() {
  kill();
  launch();
}

void NatsServer::pause() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGSTOP);
  // kill() only queues the signal: return once the process is stopped, so
  // that a test's next request really meets a hung server.
  const auto deadline = Clock::now() + kStopTimeout;
  while (process_state(pid_) != 'T' && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
}

void NatsServer::resume() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGCONT);
  const auto deadline = Clock::now() + kStopTimeout;
  while (process_state(pid_) == 'T' && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
}

}  // namespace leader::testing
