// Building blocks of the Hugging Face model families.
#include "src/model/layers.h"

#include <cmath>
#include <limits>

namespace geopipe::model {

LmHeadImpl::LmHeadImpl(int64_t hidden, int64_t vocab) {
  weight = register_parameter("weight", torch::empty({vocab, hidden}));
  torch::nn::init::normal_(weight, 0.0, 0.02);
}

void LmHeadImpl::tieTo(const torch::Tensor& w) {
  TORCH_CHECK(w.sizes() == weight.sizes(), "tied weight of shape ", w.sizes(),
              " does not fit the LM head's ", weight.sizes());
  parameters_["weight"] = w;
  weight = w;
}

Conv1DImpl::Conv1DImpl(int64_t in, int64_t out) {
  weight = register_parameter("weight", torch::empty({in, out}));
  bias = register_parameter("bias", torch::zeros({out}));
  torch::nn::init::normal_(weight, 0.0, 0.02);
}

torch::Tensor Conv1DImpl::forward(const torch::Tensor& x) {
  auto sizes = x.sizes().vec();
  sizes.back() = weight.size(1);
  return torch::addmm(bias, x.reshape({-1, x.size(-1)}), weight).view(sizes);
}

RmsNormImpl::RmsNormImpl(int64_t hidden, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({hidden}));
}

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  auto h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

torch::Tensor causalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, int64_t offset, torch::nn::Dropout& dropout) {
  const int64_t t = q.size(2), total = k.size(2), hd = q.size(3);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
  if (t > 1 || offset + t != total) {
    // Query i (position offset + i) sees keys 0 .. offset + i.
    auto mask = torch::ones({t, total}, q.options().dtype(torch::kBool)).triu(offset + 1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());
  return torch::matmul(dropout->forward(probs), v);
}

void appendKv(LayerKv& kv, const torch::Tensor& k, const torch::Tensor& v) {
  if (!kv.k.defined()) {
    kv.k = k;
    kv.v = v;
  } else {
    kv.k = torch::cat({kv.k, k}, 2);
    kv.v = torch::cat({kv.v, v}, 2);
  }
}

LmHeadImpl* lmHeadOf(torch::nn::Module& layer) {
  for (const auto& child : layer.named_children()) {
    if (child.key() == "lm_head") return dynamic_cast<LmHeadImpl*>(child.value().get());
  }
  return nullptr;
}

}  // namespace geopipe::model
