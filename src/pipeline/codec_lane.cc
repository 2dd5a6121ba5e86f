// The codec lane: one thread, jobs in post order.
#include "src/pipeline/codec_lane.h"

#include <utility>

namespace geopipe::pipeline {

CodecLane::CodecLane() : thread_([this] { loop(); }) {}

CodecLane::~CodecLane() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::future<void> CodecLane::post(std::function<void()> job) {
  std::packaged_task<void()> task(std::move(job));
  std::future<void> done = task.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return done;
}

void CodecLane::loop() {
  while (true) {
    std::packaged_task<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to run
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();  // stores what the job threw in its future
  }
}

}  // namespace geopipe::pipeline
