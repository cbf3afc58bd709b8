// Stop sequences on a stream of text pieces: text is released only once it cannot be the start of a stop
// sequence, so a sequence split across pieces ("Hel" + "lo") is still caught and never reaches the client.
// Like llama-server, the held-back tail is released when generation ends without a match.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ferry::launch::server {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends a piece; returns the text now safe to send. After a match, returns the text before the stop
  // sequence and ignores every later piece.
  std::string feed(std::string_view piece);
  // The end of generation: the text still held back (empty after a match).
  std::string finish();

  bool matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // received, not yet released
  bool matched_ = false;
};

}  // namespace ferry::launch::server
