#include "test/integration/run_util.h"

#include <dirent.h>

#include <gtest/gtest.h>

#include "common/base/zstd_lines.h"
#include "test/support/test_util.h"

namespace matrix::testing {

namespace {
// p*.jsonl and p*.jsonl.zst (not p*.jsonl.retried).
bool IsRecordFile(const std::string& name) {
  const std::string base = IsZstdPath(name) ? name.substr(0, name.size() - 4) : name;
  return base.size() >= 7 && base.substr(base.size() - 6) == ".jsonl";
}
}  // namespace

std::vector<Json> ReadRecords(const std::string& dir) {
  std::vector<Json> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (!IsRecordFile(name)) continue;
    auto in = LineReader::Open(dir + "/" + name);
    if (!in.ok()) continue;
    std::string line, error;
    while ((*in)->Next(&line, &error)) out.push_back(Json::parse(line));
    EXPECT_EQ(error, "") << name;
  }
  closedir(d);
  return out;
}

size_t CountRecords(const std::string& dir) {
  size_t n = 0;
  DIR* d = opendir(dir.c_str());
  if (!d) return 0;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (!IsRecordFile(name)) continue;
    auto in = LineReader::Open(dir + "/" + name);
    if (!in.ok()) continue;
    std::string line, error;
    // The last line counts only once its newline (and, compressed, its whole frame) is written.
    while ((*in)->Next(&line, &error)) n += (*in)->last_line_complete();
  }
  closedir(d);
  return n;
}

int PidOf(const std::string& pattern) {
  std::string out;
  const std::string bracketed = "[" + pattern.substr(0, 1) + "]" + pattern.substr(1);
  if (RunCommand("pgrep -f -- '" + bracketed + "' | head -1", &out) != 0 || out.empty()) return -1;
  return std::stoi(out);
}

std::set<std::string> TaskIds(const std::vector<Json>& records, std::vector<std::string>* duplicates) {
  std::set<std::string> ids;
  for (const auto& r : records)
    if (!ids.insert(r["task_id"].get<std::string>()).second && duplicates)
      duplicates->push_back(r["task_id"].get<std::string>());
  return ids;
}

}  // namespace matrix::testing
