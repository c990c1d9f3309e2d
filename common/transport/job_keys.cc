#include "common/transport/job_keys.h"

#include <sys/stat.h>

#include <sstream>

#include "common/base/files.h"
#include "common/base/strings.h"

namespace matrix::transport {

std::string JobKeyPath(const std::string& run_dir) { return run_dir + "/keys/job.key"; }

Status CreateJobKeys(const std::string& run_dir) {
  const std::string dir = run_dir + "/keys";
  MATRIX_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  if (::chmod(dir.c_str(), 0700) != 0) return FailedPrecondition("cannot make " + dir + " owner-only");
  if (FileExists(JobKeyPath(run_dir))) return LoadJobKeys(run_dir).status();
  MATRIX_ASSIGN_OR_RETURN(CurveKeyPair pair, GenerateCurveKeyPair());
  return WriteFileAtomic(JobKeyPath(run_dir),
                         "# Matrix job key pair (ZeroMQ CURVE, Z85). Owner-only; do not share.\n"
                         "public=" + pair.public_key + "\nsecret=" + pair.secret_key + "\n",
                         0600);
}

StatusOr<CurveKeyPair> LoadJobKeys(const std::string& run_dir) {
  const std::string path = JobKeyPath(run_dir);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return NotFound("no job keys at " + path + " (run `matrix keys " + run_dir + "`)");
  if (st.st_mode & 077) return FailedPrecondition(path + " is readable by group or others; make it mode 0600");
  MATRIX_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  CurveKeyPair pair;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    line = Trim(line);
    if (line.rfind("public=", 0) == 0) pair.public_key = line.substr(7);
    if (line.rfind("secret=", 0) == 0) pair.secret_key = line.substr(7);
  }
  if (pair.public_key.size() != 40 || pair.secret_key.size() != 40)
    return FailedPrecondition(path + ": expected 'public=' and 'secret=' lines with 40-character Z85 keys");
  return pair;
}

}  // namespace matrix::transport
