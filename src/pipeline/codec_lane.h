// A thread of its own that runs jobs one at a time, in the order they were
// posted: the stage executor's codec lane (executor.h, Outgoing::make), where
// boundary payloads are encoded and sent while the compute thread goes on.
// Torch-free.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace geopipe::pipeline {

class CodecLane {
 public:
  CodecLane();
  // Runs the jobs still queued, then joins the thread.
  ~CodecLane();
  CodecLane(const CodecLane&) = delete;
  CodecLane& operator=(const CodecLane&) = delete;

  // Queues `job` behind every job posted before it. The future is ready when
  // the job has run, and holds what it threw.
  std::future<void> post(std::function<void()> job);

 private:
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace geopipe::pipeline
