// Summary statistics of per-run latencies for the native benchmark runner.
//
// The runner times N invocations of a model and reports one LatencyStats per
// model and device; the same definitions are used on the host and on Android so
// the numbers are comparable.

#ifndef EDGEPIPE_ANDROID_BENCH_LATENCY_STATS_H_
#define EDGEPIPE_ANDROID_BENCH_LATENCY_STATS_H_

#include <cstddef>
#include <vector>

namespace edgepipe {
namespace bench {

// All values in microseconds, except `count`.
struct LatencyStats {
  std::size_t count = 0;
  double mean_us = 0.0;
  // Sample standard deviation (divides by count - 1); 0 for a single run, where
  // the spread is unknown rather than undefined (keeps the JSON report numeric).
  double std_us = 0.0;
  double min_us = 0.0;
  double max_us = 0.0;
  double p5_us = 0.0;
  double p50_us = 0.0;
  double p90_us = 0.0;
  double p95_us = 0.0;
  double p99_us = 0.0;
};

// Percentile `q` (0..100) of `sorted` (ascending), by linear interpolation
// between the closest ranks, the same as numpy.percentile's default ("linear"):
// rank = (n - 1) * q / 100, and the result is interpolated between
// sorted[floor(rank)] and sorted[ceil(rank)].
// Throws std::invalid_argument if `sorted` is empty or q is outside [0, 100].
double PercentileOfSorted(const std::vector<double>& sorted, double q);

// Summarizes per-run latencies (any order). Throws std::invalid_argument, with a
// message saying why, if `latencies_us` is empty or holds a negative or
// non-finite value: a benchmark that produced no or broken timings must fail
// loudly instead of reporting zeros. Exceptions rather than a status type
// because the runner has no way to continue past either case.
LatencyStats SummarizeLatencies(const std::vector<double>& latencies_us);

}  // namespace bench
}  // namespace edgepipe

#endif  // EDGEPIPE_ANDROID_BENCH_LATENCY_STATS_H_
