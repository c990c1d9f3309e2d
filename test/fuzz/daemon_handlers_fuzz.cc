// Fuzz target for the daemons' whole message handling: a real BrokerServer,
// StoreServer and Worker (on inproc:// endpoints and a fake clock; the worker
// runs configs/noop.yaml and owns partition 0, writing its records to a
// temporary folder) get each input as a multipart message through the same
// handler their loops call. Broker and store then report their stats as
// `matrix status` would. Properties besides "no crash, no sanitizer report":
// the stats stay valid UTF-8 JSON, and the daemons go on serving (a
// well-formed request afterwards is handled).
//
// Input layout: byte 0 picks the daemon (byte0 % 3: broker, store, worker)
// and the peer identity ((byte0 / 3) % 4: four peers, one with bytes that
// are not UTF-8; the worker hears only its broker, so no identity there);
// the rest is split into frames at every "\n--\n".
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/clock.h"
#include "common/base/json.h"
#include "common/base/log.h"
#include "common/base/utf8.h"
#include "common/config/pipeline_loader.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "daemons/agent_worker/worker.h"
#include "daemons/object_store/store_server.h"
#include "daemons/queue_broker/broker_server.h"
#include "test/fuzz/fuzz_check.h"

namespace {

using namespace matrix;

struct Daemons {
  FakeClock clock;
  transport::Context ctx;
  std::unique_ptr<broker::BrokerServer> broker;
  std::unique_ptr<store::StoreServer> store;
  std::unique_ptr<worker::Worker> worker;
};

Daemons& Get() {
  static Daemons* d = [] {
    SetLogLevel(LogLevel::kError);  // the handlers' warnings would drown the fuzzer's output
    auto* daemons = new Daemons;
    broker::BrokerServerConfig bc;
    bc.bind = "inproc://fuzz-broker";
    auto b = broker::BrokerServer::Create(bc, &daemons->ctx, &daemons->clock);
    if (!b.ok()) __builtin_trap();
    daemons->broker = std::move(*b);
    store::StoreConfig sc;
    sc.bind = "inproc://fuzz-store";
    sc.memory_budget_bytes = 1 << 20;
    auto s = store::StoreServer::Create(sc, &daemons->ctx, &daemons->clock);
    if (!s.ok()) __builtin_trap();
    daemons->store = std::move(*s);
    static char dir[] = "/tmp/matrix-fuzz-worker-XXXXXX";
    if (::mkdtemp(dir) == nullptr) __builtin_trap();
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    });
    auto loaded = config::LoadPipeline(MATRIX_SOURCE_DIR "/configs/noop.yaml", {"dataset.limit=1"});
    if (!loaded.pipeline) __builtin_trap();
    worker::WorkerConfig wc;
    wc.worker_id = "fuzz";
    wc.broker_endpoint = "inproc://fuzz-broker";
    wc.store_endpoint = "inproc://fuzz-store";
    wc.output_dir = std::string(dir) + "/out";
    wc.run_dir = dir;
    wc.metrics_bind = "";
    wc.partitions = {0};
    auto w = worker::Worker::Create(wc, std::make_shared<const config::Pipeline>(std::move(*loaded.pipeline)),
                                    &daemons->ctx, &daemons->clock);
    if (!w.ok()) __builtin_trap();
    daemons->worker = std::move(*w);
    return daemons;
  }();
  return *d;
}

std::vector<std::string> Frames(std::string_view data) {
  std::vector<std::string> out;
  constexpr std::string_view kSep = "\n--\n";
  size_t pos = 0;
  while (out.size() < 16) {
    size_t next = data.find(kSep, pos);
    if (next == std::string_view::npos) {
      out.emplace_back(data.substr(pos));
      break;
    }
    out.emplace_back(data.substr(pos, next - pos));
    pos = next + kSep.size();
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Daemons& d = Get();
  static const std::string kPeers[] = {"w0", "w1", std::string("\xff\xfe\0peer", 7), "link:n2"};
  const int daemon = data[0] % 3;
  std::vector<std::string> frames;
  if (daemon != 2) frames.push_back(kPeers[(data[0] / 3) % 4]);
  for (auto& f : Frames(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1)))
    frames.push_back(std::move(f));
  if (daemon == 2) {
    d.worker->HandleBrokerMessage(frames);
    d.clock.AdvanceMillis(7);
    std::vector<std::string> heartbeat{wire::EncodeControl(wire::Control{"broker", wire::HeartbeatMsg{}})};
    d.worker->HandleBrokerMessage(heartbeat);
    return 0;
  }
  const bool to_store = daemon == 1;
  if (to_store) {
    d.store->HandleMessage(frames);
    const std::string stats = d.store->StatsJson();
    FUZZ_CHECK(IsValidUtf8(stats));
    FUZZ_CHECK(!Json::parse(stats, nullptr, false).is_discarded());
  } else {
    d.broker->HandleMessage(frames);
    const std::string stats = d.broker->StatsJson();
    FUZZ_CHECK(IsValidUtf8(stats));
    FUZZ_CHECK(!Json::parse(stats, nullptr, false).is_discarded());
  }
  d.clock.AdvanceMillis(7);
  // Still serving: a well-formed stats request goes through the same path.
  std::vector<std::string> ping{"w0", wire::EncodeControl(wire::Control{"w0", wire::StatsRequestMsg{}})};
  if (to_store) {
    d.store->HandleMessage(ping);
  } else {
    d.broker->HandleMessage(ping);
  }
  return 0;
}
