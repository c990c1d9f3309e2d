// The last stage of loading: checks the composed, interpolated tree against
// the format (pipeline.h) and compiles it into a Pipeline, with templates,
// expressions and regexes compiled; every problem goes to the Diag.
#pragma once

#include <string>

#include "common/config/loader/config_tree.h"
#include "common/config/pipeline.h"
#include "common/config/pipeline_loader.h"

namespace matrix::config::loader_internal {

// Fills *p from `root`. `top_file` names the pipeline (its stem is the
// default name) and locates errors about missing sections.
void BuildPipeline(const std::string& top_file, const LoadOptions& options, CNode* root, Pipeline* p, Diag* diag);

}  // namespace matrix::config::loader_internal
