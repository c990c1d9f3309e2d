#pragma once

#include <functional>

#include "common/store/store_client.h"

namespace matrix::testing {

// Runs a StoreClient's event loop (ticks, polls its socket, handles replies)
// until `done` returns true or the wall-clock timeout passes; returns done().
bool DriveStoreClient(store::StoreClient* client, const std::function<bool()>& done, int timeout_ms = 10'000);

}  // namespace matrix::testing
