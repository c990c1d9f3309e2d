// Checks that need the whole pipeline: names that refer across sections
// (models of roles, roles and targets of steps, fan-out branches, tool and
// agent roles), steps reachable from start, unused roles and models.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/config/loader/config_tree.h"
#include "common/config/pipeline.h"
#include "common/config/pipeline_loader.h"

namespace matrix::config::loader_internal {

// Where the builder met each step and each `next` target, so that messages
// point at the YAML.
struct FlowNodes {
  struct Target {
    std::string step;
    std::string target;
    const CNode* node;
  };
  std::vector<Target> targets;
  std::map<std::string, const CNode*> steps;  // every step of p->flow.steps
};

// Reports errors and warnings about the built pipeline `p` of tree `root`.
void CheckFlow(const CNode& root, const FlowNodes& nodes, const LoadOptions& options, Pipeline* p, Diag* diag);

}  // namespace matrix::config::loader_internal
