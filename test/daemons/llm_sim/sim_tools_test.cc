// Unit tests of schema-valid tool-call arguments (Tau2-bench retail-like
// schemas, identifiers taken from the conversation, parallel calls, text after
// tool results) and of the simulated user that ends a conversation with
// ###STOP###.
#include "daemons/llm_sim/sim_tools.h"

#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>

#include "common/base/json_schema.h"
#include "daemons/llm_sim/sim_content.h"

namespace matrix::llm_sim {
namespace {

Json Msg(const std::string& role, const std::string& text) { return {{"role", role}, {"content", text}}; }

std::string ChatBody(const Json& messages, const Json& extra = Json::object()) {
  Json body = extra;
  body["model"] = "sim";
  body["messages"] = messages;
  return body.dump();
}

CompletionRequest MustParse(const std::string& body, const SimConfig& config = SimConfig()) {
  auto r = ParseCompletionRequest(ApiKind::kChat, body, config);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r.value() : CompletionRequest();
}

CompletionPlan PlanFor(const std::string& body, const SimConfig& config = SimConfig()) {
  return PlanCompletion(MustParse(body, config), config);
}

Json Named(const std::string& name) { return {{"type", "function"}, {"function", {{"name", name}}}}; }

// ------------------------------------------------------------ a small JSON-schema validator

bool HasType(const Json& v, const std::string& type) {
  if (type == "string") return v.is_string();
  if (type == "integer") return v.is_number_integer() || v.is_number_unsigned();
  if (type == "number") return v.is_number();
  if (type == "boolean") return v.is_boolean();
  if (type == "array") return v.is_array();
  if (type == "object") return v.is_object();
  if (type == "null") return v.is_null();
  return false;
}

// "" when `v` satisfies `schema` (type, enum, required, properties, items,
// minimum/maximum, minItems/maxItems); else what is wrong and where.
std::string Validate(const Json& v, const Json& schema, const std::string& path = "$") {
  if (!schema.is_object()) return "";
  if (auto e = schema.find("enum"); e != schema.end()) {
    if (std::find(e->begin(), e->end(), v) == e->end()) return path + ": " + v.dump() + " not in enum";
  }
  if (auto t = schema.find("type"); t != schema.end()) {
    bool ok = false;
    if (t->is_string()) ok = HasType(v, t->get<std::string>());
    for (const Json& x : t->is_array() ? *t : Json::array()) ok = ok || HasType(v, x.get<std::string>());
    if (!ok) return path + ": " + v.dump() + " is not of type " + t->dump();
  }
  if (v.is_number()) {
    if (schema.contains("minimum") && v.get<double>() < schema["minimum"].get<double>())
      return path + ": below minimum";
    if (schema.contains("maximum") && v.get<double>() > schema["maximum"].get<double>())
      return path + ": above maximum";
  }
  if (v.is_object()) {
    for (const Json& r : schema.value("required", Json::array()))
      if (!v.contains(r.get<std::string>())) return path + ": missing required " + r.get<std::string>();
    const Json props = schema.value("properties", Json::object());
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!props.contains(it.key())) return path + ": unexpected property " + it.key();
      std::string e = Validate(it.value(), props[it.key()], path + "." + it.key());
      if (!e.empty()) return e;
    }
  }
  if (v.is_array()) {
    if (schema.contains("minItems") && v.size() < schema["minItems"].get<size_t>()) return path + ": too few items";
    if (schema.contains("maxItems") && v.size() > schema["maxItems"].get<size_t>()) return path + ": too many items";
    for (size_t i = 0; i < v.size(); ++i) {
      std::string e = Validate(v[i], schema.value("items", Json::object()), path + "[" + std::to_string(i) + "]");
      if (!e.empty()) return e;
    }
  }
  return "";
}

TEST(SchemaValidatorTest, CatchesViolations) {
  const Json s = Json::parse(R"({"type":"object","required":["a"],"properties":{
      "a":{"type":"string","enum":["x","y"]},"n":{"type":"integer","minimum":1},
      "l":{"type":"array","items":{"type":"string"}}}})");
  EXPECT_EQ(Validate(Json::parse(R"({"a":"x","n":3,"l":["q"]})"), s), "");
  EXPECT_NE(Validate(Json::parse(R"({"n":3})"), s), "");
  EXPECT_NE(Validate(Json::parse(R"({"a":"z"})"), s), "");
  EXPECT_NE(Validate(Json::parse(R"({"a":"x","n":0})"), s), "");
  EXPECT_NE(Validate(Json::parse(R"({"a":"x","n":1.5})"), s), "");
  EXPECT_NE(Validate(Json::parse(R"({"a":"x","l":[1]})"), s), "");
  EXPECT_NE(Validate(Json::parse(R"({"a":"x","other":1})"), s), "");
}

// ------------------------------------------------------------ Tau2 retail-like tools

const Json kRetailTools = Json::parse(R"([
  {"type":"function","function":{"name":"exchange_delivered_order_items",
    "description":"Exchange items in a delivered order to new items of the same product type.",
    "parameters":{"type":"object","properties":{
      "order_id":{"type":"string","description":"The order id, such as '#W0000000'."},
      "item_ids":{"type":"array","items":{"type":"string"},"description":"The item ids to be exchanged."},
      "new_item_ids":{"type":"array","items":{"type":"string"},"description":"The new item ids."},
      "payment_method_id":{"type":"string","description":"Such as 'gift_card_0000000' or 'credit_card_0000000'."}},
    "required":["order_id","item_ids","new_item_ids","payment_method_id"]}}},
  {"type":"function","function":{"name":"return_delivered_order_items","parameters":{"type":"object",
    "properties":{"order_id":{"type":"string"},
                  "reason":{"type":"string","enum":["no longer needed","ordered by mistake","defective"]},
                  "priority":{"type":"integer","enum":[1,2,3]},
                  "note":{"type":"string","maxLength":12}},
    "required":["order_id","reason"]}}},
  {"type":"function","function":{"name":"modify_order","parameters":{"type":"object",
    "properties":{"order_id":{"type":"string"},
                  "quantity":{"type":"integer","minimum":1,"maximum":5},
                  "amount":{"type":"number","minimum":0.5,"maximum":250},
                  "gift_wrap":{"type":"boolean"},
                  "zip":{"type":"string"},
                  "address":{"type":"object","properties":{
                      "address1":{"type":"string"},"city":{"type":"string"},"zip":{"type":"string"},
                      "country":{"type":["string","null"]}},
                    "required":["address1","city","zip"]},
                  "tags":{"type":"array","items":{"type":"string","enum":["gift","fragile"]},
                          "minItems":1,"maxItems":2},
                  "notes":{"type":"string"}},
    "required":["order_id","quantity","amount","gift_wrap","address"]}}},
  {"type":"function","function":{"name":"get_user_details","parameters":{"type":"object",
    "properties":{"user_id":{"type":"string"}},"required":["user_id"]}}},
  {"type":"function","function":{"name":"find_user_id_by_email","parameters":{"type":"object",
    "properties":{"email":{"type":"string"}},"required":["email"]}}},
  {"type":"function","function":{"name":"find_user_id_by_name_zip","parameters":{"type":"object",
    "properties":{"first_name":{"type":"string"},"last_name":{"type":"string"},"zip":{"type":"string"}},
    "required":["first_name","last_name","zip"]}}},
  {"type":"function","function":{"name":"list_all_product_types","parameters":{"type":"object",
    "properties":{}}}}])");

const Json& SchemaOf(const std::string& name) {
  for (const Json& t : kRetailTools)
    if (t["function"]["name"] == name) return t["function"]["parameters"];
  static const Json kNone;
  ADD_FAILURE() << "no tool " << name;
  return kNone;
}

// A conversation in which the user and a tool result have given identifiers.
Json RetailConversation() {
  return Json::array(
      {Msg("system", "You are a customer service agent for a retail store."),
       Msg("assistant", "Hi! How can I help you today?"),
       Msg("user", "Hi, I'm Yusuf Rossi, zip code 19122. I want to exchange a keyboard from order #W2378156."),
       {{"role", "assistant"},
        {"content", nullptr},
        {"tool_calls",
         {{{"id", "call_0001"},
           {"type", "function"},
           {"function", {{"name", "get_order_details"}, {"arguments", R"({"order_id":"#W2378156"})"}}}}}}},
       {{"role", "tool"},
        {"tool_call_id", "call_0001"},
        {"content",
         R"({"order_id":"#W2378156","user_id":"yusuf_rossi_9620","status":"delivered",)"
         R"("items":[{"name":"Mechanical Keyboard","product_id":"1656367028","item_id":"1151293680","price":272.33},)"
         R"({"name":"Smart Thermostat","product_id":"4896585277","item_id":"4983901480","price":262.47}],)"
         R"("payment_history":[{"transaction_type":"payment","amount":534.8,"payment_method_id":"credit_card_9513926"}]})"}},
       Msg("user", "I'd like the keyboard with clicky switches please. My email is yusuf.rossi7301@example.com.")});
}

const std::set<std::string> kConversationItems = {"1656367028", "1151293680", "4896585277", "4983901480"};

TEST(ToolArgumentsTest, EveryRetailToolGetsValidArguments) {
  SimConfig c;
  std::map<std::string, int> optional_seen;
  for (const Json& tool : kRetailTools) {
    const std::string name = tool["function"]["name"];
    for (int i = 0; i < 60; ++i) {
      Json msgs = RetailConversation();
      msgs.push_back(Msg("user", "one more thing " + std::to_string(i)));
      CompletionPlan plan =
          PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"tool_choice", Named(name)}}), c);
      ASSERT_TRUE(plan.tool_call);
      ASSERT_EQ(plan.calls.size(), 1u);
      ASSERT_EQ(plan.calls[0].name, name);
      Json args = Json::parse(std::string(plan.Arguments(0)));  // throws when not JSON
      ASSERT_TRUE(args.is_object());
      EXPECT_EQ(Validate(args, SchemaOf(name)), "") << name << ": " << args.dump();
      for (const char* opt : {"priority", "note", "zip", "tags", "notes"})
        if (args.contains(opt)) ++optional_seen[name + "." + opt];
    }
  }
  // Optional properties appear sometimes, not always.
  for (const char* key : {"return_delivered_order_items.priority", "return_delivered_order_items.note",
                          "modify_order.zip", "modify_order.tags", "modify_order.notes"}) {
    EXPECT_GT(optional_seen[key], 10) << key;
    EXPECT_LT(optional_seen[key], 50) << key;
  }
}

TEST(ToolArgumentsTest, EnumsIntegersNumbersAndBooleansCoverTheirRange) {
  SimConfig c;
  std::set<std::string> reasons;
  std::set<int64_t> quantities;
  std::set<bool> wraps;
  double min_amount = 1e9, max_amount = -1;
  for (int i = 0; i < 200; ++i) {
    Json msgs = Json::array({Msg("user", "request " + std::to_string(i))});
    Json ret = Json::parse(std::string(
        PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"tool_choice", Named("return_delivered_order_items")}}), c)
            .Arguments(0)));
    reasons.insert(ret["reason"].get<std::string>());
    Json mod = Json::parse(std::string(
        PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"tool_choice", Named("modify_order")}}), c).Arguments(0)));
    ASSERT_TRUE(mod["quantity"].is_number_integer());
    quantities.insert(mod["quantity"].get<int64_t>());
    ASSERT_TRUE(mod["amount"].is_number());
    min_amount = std::min(min_amount, mod["amount"].get<double>());
    max_amount = std::max(max_amount, mod["amount"].get<double>());
    wraps.insert(mod["gift_wrap"].get<bool>());
  }
  EXPECT_EQ(reasons, (std::set<std::string>{"no longer needed", "ordered by mistake", "defective"}));
  EXPECT_EQ(quantities, (std::set<int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(wraps.size(), 2u);
  EXPECT_GE(min_amount, 0.5);
  EXPECT_LE(max_amount, 250);
  EXPECT_GT(max_amount - min_amount, 100);
}

TEST(ToolArgumentsTest, ReferencesAlternativesAndBoundsInParameters) {
  // Parameters as pydantic and zod write them: $defs, anyOf with null, exclusive bounds.
  const Json params = Json::parse(R"({"type":"object","$defs":{
      "Line":{"type":"object","properties":{"item_id":{"type":"string"},"qty":{"type":"integer","exclusiveMinimum":0,"maximum":4}},
              "required":["item_id","qty"]}},
    "properties":{"order_id":{"type":"string"},
                  "lines":{"type":"array","items":{"$ref":"#/$defs/Line"},"minItems":1,"maxItems":3},
                  "note":{"anyOf":[{"type":"string","maxLength":20},{"type":"null"}]},
                  "mode":{"type":["string","integer"],"enum":["fast","slow"]}},
    "required":["order_id","lines","note","mode"]})");
  auto schema = JsonSchema::Compile(params);
  ASSERT_TRUE(schema.ok()) << schema.status().ToString();
  FoundIds ids;
  ScanIds("Order #W2378156, item 1151293680.", &ids);
  for (uint64_t seed = 0; seed < 200; ++seed) {
    SimRng rng(seed);
    Json args = ArgumentsForSchema(params, ids, &rng);
    EXPECT_TRUE(schema->Validate(args).ok()) << schema->Validate(args).ToString() << "\n" << args.dump();
    EXPECT_EQ(args["order_id"], "#W2378156");
    EXPECT_EQ(args["lines"][0]["item_id"], "1151293680");
  }
  // ValueForSchema answers any root type.
  SimRng rng(1);
  EXPECT_TRUE(ValueForSchema(Json::parse(R"({"type":"array","items":{"type":"boolean"},"minItems":2})"), ids, &rng)
                  .is_array());
  EXPECT_TRUE(ValueForSchema(Json::parse(R"({"type":"null"})"), ids, &rng).is_null());
}

TEST(ToolArgumentsTest, IdentifiersComeFromEarlierMessages) {
  SimConfig c;
  const Json msgs = RetailConversation();
  std::set<std::string> exchanged;
  for (int seed = 0; seed < 50; ++seed) {
    auto plan_for = [&](const std::string& tool) {
      CompletionPlan plan = PlanFor(
          ChatBody(msgs, {{"tools", kRetailTools}, {"tool_choice", Named(tool)}, {"seed", seed}}), c);
      EXPECT_TRUE(plan.tool_call);
      return plan.tool_call ? Json::parse(std::string(plan.Arguments(0))) : Json::object();
    };
    Json ex = plan_for("exchange_delivered_order_items");
    EXPECT_EQ(ex["order_id"], "#W2378156");
    EXPECT_EQ(ex["payment_method_id"], "credit_card_9513926");
    ASSERT_FALSE(ex["item_ids"].empty());
    for (const Json& id : ex["item_ids"]) {
      EXPECT_EQ(kConversationItems.count(id.get<std::string>()), 1u) << id;
      exchanged.insert(id.get<std::string>());
    }
    EXPECT_EQ(ex["new_item_ids"].size(), ex["item_ids"].size());  // one new item per old one
    for (const Json& id : ex["new_item_ids"]) EXPECT_EQ(kConversationItems.count(id.get<std::string>()), 1u);

    EXPECT_EQ(plan_for("get_user_details")["user_id"], "yusuf_rossi_9620");
    EXPECT_EQ(plan_for("find_user_id_by_email")["email"], "yusuf.rossi7301@example.com");
    Json by_name = plan_for("find_user_id_by_name_zip");
    EXPECT_EQ(by_name["first_name"], "Yusuf");
    EXPECT_EQ(by_name["last_name"], "Rossi");
    EXPECT_EQ(by_name["zip"], "19122");
  }
  EXPECT_GE(exchanged.size(), 3u);  // different seeds pick different items
}

TEST(ToolArgumentsTest, SyntheticIdentifiersHaveTheRightShape) {
  SimConfig c;
  const std::regex order(R"(#W\d{7})"), item(R"([1-9]\d{9})"), zip(R"(\d{5})"),
      payment(R"((credit_card|gift_card|paypal)_\d{7})"), user(R"([a-z]+_[a-z]+_\d+)"),
      email(R"([a-z]+\.[a-z]+\d+@example\.com)"), name(R"([A-Z][a-z]+)");
  for (int i = 0; i < 30; ++i) {
    const Json msgs = Json::array({Msg("user", "I need help with something " + std::to_string(i))});
    auto args = [&](const std::string& tool) {
      return Json::parse(std::string(
          PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"tool_choice", Named(tool)}}), c).Arguments(0)));
    };
    Json ex = args("exchange_delivered_order_items");
    EXPECT_TRUE(std::regex_match(ex["order_id"].get<std::string>(), order)) << ex;
    EXPECT_TRUE(std::regex_match(ex["payment_method_id"].get<std::string>(), payment)) << ex;
    for (const Json& id : ex["item_ids"]) EXPECT_TRUE(std::regex_match(id.get<std::string>(), item)) << ex;
    EXPECT_EQ(ex["new_item_ids"].size(), ex["item_ids"].size());
    EXPECT_TRUE(std::regex_match(args("get_user_details")["user_id"].get<std::string>(), user));
    EXPECT_TRUE(std::regex_match(args("find_user_id_by_email")["email"].get<std::string>(), email));
    Json by_name = args("find_user_id_by_name_zip");
    EXPECT_TRUE(std::regex_match(by_name["first_name"].get<std::string>(), name)) << by_name;
    EXPECT_TRUE(std::regex_match(by_name["last_name"].get<std::string>(), name)) << by_name;
    EXPECT_TRUE(std::regex_match(by_name["zip"].get<std::string>(), zip)) << by_name;
  }
}

TEST(ToolArgumentsTest, SameSeedSameCallsOtherSeedOtherCalls) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  c.parallel_tool_prob = 0.5;
  const Json msgs = Json::array({Msg("user", "I want to return something from my order")});
  int differ = 0;
  for (int seed = 0; seed < 20; ++seed) {
    const std::string body = ChatBody(msgs, {{"tools", kRetailTools}, {"seed", seed}});
    CompletionPlan a = PlanFor(body, c), b = PlanFor(body, c);
    ASSERT_EQ(a.calls.size(), b.calls.size());
    EXPECT_EQ(a.Text(), b.Text());
    for (size_t i = 0; i < a.calls.size(); ++i) {
      EXPECT_EQ(a.calls[i].id, b.calls[i].id);
      EXPECT_EQ(a.calls[i].name, b.calls[i].name);
    }
    CompletionPlan other = PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"seed", seed + 1000}}), c);
    differ += other.Text() != a.Text() ? 1 : 0;
  }
  EXPECT_GE(differ, 15);
}

TEST(ToolArgumentsTest, ScanIdsFindsEachKindAndSkipsLookalikes) {
  FoundIds ids;
  ScanIds("Order #W2378156 and #W12345678 (too long); price 12345.67; item 1151293680, "
          "phone 55512345678; zip: 19122. user sara_doe_496, card credit_card_9513926, "
          "gift_card_7245904, paypal_3024827; mail sara.doe@mail.example.org. "
          "Flight HAT001, reservation 8JX2WO, word PLEASE. You are Sara Doe and live here.",
          &ids);
  EXPECT_EQ(ids.Of(IdKind::kOrderId), std::vector<std::string>{"#W2378156"});
  EXPECT_EQ(ids.Of(IdKind::kItemId), std::vector<std::string>{"1151293680"});
  EXPECT_EQ(ids.Of(IdKind::kZip), std::vector<std::string>{"19122"});
  EXPECT_EQ(ids.Of(IdKind::kUserId), std::vector<std::string>{"sara_doe_496"});
  EXPECT_EQ(ids.Of(IdKind::kPaymentMethod),
            (std::vector<std::string>{"credit_card_9513926", "gift_card_7245904", "paypal_3024827"}));
  EXPECT_EQ(ids.Of(IdKind::kEmail), std::vector<std::string>{"sara.doe@mail.example.org"});
  EXPECT_EQ(ids.Of(IdKind::kReservationId), std::vector<std::string>{"8JX2WO"});
  EXPECT_EQ(ids.Of(IdKind::kFullName), std::vector<std::string>{"Sara Doe"});

  FoundIds json;
  ScanIds(R"({"name":{"first_name":"Mei","last_name":"Kovacs"},"email":"mei_kovacs_8020@example.com"})", &json);
  EXPECT_EQ(json.Of(IdKind::kFullName), std::vector<std::string>{"Mei Kovacs"});
  EXPECT_EQ(json.Of(IdKind::kEmail), std::vector<std::string>{"mei_kovacs_8020@example.com"});
  EXPECT_TRUE(json.Of(IdKind::kUserId).empty());  // the local part of an email is not a user id

  EXPECT_EQ(IdForProperty("order_id")->kind, IdKind::kOrderId);
  EXPECT_EQ(IdForProperty("new_item_ids")->kind, IdKind::kItemId);
  EXPECT_EQ(IdForProperty("product_id")->kind, IdKind::kItemId);
  EXPECT_EQ(IdForProperty("payment_method_id")->kind, IdKind::kPaymentMethod);
  EXPECT_EQ(IdForProperty("last_name")->part, 2);
  EXPECT_FALSE(IdForProperty("reason").has_value());
}

// ------------------------------------------------------------ choices, parallel calls, ids

TEST(ToolChoiceTest, NoneNeverCalls) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  c.parallel_tool_prob = 1.0;
  c.text_after_tool_prob = 0.0;
  for (int i = 0; i < 200; ++i) {
    Json msgs = RetailConversation();
    if (i % 2 == 0) msgs.push_back(Msg("user", "and now? " + std::to_string(i)));
    else msgs.push_back({{"role", "tool"}, {"tool_call_id", "call_x"}, {"content", std::to_string(i)}});
    CompletionPlan plan = PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"tool_choice", "none"}}), c);
    EXPECT_FALSE(plan.tool_call);
    EXPECT_TRUE(plan.calls.empty());
    EXPECT_NE(plan.finish_reason, "tool_calls");
    EXPECT_FALSE(plan.Text().empty());
  }
}

TEST(ToolChoiceTest, ParallelCallsAreValidUniqueAndReassemble) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  c.parallel_tool_prob = 1.0;
  const std::regex id_re("call_[0-9a-f]{24}");
  std::set<size_t> counts;
  std::set<std::string> all_ids;
  int calls_total = 0;
  for (int i = 0; i < 100; ++i) {
    Json msgs = RetailConversation();
    msgs.push_back(Msg("user", "please do it " + std::to_string(i)));
    CompletionRequest r = MustParse(ChatBody(msgs, {{"tools", kRetailTools}, {"stream", i % 2 == 0}}), c);
    CompletionPlan plan = PlanCompletion(r, c);
    ASSERT_TRUE(plan.tool_call);
    counts.insert(plan.calls.size());
    ASSERT_GE(plan.calls.size(), 2u);
    ASSERT_LE(plan.calls.size(), 3u);
    std::string joined;
    std::set<std::string> distinct;
    for (size_t k = 0; k < plan.calls.size(); ++k) {
      EXPECT_TRUE(distinct.insert(plan.calls[k].name + std::string(plan.Arguments(k))).second)
          << "a repeated call";
      const PlannedToolCall& call = plan.calls[k];
      EXPECT_TRUE(std::regex_match(call.id, id_re)) << call.id;
      EXPECT_NE(call.id, "call_0001");
      all_ids.insert(call.id);
      ++calls_total;
      Json args = Json::parse(std::string(plan.Arguments(k)));
      EXPECT_EQ(Validate(args, SchemaOf(call.name)), "") << call.name << ": " << args.dump();
      EXPECT_EQ(plan.Pieces(call.first, call.first + 1), "");  // the header piece
      joined += std::string(plan.Arguments(k));
    }
    EXPECT_EQ(joined, plan.Text());
    EXPECT_EQ(plan.calls.back().end, plan.completion_tokens());

    // The non-streaming body lists every call; the stream reassembles them by index.
    Json body = Json::parse(RenderCompletion(r, plan, {"chatcmpl-p", 1}));
    const Json& tool_calls = body["choices"][0]["message"]["tool_calls"];
    ASSERT_EQ(tool_calls.size(), plan.calls.size());
    for (size_t k = 0; k < plan.calls.size(); ++k) {
      EXPECT_EQ(tool_calls[k]["id"], plan.calls[k].id);
      EXPECT_EQ(tool_calls[k]["function"]["name"], plan.calls[k].name);
      EXPECT_EQ(tool_calls[k]["function"]["arguments"], std::string(plan.Arguments(k)));
    }
    StreamRenderer renderer(&r, &plan, {"chatcmpl-s", 1});
    std::string sse;
    for (int64_t t = 0; t < plan.completion_tokens(); t += 5)
      sse += renderer.Tokens(t, std::min(t + 5, plan.completion_tokens()));
    sse += renderer.Finish();
    std::map<int, std::string> args, names, ids;
    for (size_t pos = 0; (pos = sse.find("data: ", pos)) != std::string::npos;) {
      const size_t end = sse.find("\n\n", pos);
      const std::string data = sse.substr(pos + 6, end - pos - 6);
      pos = end;
      if (data == "[DONE]") continue;
      Json delta = Json::parse(data)["choices"][0]["delta"];
      for (const Json& call : delta.value("tool_calls", Json::array())) {
        const int index = call["index"];
        if (call.contains("id")) {
          EXPECT_EQ(ids.count(index), 0u);  // named once
          ids[index] = call["id"];
          names[index] = call["function"]["name"];
        }
        args[index] += call["function"]["arguments"].get<std::string>();
      }
    }
    ASSERT_EQ(args.size(), plan.calls.size());
    for (size_t k = 0; k < plan.calls.size(); ++k) {
      EXPECT_EQ(ids[static_cast<int>(k)], plan.calls[k].id);
      EXPECT_EQ(names[static_cast<int>(k)], plan.calls[k].name);
      EXPECT_EQ(args[static_cast<int>(k)], std::string(plan.Arguments(k)));
    }
  }
  EXPECT_EQ(counts, (std::set<size_t>{2, 3}));
  EXPECT_EQ(static_cast<int>(all_ids.size()), calls_total);  // no id is ever reused
}

TEST(ToolChoiceTest, ParallelCallsOnlyWhenAllowed) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  c.parallel_tool_prob = 1.0;
  for (int i = 0; i < 50; ++i) {
    const Json msgs = Json::array({Msg("user", "help " + std::to_string(i))});
    EXPECT_EQ(PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"parallel_tool_calls", false}}), c).calls.size(), 1u);
    CompletionPlan named = PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"tool_choice", Named("get_user_details")}}), c);
    ASSERT_EQ(named.calls.size(), 1u);
    EXPECT_EQ(named.calls[0].name, "get_user_details");
    CompletionPlan required = PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"tool_choice", "required"}}), c);
    EXPECT_GE(required.calls.size(), 2u);
    // A tool whose only possible arguments are {} is not called twice in one reply.
    const Json only_list = Json::array({kRetailTools.back()});
    ASSERT_EQ(only_list[0]["function"]["name"], "list_all_product_types");
    EXPECT_EQ(PlanFor(ChatBody(msgs, {{"tools", only_list}}), c).calls.size(), 1u);
  }
  // Default rate: about parallel_tool_prob of the tool-call replies carry several calls.
  SimConfig d;
  d.tool_call_prob = 1.0;
  int multi = 0;
  const int n = 1000;
  for (int i = 0; i < n; ++i)
    multi += PlanFor(ChatBody(Json::array({Msg("user", "q" + std::to_string(i))}), {{"tools", kRetailTools}}), d)
                         .calls.size() > 1;
  EXPECT_NEAR(static_cast<double>(multi) / n, d.parallel_tool_prob, 0.03);
}

TEST(ToolChoiceTest, MaxTokensLimitsTheNumberOfParallelCalls) {
  SimConfig c;
  c.tool_call_prob = 1.0;
  c.parallel_tool_prob = 1.0;
  for (int i = 0; i < 30; ++i) {
    const Json msgs = Json::array({Msg("user", "x" + std::to_string(i))});
    CompletionPlan plan = PlanFor(ChatBody(msgs, {{"tools", kRetailTools}, {"max_tokens", 40}}), c);
    EXPECT_LE(plan.completion_tokens(), 40);
    for (size_t k = 0; k < plan.calls.size(); ++k)
      EXPECT_NO_THROW(Json::parse(std::string(plan.Arguments(k))));
  }
}

TEST(ToolChoiceTest, TextAfterToolResultAtTheConfiguredRate) {
  auto after_tool = [](int i) {
    Json msgs = RetailConversation();
    msgs.push_back({{"role", "tool"}, {"tool_call_id", "call_0002"}, {"content", "{\"ok\":" + std::to_string(i) + "}"}});
    return msgs;
  };
  SimConfig d;  // text_after_tool_prob 0.8
  int text = 0;
  const int n = 1000;
  for (int i = 0; i < n; ++i)
    text += PlanFor(ChatBody(after_tool(i), {{"tools", kRetailTools}}), d).tool_call ? 0 : 1;
  EXPECT_NEAR(static_cast<double>(text) / n, d.text_after_tool_prob, 0.04);

  SimConfig always_text;
  always_text.text_after_tool_prob = 1.0;
  SimConfig never_text;
  never_text.text_after_tool_prob = 0.0;
  never_text.tool_call_prob = 0.0;  // the rate after a tool result does not depend on it
  for (int i = 0; i < 50; ++i) {
    EXPECT_FALSE(PlanFor(ChatBody(after_tool(i), {{"tools", kRetailTools}}), always_text).tool_call);
    CompletionPlan call = PlanFor(ChatBody(after_tool(i), {{"tools", kRetailTools}}), never_text);
    ASSERT_TRUE(call.tool_call);
    EXPECT_EQ(Validate(Json::parse(std::string(call.Arguments(0))), SchemaOf(call.calls[0].name)), "");
    // "required" and a named function are honoured after a tool result too.
    EXPECT_TRUE(PlanFor(ChatBody(after_tool(i), {{"tools", kRetailTools}, {"tool_choice", "required"}}),
                        always_text).tool_call);
    CompletionPlan named = PlanFor(
        ChatBody(after_tool(i), {{"tools", kRetailTools}, {"tool_choice", Named("list_all_product_types")}}),
        always_text);
    ASSERT_EQ(named.calls.size(), 1u);
    EXPECT_EQ(named.calls[0].name, "list_all_product_types");
    EXPECT_EQ(named.Arguments(0), "{}");
  }
}

// ------------------------------------------------------------ playing a Tau2-bench user

const std::string kUserSystem =
    "# User Simulation Guidelines\n"
    "You are playing the role of a customer contacting a customer service representative.\n"
    "Your goal is to simulate realistic customer interactions while following specific scenario "
    "instructions.\n"
    "- If the instruction goal is satisified, generate the '###STOP###' token to end the conversation.\n"
    "- If you are transferred to another agent, generate the '###TRANSFER###' token.\n\n"
    "<scenario>\n"
    "Domain: retail\n"
    "Reason for call: You want to exchange the mechanical keyboard of order #W2378156 and cancel "
    "order #W4776164.\n"
    "Known info: You are Yusuf Rossi in zip code 19122. Your email is yusuf.rossi7301@example.com.\n"
    "Task instructions: You want a keyboard with clicky switches. Pay with the original method.\n"
    "</scenario>";

// A user-simulator request: the system prompt, then `turns` exchanges (the
// agent's messages are "user", the simulated user's own are "assistant").
Json UserSideConversation(int turns, const std::string& salt) {
  Json msgs = Json::array({Msg("system", kUserSystem), Msg("user", "Hi! How can I help you today? " + salt)});
  for (int t = 0; t < turns; ++t) {
    msgs.push_back(Msg("assistant", "My order has a problem, turn " + std::to_string(t) + "."));
    msgs.push_back(Msg("user", "Could you tell me more? " + salt + " " + std::to_string(t)));
  }
  return msgs;
}

bool EndsWithStop(const std::string& text) {
  const std::string stop = " ###STOP###";
  return text.size() >= stop.size() && text.compare(text.size() - stop.size(), stop.size(), stop) == 0;
}

TEST(UserSimTest, DetectsTheUserSimulatorPrompt) {
  EXPECT_TRUE(PlaysUser(MustParse(ChatBody(UserSideConversation(1, "a")))));
  EXPECT_FALSE(PlaysUser(MustParse(ChatBody(UserSideConversation(1, "a"), {{"tools", kRetailTools}}))));
  EXPECT_FALSE(PlaysUser(MustParse(ChatBody(Json::array({Msg("system", "You are an agent."), Msg("user", "hi")})))));
  // The marker in a user message does not make the simulator the user.
  EXPECT_FALSE(PlaysUser(MustParse(ChatBody(Json::array({Msg("user", "say ###STOP### when done")})))));
}

TEST(UserSimTest, StopsAtTheConfiguredRate) {
  for (double p : {0.2, 0.5}) {
    SimConfig c;
    c.user_stop_prob = p;
    int stops = 0, with_marker = 0;
    const int n = 2000;
    for (int i = 0; i < n; ++i) {
      const int turns = 1 + i % (c.user_max_turns - 1);  // 1 .. user_max_turns - 1
      CompletionPlan plan = PlanFor(ChatBody(UserSideConversation(turns, std::to_string(i))), c);
      const bool stop = EndsWithStop(plan.Text());
      stops += stop;
      with_marker += plan.Text().find("###STOP###") != std::string::npos;
      EXPECT_EQ(plan.answer, 0);  // no multiple-choice sentence for a user
      EXPECT_EQ(plan.Text().find("The answer is"), std::string::npos);
    }
    EXPECT_EQ(stops, with_marker);  // the marker only ever ends the reply
    EXPECT_NEAR(static_cast<double>(stops) / n, p, 0.035) << "user_stop_prob " << p;
  }
}

TEST(UserSimTest, AlwaysStopsAfterUserMaxTurnsAndNeverOnTheFirstReply) {
  SimConfig c;  // user_max_turns 12
  for (int i = 0; i < 100; ++i) {
    EXPECT_TRUE(EndsWithStop(PlanFor(ChatBody(UserSideConversation(12, std::to_string(i))), c).Text()));
    EXPECT_TRUE(EndsWithStop(PlanFor(ChatBody(UserSideConversation(15, std::to_string(i))), c).Text()));
    EXPECT_FALSE(EndsWithStop(PlanFor(ChatBody(UserSideConversation(0, std::to_string(i))), c).Text()));
  }
  SimConfig few;
  few.user_max_turns = 3;
  few.user_stop_prob = 0.0;
  for (int i = 0; i < 50; ++i) {
    EXPECT_FALSE(EndsWithStop(PlanFor(ChatBody(UserSideConversation(2, std::to_string(i))), few).Text()));
    EXPECT_TRUE(EndsWithStop(PlanFor(ChatBody(UserSideConversation(3, std::to_string(i))), few).Text()));
  }
  // The marker survives a small max_tokens; a tiny one keeps what fits.
  CompletionPlan small = PlanFor(ChatBody(UserSideConversation(12, "s"), {{"max_tokens", 5}}), c);
  EXPECT_EQ(small.completion_tokens(), 5);
  EXPECT_TRUE(EndsWithStop(small.Text())) << small.Text();
  CompletionPlan three = PlanFor(ChatBody(UserSideConversation(12, "t"), {{"max_tokens", 3}}), c);
  EXPECT_EQ(three.Text(), "###STOP###");
}

TEST(UserSimTest, NoStopWithoutTheMarkerOrWithTools) {
  SimConfig c;
  c.user_max_turns = 0;
  c.user_stop_prob = 1.0;
  for (int i = 0; i < 100; ++i) {
    Json plain = Json::array({Msg("system", "You are a helpful assistant."), Msg("user", "q" + std::to_string(i))});
    EXPECT_EQ(PlanFor(ChatBody(plain), c).Text().find("###STOP###"), std::string::npos);
    CompletionPlan with_tools = PlanFor(ChatBody(UserSideConversation(3, std::to_string(i)), {{"tools", kRetailTools}}), c);
    if (!with_tools.tool_call) {
      EXPECT_EQ(with_tools.Text().find("###STOP###"), std::string::npos);
    }
  }
}

TEST(UserSimTest, RepliesMentionTheScenarioIdentifiers) {
  SimConfig c;
  const std::vector<std::string> scenario_ids = {"Yusuf Rossi", "19122", "yusuf.rossi7301@example.com",
                                                 "#W2378156", "#W4776164"};
  for (int i = 0; i < 50; ++i) {
    const std::string first = PlanFor(ChatBody(UserSideConversation(0, std::to_string(i))), c).Text();
    EXPECT_NE(first.find("Yusuf Rossi"), std::string::npos) << first;
    EXPECT_NE(first.find("19122"), std::string::npos) << first;
    EXPECT_NE(first.find("yusuf.rossi7301@example.com"), std::string::npos) << first;
    EXPECT_NE(first.find("#W2378156"), std::string::npos) << first;
    const std::string later = PlanFor(ChatBody(UserSideConversation(1 + i % 5, std::to_string(i))), c).Text();
    EXPECT_TRUE(std::any_of(scenario_ids.begin(), scenario_ids.end(),
                            [&](const std::string& id) { return later.find(id) != std::string::npos; }))
        << later;
  }
  // The agent side finds what the simulated user said.
  const std::string said = PlanFor(ChatBody(UserSideConversation(0, "z")), c).Text();
  const Json agent = Json::array({Msg("system", "You are a retail agent."), Msg("assistant", "Hi! How can I help?"),
                                  Msg("user", said)});
  for (int seed = 0; seed < 10; ++seed) {
    Json args = Json::parse(std::string(
        PlanFor(ChatBody(agent, {{"tools", kRetailTools}, {"tool_choice", Named("find_user_id_by_name_zip")},
                                 {"seed", seed}}), c)
            .Arguments(0)));
    EXPECT_EQ(args, Json::parse(R"({"first_name":"Yusuf","last_name":"Rossi","zip":"19122"})"));
    Json ex = Json::parse(std::string(
        PlanFor(ChatBody(agent, {{"tools", kRetailTools}, {"tool_choice", Named("exchange_delivered_order_items")},
                                 {"seed", seed}}), c)
            .Arguments(0)));
    EXPECT_EQ(ex["order_id"], "#W2378156");
  }
}

TEST(UserSimTest, Deterministic) {
  SimConfig c;
  for (int i = 0; i < 20; ++i) {
    const std::string body = ChatBody(UserSideConversation(1 + i % 8, std::to_string(i)), {{"seed", 7}});
    EXPECT_EQ(PlanFor(body, c).Text(), PlanFor(body, c).Text());
  }
}

}  // namespace
}  // namespace matrix::llm_sim
