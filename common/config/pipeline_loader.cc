// Pipeline loading in five passes over a location-carrying tree (CNode,
// loader/config_tree.h), each pass in its own file under loader/:
//   1. read each YAML file and convert it, keeping file and line of every
//      key and value (yaml_reader);
//   2. compose `defaults` (compose);
//   3. apply command-line overrides (compose);
//   4. resolve ${...} interpolation against the composed tree (interpolate);
//   5. check and compile it into a Pipeline, collecting every error
//      (pipeline_builder, then flow_check for references across sections).
// Thread-safety: no shared state; each call builds its own tree.
#include "common/config/pipeline_loader.h"

#include <exception>
#include <filesystem>

#include "common/base/hash.h"
#include "common/base/log.h"
#include "common/config/loader/compose.h"
#include "common/config/loader/config_tree.h"
#include "common/config/loader/interpolate.h"
#include "common/config/loader/pipeline_builder.h"

namespace matrix::config {

namespace fs = std::filesystem;

using loader_internal::ApplyOverride;
using loader_internal::BuildPipeline;
using loader_internal::CEntry;
using loader_internal::CNode;
using loader_internal::ComposeFile;
using loader_internal::Diag;
using loader_internal::Interpolate;
using loader_internal::ResolvePath;
using loader_internal::ToJson;

std::string ConfigError::ToString() const {
  std::string out = file;
  if (line > 0) out += ":" + std::to_string(line);
  if (!key.empty()) out += (out.empty() ? "" : ": ") + key;
  out += (out.empty() ? "" : ": ") + (warning ? "warning: " + message : message);
  return out;
}

LoadResult LoadPipeline(const std::string& path, const std::vector<std::string>& overrides,
                        const LoadOptions& options) {
  LoadResult result;
  Diag diag;
  CNode root;
  bool loaded = ComposeFile(path, &diag, &root);
  if (loaded) {
    if (root.Find("name") == nullptr) {
      CNode name;
      name.kind = CNode::Kind::kScalar;
      name.scalar = fs::path(path).stem().string();
      name.file = path;
      name.line = 0;
      name.resolved = true;
      root.entries.insert(root.entries.begin(), CEntry{"name", std::move(name)});
    }
    for (const auto& o : overrides) ApplyOverride(o, &root, &diag);
    Interpolate(&root, &diag);
  }
  if (loaded && !diag.has_errors()) {
    try {
      Pipeline p;
      p.source_path = ResolvePath(path, "");
      BuildPipeline(path, options, &root, &p, &diag);
      if (!diag.has_errors()) {
        p.merged = ToJson(root);
        Json def = Json::object();
        for (const char* k : {"models", "roles", "flow"}) def[k] = p.merged.contains(k) ? p.merged[k] : Json();
        // Prices change what is reported, not what tasks do.
        if (def["models"].is_object())
          for (auto& [name, m] : def["models"].items())
            if (m.is_object()) m.erase("price");
        p.hash = Hash64(DumpJson(def));
        result.pipeline = std::move(p);
      }
    } catch (const std::exception& e) {
      diag.Error(path, 0, "", std::string("internal error while loading: ") + e.what());
      result.pipeline.reset();
    }
  }
  result.errors = std::move(diag.errors());
  result.warnings = std::move(diag.warnings());
  return result;
}

StatusOr<Pipeline> LoadPipelineOrError(const std::string& path, const std::vector<std::string>& overrides) {
  LoadResult r = LoadPipeline(path, overrides);
  for (const auto& w : r.warnings) LOG_WARN << w.ToString();
  if (!r.errors.empty() || !r.pipeline) {
    std::string msg = "invalid pipeline " + path + ":";
    for (const auto& e : r.errors) msg += "\n  " + e.ToString();
    return FailedPrecondition(msg);
  }
  return std::move(*r.pipeline);
}

}  // namespace matrix::config

