// ScanRegisteredEndpoints: one readdir pass over a model's registration
// folder, each file checked as an http(s) base URL.
// Thread-safety: no shared state.
#include "common/llm/endpoint_directory.h"

#include <curl/curl.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "common/base/log.h"
#include "common/base/strings.h"

namespace matrix::llm {
namespace {

constexpr off_t kMaxFileBytes = 4096;

bool Ignored(const std::string& name) {
  if (name.empty() || name[0] == '.') return true;
  const std::string tmp = ".tmp";
  if (name.size() >= tmp.size() && name.compare(name.size() - tmp.size(), tmp.size(), tmp) == 0)
    return true;
  return name.find(".tmp.") != std::string::npos;
}

// Reads at most kMaxFileBytes + 1 bytes of `path` into *out. False (with a
// warning unless the file has vanished) when it cannot be read.
bool ReadSmallFile(const std::string& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err != ENOENT)
      LOG_WARN << "model registration " << path << " skipped: " << std::strerror(err);
    return false;
  }
  char buf[kMaxFileBytes + 1];
  size_t got = 0;
  while (got < sizeof(buf)) {
    ssize_t n = ::read(fd, buf + got, sizeof(buf) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      LOG_WARN << "model registration " << path << " skipped: " << std::strerror(err);
      ::close(fd);
      return false;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > static_cast<size_t>(kMaxFileBytes)) {
    LOG_WARN << "model registration " << path << " skipped: larger than " << kMaxFileBytes
             << " bytes";
    return false;
  }
  out->assign(buf, got);
  return true;
}

// Empty when `text` is one http(s) URL with a host, else what is wrong with it.
std::string UrlProblem(const std::string& text) {
  if (text.empty()) return "it is empty";
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c)) || std::iscntrl(static_cast<unsigned char>(c)))
      return "it holds more than one URL line or whitespace inside the URL";
  }
  // libcurl reads "http:///v1" as host "v1"; a registration names its host.
  const size_t scheme_end = text.find("://");
  if (scheme_end == std::string::npos || scheme_end + 3 >= text.size() ||
      text[scheme_end + 3] == '/')
    return "it is not a URL with a host";
  auto parts = ParseUrl(text);
  if (!parts.ok() && parts.status().code() == StatusCode::kInternal) return "out of memory parsing it";
  if (!parts.ok() || parts->host.empty()) return "it is not a URL with a host";
  if (parts->scheme != "http" && parts->scheme != "https") return "it is not an http or https URL";
  return "";
}

}  // namespace

StatusOr<UrlParts> ParseUrl(const std::string& url) {
  CURLU* u = curl_url();
  if (u == nullptr) return Internal("out of memory parsing a URL");
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, url.c_str(), 0);
  char* scheme = nullptr;
  char* host = nullptr;
  if (uc == CURLUE_OK) uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
  if (uc == CURLUE_OK) uc = curl_url_get(u, CURLUPART_HOST, &host, 0);
  UrlParts parts{scheme ? scheme : "", host ? host : ""};
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  if (uc != CURLUE_OK) return InvalidArgument("not a valid URL");
  for (std::string* s : {&parts.scheme, &parts.host})
    for (char& c : *s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return parts;
}

std::vector<std::string> ScanRegisteredEndpoints(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    const int err = errno;
    if (err != ENOENT)
      LOG_WARN << "model registrations: cannot open " << dir << ": " << std::strerror(err);
    return out;
  }
  while (dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (Ignored(name)) continue;
    const std::string path = dir + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      const int err = errno;
      if (err != ENOENT)
        LOG_WARN << "model registration " << path << " skipped: " << std::strerror(err);
      continue;
    }
    if (!S_ISREG(st.st_mode)) continue;
    if (st.st_size > kMaxFileBytes) {
      LOG_WARN << "model registration " << path << " skipped: larger than " << kMaxFileBytes
               << " bytes";
      continue;
    }
    std::string text;
    if (!ReadSmallFile(path, &text)) continue;
    const std::string url = Trim(text);
    const std::string problem = UrlProblem(url);
    if (!problem.empty()) {
      LOG_WARN << "model registration " << path << " skipped: " << problem;
      continue;
    }
    out.push_back(url);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace matrix::llm
