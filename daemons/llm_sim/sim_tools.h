// Conversation identifiers and schema-valid tool-call arguments for
// matrix-llm-sim.
//
// ScanIds finds identifiers shaped like Tau2-bench's retail and airline data
// in message text (order ids "#W1234567", user ids "sara_doe_496", 10-digit
// item/product ids, emails, payment method ids "credit_card_1234567", 5-digit
// zips, reservation ids "8JX2WO", "First Last" names). ArgumentsForSchema
// builds a JSON object that satisfies a function's `parameters` schema
// (required properties always, optional ones about half the time, types,
// enums, array items, nested objects), filling properties whose name suggests
// an identifier (order_id, item_ids, payment_method_id, zip, email, ...) with
// identifiers seen earlier in the conversation, else with deterministic
// synthetic ones of the same shape. ScenarioMention writes the sentences a
// simulated customer uses to give its identifiers to an agent.
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

// A JSON object that satisfies `parameters` (an object schema; null or
// non-object schemas give {}). Properties listed in `required` are always
// present, others with probability 1/2 (all of them when the schema has no
// `required` list). Deterministic in (parameters, ids, rng state).
Json ArgumentsForSchema(const Json& parameters, const FoundIds& ids, SimRng* rng);

// Words of one to a few sentences in which a customer gives the identifiers
// of its scenario: the first turn introduces the customer (name, zip, email,
// user id, order), later turns repeat a random subset. Empty when `ids` is.
std::vector<std::string> ScenarioMention(const FoundIds& ids, bool first_turn, SimRng* rng);

}  // namespace matrix::llm_sim
