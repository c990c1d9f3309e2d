#include "common/llm/fake_chat_service.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace matrix::llm {

FakeChatService::FakeChatService(Responder respond)
    : respond_(std::move(respond)), fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

FakeChatService::~FakeChatService() {
  if (fd_ >= 0) ::close(fd_);
}

ChatResult FakeChatService::Answer(std::string content, int64_t prompt_tokens, int64_t completion_tokens) {
  ChatResult r;
  r.status = Status::Ok();
  r.http_status = 200;
  r.content = std::move(content);
  r.finish_reason = "stop";
  r.prompt_tokens = prompt_tokens;
  r.completion_tokens = completion_tokens;
  r.endpoint = "fake://chat";
  r.attempts = 1;
  return r;
}

void FakeChatService::Signal() {
  const uint64_t one = 1;
  if (fd_ >= 0) (void)!::write(fd_, &one, sizeof one);
}

void FakeChatService::Submit(ChatRequest req) {
  // The body as a server would read it, messages included.
  if (!req.messages_json.empty()) {
    req.body["messages"] = Json::parse(req.messages_json, nullptr, /*allow_exceptions=*/false);
    req.messages_json.clear();
  }
  ChatResult res;
  {
    std::lock_guard<std::mutex> lock(mu_);
    requests_.push_back(req);
    if (shut_down_) {
      res.status = Cancelled("the chat service is shut down");
      res.tag = req.tag;
      ready_.push_back(std::move(res));
      Signal();
      return;
    }
  }
  res = respond_ ? respond_(req) : Answer("ok");
  res.tag = req.tag;
  std::lock_guard<std::mutex> lock(mu_);
  (hold_ ? held_ : ready_).push_back(std::move(res));
  if (!hold_) Signal();
}

Status FakeChatService::SetEndpoints(const std::string& pool, std::vector<std::string> base_urls) {
  std::lock_guard<std::mutex> lock(mu_);
  endpoint_updates_.emplace_back(pool, std::move(base_urls));
  return Status::Ok();
}

size_t FakeChatService::Drain(std::vector<ChatResult>* out) {
  uint64_t count = 0;
  if (fd_ >= 0) (void)!::read(fd_, &count, sizeof count);
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n = ready_.size();
  for (auto& r : ready_) out->push_back(std::move(r));
  ready_.clear();
  return n;
}

void FakeChatService::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& r : held_) {
    ChatResult cancelled;
    cancelled.tag = r.tag;
    cancelled.status = Cancelled("the chat service is shut down");
    ready_.push_back(std::move(cancelled));
  }
  held_.clear();
  Signal();
}

std::vector<EndpointStats> FakeChatService::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EndpointStats s;
  s.pool = "fake";
  s.url = "fake://chat";
  s.requests = static_cast<int64_t>(requests_.size());
  s.in_flight = static_cast<int>(held_.size());
  s.concurrency_limit = 1e9;
  return {s};
}

void FakeChatService::Hold(bool hold) {
  std::lock_guard<std::mutex> lock(mu_);
  hold_ = hold;
}

size_t FakeChatService::Release(size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t moved = 0;
  while (moved < n && !held_.empty()) {
    ready_.push_back(std::move(held_.front()));
    held_.pop_front();
    ++moved;
  }
  if (moved) Signal();
  return moved;
}

std::vector<ChatRequest> FakeChatService::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

size_t FakeChatService::held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_.size();
}

bool FakeChatService::shut_down() const {
  std::lock_guard<std::mutex> lock(mu_);
  return shut_down_;
}

std::vector<std::pair<std::string, std::vector<std::string>>> FakeChatService::endpoint_updates() const {
  std::lock_guard<std::mutex> lock(mu_);
  return endpoint_updates_;
}

}  // namespace matrix::llm
