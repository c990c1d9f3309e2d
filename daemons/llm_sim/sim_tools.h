// Conversation identifiers and schema-valid tool-call arguments for
// matrix-llm-sim.
//
// ScanIds finds identifiers shaped like Tau2-bench's retail and airline data
// in message text (order ids "#W1234567", user ids "sara_doe_496", 10-digit
// item/product ids, emails, payment method ids "credit_card_1234567", 5-digit
// zips, reservation ids "8JX2WO", "First Last" names). ValueForSchema builds
// a JSON value that satisfies a JSON schema; it answers both tool calls
// (ArgumentsForSchema, a function's `parameters`) and structured output
// (`response_format` json_schema). Properties whose name suggests an
// identifier (order_id, item_ids, payment_method_id, zip, email, ...) get
// identifiers seen earlier in the conversation, else deterministic synthetic
// ones of the same shape. ScenarioMention writes the sentences a simulated
// customer uses to give its identifiers to an agent.
//
// Thread-safety: free functions over value types; no shared state.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/json.h"
#include "daemons/llm_sim/sim_rng.h"

namespace matrix::llm_sim {

enum class IdKind : int {
  kOrderId,        // "#W" + 7 digits
  kUserId,         // lower-case words and digits joined by '_': "sara_doe_496"
  kItemId,         // 10 digits (item and product ids)
  kEmail,          // local@domain.tld
  kPaymentMethod,  // credit_card_ / gift_card_ / debit_card_ / paypal_ / certificate_ + digits
  kZip,            // 5 digits
  kReservationId,  // 6 upper-case letters and digits, both present: "8JX2WO"
  kFullName,       // "First Last" after "name is" / "You are" / "I am", or first_name + last_name in JSON
  kCount,
};

// Identifiers by kind, each list in order of first appearance without duplicates.
struct FoundIds {
  std::array<std::vector<std::string>, static_cast<size_t>(IdKind::kCount)> by_kind;

  const std::vector<std::string>& Of(IdKind kind) const {
    return by_kind[static_cast<size_t>(kind)];
  }
  void Add(IdKind kind, std::string value);
  bool Empty() const;
};

// Adds the identifiers found in `text` to `*out`.
void ScanIds(std::string_view text, FoundIds* out);

// The identifier a property name suggests ("order_id", "item_ids",
// "payment_method_id", "zip", "email", "first_name", ...); nullopt for others.
// `part` is 1 for a first name, 2 for a last name, 0 for the whole value.
struct PropertyId {
  IdKind kind;
  int part = 0;
};
std::optional<PropertyId> IdForProperty(std::string_view name);

// A value of the given kind: one of `ids` when it has any (usually the latest
// seen), else a synthetic one of the same shape drawn from `rng`.
std::string IdValue(PropertyId id, const FoundIds& ids, SimRng* rng);

// Words for strings that have no identifier meaning; empty: short product
// words ("blue", "leather", "express", ...).
struct FillerWords {
  const char* const* words = nullptr;
  size_t count = 0;
};

// A JSON value that satisfies `schema`. Honoured: "type" (one name or a list:
// one of the non-null types, null only when alone), "enum", "const",
// "properties" with "required" (required always present, others with
// probability 1/2, all of them when there is no "required" list),
// "minProperties", "items" (one schema or a tuple, "additionalItems"),
// "minItems"/"maxItems"/"uniqueItems", "minimum"/"maximum" and
// "exclusiveMinimum"/"exclusiveMaximum" (number or draft-4 boolean forms),
// "multipleOf", "minLength"/"maxLength", "format" (date, date-time, email,
// uri, uuid), "anyOf"/"oneOf" (one option, not the null one when another
// exists), "allOf" (merged), and "$ref" to any JSON pointer inside `schema`
// ("#", "#/definitions/x", "#/$defs/x"). Recursive schemas end: from depth 6
// on values are as small as the schema allows, options without "$ref" come
// first, and past depth 24 objects and arrays are empty. Not honoured:
// "pattern", "not", conditionals, "patternProperties", "contains".
// Deterministic in (schema, ids, words, rng state).
Json ValueForSchema(const Json& schema, const FoundIds& ids, SimRng* rng,
                    const FillerWords& words = FillerWords());

// A JSON object that satisfies `parameters` (an object schema; null or
// non-object schemas give {}): ValueForSchema with product words.
Json ArgumentsForSchema(const Json& parameters, const FoundIds& ids, SimRng* rng);

// Words of one to a few sentences in which a customer gives the identifiers
// of its scenario: the first turn introduces the customer (name, zip, email,
// user id, order), later turns repeat a random subset. Empty when `ids` is.
std::vector<std::string> ScenarioMention(const FoundIds& ids, bool first_turn, SimRng* rng);

}  // namespace matrix::llm_sim
