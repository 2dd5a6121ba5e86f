// A user-defined model trained through geopipe's C++ API: not a GPT but a
// causal "shift-MLP" language model (each block mixes a token with the one
// before it), registered by name and cut into pipeline stages by geopipe.
//
//   custom_model_example [job.yaml] [--steps N]
#include <geopipe/error.h>
#include <geopipe/job_file.h>
#include <geopipe/model.h>
#include <geopipe/trainer.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace {

// Token embedding: int64 [B, T] -> [B, T, H].
struct TokensImpl : torch::nn::Module {
  TokensImpl(int vocab, int hidden) : emb(register_module("emb", torch::nn::Embedding(vocab, hidden))) {}
  torch::Tensor forward(const torch::Tensor& ids) { return emb->forward(ids); }
  torch::nn::Embedding emb;
};
TORCH_MODULE(Tokens);

// x + MLP([x_t, x_{t-1}]): causal, because position t sees only t and t-1.
struct ShiftMlpImpl : torch::nn::Module {
  explicit ShiftMlpImpl(int hidden)
      : norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})))),
        up(register_module("up", torch::nn::Linear(2 * hidden, 4 * hidden))),
        down(register_module("down", torch::nn::Linear(4 * hidden, hidden))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = norm->forward(x);
    auto prev = torch::nn::functional::pad(h, torch::nn::functional::PadFuncOptions({0, 0, 1, 0}))
                    .slice(1, 0, h.size(1));
    return x + down->forward(torch::gelu(up->forward(torch::cat({h, prev}, -1))));
  }
  torch::nn::LayerNorm norm;
  torch::nn::Linear up, down;
};
TORCH_MODULE(ShiftMlp);

// [B, T, H] -> logits [B, T, V].
struct ReadoutImpl : torch::nn::Module {
  ReadoutImpl(int hidden, int vocab) : out(register_module("out", torch::nn::Linear(hidden, vocab))) {}
  torch::Tensor forward(const torch::Tensor& x) { return out->forward(x); }
  torch::nn::Linear out;
};
TORCH_MODULE(Readout);

// The model definition geopipe needs: how to build layer i, what shape it
// returns, and the loss. model.layers in the job is the number of blocks.
geopipe::ModelDef makeShiftMlp(const geopipe::ModelSpec& spec) {
  geopipe::ModelDef m;
  m.name = "shift-mlp";
  m.num_layers = spec.layers + 2;
  m.prologue_layers = 1;  // the embedding rides with the first stage
  m.epilogue_layers = 1;  // the readout with the last
  m.make_layer = [spec](int i) -> torch::nn::AnyModule {
    if (i == 0) return torch::nn::AnyModule(Tokens(spec.vocab, spec.hidden));
    if (i == spec.layers + 1) return torch::nn::AnyModule(Readout(spec.hidden, spec.vocab));
    return torch::nn::AnyModule(ShiftMlp(spec.hidden));
  };
  m.output_shape = [spec](int i, int64_t batch, int64_t seq) -> std::vector<int64_t> {
    if (i == spec.layers + 1) return {batch, seq, spec.vocab};
    return {batch, seq, spec.hidden};
  };
  m.loss = [](const torch::Tensor& logits, const torch::Tensor& targets) {
    return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                                targets.reshape({-1}));
  };
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  std::string job_path = "examples/custom_model/job.yaml";
  int steps = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else {
      job_path = argv[i];
    }
  }
  try {
    // 1. Register the model so that `model: {kind: custom, name: shift-mlp}` finds it.
    geopipe::registerModel("shift-mlp", makeShiftMlp);
    // 2. Read the job (or build a geopipe::JobSpec in code).
    geopipe::JobSpec job = geopipe::config::loadJobFile(job_path);
    if (steps > 0) job.training.steps = steps;
    // 3. Train: geopipe cuts the model into the job's stages and replicas.
    geopipe::TrainerOptions options;
    options.on_step = [](const geopipe::StepMetrics& m) {
      std::printf("step %3lld  loss %.4f  %.0f tokens/s\n", static_cast<long long>(m.step + 1),
                  m.loss, m.tokens_per_second);
    };
    geopipe::TrainResult result =
        geopipe::Trainer(geopipe::makeModel(job.model), job, options).train();
    std::printf("trained %zu steps: loss %.4f -> %.4f\n", result.losses.size(),
                result.losses.front(), result.losses.back());
    return result.losses.back() < result.losses.front() ? 0 : 1;
  } catch (const geopipe::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
