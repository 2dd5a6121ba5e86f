// Error-feedback state across replica counts: residuals of several saved
// replicas merged into one (GradientSync::loadMergedState), and a single
// replica paying what the residuals still owe the average.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

#include "geopipe/error.h"
#include "src/runtime/gradient_sync.h"
#include "src/transport/inproc/inproc_transport.h"

using namespace geopipe;
using geopipe::runtime::GradientSync;

namespace {

GradientCompressionSpec topk() {
  GradientCompressionSpec s;
  s.method = "topk";
  s.ratio = 0.1;
  return s;
}

torch::Tensor paramWithGrad(const torch::Tensor& g) {
  torch::Tensor p = torch::zeros(g.sizes(), torch::requires_grad());
  p.mutable_grad() = g.clone();
  return p;
}

// Two replicas average top-k compressed gradients once; each saves its
// state. What the residuals owe is the exact mean minus the compressed one.
// Merged into one replica (scale 1/2, as 2 -> 1 replicas does), the first
// step with a zero gradient receives exactly that; the next, nothing.
TEST(GradientSyncState, MergedResidualsArePaidOnceByASingleReplica) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / "geopipe-gradsync-merge";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  torch::manual_seed(3);
  const std::vector<torch::Tensor> grads = {torch::randn({20, 10}), torch::randn({20, 10})};
  auto hub = std::make_shared<transport::InprocHub>(2);
  std::vector<torch::Tensor> averaged(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      transport::InprocTransport t(hub, r);
      GradientSync sync(t, {0, 1}, topk(), 7, std::chrono::seconds(10));
      torch::Tensor p = paramWithGrad(grads[static_cast<size_t>(r)]);
      sync.average({p}, 0);
      averaged[static_cast<size_t>(r)] = p.grad().clone();
      sync.saveState((dir / ("r" + std::to_string(r))).string());
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(torch::equal(averaged[0], averaged[1]));
  const torch::Tensor owed = (grads[0] + grads[1]) / 2 - averaged[0];
  ASSERT_GT(owed.abs().max().item<float>(), 0.1f) << "top-k 10% leaves most of the gradient owed";

  auto one = std::make_shared<transport::InprocHub>(1);
  transport::InprocTransport t(one, 0);
  GradientSync sync(t, {0}, topk(), 7, std::chrono::seconds(10));
  sync.loadMergedState((dir / "r0").string(), {(dir / "r0").string(), (dir / "r1").string()},
                       0.5f);
  torch::Tensor p = paramWithGrad(torch::zeros({20, 10}));
  sync.average({p}, 1);
  EXPECT_LT((p.grad() - owed).abs().max().item<float>(), 1e-5f);
  p.mutable_grad().zero_();
  sync.average({p}, 2);
  EXPECT_EQ(p.grad().abs().max().item<float>(), 0.0f) << "paid once";

  // A state of another method is refused, naming the file.
  GradientCompressionSpec q;
  q.method = "quantize";
  GradientSync other(t, {0}, q, 7, std::chrono::seconds(10));
  try {
    other.loadMergedState((dir / "r0").string(), {(dir / "r1").string()}, 0.5f);
    FAIL();
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("another gradient compression method"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
