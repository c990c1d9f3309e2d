// Integration: `matrix run` on a real terminal. The run is started in a tmux
// pane (a private tmux server); the pane is captured twice a second apart and
// the live progress line must have moved on (more tasks done). The captures
// go to the test log. Skipped when tmux is not installed.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <iostream>
#include <regex>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "test/support/test_util.h"

namespace matrix::testing {
namespace {

class Tmux {
 public:
  explicit Tmux(std::string socket) : socket_(std::move(socket)) {}
  // A run still going is stopped through its shell's children (by their PID)
  // before the server goes, so no daemon outlives the test.
  ~Tmux() {
    if (Capture().find("MATRIX_EXIT=") == std::string::npos) {
      std::string pane_pid;
      RunCommand(Cmd("display-message -p -t matrix '#{pane_pid}'"), &pane_pid);
      if (!pane_pid.empty() && std::isdigit(static_cast<unsigned char>(pane_pid[0]))) {
        RunCommand("pkill -TERM -P " + std::to_string(std::stoi(pane_pid)));
        WaitUntil([&] { return Capture().find("MATRIX_EXIT=") != std::string::npos; }, 30'000);
      }
    }
    RunCommand(Cmd("kill-server"));
  }
  std::string Cmd(const std::string& args) const { return "tmux -S '" + socket_ + "' " + args; }
  std::string Capture() const {
    std::string out;
    RunCommand(Cmd("capture-pane -p -t matrix"), &out);
    return out;
  }

 private:
  std::string socket_;
};

// The tasks done of the last progress line on the screen ("123/300 tasks ..."); -1 when none.
int TasksDone(const std::string& screen) {
  static const std::regex kProgress(R"((\d+)/(\d+) tasks)");
  int done = -1;
  for (auto it = std::sregex_iterator(screen.begin(), screen.end(), kProgress); it != std::sregex_iterator(); ++it)
    done = std::stoi((*it)[1].str());
  return done;
}

// How many progress lines are on the screen.
long ProgressLines(const std::string& screen) {
  static const std::regex kProgress(R"((\d+)/(\d+) tasks)");
  return std::distance(std::sregex_iterator(screen.begin(), screen.end(), kProgress), std::sregex_iterator());
}

TEST(ProgressDisplayTest, ProgressLineAdvancesInPlaceOnATerminal) {
  if (RunCommand("command -v tmux >/dev/null") != 0) GTEST_SKIP() << "tmux not installed";
  TempDir dir;
  Tmux tmux(dir.File("tmux.sock"));
  const std::string run = BinPath("matrix") + " run " + SourcePath("configs/coral.yaml") +
                          " dataset.limit=2000 run.max_concurrent_tasks=100 simulator.speed=2 --output " + dir.File("out") + " --run-dir " +
                          dir.File("run");
  ASSERT_EQ(RunCommand(tmux.Cmd("new-session -d -s matrix -x 160 -y 40 \"" + run +
                                "; echo MATRIX_EXIT=\\$?; sleep 600\"")),
            0);

  std::string first, second;
  int before = -1, after = -1;
  ASSERT_TRUE(WaitUntil([&] { return TasksDone(tmux.Capture()) > 0; }, 120'000)) << tmux.Capture();
  for (int attempt = 0; attempt < 10 && (before <= 0 || after <= before); ++attempt) {
    first = tmux.Capture();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    second = tmux.Capture();
    before = TasksDone(first);
    after = TasksDone(second);
  }
  std::cout << "---- pane, first capture ----\n" << first << "---- pane, one second later ----\n" << second;
  EXPECT_GT(after, before) << first << "\n" << second;
  // In place: one progress line on the screen, not one per update.
  EXPECT_EQ(ProgressLines(second), ProgressLines(first)) << first << "\n" << second;

  // Ctrl-C stops the run cleanly (130) and prints the summary.
  RunCommand(tmux.Cmd("send-keys -t matrix C-c"));
  std::string last;
  EXPECT_TRUE(WaitUntil(
      [&] {
        last = tmux.Capture();
        return last.find("MATRIX_EXIT=") != std::string::npos;
      },
      60'000));
  std::cout << "---- pane after Ctrl-C ----\n" << last;
  EXPECT_NE(last.find("MATRIX_EXIT=130"), std::string::npos) << last;
  EXPECT_NE(last.find("== coral (interrupted) =="), std::string::npos) << last;
}

}  // namespace
}  // namespace matrix::testing
