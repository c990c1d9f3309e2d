// Integration: real broker, store and worker processes; a peer injects a task
// built for another pipeline definition. The worker must refuse it (a failed
// record with reason pipeline_mismatch at its owner), never run or misroute it.
#include <signal.h>

#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/transport/transport.h"
#include "common/wire/codec.h"
#include "test/integration/run_util.h"
#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

TEST(WorkerRefusalTest, UnknownPipelineHashIsRefusedNotRun) {
  TempDir dir;
  std::string store_ep = "ipc://" + dir.File("store.sock");
  std::string broker_ep = "ipc://" + dir.File("broker.sock");
  ChildProcess store({BinPath("matrix-store"), "--bind", store_ep, "--run-dir", dir.path(), "--name", "store"},
                     dir.File("store.log"));
  ChildProcess broker({BinPath("matrix-broker"), "--bind", broker_ep, "--run-dir", dir.path(), "--name", "broker"},
                      dir.File("broker.log"));
  ASSERT_TRUE(WaitEndpointFile(dir.path(), "store", 10000).ok());
  ASSERT_TRUE(WaitEndpointFile(dir.path(), "broker", 10000).ok());
  ChildProcess worker({BinPath("matrix-worker"), "--pipeline", SourcePath("configs/noop.yaml"), "--broker", broker_ep,
                       "--store", store_ep, "--output-dir", dir.File("out"), "--run-dir", dir.path(), "--id", "w0",
                       "--partitions", "0", "dataset.limit=3"},
                      dir.File("worker.log"));
  // The worker's own tasks complete first.
  ASSERT_TRUE(WaitUntil([&] { return CountRecords(dir.File("out")) == 3; }, 30000));

  transport::Context ctx;
  transport::SocketOptions opts;
  opts.identity = "intruder";
  auto peer = transport::Socket::Connect(ctx, transport::Socket::Kind::kDealer, broker_ep, opts);
  ASSERT_TRUE(peer.ok());
  wire::Task task;
  task.task_id = "foreign.t0";
  task.owner = "p0";
  task.pipeline = "noop";
  task.pipeline_hash = 0x1234;  // not this pipeline's definition
  task.step = "ping";
  task.input.text = "{}";
  wire::SubmitMsg submit{{{0, "ping", task.task_id, false, true}}};
  ASSERT_TRUE((*peer)
                  ->Send({wire::EncodeControl(wire::Control{"intruder", submit}), wire::PackPayloads({wire::EncodeTask(task)})})
                  .ok());
  Json refused;
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (const auto& r : ReadRecords(dir.File("out")))
          if (r["task_id"] == "foreign.t0") refused = r;
        return !refused.is_null();
      },
      20000));
  EXPECT_EQ(refused["status"], "failed");
  EXPECT_EQ(refused["reason"], "pipeline_mismatch");
  EXPECT_NE(refused["error"].get<std::string>().find("0000000000001234"), std::string::npos) << refused.dump();
  EXPECT_TRUE(refused["turns"].empty());
  EXPECT_EQ(refused["counters"].size(), 0u);  // no step ran on it
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(20000), 0);
}

}  // namespace
}  // namespace matrix::testing
