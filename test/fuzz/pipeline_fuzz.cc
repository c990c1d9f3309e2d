// Fuzz target for the pipeline loader (common/config/pipeline_loader.h). The
// input is written to pipeline.yaml in a per-process folder under /tmp (one
// path, rewritten per input) and loaded from there; that folder also holds
// common/sim_models.yaml so `defaults: [common/sim_models]` composes. Lines
// of the input that start with "#=" are YAML comments to the loader and are
// also passed, without the "#=", as command-line overrides (at most 16):
//   #=run.trials=2
//   #=~models.small.sampling
// Properties checked besides "no crash, no sanitizer report, no escaping
// exception": a pipeline comes back exactly when there are no errors, every
// error says something, and none is a caught internal error; a loaded
// pipeline describes itself and merges each role's sampling.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/config/pipeline_loader.h"
#include "test/fuzz/fuzz_check.h"

namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxOverrides = 16;

constexpr char kSimModels[] = R"(models:
  small:
    endpoints: [sim]
    model: meta-llama/Llama-3.2-1B-Instruct
    sampling: {temperature: 0.8, max_tokens: 256}
  large:
    endpoints: [sim]
    model: meta-llama/Llama-3.1-8B-Instruct
    max_concurrency_per_endpoint: 64
    sampling: {temperature: 0.7, max_tokens: 512}
)";

std::string& Dir() {
  static std::string dir;
  return dir;
}

void RemoveDir() {
  std::error_code ec;
  if (!Dir().empty()) fs::remove_all(Dir(), ec);
}

const std::string& PipelinePath() {
  static const std::string path = [] {
    Dir() = "/tmp/matrix-pipeline-fuzz-" + std::to_string(::getpid());
    fs::create_directories(Dir() + "/common");
    std::ofstream(Dir() + "/common/sim_models.yaml", std::ios::binary) << kSimModels;
    std::atexit(RemoveDir);
    setenv("MATRIX_FUZZ_ENV", "from-env", 1);
    return Dir() + "/pipeline.yaml";
  }();
  return path;
}

std::vector<std::string> Overrides(std::string_view text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size() && out.size() < kMaxOverrides) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    if (line.substr(0, 2) == "#=") out.emplace_back(line.substr(2));
    pos = end + 1;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string& path = PipelinePath();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  ::close(fd);
  auto result = matrix::config::LoadPipeline(path, Overrides(text));
  FUZZ_CHECK(result.pipeline.has_value() == result.errors.empty());
  for (const auto& e : result.errors) {
    FUZZ_CHECK(!e.message.empty());
    FUZZ_CHECK(e.message.rfind("internal error", 0) != 0);
    (void)e.ToString();
  }
  for (const auto& w : result.warnings) (void)w.ToString();
  if (result.pipeline) {
    const auto& p = *result.pipeline;
    FUZZ_CHECK(!DescribePipeline(p).empty());
    for (const auto& [name, role] : p.roles) (void)p.SamplingFor(role);
  }
  return 0;
}
