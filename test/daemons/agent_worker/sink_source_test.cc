// Unit tests of the partition source (admission, resume, re-admission) and
// sink (idempotent writes, torn-tail repair, plain and zstd record files).
#include <gtest/gtest.h>

#include "common/base/files.h"
#include "common/base/zstd_lines.h"
#include "daemons/agent_worker/sink.h"
#include "daemons/agent_worker/source.h"
#include "test/support/test_util.h"

namespace matrix::worker {
namespace {

using matrix::testing::TempDir;

std::string Rows(int n) {
  std::string s;
  for (int i = 1; i <= n; ++i) s += "{\"q\": " + std::to_string(i) + "}\n";
  return s;
}

TEST(PartitionSourceTest, AdmitsUpToConcurrencyAndOneMorePerCompletion) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("d.jsonl"), Rows(10)).ok());
  SourceConfig c{dir.File("d.jsonl"), 0, 1, 0, 1, 3, {"q"}};
  auto src = PartitionSource::Open(c, {});
  ASSERT_TRUE(src.ok());
  PartitionSource::Admission a;
  std::vector<std::string> ids;
  while ((*src)->Next(&a)) ids.push_back(a.task_id);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], "r1.t0");
  EXPECT_EQ((*src)->total_tasks(), 10u);
  (*src)->OnFinished(ids[1]);
  ASSERT_TRUE((*src)->Next(&a));
  EXPECT_EQ(a.task_id, "r4.t0");
  EXPECT_FALSE((*src)->Next(&a));
}

TEST(PartitionSourceTest, PartitionsTrialsLimitAndResume) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("d.jsonl"), Rows(10)).ok());
  SourceConfig c{dir.File("d.jsonl"), 1, 3, 8, 2, 100, {}};
  auto src = PartitionSource::Open(c, {"r2.t1"});
  ASSERT_TRUE(src.ok());
  PartitionSource::Admission a;
  std::vector<std::string> ids;
  while ((*src)->Next(&a)) ids.push_back(a.task_id);
  // Rows 2, 5, 8 (partition 1 of 3, limit 8), two trials each, r2.t1 already written.
  EXPECT_EQ(ids, (std::vector<std::string>{"r2.t0", "r5.t0", "r5.t1", "r8.t0", "r8.t1"}));
  EXPECT_EQ((*src)->total_tasks(), 6u);
  EXPECT_EQ((*src)->skipped(), 1u);
}

TEST(PartitionSourceTest, InvalidRowsBecomeErrorsNamingTheLine) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("d.jsonl"), "{\"q\": 1}\n{broken\n[1]\n{\"other\": 2}\n").ok());
  SourceConfig c{dir.File("d.jsonl"), 0, 1, 0, 1, 100, {"q"}};
  auto src = PartitionSource::Open(c, {});
  ASSERT_TRUE(src.ok());
  PartitionSource::Admission a;
  std::vector<Status> errors;
  while ((*src)->Next(&a)) errors.push_back(a.error);
  ASSERT_EQ(errors.size(), 4u);
  EXPECT_TRUE(errors[0].ok());
  EXPECT_NE(errors[1].message().find("line 2"), std::string::npos);
  EXPECT_NE(errors[2].message().find("line 3: row is not a JSON object"), std::string::npos);
  EXPECT_NE(errors[3].message().find("line 4: missing required field 'q'"), std::string::npos);
}

TEST(PartitionSourceTest, ReadmitsLostTasksUntilMaxAttempts) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("d.jsonl"), Rows(2)).ok());
  SourceConfig c{dir.File("d.jsonl"), 0, 1, 0, 1, 10, {}};
  auto src = PartitionSource::Open(c, {});
  ASSERT_TRUE(src.ok());
  PartitionSource::Admission a;
  while ((*src)->Next(&a)) {
  }
  EXPECT_TRUE((*src)->Readmit("r1.t0", 3));
  ASSERT_TRUE((*src)->Next(&a));
  EXPECT_EQ(a.task_id, "r1.t0");
  EXPECT_EQ(a.attempt, 2u);
  EXPECT_EQ(a.row_json, "{\"q\":1}");
  EXPECT_TRUE((*src)->Readmit("r1.t0", 3));
  ASSERT_TRUE((*src)->Next(&a));
  EXPECT_FALSE((*src)->Readmit("r1.t0", 3));  // third attempt was the last
  EXPECT_FALSE((*src)->Readmit("r9.t0", 3));  // not in flight
}

TEST(PartitionSourceTest, InfrastructureReadmissionsAreFreeButBounded) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("d.jsonl"), Rows(1)).ok());
  SourceConfig c{dir.File("d.jsonl"), 0, 1, 0, 1, 10, {}};
  auto src = PartitionSource::Open(c, {});
  ASSERT_TRUE(src.ok());
  PartitionSource::Admission a;
  ASSERT_TRUE((*src)->Next(&a));
  for (uint32_t i = 0; i < PartitionSource::kMaxFreeReadmits; ++i) {
    ASSERT_TRUE((*src)->Readmit("r1.t0", 3, /*charge=*/false)) << i;
    ASSERT_TRUE((*src)->Next(&a));
    EXPECT_EQ(a.attempt, 1u);  // not charged
  }
  EXPECT_FALSE((*src)->Readmit("r1.t0", 3, /*charge=*/false));  // the bound
  EXPECT_TRUE((*src)->Readmit("r1.t0", 3, /*charge=*/true));    // charged attempts are counted apart
}

TEST(PartitionSourceTest, WithoutNewRowsOnlyReadmissionsComeOut) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("d.jsonl"), Rows(5)).ok());
  SourceConfig c{dir.File("d.jsonl"), 0, 1, 0, 1, 2, {}};
  auto src = PartitionSource::Open(c, {});
  ASSERT_TRUE(src.ok());
  PartitionSource::Admission a;
  ASSERT_TRUE((*src)->Next(&a, /*new_rows=*/true));
  (*src)->OnFinished(a.task_id);
  EXPECT_FALSE((*src)->Next(&a, /*new_rows=*/false));  // room, but no new row
  ASSERT_TRUE((*src)->Next(&a, /*new_rows=*/true));
  const std::string id = a.task_id;
  ASSERT_TRUE((*src)->Readmit(id, 3));
  ASSERT_TRUE((*src)->Next(&a, /*new_rows=*/false));
  EXPECT_EQ(a.task_id, id);
}

TEST(PartitionSinkTest, WritesOnceAndRepairsATornTail) {
  TempDir dir;
  std::string path = dir.File("out/p0.jsonl");
  {
    auto sink = PartitionSink::Open(path);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    EXPECT_TRUE(*(*sink)->Write(Json{{"task_id", "a"}, {"status", "done"}}));
    EXPECT_FALSE(*(*sink)->Write(Json{{"task_id", "a"}, {"status", "done"}}));  // duplicate absorbed
    EXPECT_TRUE(*(*sink)->Write(Json{{"task_id", "b"}, {"status", "failed"}}));
  }
  // A crash in the middle of a write leaves a partial line.
  std::string text = *ReadFile(path);
  ASSERT_TRUE(WriteFileAtomic(path, text + "{\"task_id\": \"c\", \"sta").ok());
  auto sink = PartitionSink::Open(path);
  ASSERT_TRUE(sink.ok());
  EXPECT_EQ((*sink)->preexisting(), 2);
  EXPECT_GT((*sink)->repaired_bytes(), 0);
  EXPECT_TRUE((*sink)->Written("a"));
  EXPECT_FALSE((*sink)->Written("c"));
  EXPECT_TRUE(*(*sink)->Write(Json{{"task_id", "c"}, {"status", "done"}}));
  std::string repaired = *ReadFile(path);
  EXPECT_EQ(std::count(repaired.begin(), repaired.end(), '\n'), 3);
  for (size_t pos = 0, nl; (nl = repaired.find('\n', pos)) != std::string::npos; pos = nl + 1)
    EXPECT_TRUE(ParseJson(repaired.substr(pos, nl - pos), "line").ok());
}

// The frames of a zstd record file and the records (lines) of each.
std::vector<int> FrameRecords(const std::string& path) {
  std::vector<int> out;
  size_t whole = 0;
  Status st = ForEachZstdFrame(
      *ReadFile(path),
      [&](std::string_view content, size_t) {
        out.push_back(static_cast<int>(std::count(content.begin(), content.end(), '\n')));
        return Status::Ok();
      },
      &whole);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

std::string Frame(const std::string& text) {
  ZstdFrameWriter zstd;
  std::string frame;
  EXPECT_TRUE(zstd.Compress(text, &frame).ok());
  return frame;
}

TEST(PartitionSinkTest, ZstdWritesOneFramePerRecordAndResumesFromThem) {
  TempDir dir;
  std::string path = dir.File("out/p0.jsonl.zst");
  {
    auto sink = PartitionSink::Open(path);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    EXPECT_TRUE((*sink)->compressed());
    EXPECT_TRUE(*(*sink)->Write(Json{{"task_id", "a"}, {"status", "done"}}));
    EXPECT_FALSE(*(*sink)->Write(Json{{"task_id", "a"}, {"status", "done"}}));  // duplicate absorbed
    // In the file, whole, as soon as the call returns: nothing is buffered.
    EXPECT_EQ(FrameRecords(path), std::vector<int>({1}));
    EXPECT_TRUE(*(*sink)->WriteLine("b", "failed", R"({"task_id":"b","status":"failed"})"));
    EXPECT_EQ(FrameRecords(path), std::vector<int>({1, 1}));
  }
  EXPECT_FALSE(FileExists(dir.File("out/p0.jsonl")));
  auto sink = PartitionSink::Open(path);
  ASSERT_TRUE(sink.ok()) << sink.status().ToString();
  EXPECT_EQ((*sink)->preexisting(), 2);
  EXPECT_EQ((*sink)->repaired_bytes(), 0);
  EXPECT_TRUE((*sink)->Written("a"));
  EXPECT_TRUE((*sink)->Written("b"));
  EXPECT_FALSE(*(*sink)->Write(Json{{"task_id", "b"}, {"status", "done"}}));
  EXPECT_TRUE(*(*sink)->Write(Json{{"task_id", "c"}, {"status", "done"}}));
  auto text = ReadLinesFile(path);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, "{\"status\":\"done\",\"task_id\":\"a\"}\n{\"task_id\":\"b\",\"status\":\"failed\"}\n"
                   "{\"status\":\"done\",\"task_id\":\"c\"}\n");
  // A frame may hold several records (`zstd` run over a plain file does).
  const std::string plain = dir.File("q/p1.jsonl.zst");
  ASSERT_TRUE(MakeDirs(dir.File("q")).ok());
  ASSERT_TRUE(WriteFileAtomic(plain, Frame(*text)).ok());
  auto again = PartitionSink::Open(plain);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ((*again)->preexisting(), 3);
}

TEST(PartitionSinkTest, ZstdRepairsATornLastFrame) {
  TempDir dir;
  std::string path = dir.File("p0.jsonl.zst");
  const std::string whole = Frame("{\"task_id\":\"a\",\"status\":\"done\"}\n") +
                            Frame("{\"task_id\":\"b\",\"status\":\"done\"}\n");
  const std::string third = Frame("{\"task_id\":\"c\",\"status\":\"done\",\"text\":\"" + std::string(300, 'x') + "\"}\n");
  // A crash in the middle of a write leaves the start of a frame: cut inside
  // the magic number, inside the header, inside the block, before the
  // checksum; a power cut may leave zero bytes instead.
  for (const std::string& tail : {third.substr(0, 2), third.substr(0, 7), third.substr(0, third.size() / 2),
                                  third.substr(0, third.size() - 1), std::string(64, '\0')}) {
    ASSERT_TRUE(WriteFileAtomic(path, whole + tail).ok());
    auto sink = PartitionSink::Open(path);
    ASSERT_TRUE(sink.ok()) << tail.size() << ": " << sink.status().ToString();
    EXPECT_EQ((*sink)->preexisting(), 2);
    EXPECT_EQ((*sink)->repaired_bytes(), static_cast<int64_t>(tail.size()));
    EXPECT_EQ(ReadFile(path)->size(), whole.size());
    EXPECT_FALSE((*sink)->Written("c"));
    EXPECT_TRUE(*(*sink)->Write(Json{{"task_id", "c"}, {"status", "done"}}));
    EXPECT_EQ(FrameRecords(path), std::vector<int>({1, 1, 1}));
  }
}

TEST(PartitionSinkTest, ZstdRefusesWhatIsNotWholeFramesOfRecordsNamingFileAndRecord) {
  TempDir dir;
  const std::string good = Frame("{\"task_id\":\"a\",\"status\":\"done\"}\n");
  struct Case {
    std::string data;
    std::string expect;  // in the error
  };
  std::string bad_checksum = good;
  bad_checksum.back() ^= 0x5a;
  for (const Case& c : std::vector<Case>{
           {"{\"task_id\":\"a\",\"status\":\"done\"}\n", "record 1 "},              // plain text named .zst
           {good + "not zstd at all\n", "record 2 "},                                // garbage after a frame
           {good + Frame("{\"task_id\":\"b\"}\nnot json\n"), "record 3 "},           // a line that is no record
           {good + Frame("{\"task_id\":\"b\",\"status\":\"done\"}"), "record 2 "},  // a frame without newline
           {bad_checksum + good, "record 1 "},                                       // a damaged frame
       }) {
    const std::string path = dir.File("p0.jsonl.zst");
    ASSERT_TRUE(WriteFileAtomic(path, c.data).ok());
    auto sink = PartitionSink::Open(path);
    ASSERT_FALSE(sink.ok()) << c.expect;
    const std::string message = sink.status().message();
    EXPECT_EQ(sink.status().code(), StatusCode::kDataLoss) << message;
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(c.expect), std::string::npos) << c.expect << " in " << message;
    EXPECT_EQ(*ReadFile(path), c.data) << "never truncated: " << message;
  }
}

TEST(PartitionSinkTest, RefusesAPartitionWithRecordsInTheOtherFormat) {
  TempDir dir;
  {
    auto plain = PartitionSink::Open(dir.File("p0.jsonl"));
    ASSERT_TRUE(plain.ok());
    EXPECT_FALSE((*plain)->compressed());
    ASSERT_TRUE(*(*plain)->Write(Json{{"task_id", "a"}, {"status", "done"}}));
  }
  auto zstd = PartitionSink::Open(dir.File("p0.jsonl.zst"));
  ASSERT_FALSE(zstd.ok());
  EXPECT_EQ(zstd.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(zstd.status().message().find("p0.jsonl holds records"), std::string::npos) << zstd.status().message();
  EXPECT_FALSE(FileExists(dir.File("p0.jsonl.zst")));
  // The other way round too; an empty file in the other format is no split.
  ASSERT_TRUE(WriteFileAtomic(dir.File("p1.jsonl.zst"), Frame("{\"task_id\":\"a\",\"status\":\"done\"}\n")).ok());
  EXPECT_EQ(PartitionSink::Open(dir.File("p1.jsonl")).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(WriteFileAtomic(dir.File("p2.jsonl"), "").ok());
  EXPECT_TRUE(PartitionSink::Open(dir.File("p2.jsonl.zst")).ok());
}

}  // namespace
}  // namespace matrix::worker
