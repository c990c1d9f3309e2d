#include "daemons/cli/preflight.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/base/files.h"
#include "common/llm/api_key.h"

namespace matrix::cli {

std::vector<std::string> Preflight(const config::Pipeline& pipeline, const std::string& output_dir, bool overwrite) {
  std::vector<std::string> problems;
  for (const auto& [name, model] : pipeline.models) {
    if (model.api_key_env.empty() && model.api_key_file.empty()) continue;
    auto key = llm::ReadApiKey(model.api_key_env, model.api_key_file);
    if (!key.ok()) problems.push_back("model '" + name + "': " + key.status().message());
  }
  if (!pipeline.dataset.path.empty()) {
    int fd = ::open(pipeline.dataset.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      problems.push_back("dataset " + pipeline.dataset.path + ": " + std::strerror(errno));
    else
      ::close(fd);
  }
  if (!output_dir.empty()) {
    // The directory itself, or the nearest existing one above it, must take new files.
    std::string dir = output_dir;
    while (::access(dir.c_str(), F_OK) != 0 && dir.find('/') != std::string::npos) {
      const size_t slash = dir.find_last_of('/');
      dir = slash == 0 ? "/" : dir.substr(0, slash);
    }
    if (::access(dir.c_str(), F_OK) != 0) dir = ".";
    if (::access(dir.c_str(), W_OK | X_OK) != 0)
      problems.push_back("output directory " + output_dir + ": " + dir + " is not writable (" +
                         std::strerror(errno) + ")");
    // Record files another run is writing now (its sinks hold their locks),
    // and records in the format this run does not write: a partition's
    // records go to one file, p<N>.jsonl or p<N>.jsonl.zst.
    const bool zstd = pipeline.run.output_compression == config::RunConfig::OutputCompression::kZstd;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(output_dir, ec)) {
      const std::string path = entry.path().string();
      const std::string name = entry.path().filename().string();
      const bool is_zst = name.size() > 10 && name.compare(name.size() - 10, 10, ".jsonl.zst") == 0;
      if (entry.path().extension() != ".jsonl" && !is_zst) continue;
      std::error_code size_ec;
      if (!overwrite && is_zst != zstd && name[0] == 'p' && entry.file_size(size_ec) > 0 && !size_ec)
        problems.push_back("output " + path + " holds " + (is_zst ? "zstd" : "plain") +
                           " records but run.output_compression is " + (zstd ? "zstd" : "none") +
                           ": convert it (`zstd " + (is_zst ? "-d --rm " : "--rm ") + path +
                           "`), or set run.output_compression=" + (is_zst ? "zstd" : "none") +
                           ", --overwrite or another --output");
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      if (::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK)
        problems.push_back("output " + path + " is being written by another run; stop it first or use another --output");
      ::close(fd);
    }
  }
  return problems;
}

}  // namespace matrix::cli
