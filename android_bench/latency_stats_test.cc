// Checks latency_stats against values worked out by hand (and matching
// numpy.mean / numpy.std(ddof=1) / numpy.percentile). Plain C++: a failed check
// prints what differed and the test exits non-zero, also in -c opt builds where
// assert() would be compiled out.

#include "android_bench/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using edgepipe::bench::LatencyStats;
using edgepipe::bench::PercentileOfSorted;
using edgepipe::bench::SummarizeLatencies;

int failures = 0;

void ExpectNear(const char* what, double actual, double expected, int line) {
  if (std::fabs(actual - expected) > 1e-9 * std::max(1.0, std::fabs(expected))) {
    std::fprintf(stderr, "line %d: %s = %.12g, expected %.12g\n", line, what,
                 actual, expected);
    ++failures;
  }
}

#define EXPECT_NEAR(actual, expected) \
  ExpectNear(#actual, (actual), (expected), __LINE__)

// Runs `fn` and expects std::invalid_argument whose message contains `needle`.
template <typename Fn>
void ExpectInvalidArgument(const char* what, Fn fn, const std::string& needle,
                           int line) {
  try {
    fn();
  } catch (const std::invalid_argument& error) {
    if (std::string(error.what()).find(needle) == std::string::npos) {
      std::fprintf(stderr, "line %d: %s: message '%s' lacks '%s'\n", line, what,
                   error.what(), needle.c_str());
      ++failures;
    }
    return;
  }
  std::fprintf(stderr, "line %d: %s did not throw std::invalid_argument\n", line,
               what);
  ++failures;
}

#define EXPECT_INVALID_ARGUMENT(expr, needle) \
  ExpectInvalidArgument(#expr, [&] { (void)(expr); }, (needle), __LINE__)

void TestSummaryOfUnsortedRuns() {
  // Sorted: 100 105 110 120 130 180 400 (n = 7, sum = 1145,
  // sum of squares = 256825).
  const LatencyStats s =
      SummarizeLatencies({120, 100, 180, 110, 400, 130, 105});
  if (s.count != 7) {
    std::fprintf(stderr, "count = %zu, expected 7\n", s.count);
    ++failures;
  }
  EXPECT_NEAR(s.mean_us, 1145.0 / 7.0);
  // Sample variance = (sum of squares - sum^2 / n) / (n - 1).
  EXPECT_NEAR(s.std_us, std::sqrt((256825.0 - 1145.0 * 1145.0 / 7.0) / 6.0));
  EXPECT_NEAR(s.std_us, 107.65354482916814);  // numpy.std(x, ddof=1)
  EXPECT_NEAR(s.min_us, 100.0);
  EXPECT_NEAR(s.max_us, 400.0);
  // rank = 6 * q / 100, interpolated between neighbours of the sorted list.
  EXPECT_NEAR(s.p5_us, 100.0 + 0.3 * 5.0);     // rank 0.3  -> 101.5
  EXPECT_NEAR(s.p50_us, 120.0);                // rank 3    -> exact element
  EXPECT_NEAR(s.p90_us, 180.0 + 0.4 * 220.0);  // rank 5.4  -> 268
  EXPECT_NEAR(s.p95_us, 180.0 + 0.7 * 220.0);  // rank 5.7  -> 334
  EXPECT_NEAR(s.p99_us, 180.0 + 0.94 * 220.0); // rank 5.94 -> 386.8
}

void TestPercentileMatchesNumpyDefault() {
  // numpy.percentile([1, 2, 3, 4], q) for q = 0, 10, 25, 50, 75, 100.
  const std::vector<double> sorted = {1, 2, 3, 4};
  EXPECT_NEAR(PercentileOfSorted(sorted, 0), 1.0);
  EXPECT_NEAR(PercentileOfSorted(sorted, 10), 1.3);
  EXPECT_NEAR(PercentileOfSorted(sorted, 25), 1.75);
  EXPECT_NEAR(PercentileOfSorted(sorted, 50), 2.5);
  EXPECT_NEAR(PercentileOfSorted(sorted, 75), 3.25);
  EXPECT_NEAR(PercentileOfSorted(sorted, 100), 4.0);
}

void TestSingleRun() {
  const LatencyStats s = SummarizeLatencies({42.0});
  EXPECT_NEAR(s.mean_us, 42.0);
  EXPECT_NEAR(s.std_us, 0.0);
  EXPECT_NEAR(s.min_us, 42.0);
  EXPECT_NEAR(s.p5_us, 42.0);
  EXPECT_NEAR(s.p99_us, 42.0);
}

void TestRejectsBadInput() {
  const std::vector<double> empty;
  EXPECT_INVALID_ARGUMENT(SummarizeLatencies(empty), "zero runs");
  EXPECT_INVALID_ARGUMENT(PercentileOfSorted(empty, 50), "empty");
  EXPECT_INVALID_ARGUMENT(PercentileOfSorted({1.0, 2.0}, 100.5), "[0, 100]");
  EXPECT_INVALID_ARGUMENT(PercentileOfSorted({1.0, 2.0}, -1), "[0, 100]");
  EXPECT_INVALID_ARGUMENT(SummarizeLatencies({10.0, -1.0}), "latency #1");
  EXPECT_INVALID_ARGUMENT(
      SummarizeLatencies({std::numeric_limits<double>::quiet_NaN()}),
      "latency #0");
  EXPECT_INVALID_ARGUMENT(
      SummarizeLatencies({1.0, std::numeric_limits<double>::infinity()}),
      "latency #1");
}

}  // namespace

int main() {
  TestSummaryOfUnsortedRuns();
  TestPercentileMatchesNumpyDefault();
  TestSingleRun();
  TestRejectsBadInput();
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("latency_stats_test: all checks passed\n");
  return EXIT_SUCCESS;
}
