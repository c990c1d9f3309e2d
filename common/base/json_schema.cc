#include "common/base/json_schema.h"

#define VALIJSON_USE_EXCEPTIONS 1
#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>

namespace matrix {

StatusOr<JsonSchema> JsonSchema::Compile(const Json& schema) {
  if (!schema.is_object()) return InvalidArgument("a JSON Schema must be an object, got " + std::string(schema.type_name()));
  auto compiled = std::make_shared<valijson::Schema>();
  try {
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    valijson::adapters::NlohmannJsonAdapter adapter(schema);
    parser.populateSchema(adapter, *compiled);
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("not a valid JSON Schema: ") + e.what());
  }
  JsonSchema out;
  out.schema_ = std::move(compiled);
  return out;
}

Status JsonSchema::Validate(const Json& document) const {
  valijson::Validator validator(valijson::Validator::kStrongTypes);
  valijson::ValidationResults results;
  valijson::adapters::NlohmannJsonAdapter adapter(document);
  bool ok = false;
  try {
    ok = validator.validate(*schema_, adapter, &results);
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("schema check failed: ") + e.what());
  }
  if (ok) return Status::Ok();
  // valijson reports each failure from the innermost node outwards; the
  // innermost ones say the most.
  std::string why;
  int shown = 0;
  valijson::ValidationResults::Error error;
  while (shown < 3 && results.popError(error)) {
    std::string path;
    for (const auto& part : error.context) path += part;
    if (!why.empty()) why += "; ";
    why += (path.empty() ? "<root>" : path) + ": " + error.description;
    ++shown;
  }
  return InvalidArgument("does not match the schema: " + why);
}

}  // namespace matrix
