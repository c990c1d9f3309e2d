// The job's CURVE key pair: created once per run directory by the job script
// (`matrix keys RUN_DIR`) and read by every daemon of the job.
//
//   <run_dir>/keys/          mode 0700
//   <run_dir>/keys/job.key   mode 0600: "public=<Z85>" and "secret=<Z85>" lines
//
// Every server of the job binds with the pair's secret key and admits only
// clients presenting its public key (Context::RestrictCurveClients); every
// client authenticates with the same pair. A file readable by group or
// others is refused: the secret would no longer be the job's.
#pragma once

#include <string>

#include "common/base/status.h"
#include "common/transport/transport.h"

namespace matrix::transport {

std::string JobKeyPath(const std::string& run_dir);
// Creates the key file when missing (an existing one is kept). Safe to run
// concurrently: the file appears whole or not at all.
Status CreateJobKeys(const std::string& run_dir);
// NotFound when missing; FailedPrecondition naming the file when it is
// readable by others or malformed.
StatusOr<CurveKeyPair> LoadJobKeys(const std::string& run_dir);

}  // namespace matrix::transport
