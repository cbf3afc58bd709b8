// `ferry tokenize`: text on stdin to token ids (a JSON array on one line), or with --decode a JSON array of ids
// on stdin back to text, with the tokenizer.json of a model directory or a given file.
#include <cstdint>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "planner/core/error.h"
#include "runtime/text/tokenizer.h"

namespace ferry::launch {
namespace {

using Json = nlohmann::json;

std::vector<int32_t> parse_ids(const std::string& text) {
  Json ids;
  try {
    ids = Json::parse(text);
  } catch (const Json::exception& e) {
    FERRY_THROW("--decode: stdin is not JSON: {}", e.what());
  }
  FERRY_CHECK(ids.is_array(), "--decode: stdin must be a JSON array of token ids, like [0, 42, 7]");
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (const Json& id : ids) {
    FERRY_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= INT32_MAX,
                "--decode: {} is not a token id (a non-negative integer)", id.dump());
    out.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return out;
}

class TokenizeCommand : public Command {
 public:
  explicit TokenizeCommand(CLI::App& parent) {
    app_ = parent.add_subcommand("tokenize", "Text on stdin to token ids (a JSON array), or ids back to text");
    auto* model = app_->add_option("--model,-m", model_, "Model directory holding tokenizer.json");
    auto* file = app_->add_option("--tokenizer", tokenizer_file_, "A Hugging Face tokenizer.json file");
    model->excludes(file);
    app_->add_flag("--decode", decode_, "Read a JSON array of token ids on stdin and print their text");
    app_->add_flag("--no-special", no_special_,
                   "Encoding: special tokens written in the text (e.g. <｜begin▁of▁sentence｜>) are plain text. "
                   "Decoding: special tokens are left out");
    app_->footer(
        "Encoding adds no BOS or EOS: the ids are exactly those of the text (special tokens written in it included).\n"
        "Examples:\n"
        "  echo -n 'Hello, world!' | ferry tokenize --model DIR       prints e.g. [19923,14,2058,3] (DeepSeek's ids)\n"
        "  echo '[19923,14,2058,3]' | ferry tokenize --model DIR --decode   prints the text, adding no newline");
  }
  CLI::App* app() const override { return app_; }

  int run() override {
    FERRY_CHECK(!model_.empty() || !tokenizer_file_.empty(), "give --model DIR or --tokenizer FILE");
    const runtime::Tokenizer tokenizer =
        model_.empty() ? runtime::Tokenizer::from_file(tokenizer_file_) : runtime::Tokenizer::from_model_dir(model_);
    const std::string input{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
    if (decode_) {
      std::cout << tokenizer.decode(parse_ids(input), no_special_) << std::flush;
    } else {
      std::cout << Json(tokenizer.encode(input, !no_special_)).dump() << std::endl;
    }
    return kExitOk;
  }

 private:
  CLI::App* app_ = nullptr;
  std::string model_, tokenizer_file_;
  bool decode_ = false, no_special_ = false;
};

}  // namespace

std::unique_ptr<Command> make_tokenize_command(CLI::App& parent) { return std::make_unique<TokenizeCommand>(parent); }

}  // namespace ferry::launch
