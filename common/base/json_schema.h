// JSON Schema checks (drafts 3, 4 and 7) through valijson, the one place the
// project uses it: a schema is compiled once (a structured-output role's
// `response_format`, checked when the pipeline loads) and model answers are
// validated against it when they arrive.
//
// Thread-safety: a compiled JsonSchema is immutable; Validate() may be called
// from any thread.
#pragma once

#include <memory>
#include <string>

#include "common/base/json.h"
#include "common/base/status.h"

namespace valijson {
class Schema;
}

namespace matrix {

class JsonSchema {
 public:
  // InvalidArgument naming what is wrong when `schema` is not a valid JSON
  // Schema (unknown type names, keywords of the wrong type, references that
  // do not resolve within the document).
  static StatusOr<JsonSchema> Compile(const Json& schema);

  // OK, or InvalidArgument listing the first violations with their paths
  // ("<root>.score: value is below the minimum").
  Status Validate(const Json& document) const;

 private:
  std::shared_ptr<const valijson::Schema> schema_;
};

}  // namespace matrix
