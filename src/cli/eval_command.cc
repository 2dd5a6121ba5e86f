// `geopipe eval` and `geopipe generate`: a model folder in one process.
#include <unistd.h>

#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "geopipe/error.h"
#include "src/cli/model_commands.h"
#include "src/cli/option_checks.h"
#include "src/common/text.h"
#include "src/model/causal_lm.h"
#include "src/tokenizer/tokenizer.h"

namespace geopipe::cli {

void addEvalOptions(CLI::App& app, EvalArgs& a) {
  app.add_option("--model", a.model, "model folder (config.json + model.safetensors)")->required();
  app.add_option("--data", a.data, "token file (raw little-endian ids, the `tokens` format)")
      ->required();
  app.add_option("--dtype", a.dtype, "token width: uint16 or uint32")
      ->check(CLI::IsMember({"uint16", "uint32"}))
      ->capture_default_str();
  app.add_option("--seq-len", a.seq_len,
                 "tokens predicted per window (default: the model's "
                 "maximum positions)")
      ->check(integerAtLeast(1));
  app.add_option("--batch", a.batch, "windows per forward pass")
      ->capture_default_str()
      ->check(integerAtLeast(1));
}

int runEvalCommand(const EvalArgs& a, std::ostream& out) {
  model::CausalLm lm = model::CausalLm::fromFolder(a.model);
  const data::TokenFile tokens(a.data, a.dtype);
  model::EvalOptions o;
  o.seq_len = a.seq_len;
  o.batch = a.batch;
  const bool tty = ::isatty(STDERR_FILENO);
  o.progress = [tty](int64_t done, int64_t all) {
    if (tty) std::cerr << "\reval: " << done << "/" << all << " windows" << std::flush;
  };
  const model::EvalResult r = model::evaluate(lm, tokens, o);
  if (tty) std::cerr << "\n";
  out << "windows " << r.windows << " tokens " << r.tokens << " (seq-len "
      << (a.seq_len > 0 ? a.seq_len : lm.maxPositions()) << ")\n";
  out << std::fixed << std::setprecision(6) << "loss " << r.loss << " ppl " << r.perplexity << "\n";
  return 0;
}

void addGenerateOptions(CLI::App& app, GenerateArgs& a) {
  app.add_option("--model", a.model, "model folder (config.json + model.safetensors)")->required();
  auto* text = app.add_option("--prompt", a.prompt, "prompt text (needs a tokenizer)");
  auto* ids = app.add_option("--prompt-ids", a.prompt_ids, "prompt token ids, e.g. 1,2,3");
  text->excludes(ids);
  app.add_option("--max-new-tokens", a.max_new_tokens, "tokens to generate at most")
      ->required()
      ->check(integerAtLeast(1));
  auto* greedy = app.add_flag("--greedy", a.greedy, "argmax decoding (the default)");
  auto* temp = app.add_option("--temperature", a.temperature, "sampling temperature (> 0)")
                   ->check(finiteNumberIn(0.0, 1000.0, /*lo_exclusive=*/true));
  auto* topk = app.add_option("--top-k", a.top_k, "sample among the k most likely ids");
  greedy->excludes(temp)->excludes(topk);
  app.add_option("--seed", a.seed, "sampling seed (default 0)");
  app.add_flag("--print-ids", a.print_ids, "print only the new ids, comma-separated");
  app.add_option("--tokenizer", a.tokenizer, "tokenizer folder (default: the model folder)");
}

namespace {

std::vector<int64_t> parseIds(const std::string& s) {
  std::vector<int64_t> ids;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    const auto first = part.find_first_not_of(' ');
    const auto last = part.find_last_not_of(' ');
    const std::string t = first == std::string::npos ? "" : part.substr(first, last - first + 1);
    if (t.empty() || t.size() > 12 || t.find_first_not_of("0123456789") != std::string::npos) {
      GEOPIPE_THROW(ConfigError, "--prompt-ids: '", t,
                    "' is not a token id; give non-negative integers separated by commas");
    }
    ids.push_back(std::stoll(t));
  }
  return ids;
}

}  // namespace

int runGenerateCommand(const GenerateArgs& a, std::ostream& out) {
  GEOPIPE_CHECK(!a.prompt.empty() || !a.prompt_ids.empty(), ConfigError,
                "give the prompt: --prompt TEXT or --prompt-ids 1,2,3");
  model::CausalLm lm = model::CausalLm::fromFolder(a.model);
  model::GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.greedy = !a.temperature && !a.top_k;
  o.temperature = a.temperature.value_or(1.0);
  o.top_k = a.top_k.value_or(0);
  o.seed = a.seed.value_or(0);
  GEOPIPE_CHECK(o.top_k >= 0, ConfigError, "--top-k must be 0 (all ids) or more");
  GEOPIPE_CHECK(!o.greedy || !a.seed, ConfigError,
                "--seed has no effect on greedy decoding: add --temperature or --top-k to sample");
  // Text in or out needs a tokenizer: --tokenizer, else the model folder's.
  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (!a.prompt.empty() || !a.print_ids) {
    const std::string dir = a.tokenizer.empty() ? a.model : a.tokenizer;
    try {
      tok = tokenizer::loadTokenizer(dir);
    } catch (const Error& e) {
      GEOPIPE_THROW(ConfigError, "text ", a.prompt.empty() ? "out" : "in",
                    " needs a tokenizer, and none could be read from '", common::printable(dir),
                    "' (", e.what(),
                    "): give --tokenizer DIR, or use --prompt-ids and --print-ids");
    }
  }
  std::vector<int64_t> prompt;
  if (!a.prompt_ids.empty()) {
    prompt = parseIds(a.prompt_ids);
  } else {
    // As Hugging Face's tokenizers do: Llama's starts a text with BOS.
    if (tok->bosId()) prompt.push_back(*tok->bosId());
    for (int32_t id : tok->encode(a.prompt)) prompt.push_back(id);
  }
  const std::vector<int64_t> ids = model::generate(lm, prompt, o);
  if (a.print_ids) {
    for (size_t i = 0; i < ids.size(); ++i) out << (i ? "," : "") << ids[i];
    out << "\n";
    return 0;
  }
  auto decode = [&](const std::vector<int64_t>& v) {
    std::vector<int32_t> narrow;
    for (int64_t id : v) {
      // The model's vocabulary may be larger than the tokenizer's.
      if (id < tok->vocabSize()) narrow.push_back(static_cast<int32_t>(id));
    }
    return tok->decode(narrow);
  };
  // One decode of prompt and continuation: SentencePiece drops the space a
  // piece starts with at the start of a text, so decoding the two apart
  // would glue them together.
  std::vector<int64_t> shown = prompt;
  if (!shown.empty() && tok->bosId() && shown.front() == *tok->bosId()) shown.erase(shown.begin());
  shown.insert(shown.end(), ids.begin(), ids.end());
  out << decode(shown) << "\n";
  return 0;
}

}  // namespace geopipe::cli
