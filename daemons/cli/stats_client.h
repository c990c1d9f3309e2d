// Asks a broker or store for its StatsReply (JSON) over a short-lived DEALER.
#pragma once

#include <string>

#include "common/base/json.h"
#include "common/base/status.h"

namespace matrix::cli {

// kUnavailable when no reply arrives within timeout_ms. With `keys_dir`
// (a run directory holding keys/job.key), connects with the job's CURVE keys.
StatusOr<Json> QueryStats(const std::string& endpoint, int timeout_ms = 2000, const std::string& keys_dir = "");

}  // namespace matrix::cli
