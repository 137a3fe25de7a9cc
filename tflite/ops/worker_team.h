// Threads that share the phases of one computation: a GRU step is a phase of
// tens of microseconds, less than a sleeping thread takes to wake, so between
// phases of a call the workers spin; after a short idle spell they sleep.

#ifndef EDGEPIPE_TFLITE_OPS_WORKER_TEAM_H_
#define EDGEPIPE_TFLITE_OPS_WORKER_TEAM_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace edgepipe {
namespace ops {

class WorkerTeam {
 public:
  // `size` threads in all: the caller and size - 1 workers.
  explicit WorkerTeam(int size);
  ~WorkerTeam();
  WorkerTeam(const WorkerTeam&) = delete;
  WorkerTeam& operator=(const WorkerTeam&) = delete;

  int size() const { return size_; }

  // Runs part(0) .. part(size - 1), part 0 on the calling thread, and returns
  // when all have finished. One caller at a time. `part` is passed by address,
  // not wrapped in a std::function: a call per GRU step allocates nothing.
  template <typename Part>
  void Run(const Part& part) {
    RunTask(&part, [](const void* task, int index) { (*static_cast<const Part*>(task))(index); });
  }

 private:
  using CallPart = void (*)(const void* task, int part);

  void RunTask(const void* task, CallPart call);
  void Work(int part);

  const int size_;
  std::vector<std::thread> workers_;
  const void* task_ = nullptr;  // both set before generation_ moves
  CallPart call_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> finished_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

}  // namespace ops
}  // namespace edgepipe

#endif  // EDGEPIPE_TFLITE_OPS_WORKER_TEAM_H_
