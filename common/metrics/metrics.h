// Metrics facade: the only way the daemons record Prometheus metrics. It keeps
// prometheus-cpp behind a few value types so no daemon header includes it.
//
//   MetricsRegistry registry;
//   Counter sent = registry.Counter("matrix_x_sent_total", "Messages sent.", {{"type", "put"}});
//   GaugeFamily depth = registry.GaugeFamily("matrix_x_queue_depth", "Queued messages.");
//   depth.With({{"role", "judge"}}).Set(12);
//   MetricsServer::Create(registry, "127.0.0.1:0")  // serves GET /metrics
//
// Handles (Counter, Gauge, Histogram) are cheap copyable pointers into the
// registry; a default-constructed handle records nothing. Resolving a labelled
// series (Family::With, MetricsRegistry::Counter, ...) takes a lock and
// allocates, so resolve once and keep the handle; recording (Inc, Set,
// Observe) is lock-free for counters and gauges and takes a short per-series
// lock for histograms.
//
// Naming rules for every metric of the project: prefix `matrix_`, base units
// (`_seconds`, `_bytes`), counters end in `_total`, help text on every metric,
// labels only from {role, model, endpoint, status, type, kind} with bounded
// values (never task ids).
//
// Errors: a registration that prometheus-cpp rejects (malformed name or label
// name, one name used for two metric types) is logged, counted in
// MetricsRegistry::errors() and yields a handle that records nothing, so a
// broken metric never takes a daemon down; tests assert errors() == 0.
//
// Thread-safety: MetricsRegistry and all handles may be used from any thread.
// Handles must not outlive the registry that made them.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/base/clock.h"
#include "common/base/status.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
class Exposer;
template <typename T>
class Family;
}  // namespace prometheus

namespace matrix::metrics {

using Labels = std::map<std::string, std::string>;

// A monotonically increasing value.
class Counter {
 public:
  Counter() = default;
  // Adds `v`; negative values are ignored (counters never go down).
  void Inc(double v = 1.0) const;
  void Add(double v) const { Inc(v); }
  // 0 for a default-constructed handle.
  double Value() const;
  bool valid() const { return c_ != nullptr; }

 private:
  friend class CounterFamily;
  explicit Counter(prometheus::Counter* c) : c_(c) {}
  prometheus::Counter* c_ = nullptr;
};

// A value that goes up and down.
class Gauge {
 public:
  Gauge() = default;
  void Set(double v) const;
  void Inc(double v = 1.0) const;
  void Dec(double v = 1.0) const;
  void Add(double v) const { Inc(v); }
  double Value() const;
  bool valid() const { return g_ != nullptr; }

 private:
  friend class GaugeFamily;
  explicit Gauge(prometheus::Gauge* g) : g_(g) {}
  prometheus::Gauge* g_ = nullptr;
};

// Observations counted into fixed buckets, plus their sum and count.
class Histogram {
 public:
  Histogram() = default;
  void Observe(double v) const;
  bool valid() const { return h_ != nullptr; }

 private:
  friend class HistogramFamily;
  explicit Histogram(prometheus::Histogram* h) : h_(h) {}
  prometheus::Histogram* h_ = nullptr;
};

class MetricsRegistry;

// One metric name whose series differ by labels. With() returns the series
// for a label set, creating it on first use.
class CounterFamily {
 public:
  CounterFamily() = default;
  metrics::Counter With(const Labels& labels) const;

 private:
  friend class MetricsRegistry;
  CounterFamily(prometheus::Family<prometheus::Counter>* f, MetricsRegistry* r) : f_(f), r_(r) {}
  prometheus::Family<prometheus::Counter>* f_ = nullptr;
  MetricsRegistry* r_ = nullptr;
};

class GaugeFamily {
 public:
  GaugeFamily() = default;
  metrics::Gauge With(const Labels& labels) const;

 private:
  friend class MetricsRegistry;
  GaugeFamily(prometheus::Family<prometheus::Gauge>* f, MetricsRegistry* r) : f_(f), r_(r) {}
  prometheus::Family<prometheus::Gauge>* f_ = nullptr;
  MetricsRegistry* r_ = nullptr;
};

class HistogramFamily {
 public:
  HistogramFamily() = default;
  metrics::Histogram With(const Labels& labels) const;

 private:
  friend class MetricsRegistry;
  HistogramFamily(prometheus::Family<prometheus::Histogram>* f, MetricsRegistry* r,
                  std::shared_ptr<const std::vector<double>> buckets)
      : f_(f), r_(r), buckets_(std::move(buckets)) {}
  prometheus::Family<prometheus::Histogram>* f_ = nullptr;
  MetricsRegistry* r_ = nullptr;
  std::shared_ptr<const std::vector<double>> buckets_;
};

// Bucket upper bounds (strictly increasing).
// `count` bounds: start, start*factor, start*factor^2, ...
// REQUIRES: start > 0, factor > 1.
std::vector<double> ExponentialBuckets(double start, double factor, int count);
// Latencies in seconds, 1 ms .. 120 s in 1-2.5-5 steps.
std::vector<double> LatencyBuckets();
// Sizes in bytes, 64 B .. 64 MiB in powers of 4.
std::vector<double> SizeBuckets();
// Small counts (batch sizes): 1, 2, 4, ... 1024.
std::vector<double> CountBuckets();

// Owns the metrics of one process. Registration methods return the existing
// metric when the name (and label set) is already registered with the same
// type.
class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Single series: the family `name` with the series for `labels`.
  metrics::Counter Counter(const std::string& name, const std::string& help,
                           const Labels& labels = {});
  metrics::Gauge Gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  metrics::Histogram Histogram(const std::string& name, const std::string& help,
                               const std::vector<double>& buckets, const Labels& labels = {});

  // Families whose series are resolved later with With().
  metrics::CounterFamily CounterFamily(const std::string& name, const std::string& help);
  metrics::GaugeFamily GaugeFamily(const std::string& name, const std::string& help);
  metrics::HistogramFamily HistogramFamily(const std::string& name, const std::string& help,
                                           const std::vector<double>& buckets);

  // The Prometheus text exposition (format 0.0.4) of every metric, as
  // /metrics serves it.
  std::string Serialize() const;
  // Registrations rejected so far (see the file comment).
  int64_t errors() const { return errors_.load(); }

 private:
  friend class MetricsServer;
  friend class metrics::CounterFamily;
  friend class metrics::GaugeFamily;
  friend class metrics::HistogramFamily;
  void RecordError(const std::string& what, const std::string& why);

  std::shared_ptr<prometheus::Registry> registry_;
  std::atomic<int64_t> errors_{0};
};

// Process-wide metrics every daemon exports once:
//   matrix_build_info{version}            gauge, always 1
//   matrix_process_start_time_seconds     gauge, UNIX time the process started
// `clock` gives the start time (its WallMicros() at this call).
void RegisterProcessMetrics(MetricsRegistry& registry, const Clock& clock);
// The version string matrix_build_info reports.
const char* BuildVersion();

// Serves the registry at http://<address>/metrics and nothing else (any other
// path is 404; there are no control endpoints).
//
// Lifecycle: Create() binds and starts civetweb's threads; the destructor
// stops them (within milliseconds: it wakes civetweb's accept loop with a
// loopback connection instead of waiting out its ~2 s poll interval).
// Thread-safety: the accessors are const and safe from any thread.
class MetricsServer {
 public:
  // `address` is "host:port" ("127.0.0.1:0", "0.0.0.0:9400", "[::1]:0");
  // port 0 picks a free port, read back with port(). `registry` must outlive
  // the server. kInvalidArgument for an address without a port,
  // kUnavailable when the address cannot be bound.
  static StatusOr<std::unique_ptr<MetricsServer>> Create(MetricsRegistry& registry,
                                                         const std::string& address);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The bound port.
  int port() const { return port_; }
  // "host:port" with the bound port: what a Prometheus scrape target names.
  // A wildcard host (0.0.0.0, ::, empty) is replaced by this machine's host
  // name so the address is usable from other nodes.
  const std::string& address() const { return address_; }
  // Writes address() to <run_dir>/endpoints/<name>.metrics (atomically).
  Status PublishEndpoint(const std::string& run_dir, const std::string& name) const;

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::string address_;
  std::string connect_host_;  // IP literal the destructor connects to
};

}  // namespace matrix::metrics
