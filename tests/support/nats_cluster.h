#pragma once

// A JetStream cluster of nats-server nodes for a test: each node a
// NatsServer (nats_server.h) on free loopback ports (client, cluster route,
// HTTP monitoring) with a temporary store dir, configured like a production
// node (server_name, cluster block with every node's route). Nodes are
// killed and restarted by PID; every node is killed when the object is
// destroyed. The monitoring endpoints (/jsz, /connz) tell the meta leader,
// a stream's leader and the node a client is connected to.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nats_server.h"

namespace leader::testing {

class NatsCluster {
 public:
  struct Options {
    /// Number of nodes (at least 1).
    int nodes = 3;
    /// Extra lines for every node's config.
    std::string extra_config;
  };

  /// Starts every node (each accepting clients on return; the cluster may
  /// still be electing its meta leader: see wait_until_ready()).
  explicit NatsCluster(Options options);
  NatsCluster();
  ~NatsCluster();
  NatsCluster(const NatsCluster&) = delete;
  NatsCluster& operator=(const NatsCluster&) = delete;

  int size() const { return static_cast<int>(nodes_.size()); }
  /// Every node's client URL, comma-separated (as a client is given them).
  std::string urls() const;
  /// Node `i` (0-based), named "n<i+1>".
  NatsServer& node(int i) { return *nodes_.at(static_cast<std::size_t>(i)).server; }
  std::string name(int i) const { return "n" + std::to_string(i + 1); }
  /// The index of the node called `name`; -1 if none.
  int index_of(const std::string& name) const;
  int http_port(int i) const { return nodes_.at(static_cast<std::size_t>(i)).http_port; }

  /// SIGKILL node `i` by its PID and reap it.
  void kill(int i);
  /// Start node `i` again on its ports and store dir; waits until it
  /// accepts clients.
  void restart(int i);
  bool running(int i) { return node(i).running(); }

  /// The meta leader's name as the first running node that knows it
  /// reports it (/jsz); nullopt when none does.
  std::optional<std::string> meta_leader(std::chrono::milliseconds timeout = std::chrono::seconds(1));
  /// The leader of `stream` (e.g. "KV_<bucket>") as the first running node
  /// that hosts it reports it; nullopt when none does (e.g. during an
  /// election).
  std::optional<std::string> stream_leader(const std::string& stream,
                                           std::chrono::milliseconds timeout = std::chrono::seconds(1));
  /// The index of the running node that has a client connection named
  /// `connection_name` (/connz); -1 if none.
  int node_of_client(const std::string& connection_name,
                     std::chrono::milliseconds timeout = std::chrono::seconds(1));
  /// Waits until a meta leader is elected with every node running and
  /// JetStream answers on all of them; false on timeout.
  bool wait_until_ready(std::chrono::milliseconds timeout);
  /// Waits until `stream` has a leader on a running node and every replica
  /// on a running node is current; false on timeout.
  bool wait_until_stream_current(const std::string& stream, std::chrono::milliseconds timeout);

 private:
  struct Node {
    int http_port = 0;
    int cluster_port = 0;
    std::unique_ptr<NatsServer> server;
  };
  std::vector<Node> nodes_;
};

/// The body of http://127.0.0.1:<port><path> (HTTP/1.0 GET); nullopt when it
/// cannot be had within `timeout` or the status is not 200.
std::optional<std::string> http_get(int port, const std::string& path, std::chrono::milliseconds timeout);

}  // namespace leader::testing
