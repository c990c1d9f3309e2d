// Status and StatusOr: the error type at every module boundary.
// Codes follow abseil's canonical meaning, chosen by how the caller should retry:
//   kUnavailable        retry this call (endpoint down, timeout, 429/5xx)
//   kAborted            retry higher up (task attempt lost)
//   kInvalidArgument    bad input; do not retry (malformed row, 400 from an LLM)
//   kFailedPrecondition do not retry until something is fixed (config)
//   kNotFound, kDataLoss (checksum mismatch), kResourceExhausted (budget full),
//   kDeadlineExceeded, kInternal (broken invariant), kCancelled.
// Thread-safety: value types, no shared state.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace matrix {

enum class StatusCode {
  kOk = 0,
  kCancelled,
  kInvalidArgument,
  kDeadlineExceeded,
  kNotFound,
  kAlreadyExists,
  kResourceExhausted,
  kFailedPrecondition,
  kAborted,
  kInternal,
  kUnavailable,
  kDataLoss,
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: message" or "OK".
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status DeadlineExceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
inline Status Aborted(std::string m) { return {StatusCode::kAborted, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }

// Holds either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const T& value) : value_(value) {}
  StatusOr(T&& value) : value_(std::move(value)) {}
  // REQUIRES: !status.ok()
  StatusOr(Status status) : status_(std::move(status)) {
    if (status_.ok()) status_ = Internal("StatusOr constructed from OK status without a value");
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

#define MATRIX_RETURN_IF_ERROR(expr)            \
  do {                                          \
    ::matrix::Status _st = (expr);              \
    if (!_st.ok()) return _st;                  \
  } while (0)

#define MATRIX_CONCAT_INNER(a, b) a##b
#define MATRIX_CONCAT(a, b) MATRIX_CONCAT_INNER(a, b)
#define MATRIX_ASSIGN_OR_RETURN(lhs, expr)                          \
  auto MATRIX_CONCAT(_so_, __LINE__) = (expr);                      \
  if (!MATRIX_CONCAT(_so_, __LINE__).ok())                          \
    return MATRIX_CONCAT(_so_, __LINE__).status();                  \
  lhs = std::move(MATRIX_CONCAT(_so_, __LINE__)).value()

}  // namespace matrix
