#include <gtest/gtest.h>

#include "common/base/json.h"
#include "common/base/utf8.h"

namespace matrix {
namespace {

TEST(ParseJsonMembersTest, ParsesTheNamedMembersAndSkipsTheOthers) {
  const std::string line =
      R"({"task_id":"r1.t0","input":{"q":"a \"quoted\" {brace} [bracket] \\ and \u00e9"},)"
      R"("turns":[{"content":"x}]","n":[1,2.5e3,-3,true,false,null]}],"status":"done",)"
      R"( "usage" : {"prompt_tokens": 12, "completion_tokens": 34} , "vars":{"ok":true}})";
  Json rec = ParseJsonMembers(line, {"task_id", "status", "usage", "vars", "missing"});
  ASSERT_TRUE(rec.is_object()) << line;
  EXPECT_EQ(rec.size(), 4u) << rec.dump();
  EXPECT_EQ(rec["task_id"], "r1.t0");
  EXPECT_EQ(rec["status"], "done");
  EXPECT_EQ(rec["usage"]["completion_tokens"], 34);
  EXPECT_EQ(rec["vars"]["ok"], true);
  // The same members as a whole parse gives.
  Json whole = Json::parse(line);
  for (const char* key : {"task_id", "status", "usage", "vars"}) EXPECT_EQ(rec[key], whole[key]) << key;
  EXPECT_TRUE(ParseJsonMembers("{}", {"a"}).empty());
  EXPECT_TRUE(ParseJsonMembers(" {\"a\": 1}\n", {"a"}).is_object());
}

TEST(ParseJsonMembersTest, RefusesWhatIsNotOneWellFormedObject) {
  for (const char* bad : {"",
                          "[1, 2]",
                          "\"text\"",
                          R"({"a": 1)",                          // torn
                          R"({"a": 1, "b": {"c": [1, 2}})",      // brackets do not match
                          R"({"a": 1, "b": "torn)",              // torn inside a skipped string
                          "{\"a\": 1, \"b\": \"tab\tinside\"}",  // a control byte in a string
                          R"({"a": 1} trailing)",
                          R"({"a": 1 "b": 2})",
                          R"({"a": tru})",                       // a wanted member that does not parse
                          R"({a: 1})"}) {
    EXPECT_TRUE(ParseJsonMembers(bad, {"a"}).is_discarded()) << bad;
  }
}

TEST(AppendJsonStringTest, WritesWhatDumpJsonWrites) {
  const std::vector<std::string> samples = {"", "plain", "a \"quoted\" \\ back", "line\nnext\r\ttab\b\f",
                                            std::string("nul\0byte", 8), "\x01\x1f\x7f", "caf\u00e9 \u65e5\u672c",
                                            "emoji \U0001F600"};
  for (const std::string& s : samples) {
    std::string out = "x";
    AppendJsonString(&out, s);
    EXPECT_EQ(out, "x" + DumpJson(Json(s))) << s;
  }
  // Invalid UTF-8 from outside: valid JSON, the bad bytes replaced.
  const std::string bad = "cut \xe6\x97 and \xff end";
  std::string out;
  AppendJsonString(&out, bad);
  Json back = Json::parse(out);
  EXPECT_EQ(back.get<std::string>(), ToValidUtf8(bad));
}

}  // namespace
}  // namespace matrix
