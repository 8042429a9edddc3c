#include "nats_cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

#include "tcp_proxy.h"
#include "wait.h"

namespace leader::testing {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

/// /jsz of node `port` with its streams, parsed; nullopt when it does not
/// answer.
std::optional<nlohmann::json> jsz(int port, std::chrono::milliseconds timeout) {
  const auto body = http_get(port, "/jsz?accounts=true&streams=true", timeout);
  if (!body) return std::nullopt;
  auto json = nlohmann::json::parse(*body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return std::nullopt;
  return json;
}

/// The "cluster" object of `stream` in a /jsz answer; nullptr if absent.
const nlohmann::json* stream_cluster(const nlohmann::json& jsz, const std::string& stream) {
  const auto accounts = jsz.find("account_details");
  if (accounts == jsz.end() || !accounts->is_array()) return nullptr;
  for (const auto& account : *accounts) {
    const auto streams = account.find("stream_detail");
    if (streams == account.end() || !streams->is_array()) continue;
    for (const auto& s : *streams) {
      if (s.value("name", "") != stream) continue;
      const auto cluster = s.find("cluster");
      if (cluster != s.end() && cluster->is_object()) return &*cluster;
    }
  }
  return nullptr;
}

std::string text_field(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

std::string unique_cluster_name() {
  static std::atomic<int> counter{0};
  return "chaos-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

}  // namespace

std::optional<std::string> http_get(int port, const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return std::nullopt;
  const sockaddr_in addr = loopback_address(port);
  std::string response;
  bool ok =
      ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 || errno == EINPROGRESS;
  if (ok) {
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof(err);
    ok = ::poll(&p, 1, remaining_ms(deadline)) == 1 &&
         ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
  }
  if (ok) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    ok = ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size());
  }
  while (ok) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, remaining_ms(deadline)) != 1) {
      ok = false;
      break;
    }
    char buf[8192];
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;  // end of the response (HTTP/1.0 closes)
    response.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  // "HTTP/1.x 200 ..."
  if (!ok || response.rfind("HTTP/1.", 0) != 0 || response.compare(8, 5, " 200 ") != 0) return std::nullopt;
  const auto body = response.find("\r\n\r\n");
  if (body == std::string::npos) return std::nullopt;
  return response.substr(body + 4);
}

NatsCluster::NatsCluster() : NatsCluster(Options{}) {}

NatsCluster::NatsCluster(Options options) {
  if (options.nodes < 1) throw std::invalid_argument("NatsCluster: at least one node");
  // Ports are picked before any node starts: every config lists every
  // route. free_port() closes what it found, so two picks may repeat.
  std::set<int> taken;
  const auto pick = [&taken] {
    for (;;) {
      const int p = free_port();
      if (taken.insert(p).second) return p;
    }
  };
  nodes_.resize(static_cast<std::size_t>(options.nodes));
  for (Node& n : nodes_) {
    n.cluster_port = pick();
    n.http_port = pick();
  }
  std::string routes;
  for (const Node& n : nodes_) {
    routes += "    nats-route://127.0.0.1:";
    routes += std::to_string(n.cluster_port) + "\n";
  }
  const std::string cluster_name = unique_cluster_name();
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    NatsServer::Options o;
    o.extra_config = "server_name: " + name(static_cast<int>(i)) + "\n";
    o.extra_config += "http: 127.0.0.1:" + std::to_string(nodes_[i].http_port) + "\n";
    o.extra_config += "cluster {\n  name: " + cluster_name + "\n";
    o.extra_config += "  listen: 127.0.0.1:" + std::to_string(nodes_[i].cluster_port) + "\n";
    o.extra_config += "  routes: [\n" + routes + "  ]\n}\n";
    o.extra_config += options.extra_config;
    nodes_[i].server = std::make_unique<NatsServer>(o);
  }
}

NatsCluster::~NatsCluster() {
  for (Node& n : nodes_) {
    if (n.server) n.server->kill();
  }
}

std::string NatsCluster::urls() const {
  std::string out;
  for (const Node& n : nodes_) {
    if (!out.empty()) out += ",";
    out += n.server->url();
  }
  return out;
}

int NatsCluster::index_of(const std::string& node_name) const {
  for (int i = 0; i < size(); ++i) {
    if (name(i) == node_name) return i;
  }
  return -1;
}

void NatsCluster::kill(int i) { node(i).kill(); }

void NatsCluster::restart(int i) { node(i).restart(); }

std::optional<std::string> NatsCluster::meta_leader(std::chrono::milliseconds timeout) {
  for (int i = 0; i < size(); ++i) {
    if (!running(i)) continue;
    const auto j = jsz(http_port(i), timeout);
    if (!j) continue;
    const auto meta = j->find("meta_cluster");
    if (meta == j->end() || !meta->is_object()) continue;
    const std::string leader = text_field(*meta, "leader");
    if (!leader.empty()) return leader;
  }
  return std::nullopt;
}

std::optional<std::string> NatsCluster::stream_leader(const std::string& stream,
                                                      std::chrono::milliseconds timeout) {
  for (int i = 0; i < size(); ++i) {
    if (!running(i)) continue;
    const auto j = jsz(http_port(i), timeout);
    if (!j) continue;
    const nlohmann::json* cluster = stream_cluster(*j, stream);
    if (cluster == nullptr) continue;
    const std::string leader = text_field(*cluster, "leader");
    if (!leader.empty()) return leader;
  }
  return std::nullopt;
}

int NatsCluster::node_of_client(const std::string& connection_name, std::chrono::milliseconds timeout) {
  for (int i = 0; i < size(); ++i) {
    if (!running(i)) continue;
    const auto body = http_get(http_port(i), "/connz?limit=1024", timeout);
    if (!body) continue;
    const auto json = nlohmann::json::parse(*body, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.contains("connections") || !json["connections"].is_array()) continue;
    for (const auto& c : json["connections"]) {
      if (text_field(c, "name") == connection_name) return i;
    }
  }
  return -1;
}

bool NatsCluster::wait_until_ready(std::chrono::milliseconds timeout) {
  return eventually(
      [&] {
        for (int i = 0; i < size(); ++i) {
          if (!running(i)) return false;
          const auto j = jsz(http_port(i), 1s);
          if (!j || !j->contains("meta_cluster") || text_field((*j)["meta_cluster"], "leader").empty()) {
            return false;
          }
          if (!http_get(http_port(i), "/healthz", 1s)) return false;
        }
        return true;
      },
      timeout, 100ms);
}

bool NatsCluster::wait_until_stream_current(const std::string& stream, std::chrono::milliseconds timeout) {
  return eventually(
      [&] {
        const auto leader = stream_leader(stream);
        const int at = leader ? index_of(*leader) : -1;
        if (at < 0 || !running(at)) return false;
        const auto j = jsz(http_port(at), 1s);
        if (!j) return false;
        const nlohmann::json* cluster = stream_cluster(*j, stream);
        if (cluster == nullptr || text_field(*cluster, "leader") != *leader) return false;
        const auto replicas = cluster->find("replicas");
        std::size_t current = 0;
        if (replicas != cluster->end() && replicas->is_array()) {
          for (const auto& r : *replicas) {
            const int node = index_of(text_field(r, "name"));
            if (node < 0 || !running(node)) continue;
            if (!r.value("current", false)) return false;
            ++current;
          }
        }
        std::size_t running_nodes = 0;
        for (int i = 0; i < size(); ++i) running_nodes += running(i) ? 1 : 0;
        return current + 1 >= running_nodes;
      },
      timeout, 100ms);
}

}  // namespace leader::testing
