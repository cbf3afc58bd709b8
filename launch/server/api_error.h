// An error the HTTP API answers with an OpenAI-style body:
// {"error":{"message":...,"type":...,"param":...,"code":...}} and an HTTP status.
#pragma once

#include <string>

#include "planner/core/error.h"

namespace ferry::launch::server {

class ApiError : public ferry::Error {
 public:
  ApiError(int status, std::string message, std::string type, std::string param = {}, std::string code = {})
      : ferry::Error(std::move(message)),
        status_(status),
        type_(std::move(type)),
        param_(std::move(param)),
        code_(std::move(code)) {}

  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }  // empty: JSON null
  const std::string& code() const { return code_; }    // empty: JSON null

 private:
  int status_;
  std::string type_, param_, code_;
};

// 400 invalid_request_error: what every validation failure of a request body is.
inline ApiError invalid_request(std::string message, std::string param = {}, std::string code = {}) {
  return ApiError(400, std::move(message), "invalid_request_error", std::move(param), std::move(code));
}

}  // namespace ferry::launch::server
