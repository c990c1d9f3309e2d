#include "test/common/metrics/scrape_util.h"

#include <cstdlib>
#include <fstream>

#include "test/support/test_util.h"

namespace matrix::testing {

int HttpGet(const std::string& address, const std::string& path, std::string* body) {
  body->clear();
  return RunCommand("curl -sSf --max-time 10 'http://" + address + path + "'", body);
}

int HttpStatus(const std::string& address, const std::string& path) {
  std::string out;
  RunCommand("curl -s -o /dev/null --max-time 10 -w '%{http_code}' 'http://" + address + path + "'",
             &out);
  return std::atoi(out.c_str());
}

bool HavePromtool() { return RunCommand("command -v promtool >/dev/null") == 0; }

int PromtoolCheckMetrics(const std::string& exposition, std::string* report) {
  TempDir dir;
  const std::string path = dir.File("metrics.txt");
  {
    std::ofstream out(path, std::ios::binary);
    out << exposition;
  }
  return RunCommand("promtool check metrics < '" + path + "'", report);
}

}  // namespace matrix::testing
