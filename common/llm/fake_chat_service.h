// FakeChatService: a ChatService that answers every request with a function
// of it, through a real eventfd, so the caller's event loop runs as it does
// against LlmClient. For component tests of the worker.
//
// By default each request is answered as soon as it is submitted. Hold(true)
// keeps results back until Release(), to test what happens to calls in
// flight (shutdown, a task that ends first).
//
// Thread-safety: Submit/Drain/Shutdown on the caller's loop thread; the
// inspection and Hold/Release methods from any thread.
#pragma once

#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "common/llm/llm_client.h"

namespace matrix::llm {

class FakeChatService final : public ChatService {
 public:
  using Responder = std::function<ChatResult(const ChatRequest&)>;
  // `respond` builds the result of a request (its tag is filled in); nullptr
  // answers "ok" with 10 prompt and 1 completion tokens.
  explicit FakeChatService(Responder respond = nullptr);
  ~FakeChatService() override;

  // A successful result carrying `content` and token counts.
  static ChatResult Answer(std::string content, int64_t prompt_tokens = 10, int64_t completion_tokens = 1);

  void Submit(ChatRequest req) override;
  Status SetEndpoints(const std::string& pool, std::vector<std::string> base_urls) override;
  size_t Drain(std::vector<ChatResult>* out) override;
  int notify_fd() const override { return fd_; }
  void Shutdown() override;
  std::vector<EndpointStats> Stats() const override;

  void Hold(bool hold);
  // Makes up to `n` held results available; returns how many.
  size_t Release(size_t n = static_cast<size_t>(-1));
  // Every request submitted so far, in order.
  std::vector<ChatRequest> requests() const;
  size_t held() const;
  bool shut_down() const;
  // The endpoint lists SetEndpoints() was given, by pool.
  std::vector<std::pair<std::string, std::vector<std::string>>> endpoint_updates() const;

 private:
  void Signal();

  Responder respond_;
  int fd_ = -1;
  mutable std::mutex mu_;
  bool hold_ = false, shut_down_ = false;
  std::vector<ChatRequest> requests_;
  std::deque<ChatResult> held_, ready_;
  std::vector<std::pair<std::string, std::vector<std::string>>> endpoint_updates_;
};

}  // namespace matrix::llm
