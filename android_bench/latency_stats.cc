#include "android_bench/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace edgepipe {
namespace bench {

double PercentileOfSorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) {
    throw std::invalid_argument("percentile of an empty latency list");
  }
  if (!(q >= 0.0 && q <= 100.0)) {  // Also rejects NaN.
    throw std::invalid_argument("percentile must be within [0, 100], got " +
                                std::to_string(q));
  }
  const double rank = static_cast<double>(sorted.size() - 1) * q / 100.0;
  const std::size_t lower = static_cast<std::size_t>(std::floor(rank));
  const std::size_t upper = std::min(lower + 1, sorted.size() - 1);
  const double fraction = rank - static_cast<double>(lower);
  return sorted[lower] + (sorted[upper] - sorted[lower]) * fraction;
}

LatencyStats SummarizeLatencies(const std::vector<double>& latencies_us) {
  if (latencies_us.empty()) {
    throw std::invalid_argument(
        "no latencies to summarize: the benchmark recorded zero runs");
  }
  for (std::size_t i = 0; i < latencies_us.size(); ++i) {
    const double value = latencies_us[i];
    if (!std::isfinite(value) || value < 0.0) {
      throw std::invalid_argument("latency #" + std::to_string(i) + " is " +
                                  std::to_string(value) +
                                  " us; expected a finite value >= 0");
    }
  }

  std::vector<double> sorted(latencies_us);
  std::sort(sorted.begin(), sorted.end());
  const std::size_t n = sorted.size();

  double sum = 0.0;
  for (double value : sorted) sum += value;
  const double mean = sum / static_cast<double>(n);

  // Two passes (mean first, then squared deviations) avoid the cancellation of
  // the sum-of-squares shortcut when latencies are large and close together.
  double squared_deviations = 0.0;
  for (double value : sorted) {
    squared_deviations += (value - mean) * (value - mean);
  }

  LatencyStats stats;
  stats.count = n;
  stats.mean_us = mean;
  stats.std_us =
      n > 1 ? std::sqrt(squared_deviations / static_cast<double>(n - 1)) : 0.0;
  stats.min_us = sorted.front();
  stats.max_us = sorted.back();
  stats.p5_us = PercentileOfSorted(sorted, 5.0);
  stats.p50_us = PercentileOfSorted(sorted, 50.0);
  stats.p90_us = PercentileOfSorted(sorted, 90.0);
  stats.p95_us = PercentileOfSorted(sorted, 95.0);
  stats.p99_us = PercentileOfSorted(sorted, 99.0);
  return stats;
}

}  // namespace bench
}  // namespace edgepipe
