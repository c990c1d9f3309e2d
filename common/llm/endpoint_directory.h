// Discovery of model-server replicas through the run directory: each server
// registers itself as one file RUN_DIR/models/<model>/<host>_<port> holding
// its base URL ("http://host:port/v1") on one line, and removes the file when
// it leaves. The worker scans the folder and hands the list to
// LlmClient::SetEndpoints.
// Thread-safety: reads the file system only; callable from any thread.
#pragma once

#include <string>
#include <vector>

#include "common/base/status.h"

namespace matrix::llm {

// libcurl's reading of a URL: its scheme and host, lower-cased (the host may
// be empty). kInvalidArgument when it does not parse, kInternal when out of
// memory.
struct UrlParts {
  std::string scheme;
  std::string host;
};
StatusOr<UrlParts> ParseUrl(const std::string& url);

// The base URLs registered in `dir`, sorted and without duplicates. Reads
// every regular file (symbolic links followed) whose name starts with no '.'
// and neither ends in ".tmp" nor contains ".tmp." (files being written
// atomically); each must hold one http(s) URL with a host on one line, of at
// most 4 KiB; surrounding whitespace is trimmed. A file that does not, or
// cannot be read, is skipped with a warning naming it; one that vanishes
// while being scanned is skipped silently. A missing `dir` gives an empty
// list; another error opening it, an empty list and a warning.
std::vector<std::string> ScanRegisteredEndpoints(const std::string& dir);

}  // namespace matrix::llm
