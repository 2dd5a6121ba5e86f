// `geopipe bench binding`: what binding samples to replicas changes for
// AC-SGD, measured side by side in one run.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace geopipe::cli {

struct BindingBenchArgs {
  // A uint16 token file of GPT-2 ids; empty: Debian's fortunes, tokenized
  // with `tokenizer` into out_dir first (one document per fortune file).
  std::string data;
  std::string tokenizer = "assets/tokenizers/gpt2";
  std::string out_dir = "bench-out/binding";  // the token file, checkpoints, results.md
  int64_t samples = 128;                      // data.num_samples
  int epochs = 3;                             // epochs of each run
  std::vector<int> replicas = {1, 2, 4};      // data-parallel replicas, each a pair of runs
};
void addBindingBenchOptions(CLI::App& bench, BindingBenchArgs& args);
int runBindingBench(const BindingBenchArgs& args, std::ostream& out);

}  // namespace geopipe::cli
