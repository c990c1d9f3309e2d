// What `matrix validate`, `matrix run` and `matrix node` check before any
// daemon starts: the things a worker would otherwise die of at start, over
// and over (an unset API key variable, a key file others can read, a dataset
// that cannot be opened, an output directory that cannot be written, records
// in the other output format).
#pragma once

#include <string>
#include <vector>

#include "common/config/pipeline.h"

namespace matrix::cli {

// One message per problem, each naming the model, file or directory; empty
// when the pipeline can start. `output_dir` empty: not checked. Record files
// in the other format than run.output_compression (p0.jsonl for a zstd run)
// are a problem unless `overwrite` (the run removes them first).
std::vector<std::string> Preflight(const config::Pipeline& pipeline, const std::string& output_dir,
                                   bool overwrite = false);

}  // namespace matrix::cli
