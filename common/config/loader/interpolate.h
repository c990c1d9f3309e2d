// ${...} interpolation over the composed tree: ${a.b} is the value at that
// dotted path (the value itself when it is the whole string, its text
// otherwise), ${env:NAME[,default]} an environment variable; \${ is a
// literal "${". Cycles and unresolvable references are errors.
#pragma once

#include "common/config/loader/config_tree.h"

namespace matrix::config::loader_internal {

// Resolves every string of the tree in place.
void Interpolate(CNode* root, Diag* diag);

}  // namespace matrix::config::loader_internal
