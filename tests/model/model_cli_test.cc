// `geopipe eval`, `generate` and `export` as a user runs them, against the
// independent PyTorch reference (tests/model/hf_reference.py).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "geopipe/model.h"
#include "src/config/job_parser.h"
#include "src/formats/safetensors.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/placement.h"
#include "tests/model/python_reference.h"

using namespace geopipe;
namespace fs = std::filesystem;
using testing::python::TempDir;

namespace {

struct CliRun {
  int rc = 0;
  std::string out;  // stdout and stderr
};

CliRun geopipe(const std::string& args) {
  const std::string cmd = std::string(GEOPIPE_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  CliRun r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string lastLine(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

void writeTokens(const std::string& path, int64_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint16_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<uint16_t>(rng() % vocab);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(t.data()), static_cast<std::streamsize>(2 * n));
}

void expectEvalMatchesReference(const std::string& make_args) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  const std::string dir = d.path + "/model", tokens = d.path + "/val.bin";
  testing::python::run("make " + dir + " " + make_args + " --vocab 64 --positions 32");
  writeTokens(tokens, 301, 64, 5);  // 18 windows of 17 tokens, 7 tokens left over
  const auto ref = nlohmann::json::parse(
      testing::python::run("loss " + dir + " --tokens " + tokens + " --seq-len 16 --overlap-one"));
  const CliRun r = geopipe("eval --model " + dir + " --data " + tokens + " --seq-len 16 --batch 5");
  ASSERT_EQ(r.rc, 0) << r.out;
  double loss = 0, ppl = 0;
  ASSERT_EQ(std::sscanf(lastLine(r.out).c_str(), "loss %lf ppl %lf", &loss, &ppl), 2) << r.out;
  EXPECT_NEAR(loss, ref["loss"].get<double>(), 1e-5 * ref["loss"].get<double>());
  EXPECT_NEAR(ppl, std::exp(loss), 1e-5 * ppl);
  EXPECT_NE(r.out.find("tokens 288"), std::string::npos) << r.out;  // 18 x 16
}

TEST(EvalCommand, Gpt2LossEqualsTheReference) {
  expectEvalMatchesReference("--family gpt2 --layers 2");
}
TEST(EvalCommand, LlamaLossEqualsTheReference) {
  expectEvalMatchesReference("--family llama --layers 2 --kv-heads 2 --tied 0");
}

TEST(EvalCommand, RefusesWindowsLongerThanTheModel) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  testing::python::run("make " + d.path + "/m --family gpt2 --positions 32");
  writeTokens(d.path + "/t.bin", 100, 64, 1);
  const CliRun r =
      geopipe("eval --model " + d.path + "/m --data " + d.path + "/t.bin --seq-len 33");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("--seq-len 33 exceeds the model's maximum positions (32)"),
            std::string::npos)
      << r.out;
}

std::string ids(const std::string& out) {
  return lastLine(out);
}

void expectGreedyMatchesReference(const std::string& make_args) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  const std::string dir = d.path + "/model";
  testing::python::run("make " + dir + " " + make_args);
  const std::string ref =
      lastLine(testing::python::run("greedy " + dir + " --prompt-ids 5,1,7 --max-new 20"));
  const CliRun r = geopipe("generate --model " + dir +
                           " --prompt-ids 5,1,7 --max-new-tokens 20 --greedy --print-ids");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(ids(r.out), ref);
}

TEST(GenerateCommand, Gpt2GreedyIdsEqualTheReference) {
  expectGreedyMatchesReference("--family gpt2 --layers 3 --positions 32");
}
TEST(GenerateCommand, LlamaGreedyIdsEqualTheReference) {
  expectGreedyMatchesReference("--family llama --layers 3 --kv-heads 1 --positions 32");
}

std::vector<int64_t> parseIds(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) out.push_back(std::stoll(part));
  return out;
}

TEST(GenerateCommand, StopsAfterTheEndOfTextIdAndSamplesReproducibly) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  const std::string dir = d.path + "/model";
  testing::python::run("make " + dir + " --family gpt2 --layers 2 --positions 40 --seed 3");
  const std::string gen = "generate --model " + dir + " --prompt-ids 9,4 --max-new-tokens 30 ";
  const CliRun all = geopipe(gen + "--print-ids");
  ASSERT_EQ(all.rc, 0) << all.out;
  const auto seq = parseIds(ids(all.out));
  ASSERT_EQ(seq.size(), 30u);
  // Make the first id that did not occur before it the end-of-text id.
  size_t k = 1;
  while (k < seq.size() && std::count(seq.begin(), seq.begin() + k, seq[k]) > 0) ++k;
  ASSERT_LT(k, seq.size());
  std::ifstream in(dir + "/config.json");
  auto cfg = nlohmann::json::parse(in);
  cfg["eos_token_id"] = seq[k];
  std::ofstream(dir + "/config.json") << cfg.dump();
  const auto stopped = parseIds(ids(geopipe(gen + "--print-ids").out));
  EXPECT_EQ(stopped, std::vector<int64_t>(seq.begin(), seq.begin() + k + 1));
  // Sampling: the same seed gives the same ids; top-k 1 is greedy.
  const std::string a = ids(geopipe(gen + "--temperature 1.5 --top-k 8 --seed 11 --print-ids").out);
  const std::string b = ids(geopipe(gen + "--temperature 1.5 --top-k 8 --seed 11 --print-ids").out);
  const std::string c = ids(geopipe(gen + "--temperature 1.5 --top-k 8 --seed 12 --print-ids").out);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(parseIds(ids(geopipe(gen + "--top-k 1 --seed 5 --print-ids").out)), stopped);
}

TEST(GenerateCommand, RefusesPromptsThatOutgrowTheModel) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  testing::python::run("make " + d.path + "/m --family llama --positions 16");
  const CliRun r = geopipe("generate --model " + d.path +
                           "/m --prompt-ids 1,2,3 --max-new-tokens 14 --print-ids");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("is 17 positions, beyond the model's maximum of 16"), std::string::npos)
      << r.out;
  const CliRun bad =
      geopipe("generate --model " + d.path + "/m --prompt-ids 1,x --max-new-tokens 2 --print-ids");
  EXPECT_EQ(bad.rc, 1) << bad.out;
  EXPECT_NE(bad.out.find("'x' is not a token id"), std::string::npos) << bad.out;
}

// Train a little from an imported model in two stages, export, import again:
// every weight comes back bit for bit, and the reference reads the export.
TEST(ExportCommand, ExportThenImportIsBitExactAndTheReferenceReadsIt) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  testing::python::run("make " + d.path +
                       "/base --family gpt2 --layers 4 --vocab 64 "
                       "--positions 32");
  std::ofstream(d.path + "/job.yaml") << R"(
model: {kind: gpt2, from: base, seq_len: 16}
data: {kind: synthetic, num_samples: 64}
training: {steps: 3, global_batch: 4, micro_batch: 2, optimizer: {lr: 1.0e-2}}
parallelism: {pipeline_stages: 2}
checkpoint: {dir: ckpt}
topology:
  sites: [{name: a, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)";
  const CliRun train = geopipe("train " + d.path + "/job.yaml");
  ASSERT_EQ(train.rc, 0) << train.out;
  EXPECT_NE(train.out.find("weights after step 3: " + d.path + "/ckpt/step-00000003"),
            std::string::npos)
      << train.out;
  const CliRun exp = geopipe("export " + d.path + "/ckpt --out " + d.path + "/out");
  ASSERT_EQ(exp.rc, 0) << exp.out;
  // A second export into the same folder needs --force.
  EXPECT_EQ(geopipe("export " + d.path + "/ckpt --out " + d.path + "/out").rc, 1);

  // The checkpoint's stages, loaded as the tasklets load them.
  const JobSpec job = config::loadJobFile(d.path + "/job.yaml");
  const auto manifest = runtime::findLatestCheckpoint(d.path + "/ckpt");
  ASSERT_TRUE(manifest && manifest->version == 2);
  ModelSpec scratch = job.model;
  scratch.from.clear();
  const ModelDef fresh = makeModel(scratch);
  ModelSpec imported_spec =
      config::parseJobString("model: {kind: gpt2, from: " + d.path +
                                 "/out}\ntopology: {sites: [{name: a, devices: 1}]}\n",
                             "j.yaml", "")
          .model;
  const ModelDef imported = makeModel(imported_spec);
  ASSERT_EQ(manifest->layers_of_stage.size(), 2u);
  int compared = 0;
  for (int s = 0; s < 2; ++s) {
    const auto [first, last] = manifest->layers_of_stage[s];
    auto saved = buildSlice(fresh, first, last, 1);
    torch::serialize::InputArchive archive, model_archive;
    archive.load_from(runtime::stepDirectory(d.path + "/ckpt", 3) + "/tasklet-" +
                      std::to_string(s) + ".pt");
    archive.read("model", model_archive);
    saved->load(model_archive);
    auto back = buildSlice(imported, first, last, 2);
    auto a = saved->named_parameters(), b = back->named_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (const auto& p : a) {
      EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << "stage " << s << " " << p.key();
      ++compared;
    }
  }
  EXPECT_GT(compared, 40);
  // The trained weights moved away from the base model.
  const formats::SafetensorsFile base(d.path + "/base/model.safetensors");
  const formats::SafetensorsFile out(d.path + "/out/model.safetensors");
  std::vector<float> x(32 * 96), y(32 * 96);
  base.readFloat("transformer.h.0.attn.c_attn.weight", x.data(), 32 * 96);
  out.readFloat("transformer.h.0.attn.c_attn.weight", y.data(), 32 * 96);
  EXPECT_NE(x, y);
  EXPECT_EQ(out.find("lm_head.weight"), nullptr);  // tied: not stored, as HF saves it
  EXPECT_EQ(out.metadata().at("format"), "pt");
  // The reference reads the exported folder and computes what geopipe does.
  const CliRun ours = geopipe("generate --model " + d.path +
                              "/out --prompt-ids 3,1,4,1,5 --max-new-tokens 12 --print-ids");
  ASSERT_EQ(ours.rc, 0) << ours.out;
  EXPECT_EQ(ids(ours.out), lastLine(testing::python::run(
                               "greedy " + d.path + "/out --prompt-ids 3,1,4,1,5 --max-new 12")));
  // bf16 storage: config says so, and the folder loads.
  const CliRun bf16 = geopipe("export " + d.path + "/ckpt --out " + d.path + "/bf16 --dtype bf16");
  ASSERT_EQ(bf16.rc, 0) << bf16.out;
  std::ifstream cfg(d.path + "/bf16/config.json");
  EXPECT_EQ(nlohmann::json::parse(cfg)["torch_dtype"], "bfloat16");
  EXPECT_EQ(formats::SafetensorsFile(d.path + "/bf16/model.safetensors")
                .at("transformer.wte.weight")
                .dtype,
            formats::DType::BF16);
}

// A Llama built from scratch (grouped-query attention, untied head) and
// trained in two stages exports a folder the reference reads: its greedy
// continuation is geopipe's, and the head is stored apart from the embedding.
TEST(ExportCommand, LlamaUntiedGqaExportIsReadByTheReference) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  std::ofstream(d.path + "/job.yaml") << R"(
model: {kind: llama, preset: none, layers: 2, hidden: 32, heads: 4, num_key_value_heads: 2,
        intermediate_size: 48, tie_embeddings: false, max_positions: 32, seq_len: 16, vocab: 64}
data: {kind: synthetic, num_samples: 64}
training: {steps: 3, global_batch: 4, micro_batch: 2, optimizer: {lr: 1.0e-2}}
parallelism: {pipeline_stages: 2}
checkpoint: {dir: ckpt}
topology:
  sites: [{name: a, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)";
  const CliRun train = geopipe("train " + d.path + "/job.yaml");
  ASSERT_EQ(train.rc, 0) << train.out;
  const CliRun exp = geopipe("export " + d.path + "/ckpt --out " + d.path + "/out");
  ASSERT_EQ(exp.rc, 0) << exp.out;
  std::ifstream cfg(d.path + "/out/config.json");
  const auto config = nlohmann::json::parse(cfg);
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["num_key_value_heads"], 2);
  EXPECT_EQ(config["tie_word_embeddings"], false);
  const formats::SafetensorsFile out(d.path + "/out/model.safetensors");
  ASSERT_NE(out.find("lm_head.weight"), nullptr);  // untied: stored
  std::vector<float> head(64 * 32), embed(64 * 32);
  out.readFloat("lm_head.weight", head.data(), head.size());
  out.readFloat("model.embed_tokens.weight", embed.data(), embed.size());
  EXPECT_NE(head, embed);
  const CliRun ours = geopipe("generate --model " + d.path +
                              "/out --prompt-ids 3,1,4,1,5 --max-new-tokens 12 --print-ids");
  ASSERT_EQ(ours.rc, 0) << ours.out;
  EXPECT_EQ(ids(ours.out), lastLine(testing::python::run(
                               "greedy " + d.path + "/out --prompt-ids 3,1,4,1,5 --max-new 12")));
}

// A version 1 manifest (written before checkpoints recorded the model) is
// refused by export with the way out, and resuming from it works and writes
// a version 2 checkpoint that exports.
TEST(ExportCommand, AVersionOneCheckpointResumesAndThenExports) {
  TempDir d;
  std::ofstream(d.path + "/job.yaml") << R"(
model: {kind: gpt2, preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 32}
data: {kind: synthetic, num_samples: 32}
training: {steps: 2, global_batch: 2}
parallelism: {pipeline_stages: 2}
checkpoint: {dir: ckpt}
topology:
  sites: [{name: a, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)";
  ASSERT_EQ(geopipe("train " + d.path + "/job.yaml").rc, 0);
  // Turn the manifest into what a version 1 build wrote.
  const std::string manifest = runtime::stepDirectory(d.path + "/ckpt", 2) + "/manifest.json";
  nlohmann::json j = nlohmann::json::parse(std::ifstream(manifest));
  j["version"] = 1;
  j.erase("model");
  j.erase("layers");
  std::ofstream(manifest) << j.dump(2);
  const CliRun refused = geopipe("export " + d.path + "/ckpt --out " + d.path + "/o");
  EXPECT_EQ(refused.rc, 1) << refused.out;
  EXPECT_NE(refused.out.find("version 1 manifest"), std::string::npos) << refused.out;
  const CliRun resumed = geopipe("train " + d.path + "/job.yaml --steps 3 --resume");
  ASSERT_EQ(resumed.rc, 0) << resumed.out;
  EXPECT_NE(resumed.out.find("weights after step 3"), std::string::npos) << resumed.out;
  const auto latest = runtime::findLatestCheckpoint(d.path + "/ckpt");
  ASSERT_TRUE(latest && latest->version == 2 && latest->next_step == 3);
  const CliRun exp = geopipe("export " + d.path + "/ckpt --out " + d.path + "/o");
  EXPECT_EQ(exp.rc, 0) << exp.out;
}

TEST(ExportCommand, RefusesCheckpointsItCannotExport) {
  TempDir d;
  const CliRun none = geopipe("export " + d.path + "/nothing --out " + d.path + "/o");
  EXPECT_EQ(none.rc, 1) << none.out;
  EXPECT_NE(none.out.find("no committed checkpoint"), std::string::npos) << none.out;
  // The built-in GPT has no Hugging Face layout.
  std::ofstream(d.path + "/job.yaml") << R"(
model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 32}
data: {kind: synthetic, num_samples: 32}
training: {steps: 1, global_batch: 2}
checkpoint: {dir: ckpt}
topology: {sites: [{name: a, devices: 1}]}
)";
  ASSERT_EQ(geopipe("train " + d.path + "/job.yaml").rc, 0);
  const CliRun gpt = geopipe("export " + d.path + "/ckpt --out " + d.path + "/o");
  EXPECT_EQ(gpt.rc, 1) << gpt.out;
  EXPECT_NE(gpt.out.find("kind 'gpt', which has no Hugging Face layout"), std::string::npos)
      << gpt.out;
}

}  // namespace

namespace {

// Text in and out through the model folder's GPT-2 tokenizer: "Hello world"
// is GPT-2 ids 15496, 995; the continuation is the reference's greedy ids.
TEST(GenerateCommand, TextThroughTheModelFoldersTokenizer) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  const std::string dir = d.path + "/model";
  testing::python::run("make " + dir +
                       " --family gpt2 --layers 1 --hidden 16 --heads 2 --vocab 50257 "
                       "--positions 32");
  for (const char* f : {"vocab.json", "merges.txt"}) {
    fs::copy_file(std::string("assets/tokenizers/gpt2/") + f, dir + "/" + f);
  }
  const std::string ref =
      lastLine(testing::python::run("greedy " + dir + " --prompt-ids 15496,995 --max-new 6"));
  const CliRun ids_run =
      geopipe("generate --model " + dir + " --prompt 'Hello world' --max-new-tokens 6 --print-ids");
  ASSERT_EQ(ids_run.rc, 0) << ids_run.out;
  EXPECT_EQ(ids(ids_run.out), ref);
  const CliRun text =
      geopipe("generate --model " + dir + " --prompt 'Hello world' --max-new-tokens 6");
  ASSERT_EQ(text.rc, 0) << text.out;
  EXPECT_EQ(text.out.rfind("Hello world", 0), 0u) << text.out;
  EXPECT_GT(text.out.size(), std::string("Hello world\n").size());
  // Without a tokenizer, text is refused with the way out.
  const CliRun none = geopipe("generate --model " + dir +
                              " --prompt hi --max-new-tokens 2 "
                              "--tokenizer " +
                              d.path);
  EXPECT_EQ(none.rc, 1) << none.out;
  EXPECT_NE(none.out.find("use --prompt-ids and --print-ids"), std::string::npos) << none.out;
}

}  // namespace
