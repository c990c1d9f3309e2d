// Fuzz target for the daemons' whole message handling: a real BrokerServer
// and a real StoreServer (bound to inproc:// endpoints, on a fake clock) get
// each input as a multipart message through the same handler their Run loops
// call, then report their stats as `matrix status` would. Properties besides
// "no crash, no sanitizer report": the stats stay valid UTF-8 JSON, and the
// daemons go on serving (a well-formed request afterwards is answered).
//
// Input layout: byte 0 picks the daemon (bit 0) and the peer identity
// (bits 1-2, four peers, one with bytes that are not UTF-8); the rest is
// split into frames at every "\n--\n".
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/clock.h"
#include "common/base/json.h"
#include "common/base/log.h"
#include "common/base/utf8.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
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
  const bool to_store = data[0] & 1;
  std::vector<std::string> frames{kPeers[(data[0] >> 1) & 3]};
  for (auto& f : Frames(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1)))
    frames.push_back(std::move(f));
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
