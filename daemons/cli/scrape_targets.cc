// ScrapeTargets: <run_dir>/endpoints/*.metrics -> <run_dir>/prometheus/targets.json.
#include "daemons/cli/scrape_targets.h"

#include <unistd.h>

#include "common/base/files.h"
#include "common/base/json.h"

namespace matrix::cli {
namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  return s.substr(i);
}

}  // namespace

std::string DaemonKind(const std::string& process_name) {
  if (process_name.rfind("worker", 0) == 0) return "worker";
  return process_name;
}

ScrapeTargets::ScrapeTargets(std::string run_dir, std::string node, std::string targets_path)
    : run_dir_(std::move(run_dir)),
      node_(std::move(node)),
      path_(targets_path.empty() ? run_dir_ + "/prometheus/targets.json" : std::move(targets_path)) {}

void ScrapeTargets::Add(const std::string& process_name) {
  for (const auto& p : processes_)
    if (p.name == process_name) return;
  processes_.push_back({process_name, DaemonKind(process_name)});
  addresses_.emplace_back();
}

void ScrapeTargets::Forget(const std::string& process_name) {
  std::string file = run_dir_ + "/endpoints/" + process_name + ".metrics";
  ::unlink(file.c_str());
  for (size_t i = 0; i < processes_.size(); ++i)
    if (processes_[i].name == process_name) addresses_[i].clear();
}

StatusOr<bool> ScrapeTargets::Refresh() {
  bool complete = true;
  Json groups = Json::array();
  for (size_t i = 0; i < processes_.size(); ++i) {
    auto text = ReadFile(run_dir_ + "/endpoints/" + processes_[i].name + ".metrics");
    addresses_[i] = text.ok() ? Trim(*text) : std::string();
    if (addresses_[i].empty()) {
      complete = false;
      continue;
    }
    groups.push_back({{"targets", Json::array({addresses_[i]})},
                      {"labels",
                       {{"job", "matrix"},
                        {"node", node_},
                        {"daemon", processes_[i].daemon},
                        {"process", processes_[i].name}}}});
  }
  std::string content = DumpJson(groups, 2) + "\n";
  if (content != written_) {
    MATRIX_RETURN_IF_ERROR(MakeDirs(path_.substr(0, path_.rfind('/'))));
    MATRIX_RETURN_IF_ERROR(WriteFileAtomic(path(), content));
    written_ = content;
  }
  return complete;
}

Status ScrapeTargets::Clear() {
  for (auto& a : addresses_) a.clear();
  MATRIX_RETURN_IF_ERROR(MakeDirs(run_dir_ + "/prometheus"));
  written_ = "[]\n";
  return WriteFileAtomic(path(), written_);
}

std::vector<std::string> ScrapeTargets::Addresses() const {
  std::vector<std::string> out;
  for (size_t i = 0; i < processes_.size(); ++i)
    if (!addresses_[i].empty()) out.push_back(processes_[i].name + "=" + addresses_[i]);
  return out;
}

}  // namespace matrix::cli
