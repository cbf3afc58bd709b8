// Replays the fuzz corpus through the real readers in a normal build: valid_* seeds must parse, bad_* seeds must
// throw ferry::Error. As in the fuzz target, a seed starting with '{' is an index JSON (read from a model directory
// next to the shard it may name), anything else a .safetensors file (read from its own path).
// Usage: replay_corpus CORPUS_DIR. Exit 0 when every seed behaves, 1 otherwise.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "planner/core/error.h"
#include "planner/core/safetensors_header.h"
#include "tests/fuzz/fuzz_model_dir.h"

namespace fs = std::filesystem;
using namespace ferry;

using ferry_fuzz::ModelDir;

namespace {

// A one-line summary of what parsed; throws ferry::Error for a bad seed.
std::string read_seed(const fs::path& seed, const ModelDir& dir) {
  char first = 0;
  std::ifstream(seed, std::ios::binary).get(first);
  if (first != '{') return std::to_string(core::read_safetensors_header(seed).tensors.size()) + " tensors";
  fs::copy_file(seed, dir.path / "model.safetensors.index.json", fs::copy_options::overwrite_existing);
  return std::to_string(core::read_checkpoint_headers(dir.path).by_name.size()) + " tensors through the index";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: replay_corpus CORPUS_DIR\n");
    return 2;
  }
  if (!fs::is_directory(argv[1])) {
    std::fprintf(stderr, "replay_corpus: %s is not a directory\n", argv[1]);
    return 1;
  }
  std::vector<fs::path> seeds;
  for (const auto& e : fs::directory_iterator(argv[1]))
    if (e.is_regular_file()) seeds.push_back(e.path());
  std::sort(seeds.begin(), seeds.end());
  if (seeds.empty()) {
    std::fprintf(stderr, "replay_corpus: no seeds in %s\n", argv[1]);
    return 1;
  }

  const ModelDir dir("ferry-replay-");
  int failures = 0;
  for (const auto& seed : seeds) {
    const std::string name = seed.filename().string();
    const bool want_ok = name.starts_with("valid_");
    std::string outcome;
    bool ok = false;
    try {
      if (!want_ok && !name.starts_with("bad_")) throw std::runtime_error("name starts with neither valid_ nor bad_");
      outcome = "parsed: " + read_seed(seed, dir);
      ok = want_ok;
    } catch (const ferry::Error& e) {
      outcome = std::string("ferry::Error: ") + e.what();
      ok = !want_ok;
    } catch (const std::exception& e) {
      outcome = std::string("other exception: ") + e.what();
    }
    std::printf("%s %s -> %s\n", ok ? "ok  " : "FAIL", name.c_str(), outcome.c_str());
    failures += ok ? 0 : 1;
  }
  std::printf("replay_corpus: %zu seeds, %d failed\n", seeds.size(), failures);
  return failures == 0 ? 0 : 1;
}
