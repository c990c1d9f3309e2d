// The metrics facade over prometheus-cpp. Every call into prometheus-cpp or
// civetweb that can throw is wrapped here and turned into a logged error or a
// Status. Thread-safety as in metrics.h: prometheus-cpp's registry and
// families lock internally; counters and gauges are atomics.
#include "common/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <exception>
#include <system_error>
#include <thread>
#include <utility>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "common/base/files.h"
#include "common/base/log.h"

#ifndef MATRIX_VERSION
#define MATRIX_VERSION "unknown"
#endif

namespace matrix::metrics {

void Counter::Inc(double v) const {
  if (c_ != nullptr && v > 0) c_->Increment(v);
}
double Counter::Value() const { return c_ != nullptr ? c_->Value() : 0.0; }

void Gauge::Set(double v) const {
  if (g_ != nullptr) g_->Set(v);
}
void Gauge::Inc(double v) const {
  if (g_ != nullptr) g_->Increment(v);
}
void Gauge::Dec(double v) const {
  if (g_ != nullptr) g_->Decrement(v);
}
double Gauge::Value() const { return g_ != nullptr ? g_->Value() : 0.0; }

void Histogram::Observe(double v) const {
  if (h_ != nullptr) h_->Observe(v);
}

metrics::Counter CounterFamily::With(const Labels& labels) const {
  if (f_ == nullptr) return {};
  try {
    return metrics::Counter(&f_->Add(labels));
  } catch (const std::exception& e) {
    r_->RecordError(f_->GetName() + " (a series)", e.what());
    return {};
  }
}

metrics::Gauge GaugeFamily::With(const Labels& labels) const {
  if (f_ == nullptr) return {};
  try {
    return metrics::Gauge(&f_->Add(labels));
  } catch (const std::exception& e) {
    r_->RecordError(f_->GetName() + " (a series)", e.what());
    return {};
  }
}

metrics::Histogram HistogramFamily::With(const Labels& labels) const {
  if (f_ == nullptr) return {};
  try {
    return metrics::Histogram(&f_->Add(labels, *buckets_));
  } catch (const std::exception& e) {
    r_->RecordError(f_->GetName() + " (a series)", e.what());
    return {};
  }
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> out;
  out.reserve(count > 0 ? count : 0);
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) out.push_back(v);
  return out;
}

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 120};
}

std::vector<double> SizeBuckets() { return ExponentialBuckets(64, 4, 11); }

std::vector<double> CountBuckets() { return ExponentialBuckets(1, 2, 11); }

MetricsRegistry::MetricsRegistry() : registry_(std::make_shared<prometheus::Registry>()) {}

MetricsRegistry::~MetricsRegistry() = default;

void MetricsRegistry::RecordError(const std::string& what, const std::string& why) {
  errors_.fetch_add(1);
  LOG_ERROR << "metric " << what << " not registered: " << why;
}

metrics::Counter MetricsRegistry::Counter(const std::string& name, const std::string& help,
                                          const Labels& labels) {
  return CounterFamily(name, help).With(labels);
}

metrics::Gauge MetricsRegistry::Gauge(const std::string& name, const std::string& help,
                                      const Labels& labels) {
  return GaugeFamily(name, help).With(labels);
}

metrics::Histogram MetricsRegistry::Histogram(const std::string& name, const std::string& help,
                                              const std::vector<double>& buckets,
                                              const Labels& labels) {
  return HistogramFamily(name, help, buckets).With(labels);
}

metrics::CounterFamily MetricsRegistry::CounterFamily(const std::string& name,
                                                      const std::string& help) {
  if (help.empty()) {
    RecordError(name, "help text is empty");
    return {};
  }
  try {
    auto& family = prometheus::BuildCounter().Name(name).Help(help).Register(*registry_);
    return metrics::CounterFamily(&family, this);
  } catch (const std::exception& e) {
    RecordError(name, e.what());
    return {};
  }
}

metrics::GaugeFamily MetricsRegistry::GaugeFamily(const std::string& name,
                                                  const std::string& help) {
  if (help.empty()) {
    RecordError(name, "help text is empty");
    return {};
  }
  try {
    auto& family = prometheus::BuildGauge().Name(name).Help(help).Register(*registry_);
    return metrics::GaugeFamily(&family, this);
  } catch (const std::exception& e) {
    RecordError(name, e.what());
    return {};
  }
}

metrics::HistogramFamily MetricsRegistry::HistogramFamily(const std::string& name,
                                                          const std::string& help,
                                                          const std::vector<double>& buckets) {
  if (help.empty()) {
    RecordError(name, "help text is empty");
    return {};
  }
  for (size_t i = 1; i < buckets.size(); ++i) {
    if (!(buckets[i - 1] < buckets[i])) {
      RecordError(name, "bucket bounds are not strictly increasing");
      return {};
    }
  }
  try {
    auto& family = prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_);
    return metrics::HistogramFamily(&family, this,
                                    std::make_shared<const std::vector<double>>(buckets));
  } catch (const std::exception& e) {
    RecordError(name, e.what());
    return {};
  }
}

std::string MetricsRegistry::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

const char* BuildVersion() { return MATRIX_VERSION; }

void RegisterProcessMetrics(MetricsRegistry& registry, const Clock& clock) {
  registry
      .Gauge("matrix_build_info", "Build of this process; the value is always 1.",
             {{"version", BuildVersion()}})
      .Set(1);
  registry
      .Gauge("matrix_process_start_time_seconds",
             "Start time of this process since the UNIX epoch, in seconds.")
      .Set(static_cast<double>(clock.WallMicros()) / 1e6);
}

namespace {

// Splits "host:port" (host may be "[v6]" or empty). False when malformed.
bool SplitHostPort(const std::string& address, std::string* host, int* port) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos) return false;
  std::string digits = address.substr(colon + 1);
  if (digits.empty() || digits.size() > 5) return false;
  for (char c : digits)
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  *port = std::stoi(digits);
  if (*port > 65535) return false;
  *host = address.substr(0, colon);
  if (host->find(':') != std::string::npos && (host->front() != '[' || host->back() != ']'))
    return false;  // a bare IPv6 address must be bracketed
  return true;
}

bool IsWildcard(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "[::]";
}

// The loopback-reachable IP literal of a bound host ("" when unknown).
std::string LocalConnectHost(const std::string& host) {
  if (host.empty() || host == "0.0.0.0") return "127.0.0.1";
  if (host == "[::]") return "::1";
  if (host.front() == '[') return host.substr(1, host.size() - 2);
  return host;
}

// Opens and closes one TCP connection to host:port; errors are ignored.
void Poke(const std::string& host, int port) {
  sockaddr_in v4{};
  sockaddr_in6 v6{};
  int fd = -1;
  if (::inet_pton(AF_INET, host.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(static_cast<uint16_t>(port));
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) (void)::connect(fd, reinterpret_cast<sockaddr*>(&v4), sizeof(v4));
  } else if (::inet_pton(AF_INET6, host.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(static_cast<uint16_t>(port));
    fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) (void)::connect(fd, reinterpret_cast<sockaddr*>(&v6), sizeof(v6));
  }
  if (fd >= 0) ::close(fd);
}

}  // namespace

StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Create(MetricsRegistry& registry,
                                                               const std::string& address) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(address, &host, &port))
    return InvalidArgument("metrics address '" + address + "' is not host:port");
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  // civetweb's listening_ports syntax: "port", "ip:port" or "[ip6]:port".
  const std::string listen = host.empty() ? std::to_string(port) : address;
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/2);
    server->exposer_->RegisterCollectable(registry.registry_);
    std::vector<int> ports = server->exposer_->GetListeningPorts();
    if (ports.empty())
      return Unavailable("metrics server on " + address + " has no listening port");
    server->port_ = ports.front();
  } catch (const std::exception& e) {
    return Unavailable("cannot serve metrics on " + address + ": " + e.what());
  }
  server->connect_host_ = LocalConnectHost(host);
  if (IsWildcard(host)) {
    char name[256] = {};
    host = ::gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0' ? name : "localhost";
  }
  server->address_ = host + ":" + std::to_string(server->port_);
  return server;
}

MetricsServer::~MetricsServer() {
  if (!exposer_) return;
  // civetweb's accept loop looks at its stop flag only when poll() returns,
  // which without traffic is every ~2 s. Stopping on another thread while
  // this one connects now and then makes the stop take milliseconds.
  std::atomic<bool> stopped{false};
  std::thread stopper;
  if (port_ > 0) {
    try {
      stopper = std::thread([&] {
        exposer_.reset();
        stopped.store(true);
      });
    } catch (const std::system_error&) {
      // No thread to spare: fall back to the slow stop below.
    }
  }
  if (!stopper.joinable()) {
    exposer_.reset();
    return;
  }
  while (!stopped.load()) {
    Poke(connect_host_, port_);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stopper.join();
}

Status MetricsServer::PublishEndpoint(const std::string& run_dir, const std::string& name) const {
  return WriteEndpointFile(run_dir, name + ".metrics", address_);
}

}  // namespace matrix::metrics
