#include "common/base/json_schema.h"

#include <gtest/gtest.h>

namespace matrix {
namespace {

const Json kVerdict = Json::parse(R"({
  "type": "object",
  "properties": {
    "score": {"type": "integer", "minimum": 1, "maximum": 5},
    "label": {"enum": ["keep", "drop"]},
    "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1}
  },
  "required": ["score", "label"],
  "additionalProperties": false
})");

TEST(JsonSchemaTest, AcceptsConformingDocumentsAndNamesTheViolations) {
  auto schema = JsonSchema::Compile(kVerdict);
  ASSERT_TRUE(schema.ok()) << schema.status().ToString();
  EXPECT_TRUE(schema->Validate(Json::parse(R"({"score": 3, "label": "keep"})")).ok());
  EXPECT_TRUE(schema->Validate(Json::parse(R"({"score": 5, "label": "drop", "steps": ["a"]})")).ok());

  Status low = schema->Validate(Json::parse(R"({"score": 0, "label": "keep"})"));
  EXPECT_FALSE(low.ok());
  EXPECT_NE(low.message().find("score"), std::string::npos) << low.message();
  Status missing = schema->Validate(Json::parse(R"({"score": 2})"));
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("label"), std::string::npos) << missing.message();
  EXPECT_FALSE(schema->Validate(Json::parse(R"({"score": 2, "label": "maybe"})")).ok());
  EXPECT_FALSE(schema->Validate(Json::parse(R"({"score": 2, "label": "keep", "extra": 1})")).ok());
  EXPECT_FALSE(schema->Validate(Json::parse(R"({"score": "2", "label": "keep"})")).ok());
  EXPECT_FALSE(schema->Validate(Json::parse(R"([1, 2])")).ok());
  EXPECT_FALSE(schema->Validate(Json::parse(R"({"score": 2, "label": "keep", "steps": []})")).ok());
}

TEST(JsonSchemaTest, RefusesSchemasThatAreNotJsonSchema) {
  for (const char* bad : {R"({"type": "strng"})", R"({"required": "score"})", R"({"properties": 5})",
                          R"({"minimum": "one"})", R"({"$ref": "#/definitions/missing"})", R"("object")"}) {
    auto schema = JsonSchema::Compile(Json::parse(bad));
    EXPECT_FALSE(schema.ok()) << bad;
    if (!schema.ok()) EXPECT_EQ(schema.status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(JsonSchema::Compile(Json::object()).ok());  // accepts anything
}

}  // namespace
}  // namespace matrix
