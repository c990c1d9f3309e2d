#include "test/integration/run_util.h"

#include <dirent.h>

#include <fstream>

#include "test/support/test_util.h"

namespace matrix::testing {

std::vector<Json> ReadRecords(const std::string& dir) {
  std::vector<Json> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() < 7 || name.substr(name.size() - 6) != ".jsonl") continue;
    std::ifstream in(dir + "/" + name);
    std::string line;
    while (std::getline(in, line)) out.push_back(Json::parse(line));
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
    if (name.size() < 7 || name.substr(name.size() - 6) != ".jsonl") continue;
    std::ifstream in(dir + "/" + name);
    std::string line;
    while (std::getline(in, line)) n += !in.eof();  // the last line counts only once its newline is written
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
