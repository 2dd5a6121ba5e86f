// `geopipe tokenize`: text and JSON-lines files into a token file, with a
// progress bar on stderr and the throughput at the end. Torch-free.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "src/cli/commands.h"
#include "src/tokenizer/token_file.h"
#include "src/tokenizer/tokenizer.h"

namespace geopipe::cli {
namespace {

// Ctrl-C (or SIGTERM) stops the run after the current document, so the
// temporary files are removed; a second one kills at once, as by default.
std::atomic<bool> g_interrupted{false};

void onSignal(int sig) {
  g_interrupted = true;
  std::signal(sig, SIG_DFL);
}

struct Interrupted {};

std::string megabytes(double bytes) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(bytes < 1e7 ? 2 : 1) << bytes / 1e6 << " MB";
  return os.str();
}

// "1,234,567".
std::string grouped(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

double rate(double bytes, double seconds) {
  return seconds > 0 ? bytes / 1e6 / seconds : 0.0;
}

// The progress of a run on stderr: on a terminal a bar redrawn in place at
// most every 0.1 s; otherwise (a log file, a pipe) a plain line every 10 s,
// so logs show progress without filling up.
class ProgressBar {
 public:
  ProgressBar(std::ostream& err, bool tty) : err_(err), tty_(tty) {}

  void update(const tokenizer::TokenizeProgress& p) {
    const double every = tty_ ? 0.1 : 10.0;
    if (p.seconds - last_ < every) return;
    last_ = p.seconds;
    draw(p);
  }

  // The last state, drawn once more and ended with a newline (terminal only).
  void finish(const tokenizer::TokenizeProgress& p) {
    if (!tty_) return;
    draw(p);
    err_ << "\n" << std::flush;
  }

 private:
  void draw(const tokenizer::TokenizeProgress& p) {
    // A .jsonl file's last line may lack its newline: never past 100%.
    const double frac =
        p.input_bytes_total > 0
            ? std::min(1.0, double(p.input_bytes_done) / double(p.input_bytes_total))
            : 1.0;
    std::ostringstream line;
    line << std::setw(3) << static_cast<int>(frac * 100) << "%  "
         << megabytes(double(p.input_bytes_done)) << " of "
         << megabytes(double(p.input_bytes_total)) << "  " << grouped(p.documents) << " docs  "
         << grouped(p.tokens) << " tokens  " << std::fixed << std::setprecision(1)
         << rate(double(p.input_bytes_done), p.seconds) << " MB/s";
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(frac * kWidth);
      err_ << "\r[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] "
           << line.str() << "\x1b[K" << std::flush;
    } else {
      err_ << "tokenize: " << line.str() << "\n" << std::flush;
    }
  }

  std::ostream& err_;
  bool tty_;
  double last_ = -1e9;
};

}  // namespace

void addTokenizeOptions(CLI::App& app, TokenizeArgs& args) {
  app.add_option("INPUT", args.inputs,
                 "text files (one document each) or .jsonl files (one document per line, "
                 "field \"text\")")
      ->required();
  app.add_option("--tokenizer", args.tokenizer,
                 "tokenizer folder: tokenizer.json, vocab.json + merges.txt, or tokenizer.model")
      ->required();
  app.add_option("--out", args.out, "token file to write (raw little-endian ids, no header)")
      ->required();
  app.add_option("--val-fraction", args.val_fraction,
                 "hold out the last ceil(F x documents) whole documents in FILE.val, F in [0, 1)")
      ->capture_default_str();
  app.add_option("--dtype", args.dtype, "uint16 (vocabularies up to 65536 ids) or uint32")
      ->capture_default_str();
}

int runTokenizeCommand(const TokenizeArgs& args, std::ostream& out, std::ostream& err,
                       bool err_is_tty) {
  const auto tok = tokenizer::loadTokenizer(args.tokenizer);
  tokenizer::TokenizeOptions options;
  options.dtype = args.dtype;
  options.val_fraction = args.val_fraction;
  ProgressBar bar(err, err_is_tty);
  tokenizer::TokenizeProgress last;
  g_interrupted = false;
  const auto previous_int = std::signal(SIGINT, onSignal);
  const auto previous_term = std::signal(SIGTERM, onSignal);
  auto restore = [&] {
    std::signal(SIGINT, previous_int);
    std::signal(SIGTERM, previous_term);
  };
  tokenizer::TokenizeResult r;
  try {
    r = tokenizer::tokenizeFiles(*tok, args.inputs, args.out, options,
                                 [&](const tokenizer::TokenizeProgress& p) {
                                   last = p;
                                   bar.update(p);
                                   if (g_interrupted) throw Interrupted{};
                                 });
  } catch (const Interrupted&) {
    restore();
    bar.finish(last);
    err << "interrupted after " << grouped(last.documents) << " document(s); nothing written\n";
    return 130;
  } catch (...) {
    restore();
    throw;
  }
  restore();
  bar.finish(last);
  out << "tokenized " << grouped(r.documents) << " document(s), "
      << megabytes(double(r.input_bytes)) << " of input (" << megabytes(double(r.text_bytes))
      << " of text), into " << grouped(r.tokens) << " " << tok->kind() << " tokens in "
      << std::fixed << std::setprecision(2) << r.seconds << " s: " << std::setprecision(1)
      << rate(double(r.input_bytes), r.seconds) << " MB/s\n";
  out << "wrote " << args.out << " (" << grouped(r.tokens - r.val_tokens) << " tokens, "
      << grouped(r.documents - r.val_documents) << " document(s), " << args.dtype << ")";
  if (!r.val_path.empty()) {
    out << " and " << r.val_path << " (" << grouped(r.val_tokens) << " tokens, "
        << grouped(r.val_documents) << " document(s))";
  }
  out << "\n";
  return 0;
}

}  // namespace geopipe::cli
