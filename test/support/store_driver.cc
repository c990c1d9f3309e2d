#include "test/support/store_driver.h"

#include <chrono>

#include "common/transport/transport.h"

namespace matrix::testing {

bool DriveStoreClient(store::StoreClient* client, const std::function<bool()>& done, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    client->Tick();
    if (client->socket()->WaitForInput(client->PollTimeoutMs(20))) client->OnReadable();
  }
  return done();
}

}  // namespace matrix::testing
