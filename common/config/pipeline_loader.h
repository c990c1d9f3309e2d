// Loads a pipeline YAML file (format in pipeline.h): composes its `defaults`,
// applies command-line overrides, resolves ${...} interpolation, then
// validates and compiles everything (templates, expressions, regexes) into a
// Pipeline. Every problem is reported with the file and line it comes from
// and the dotted key, and all of them are collected rather than stopping at
// the first.
//
// Overrides (as given on the command line):
//   a.b.c=value    set an existing key, or a key the format knows (run.trials=2
//                  when `run` has no `trials` yet); value is YAML: 2000, true,
//                  [http://h:1/v1], {temperature: 0.2}; empty means "".
//   +a.b=value     add a key the format does not know (a new model, a params entry);
//                  an error if it exists
//   ++a.b=value    set the key whether or not it exists
//   ~a.b           remove the key
// A path element that is a number indexes a list (models.m.endpoints.0=...).
//
// Thread-safety: the functions are reentrant; they read files and the
// environment (${env:...}) and touch no global state.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/config/pipeline.h"

namespace matrix::config {

struct ConfigError {
  std::string file;  // path as opened, or "<command line>" for overrides
  int line = 0;      // 1-based; 0 when unknown
  std::string key;   // dotted path, e.g. "roles.teacher.prompt"; may be empty
  std::string message;
  bool warning = false;  // reported but does not stop loading

  // "file:line: key: message" (parts that are unknown are left out).
  std::string ToString() const;
};

struct LoadResult {
  std::optional<Pipeline> pipeline;  // set when `errors` is empty
  std::vector<ConfigError> errors;
  std::vector<ConfigError> warnings;  // e.g. unreachable steps, unused roles
};

struct LoadOptions {
  // Accept what the format describes but matrix-worker does not execute yet
  // (fan-out steps). Off for everything that runs or validates a pipeline:
  // a pipeline that loads must run.
  bool parse_only = false;
};

LoadResult LoadPipeline(const std::string& path, const std::vector<std::string>& overrides = {},
                        const LoadOptions& options = {});

// As LoadPipeline; on errors returns FailedPrecondition with every error on
// its own line. Warnings are logged.
StatusOr<Pipeline> LoadPipelineOrError(const std::string& path,
                                       const std::vector<std::string>& overrides = {});

}  // namespace matrix::config
