// Asks a broker or store for its StatsReply (JSON) over a short-lived DEALER.
#pragma once

#include <string>

#include "common/base/json.h"
#include "common/base/status.h"

namespace matrix::cli {

// kUnavailable when no reply arrives within timeout_ms.
StatusOr<Json> QueryStats(const std::string& endpoint, int timeout_ms = 2000);

}  // namespace matrix::cli
