// litert_bench: measures one .tflite model with edgepipe's LiteRT runtime, the
// same program on the host and on Android devices. Flags follow TFLite's
// benchmark_model; the result is one JSON document (schema: RUNNER.md) on
// stdout or in --json_output, and a human summary on stderr.

#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifdef __ANDROID__
#include <sys/system_properties.h>
#endif

#include "android_bench/latency_stats.h"
#include "tflite/runtime/litert_runtime.h"

namespace {

using edgepipe::bench::LatencyStats;
using edgepipe::runtime::Runtime;
using edgepipe::runtime::RuntimeOptions;
using Clock = std::chrono::steady_clock;

constexpr int kSchemaVersion = 1;

struct Flags {
  std::string graph;
  int num_threads = 1;
  int warmup_runs = 1;
  double warmup_min_secs = 0.5;
  int num_runs = 50;
  double min_secs = 1.0;
  double max_secs = 150.0;
  double run_delay = -1.0;
  std::string accelerator = "cpu";
  std::string input_layer_value_files;
  std::string input_layer;
  std::string input_layer_shape;
  uint64_t max_tensor_bytes = edgepipe::runtime::kDefaultMaxTensorBytes;
  bool report_peak_memory_footprint = false;
  std::string json_output;
  std::string output_filepath;
};

const char kUsage[] =
    "usage: litert_bench --graph=MODEL.tflite [--num_threads=1] [--warmup_runs=1]\n"
    "  [--warmup_min_secs=0.5] [--num_runs=50] [--min_secs=1] [--max_secs=150]\n"
    "  [--run_delay=-1] [--accelerator=cpu|gpu] [--input_layer_value_files=NAME:FILE]\n"
    "  [--input_layer=A,B --input_layer_shape=1,224,224,3:1,20]\n"
    "  [--max_tensor_bytes=N] [--report_peak_memory_footprint=false] [--json_output=PATH]\n"
    "  [--output_filepath=PATH]\n";

bool ParseInt(const std::string& text, int low, int high, int* out) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || value < low || value > high) return false;
  *out = static_cast<int>(value);
  return true;
}

bool ParseSeconds(const std::string& text, double low, double* out) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(value) || value < low || value > 86400) {
    return false;
  }
  *out = value;
  return true;
}

bool ParseBytes(const std::string& text, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || text[0] == '-' || *end != '\0' || errno != 0 || value == 0) return false;
  *out = value;
  return true;
}

bool ParseBool(const std::string& text, bool* out) {
  if (text == "true" || text == "1") *out = true;
  else if (text == "false" || text == "0") *out = false;
  else return false;
  return true;
}

// Returns an empty string or what is wrong with the command line.
std::string ParseFlags(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      return "expected --flag=value, got '" + arg + "'";
    }
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    bool ok = true;
    if (name == "graph") flags->graph = value;
    else if (name == "num_threads") ok = ParseInt(value, 1, 256, &flags->num_threads);
    else if (name == "warmup_runs") ok = ParseInt(value, 0, 1000000, &flags->warmup_runs);
    else if (name == "warmup_min_secs") ok = ParseSeconds(value, 0, &flags->warmup_min_secs);
    else if (name == "num_runs") ok = ParseInt(value, 1, 10000000, &flags->num_runs);
    else if (name == "min_secs") ok = ParseSeconds(value, 0, &flags->min_secs);
    else if (name == "max_secs") ok = ParseSeconds(value, 0, &flags->max_secs);
    else if (name == "run_delay") ok = ParseSeconds(value, -1, &flags->run_delay);
    else if (name == "accelerator") ok = value == "cpu" || value == "gpu", flags->accelerator = value;
    else if (name == "input_layer_value_files") flags->input_layer_value_files = value;
    else if (name == "input_layer") flags->input_layer = value;
    else if (name == "input_layer_shape") flags->input_layer_shape = value;
    else if (name == "max_tensor_bytes") ok = ParseBytes(value, &flags->max_tensor_bytes);
    else if (name == "report_peak_memory_footprint") ok = ParseBool(value, &flags->report_peak_memory_footprint);
    else if (name == "json_output") ok = !value.empty(), flags->json_output = value;
    else if (name == "output_filepath") ok = !value.empty(), flags->output_filepath = value;
    else return "unknown flag --" + name;
    if (!ok) return "invalid value for --" + name + ": '" + value + "'";
  }
  if (flags->graph.empty()) return "--graph is required";
  if (flags->max_secs > 0 && flags->max_secs < flags->min_secs) {
    return "--max_secs must not be below --min_secs";
  }
  return "";
}

// Length of the UTF-8 sequence starting at text[i], 0 when it is not valid
// (overlong forms, surrogates and code points past U+10FFFF included).
std::size_t Utf8Length(const std::string& text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  std::size_t length = 0;
  uint32_t point = 0;
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) length = 2, point = lead & 0x1F;
  else if (lead >= 0xE0 && lead <= 0xEF) length = 3, point = lead & 0x0F;
  else if (lead >= 0xF0 && lead <= 0xF4) length = 4, point = lead & 0x07;
  else return 0;
  if (i + length > text.size()) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    point = (point << 6) | (byte(i + k) & 0x3F);
  }
  const uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
  if (point < smallest[length] || point > 0x10FFFF || (point >= 0xD800 && point <= 0xDFFF)) {
    return 0;
  }
  return length;
}

// A JSON string that is valid UTF-8 whatever bytes a path or a model's names
// hold: bytes that are not UTF-8 are written as the text \xNN.
std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const std::size_t length = Utf8Length(text, i);
    char escaped[8];
    if (length == 0) {
      std::snprintf(escaped, sizeof(escaped), "\\\\x%02x", c);
      out += escaped;
      ++i;
      continue;
    }
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
      out += escaped;
    } else {
      out.append(text, i, length);
    }
    i += length;
  }
  return out + "\"";
}

std::string JsonNumber(double value) {
  if (!std::isfinite(value)) return "null";
  char text[64];
  std::snprintf(text, sizeof(text), "%.3f", value);
  return text;
}

// A field of /proc/self/status in KiB (VmRSS, VmHWM), or -1 where unavailable.
long StatusKib(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(status, line)) {
    if (line.rfind(prefix, 0) == 0) return std::strtol(line.c_str() + prefix.size(), nullptr, 10);
  }
  return -1;
}

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  std::string hardware;
  while (std::getline(cpuinfo, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    key.erase(key.find_last_not_of(" \t") + 1);
    std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if (key == "model name" && !value.empty()) return value;
    if (key == "Hardware" && !value.empty()) hardware = value;  // older ARM kernels
  }
  return hardware;
}

std::string DeviceJson() {
  struct utsname names;
  std::string uname_text;
  if (uname(&names) == 0) {
    uname_text = std::string(names.sysname) + " " + names.release + " " + names.machine;
  }
  std::string json = "{\"uname\": " + JsonString(uname_text) +
                     ", \"cpu_model\": " + JsonString(CpuModel()) +
                     ", \"cpu_count\": " + std::to_string(std::thread::hardware_concurrency());
#ifdef __ANDROID__
  json += ", \"kind\": \"android\"";
  const char* properties[] = {"ro.product.model", "ro.product.manufacturer", "ro.board.platform",
                              "ro.build.version.release", "ro.build.version.sdk",
                              "ro.product.cpu.abi"};
  for (const char* property : properties) {
    char value[PROP_VALUE_MAX] = {0};
    __system_property_get(property, value);
    json += ", " + JsonString(property) + ": " + JsonString(value);
  }
#else
  json += ", \"kind\": \"host\"";
#endif
  return json + "}";
}

std::string StatsJson(const LatencyStats& s) {
  return "{\"count\": " + std::to_string(s.count) + ", \"mean_us\": " + JsonNumber(s.mean_us) +
         ", \"std_us\": " + JsonNumber(s.std_us) + ", \"min_us\": " + JsonNumber(s.min_us) +
         ", \"max_us\": " + JsonNumber(s.max_us) + ", \"p5_us\": " + JsonNumber(s.p5_us) +
         ", \"p50_us\": " + JsonNumber(s.p50_us) + ", \"p90_us\": " + JsonNumber(s.p90_us) +
         ", \"p95_us\": " + JsonNumber(s.p95_us) + ", \"p99_us\": " + JsonNumber(s.p99_us) + "}";
}

// Fills the single input from NAME:FILE (raw values of the input's type).
std::string LoadInputFile(const std::string& spec, Runtime* runtime) {
  const size_t colon = spec.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size()) {
    return "--input_layer_value_files must be NAME:FILE, got '" + spec + "'";
  }
  const std::string name = spec.substr(0, colon);
  const std::string path = spec.substr(colon + 1);
  size_t index = runtime->inputs().size();
  for (size_t i = 0; i < runtime->inputs().size(); ++i) {
    if (runtime->inputs()[i].name == name) index = i;
  }
  if (index == runtime->inputs().size()) {
    std::string names;
    for (const auto& info : runtime->inputs()) names += (names.empty() ? "" : ", ") + info.name;
    return "the model has no input named '" + name + "' (inputs: " + names + ")";
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) return "cannot open input value file " + path;
  const std::vector<char> bytes{std::istreambuf_iterator<char>(file),
                                std::istreambuf_iterator<char>()};
  const size_t want = runtime->inputs()[index].bytes;
  if (bytes.size() != want) {
    return "input value file " + path + " has " + std::to_string(bytes.size()) +
           " bytes; input '" + name + "' needs " + std::to_string(want);
  }
  std::memcpy(runtime->input_data(index), bytes.data(), want);
  return "";
}

// Deterministic pseudo-random bytes, small values for integer inputs (valid as
// token ids), [0, 1) for floats.
void FillExampleInputs(Runtime* runtime) {
  uint32_t state = 12345;
  for (size_t i = 0; i < runtime->inputs().size(); ++i) {
    const auto& info = runtime->inputs()[i];
    const size_t count = info.bytes / edgepipe::runtime::ElementSize(info.element_type);
    char* data = static_cast<char*>(runtime->input_data(i));
    for (size_t k = 0; k < count; ++k) {
      state = state * 1664525u + 1013904223u;
      if (info.element_type == kLiteRtElementTypeFloat32) {
        reinterpret_cast<float*>(data)[k] = static_cast<float>(state >> 8) / 16777216.0f;
      } else if (info.element_type == kLiteRtElementTypeInt32) {
        reinterpret_cast<int32_t*>(data)[k] = static_cast<int32_t>(state >> 31);
      } else if (info.element_type == kLiteRtElementTypeInt8 ||
                 info.element_type == kLiteRtElementTypeUInt8) {
        data[k] = static_cast<char>(state >> 25);
      }
    }
  }
}

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "litert_bench: error: %s\n", message.c_str());
  return code;
}

int Failed(int code, const std::string& text, std::string* message) {
  *message = text;
  return code;
}

bool WriteAtomically(const std::string& path, const std::string& text, std::string* error) {
  const std::string temp = path + ".tmp." + std::to_string(getpid());
  std::FILE* file = std::fopen(temp.c_str(), "wb");
  if (!file) {
    *error = "cannot write " + temp + ": " + std::strerror(errno);
    return false;
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  const bool closed = std::fclose(file) == 0;
  if (!written || !closed || std::rename(temp.c_str(), path.c_str()) != 0) {
    std::remove(temp.c_str());
    *error = "cannot write " + path;
    return false;
  }
  return true;
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One phase's lines as benchmark_model logs them: what it runs for, then
// count/first/curr/min/max/avg/std/p5/median/p95 of its runs in microseconds.
void PrintPhase(int runs, double min_secs, double max_secs, const std::vector<double>& runs_us) {
  std::fprintf(stderr,
               "INFO: Running benchmark for at least %d iterations and at least %g seconds but "
               "terminate if exceeding %g seconds.\n",
               runs, min_secs, max_secs);
  LatencyStats stats;
  try {
    stats = edgepipe::bench::SummarizeLatencies(runs_us);
  } catch (const std::invalid_argument&) {
    return;  // no runs (a zero-length warm-up): benchmark_model prints no count line either
  }
  std::fprintf(stderr,
               "INFO: count=%zu first=%.1f curr=%.1f min=%.1f max=%.1f avg=%.1f std=%.1f p5=%.1f "
               "median=%.1f p95=%.1f\n",
               stats.count, runs_us.front(), runs_us.back(), stats.min_us, stats.max_us,
               stats.mean_us, stats.std_us, stats.p5_us, stats.p50_us, stats.p95_us);
}

}  // namespace

// Runs the benchmark and returns the exit code, with the error in *message.
// LiteRT logs while the runtime is destroyed, so main prints the error only
// after this returns: the error stays the last line on stderr (RUNNER.md).
int Benchmark(const Flags& flags, std::string* message) {
  const long rss_before_kib = StatusKib("VmRSS");
  RuntimeOptions options;
  options.num_threads = flags.num_threads;
  options.accelerator = flags.accelerator == "gpu" ? edgepipe::runtime::Accelerator::kGpu
                                                   : edgepipe::runtime::Accelerator::kCpu;
  options.max_tensor_bytes = static_cast<std::size_t>(flags.max_tensor_bytes);
  std::string error = edgepipe::runtime::ParseInputShapes(flags.input_layer, flags.input_layer_shape,
                                                          &options.input_shapes);
  if (!error.empty()) return Failed(2, error, message);
  const Clock::time_point init_start = Clock::now();
  std::unique_ptr<Runtime> runtime = Runtime::Open(flags.graph, nullptr, 0, options, &error);
  if (!runtime) return Failed(1, flags.graph + ": " + error, message);
  // Progress for whoever watches stderr: a crash after this line happened
  // while running, not while compiling.
  std::fprintf(stderr, "litert_bench: compiled\n");
  const double init_us = SecondsSince(init_start) * 1e6;
  const long rss_init_kib = StatusKib("VmRSS");

  FillExampleInputs(runtime.get());
  if (!flags.input_layer_value_files.empty()) {
    error = LoadInputFile(flags.input_layer_value_files, runtime.get());
    if (!error.empty()) return Failed(2, error, message);
  }
  auto timed_run = [&](double* micros) {
    const Clock::time_point start = Clock::now();
    const bool ok = runtime->Run(&error);
    *micros = SecondsSince(start) * 1e6;
    if (ok && flags.run_delay > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(flags.run_delay));
    }
    return ok;
  };
  double first_us = 0;
  if (!timed_run(&first_us)) return Failed(1, flags.graph + ": " + error, message);

  // Warm-up and steady state as benchmark_model: at least N runs and at least
  // min seconds, stopping at max seconds (after at least one run).
  std::vector<double> warmup_us, runs_us;
  Clock::time_point phase_start = Clock::now();
  while (static_cast<int>(warmup_us.size()) < flags.warmup_runs ||
         SecondsSince(phase_start) < flags.warmup_min_secs) {
    if (flags.max_secs > 0 && SecondsSince(phase_start) >= flags.max_secs) break;
    double micros = 0;
    if (!timed_run(&micros)) return Failed(1, flags.graph + ": " + error, message);
    warmup_us.push_back(micros);
  }
  phase_start = Clock::now();
  while (runs_us.empty() || static_cast<int>(runs_us.size()) < flags.num_runs ||
         SecondsSince(phase_start) < flags.min_secs) {
    if (!runs_us.empty() && flags.max_secs > 0 && SecondsSince(phase_start) >= flags.max_secs) break;
    double micros = 0;
    if (!timed_run(&micros)) return Failed(1, flags.graph + ": " + error, message);
    runs_us.push_back(micros);
  }
  LatencyStats steady;
  try {
    steady = edgepipe::bench::SummarizeLatencies(runs_us);
  } catch (const std::invalid_argument& exc) {
    return Failed(1, std::string("bad timings: ") + exc.what(), message);
  }
  double warmup_mean_us = 0;
  for (double micros : warmup_us) warmup_mean_us += micros;
  if (!warmup_us.empty()) warmup_mean_us /= static_cast<double>(warmup_us.size());
  const long peak_kib = StatusKib("VmHWM");
  if (!flags.output_filepath.empty()) {
    // As benchmark_model's --output_filepath: the last run's output tensors'
    // raw bytes, one after the other in output order (RUNNER.md).
    std::string raw;
    for (size_t i = 0; i < runtime->outputs().size(); ++i) {
      raw.append(static_cast<const char*>(runtime->output_data(i)), runtime->outputs()[i].bytes);
    }
    if (!WriteAtomically(flags.output_filepath, raw, &error)) return Failed(1, error, message);
  }

  std::string tensors;
  for (int is_output = 0; is_output < 2; ++is_output) {
    const auto& infos = is_output ? runtime->outputs() : runtime->inputs();
    std::string list;
    for (const auto& info : infos) {
      std::string dims;
      for (int32_t d : info.dims) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
      list += std::string(list.empty() ? "" : ", ") + "{\"name\": " + JsonString(info.name) +
              ", \"dtype\": " + JsonString(edgepipe::runtime::ElementTypeName(info.element_type)) +
              ", \"shape\": [" + dims + "]}";
    }
    tensors += std::string(is_output ? ", \"outputs\": [" : "\"inputs\": [") + list + "]";
  }
  auto kib_or_null = [](long kib) { return kib < 0 ? std::string("null") : std::to_string(kib); };
  const std::string memory =
      flags.report_peak_memory_footprint
          ? "{\"init_footprint_kib\": " +
                (rss_before_kib < 0 || rss_init_kib < 0 ? std::string("null")
                                                        : std::to_string(rss_init_kib - rss_before_kib)) +
                ", \"rss_after_init_kib\": " + kib_or_null(rss_init_kib) +
                ", \"peak_rss_kib\": " + kib_or_null(peak_kib) + "}"
          : "null";
  const auto& times = runtime->times();
  std::ostringstream json;
  json << "{\"schema_version\": " << kSchemaVersion << ", \"tool\": \"litert_bench\""
       << ", \"model\": {\"path\": " << JsonString(flags.graph)
       << ", \"size_bytes\": " << runtime->model_bytes() << ", " << tensors << "}"
       << ", \"settings\": {\"num_threads\": " << flags.num_threads
       << ", \"accelerator\": " << JsonString(flags.accelerator)
       << ", \"warmup_runs\": " << flags.warmup_runs
       << ", \"warmup_min_secs\": " << JsonNumber(flags.warmup_min_secs)
       << ", \"num_runs\": " << flags.num_runs << ", \"min_secs\": " << JsonNumber(flags.min_secs)
       << ", \"max_secs\": " << JsonNumber(flags.max_secs)
       << ", \"run_delay\": " << JsonNumber(flags.run_delay)
       << ", \"input_layer_value_files\": " << JsonString(flags.input_layer_value_files)
       << ", \"input_layer\": " << JsonString(flags.input_layer)
       << ", \"input_layer_shape\": " << JsonString(flags.input_layer_shape)
       << ", \"max_tensor_bytes\": " << flags.max_tensor_bytes << "}"
       << ", \"init\": {\"total_us\": " << JsonNumber(init_us)
       << ", \"load_us\": " << JsonNumber(times.load_us)
       << ", \"check_us\": " << JsonNumber(times.check_us)
       << ", \"compile_us\": " << JsonNumber(times.compile_us) << "}"
       << ", \"first_inference_us\": " << JsonNumber(first_us)
       << ", \"warmup\": {\"count\": " << warmup_us.size()
       << ", \"mean_us\": " << (warmup_us.empty() ? "null" : JsonNumber(warmup_mean_us)) << "}"
       << ", \"steady_state\": " << StatsJson(steady) << ", \"memory\": " << memory
       << ", \"device\": " << DeviceJson() << "}\n";

  // The human summary in benchmark_model's documented log lines, so that whoever
  // reads that tool's output (a person, or android_bench/benchmark_model_output.py)
  // reads this runner's too.
  std::fprintf(stderr, "INFO: Initialized session in %.3fms.\n", init_us / 1000.0);
  PrintPhase(flags.warmup_runs, flags.warmup_min_secs, flags.max_secs, warmup_us);
  PrintPhase(flags.num_runs, flags.min_secs, flags.max_secs, runs_us);
  std::fprintf(stderr,
               "INFO: Inference timings in us: Init: %.0f, First inference: %.1f, "
               "Warmup (avg): %.1f, Inference (avg): %.1f\n",
               init_us, first_us, warmup_us.empty() ? first_us : warmup_mean_us, steady.mean_us);
  if (flags.report_peak_memory_footprint) {
    std::fprintf(stderr, "INFO: Peak memory footprint (MB): init=%.4f overall=%.4f\n",
                 static_cast<double>(rss_init_kib) / 1024.0, static_cast<double>(peak_kib) / 1024.0);
  }
  if (flags.json_output.empty()) {
    std::fputs(json.str().c_str(), stdout);
    return std::fflush(stdout) == 0 ? 0 : 1;
  }
  if (!WriteAtomically(flags.json_output, json.str(), &error)) return Failed(1, error, message);
  return 0;
}

int main(int argc, char** argv) {
  Flags flags;
  const std::string flag_error = ParseFlags(argc, argv, &flags);
  if (!flag_error.empty()) {
    std::fprintf(stderr, "%s", kUsage);
    return Fail(2, flag_error);
  }
  std::string error;
  const int code = Benchmark(flags, &error);
  return error.empty() ? code : Fail(code, error);
}
