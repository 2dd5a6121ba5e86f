// One tasklet's compute in LibTorch: a slice of the model's layers, run
// forward and backward micro-batch by micro-batch for the stage executor,
// with activations and gradients crossing the boundaries through the codecs.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <map>
#include <memory>
#include <vector>

#include "geopipe/model.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/pipeline/executor.h"
#include "src/runtime/boundary_codec.h"
#include "src/runtime/staging_pool.h"

namespace geopipe::runtime {

struct TorchStageOptions {
  int stage = 0;
  int num_stages = 1;
  int replica = 0;
  int first_layer = 0;   // model layers [first_layer, last_layer)
  int last_layer = 0;
  int micro_batch = 1;   // samples per micro-batch
  int num_micro_batches = 1;
  uint64_t seed = 0;     // model init seed
  torch::Device device = torch::kCPU;  // where the layers compute
  std::string dtype = "fp32";          // model.dtype: fp32 | bf16 | fp16 (autocast)
  // The timeline (logging.trace_dir), or null: the boundary codecs' encode
  // and decode, nested in the executor's forward and backward spans. Not
  // owned.
  common::TraceWriter* trace = nullptr;
};

// The device of tasklet `rank` for job.training.device ("cpu", "cuda" =
// cuda:(rank % visible GPUs), "cuda:N"). InfeasibleError when CUDA is asked
// for and LibTorch sees no CUDA device (a CPU-only LibTorch, or no GPU).
torch::Device taskletDevice(const std::string& device, int rank);

// The StageCompute of one tasklet. Owns its layers and its boundary codecs;
// the executor's thread is the only caller. Keeps each micro-batch's input
// and output between forward and backward (1F1B bounds how many).
//
// Outgoing activations and gradients are encoded on the executor's codec
// lane (pipeline::Outgoing::make), not on the compute thread: the thread
// copies the tensor to the host and goes on with the next micro-batch. From
// a CUDA device the copy goes into a pinned buffer of a StagingPool, posted
// on the compute stream (non-blocking), and the lane waits for an event
// recorded after it; only then does it encode. Each encoder is used by the
// lane alone, in the order the micro-batches were handed over, so its bytes
// and its AC-SGD buffers are those of encoding on the compute thread.
class TorchStage : public pipeline::StageCompute {
 public:
  TorchStage(const ModelDef& model, TorchStageOptions options, const data::TokenDataset& dataset,
             const data::Sampler& sampler, const CompressionSpec& compression);

  pipeline::Outgoing forward(int64_t step, int m, transport::Bytes input) override;
  pipeline::Outgoing backward(int64_t step, int m, transport::Bytes grad) override;

  // Forward of validation micro-batch `m` (samples `ids` of `val`) without
  // autograd, through plain codecs of their own (never AC-SGD buffers: the
  // validation ids would collide with training's). The last stage adds the
  // summed cross-entropy and its token count to the validation totals and
  // returns nothing; the others return the payload for the next stage.
  transport::Bytes evalForward(int64_t step, int m, const std::vector<int64_t>& ids,
                               const data::TokenDataset& val, transport::Bytes input);
  // The validation totals since the last call (sum of cross-entropy, tokens).
  std::pair<double, uint64_t> takeValSums();

  torch::nn::Sequential& module() { return module_; }
  // Binds the stage's tied weights again (after Module::load).
  void bindTiedWeights() {
    geopipe::bindTiedWeights(model_, module_, options_.first_layer, options_.last_layer);
  }
  // fp16: the last stage multiplies the loss by this before backward.
  void setLossScale(double scale) { loss_scale_ = scale; }
  // fp16: whether a backward gradient this stage sent since the last call
  // overflowed (it was sent as zeros).
  bool takeFoundInf() { return found_inf_.exchange(false); }

  // Trainable parameters, each once (a tied weight bound inside this stage
  // is one tensor).
  std::vector<torch::Tensor> parameters() { return uniqueParameters(*module_); }
  // Sum over this step's micro-batches of the micro-batch mean loss (last
  // stage only); reset by takeLossSum().
  double takeLossSum();
  // Encoders of this stage, for byte accounting (may be null).
  const BoundaryEncoder* activationEncoder() const { return send_act_.get(); }
  const BoundaryEncoder* gradientEncoder() const { return send_grad_.get(); }
  // Mutable access for checkpoints (AC-SGD buffer stores).
  BoundaryEncoder* activationEncoderMut() { return send_act_.get(); }
  BoundaryDecoder* activationDecoderMut() { return recv_act_.get(); }

 private:
  struct Stash {
    torch::Tensor input;   // received activation (requires grad) or token ids
    torch::Tensor output;  // this stage's output, or the scaled loss
  };
  std::vector<int64_t> sampleIds(int64_t step, int m) const;
  // `t` on the host in fp32 for an encoder on the codec lane; `wait()`
  // returns once its bytes are there (at once on the CPU).
  struct HostCopy {
    torch::Tensor host;
    std::shared_ptr<c10::Event> ready;  // CUDA: recorded after the copy
    // CUDA: gives host back to staging_ when the last holder lets go (the
    // encode done, failed, or its payload dropped with a failed step).
    std::shared_ptr<void> lease;
    void wait() const;
  };
  HostCopy toHost(const torch::Tensor& t);

  const ModelDef& model_;
  TorchStageOptions options_;
  const data::TokenDataset& dataset_;
  const data::Sampler& sampler_;
  torch::nn::Sequential module_;
  std::unique_ptr<BoundaryEncoder> send_act_, send_grad_;
  std::unique_ptr<BoundaryDecoder> recv_act_, recv_grad_;
  std::unique_ptr<BoundaryEncoder> eval_send_;
  std::unique_ptr<BoundaryDecoder> eval_recv_;
  double loss_scale_ = 1.0;
  std::atomic<bool> found_inf_{false};  // set on the codec lane
  double val_sum_ = 0;
  uint64_t val_tokens_ = 0;
  std::map<int, Stash> stash_;
  double loss_sum_ = 0;
  std::vector<float> scratch_;
  StagingPool staging_;
};

// Token ids and targets of `ids` as int64 [n, seq_len] tensors (padded
// positions: target data::kIgnoreTarget).
std::pair<torch::Tensor, torch::Tensor> tokenBatch(const data::TokenDataset& dataset,
                                                   const std::vector<int64_t>& ids);

// What a micro-batch's loss (a mean over its real targets) is multiplied by
// before it is summed over the micro-batches of the step and averaged over
// the replicas, so that the step's loss and gradient are those of the mean
// over every real target of the global batch:
//   (real targets of `ids`) x micro-batches per replica x replicas
//   / (real targets of the step's global batch).
// Exactly 1 when nothing is padded (data.pack: true), and then not applied.
double lossWeight(const data::TokenDataset& dataset, const data::Sampler& sampler, int64_t step,
                  const std::vector<int64_t>& ids);

// Padded targets are data::kIgnoreTarget, which the model's loss must leave
// out of its mean (PyTorch's cross_entropy does by default; every built-in
// model's loss is one). Checked on a made-up output of the last layer:
// ConfigError naming the model when its loss counts or refuses them.
void checkLossIgnoresPadding(const ModelDef& model);

}  // namespace geopipe::runtime
