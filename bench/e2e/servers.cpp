#include "servers.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "leader/leader.h"
#include "support/nats_cluster.h"
#include "support/nats_server.h"

namespace leader::bench {

NatsServers::NatsServers(int count) {
  if (count > 1) {
    testing::NatsCluster::Options options;
    options.nodes = count;
    cluster_ = std::make_unique<testing::NatsCluster>(options);
    return;
  }
  // Not a one-node cluster: a plain server, as most deployments run one.
  single_monitor_port_ = testing::free_port();
  testing::NatsServer::Options options;
  options.extra_config = "http: 127.0.0.1:" + std::to_string(single_monitor_port_) + "\n";
  single_ = std::make_unique<testing::NatsServer>(options);
}

NatsServers::~NatsServers() = default;

std::string NatsServers::urls() const { return cluster_ ? cluster_->urls() : single_->url(); }

int NatsServers::monitor_port() const { return cluster_ ? cluster_->http_port(0) : single_monitor_port_; }

pid_t NatsServers::pid() const { return cluster_ ? cluster_->node(0).pid() : single_->pid(); }

NatsTarget nats_target(Flags& flags) {
  NatsTarget target;
  target.servers = static_cast<int>(flags.number("servers", 1, 1, 3));
  if (target.servers == 2) throw UsageError{"--servers: 1 or 3"};
  const auto url = flags.optional_text("nats-url");
  const long monitor = flags.number("nats-monitor", 0, 0, 65535);
  const long pid = flags.number("nats-pid", -1, -1, 1L << 30);
  if (url && target.servers == 1) {
    target.urls = *url;
    target.monitor_port = static_cast<int>(monitor);
    target.pid = static_cast<pid_t>(pid);
    return target;
  }
  say("starting " + std::to_string(target.servers) + " nats-server" + (target.servers > 1 ? "s" : ""));
  target.own = std::make_unique<NatsServers>(target.servers);
  target.urls = target.own->urls();
  target.monitor_port = target.own->monitor_port();
  target.pid = target.own->pid();
  return target;
}

void wait_for_jetstream(const std::string& urls, int replicas, Millis timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  ConnectionOptions options;
  options.url = urls;
  options.name = "bench-probe";
  Config config;
  config.bucket = "bench-probe-r" + std::to_string(replicas);
  config.role = "probe";
  config.instance_id = "probe";
  config.ttl = std::chrono::seconds(10);
  config.replicas = replicas;
  config.start_timeout = std::chrono::seconds(2);
  std::string last_error;
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      Election probe(Connection::connect(options), config);
      probe.start();
      probe.stop();
      return;
    } catch (const std::exception& e) {
      last_error = e.what();
    }
    std::this_thread::sleep_for(Millis(200));
  }
  throw std::runtime_error("JetStream did not take an R" + std::to_string(replicas) +
                           " bucket in time: " + last_error);
}

std::optional<ProcSample> sample_process(pid_t pid) {
  ProcSample sample;
  {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(in, line)) return std::nullopt;
    const auto paren = line.rfind(')');  // the command name may hold spaces
    if (paren == std::string::npos) return std::nullopt;
    std::istringstream fields(line.substr(paren + 2));
    // Field 3 (state) is the first after the name; utime and stime are 14, 15.
    std::string field;
    double utime = 0;
    double stime = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
      if (i == 14) utime = std::stod(field);
      if (i == 15) stime = std::stod(field);
    }
    sample.cpu_seconds = (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) sample.rss_kib = std::stol(line.substr(6));
    if (line.rfind("Threads:", 0) == 0) sample.threads = std::stol(line.substr(8));
  }
  return sample;
}

ConnMessages connection_messages(int monitor_port, const std::string& name_prefix) {
  const auto body = testing::http_get(monitor_port, "/connz?limit=100000", Millis(5000));
  if (!body) throw std::runtime_error("no answer from /connz on port " + std::to_string(monitor_port));
  const auto connz = nlohmann::json::parse(*body);
  ConnMessages out;
  for (const auto& c : connz.value("connections", nlohmann::json::array())) {
    if (c.value("name", "").rfind(name_prefix, 0) != 0) continue;
    out.in_msgs += c.value("in_msgs", 0.0);
    out.out_msgs += c.value("out_msgs", 0.0);
    ++out.connections;
  }
  return out;
}

}  // namespace leader::bench
