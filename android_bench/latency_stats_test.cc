// Checks latency_stats against values worked out by hand (and matching
// numpy.mean / numpy.std(ddof=1) / numpy.percentile). GoogleTest: a failed
// check prints what differed and the test exits non-zero, also in -c opt
// builds where assert() would be compiled out.

#include "android_bench/latency_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using edgepipe::bench::LatencyStats;
using edgepipe::bench::PercentileOfSorted;
using edgepipe::bench::SummarizeLatencies;

// Equal to 1e-9 relative (absolute below 1): the values are exact sums and
// interpolations, so only rounding may differ.
#define EXPECT_CLOSE(actual, expected)                 \
  EXPECT_NEAR((actual), (expected),                    \
              1e-9 * std::max(1.0, std::fabs(static_cast<double>(expected))))

// The message of the std::invalid_argument `fn` throws, or why there was none.
template <typename Fn>
std::string InvalidArgumentMessage(Fn fn) {
  try {
    fn();
  } catch (const std::invalid_argument& error) {
    return error.what();
  } catch (...) {
    return "<threw something other than std::invalid_argument>";
  }
  return "<did not throw>";
}

#define EXPECT_INVALID_ARGUMENT(expr, needle)                     \
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, (needle),           \
                      InvalidArgumentMessage([&] { (void)(expr); })) \
      << #expr

TEST(LatencyStatsTest, SummaryOfUnsortedRuns) {
  // Sorted: 100 105 110 120 130 180 400 (n = 7, sum = 1145,
  // sum of squares = 256825).
  const LatencyStats s = SummarizeLatencies({120, 100, 180, 110, 400, 130, 105});
  EXPECT_EQ(s.count, 7u);
  EXPECT_CLOSE(s.mean_us, 1145.0 / 7.0);
  // Sample variance = (sum of squares - sum^2 / n) / (n - 1).
  EXPECT_CLOSE(s.std_us, std::sqrt((256825.0 - 1145.0 * 1145.0 / 7.0) / 6.0));
  EXPECT_CLOSE(s.std_us, 107.65354482916814);  // numpy.std(x, ddof=1)
  EXPECT_CLOSE(s.min_us, 100.0);
  EXPECT_CLOSE(s.max_us, 400.0);
  // rank = 6 * q / 100, interpolated between neighbours of the sorted list.
  EXPECT_CLOSE(s.p5_us, 100.0 + 0.3 * 5.0);     // rank 0.3  -> 101.5
  EXPECT_CLOSE(s.p50_us, 120.0);                // rank 3    -> exact element
  EXPECT_CLOSE(s.p90_us, 180.0 + 0.4 * 220.0);  // rank 5.4  -> 268
  EXPECT_CLOSE(s.p95_us, 180.0 + 0.7 * 220.0);  // rank 5.7  -> 334
  EXPECT_CLOSE(s.p99_us, 180.0 + 0.94 * 220.0); // rank 5.94 -> 386.8
}

TEST(LatencyStatsTest, PercentileMatchesNumpyDefault) {
  // numpy.percentile([1, 2, 3, 4], q) for q = 0, 10, 25, 50, 75, 100.
  const std::vector<double> sorted = {1, 2, 3, 4};
  EXPECT_CLOSE(PercentileOfSorted(sorted, 0), 1.0);
  EXPECT_CLOSE(PercentileOfSorted(sorted, 10), 1.3);
  EXPECT_CLOSE(PercentileOfSorted(sorted, 25), 1.75);
  EXPECT_CLOSE(PercentileOfSorted(sorted, 50), 2.5);
  EXPECT_CLOSE(PercentileOfSorted(sorted, 75), 3.25);
  EXPECT_CLOSE(PercentileOfSorted(sorted, 100), 4.0);
}

TEST(LatencyStatsTest, SingleRun) {
  const LatencyStats s = SummarizeLatencies({42.0});
  EXPECT_EQ(s.count, 1u);
  EXPECT_CLOSE(s.mean_us, 42.0);
  EXPECT_CLOSE(s.std_us, 0.0);
  EXPECT_CLOSE(s.min_us, 42.0);
  EXPECT_CLOSE(s.p5_us, 42.0);
  EXPECT_CLOSE(s.p99_us, 42.0);
}

TEST(LatencyStatsTest, RejectsBadInput) {
  const std::vector<double> empty;
  EXPECT_INVALID_ARGUMENT(SummarizeLatencies(empty), "zero runs");
  EXPECT_INVALID_ARGUMENT(PercentileOfSorted(empty, 50), "empty");
  EXPECT_INVALID_ARGUMENT(PercentileOfSorted({1.0, 2.0}, 100.5), "[0, 100]");
  EXPECT_INVALID_ARGUMENT(PercentileOfSorted({1.0, 2.0}, -1), "[0, 100]");
  EXPECT_INVALID_ARGUMENT(SummarizeLatencies({10.0, -1.0}), "latency #1");
  EXPECT_INVALID_ARGUMENT(SummarizeLatencies({std::numeric_limits<double>::quiet_NaN()}),
                          "latency #0");
  EXPECT_INVALID_ARGUMENT(
      SummarizeLatencies({1.0, std::numeric_limits<double>::infinity()}), "latency #1");
}

}  // namespace
