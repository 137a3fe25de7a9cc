#include "tflite/ops/worker_team.h"

namespace edgepipe {
namespace ops {
namespace {

// Checks of the generation a worker makes before it sleeps: about 100 µs of
// spinning, longer than a step of the layers worth splitting.
constexpr int kSpinChecks = 20000;

inline void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

WorkerTeam::WorkerTeam(int size) : size_(size < 1 ? 1 : size) {
  for (int part = 1; part < size_; ++part) workers_.emplace_back([this, part] { Work(part); });
}

WorkerTeam::~WorkerTeam() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true, std::memory_order_release);
  }
  wake_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void WorkerTeam::RunTask(const void* task, CallPart call) {
  if (size_ == 1) {
    call(task, 0);
    return;
  }
  task_ = task;
  call_ = call;
  finished_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);  // a worker going to sleep sees the move
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  call(task, 0);
  while (finished_.load(std::memory_order_acquire) < size_ - 1) Pause();
}

void WorkerTeam::Work(int part) {
  uint64_t seen = 0;
  while (true) {
    int checks = 0;
    while (generation_.load(std::memory_order_acquire) == seen &&
           !stop_.load(std::memory_order_acquire)) {
      if (++checks < kSpinChecks) {
        Pause();
        continue;
      }
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] {
        return generation_.load(std::memory_order_acquire) != seen ||
               stop_.load(std::memory_order_acquire);
      });
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = generation_.load(std::memory_order_acquire);
    call_(task_, part);
    finished_.fetch_add(1, std::memory_order_acq_rel);
  }
}

}  // namespace ops
}  // namespace edgepipe
