#include "daemons/cli/stats_client.h"

#include <unistd.h>

#include "common/transport/job_keys.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"

namespace matrix::cli {

StatusOr<Json> QueryStats(const std::string& endpoint, int timeout_ms, const std::string& keys_dir) {
  transport::Context ctx;
  transport::SocketOptions opts;
  opts.identity = "matrix-cli." + std::to_string(::getpid());
  if (!keys_dir.empty()) {
    MATRIX_ASSIGN_OR_RETURN(auto keys, transport::LoadJobKeys(keys_dir));
    opts = transport::CurveClientOptions(keys, opts);
  }
  MATRIX_ASSIGN_OR_RETURN(auto sock,
                          transport::Socket::Connect(ctx, transport::Socket::Kind::kDealer, endpoint, opts));
  MATRIX_RETURN_IF_ERROR(sock->Send({wire::EncodeControl(wire::Control{opts.identity, wire::StatsRequestMsg{}})}));
  transport::Frames frames;
  const int64_t deadline = SystemClock::Get()->NowMillis() + timeout_ms;
  for (int64_t left = timeout_ms; left > 0; left = deadline - SystemClock::Get()->NowMillis()) {
    if (!sock->WaitForInput(static_cast<int>(left))) break;
    while (sock->TryRecv(&frames)) {
      if (frames.empty()) continue;
      auto control = wire::DecodeControl(frames[0]);
      if (!control.ok()) continue;
      if (auto* reply = std::get_if<wire::StatsReplyMsg>(&control->body))
        return ParseJson(reply->json, "stats from " + endpoint);
    }
  }
  return Unavailable("no stats reply from " + endpoint + " within " + std::to_string(timeout_ms) + " ms");
}

}  // namespace matrix::cli
