// The commands that take a Hugging Face model folder: `geopipe eval`,
// `geopipe generate` and `geopipe export` (a checkpoint into such a folder).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace geopipe::cli {

struct EvalArgs {
  std::string model;            // model folder (config.json + safetensors)
  std::string data;             // token file (the `tokens` format)
  std::string dtype = "uint16"; // uint16 | uint32
  int64_t seq_len = 0;          // 0 = the model's maximum positions
  int64_t batch = 8;            // windows per forward
};
void addEvalOptions(CLI::App& app, EvalArgs& args);
// Prints progress to stderr and, last, "loss X ppl Y" with six decimals.
int runEvalCommand(const EvalArgs& args, std::ostream& out);

struct GenerateArgs {
  std::string model;             // model folder
  std::string prompt;            // text (needs a tokenizer)
  std::string prompt_ids;        // "1,2,3"
  int64_t max_new_tokens = 0;
  bool greedy = false;           // the default unless --temperature or --top-k
  std::optional<double> temperature;
  std::optional<int64_t> top_k;
  std::optional<uint64_t> seed;  // sampling only
  bool print_ids = false;        // print only the new ids, comma-separated
  std::string tokenizer;         // tokenizer folder; default: the model folder
};
void addGenerateOptions(CLI::App& app, GenerateArgs& args);
int runGenerateCommand(const GenerateArgs& args, std::ostream& out);

struct ExportArgs {
  std::string checkpoint_dir;  // a job's checkpoint.dir
  std::string out;             // the model folder to write
  std::string dtype;           // fp32 | fp16 | bf16; empty = the job's model.dtype
  bool force = false;          // replace a non-empty --out
};
void addExportOptions(CLI::App& app, ExportArgs& args);
int runExportCommand(const ExportArgs& args, std::ostream& out);

struct ModelBenchArgs {
  int layers = 6;
  int hidden = 384;
  int heads = 6;
  int vocab = 50257;
  int seq_len = 256;
  int batch = 4;
  int steps = 8;
  int threads = 0;                  // 0 = the cores
  std::string python = "/usr/bin/python3";
  std::vector<std::string> dtypes = {"fp32", "bf16"};
  std::string device = "cpu";  // cpu | cuda (both sides on cuda:0)
  double peak_tflops = 0;      // the device's peak for the MFU column (0: no column)
  bool staged = false;         // also the staged engine: 2 stages x 1 replica, fp32 and AC-SGD
  int micro_batch = 0;         // the staged rows' micro-batch (0: batch / 2)
};
// `geopipe bench model` as a subcommand of `bench`.
void addModelBenchOptions(CLI::App& bench, ModelBenchArgs& args);
int runModelBench(const ModelBenchArgs& args, std::ostream& out);

}  // namespace geopipe::cli
