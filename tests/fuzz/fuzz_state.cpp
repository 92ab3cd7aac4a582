// libFuzzer target: the state file reader. Any bytes either restore or throw StateError
// having changed nothing; what restores must render within the body bound, be written
// again within the state's bound and read back to the same text.
#include "hermes.hpp"

namespace {

const hermes::Config &config() {
  static const hermes::Config parsed = hermes::parse_config(R"({"service_name": "fuzz",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue"], "max_series": 50}, {"metric_name": "plain_total"}],
    "gauges": [{"metric_name": "temperature", "labels": ["room"], "ttl_seconds": 60}],
    "histograms": [{"metric_name": "latency", "labels": ["route"], "buckets": [0.1, 1, 10]}],
    "summaries": [{"metric_name": "sizes", "labels": ["route"], "objectives": {"0.5": 0.05, "0.99": 0.001}, "max_age_seconds": 100},
                  {"metric_name": "plain_s"}]})",
                                                             "fuzz.json");
  return parsed;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char *>(data), size);
  hermes::Registry registry(config());
  try {
    registry.restore_state(text, 1000);
  } catch (const hermes::StateError &) {
    if (registry.changes() != 0 || registry.series_count() != 2) __builtin_trap(); // a refused file changes nothing
    return 0;
  }
  registry.expire(1001);
  // Restored series, whatever their values, stay within the bounds the budget keeps room for.
  const std::size_t bound = hermes::detail::Renderer::bound(registry);
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics, hermes::Format::protobuf})
    if (hermes::render_metrics(registry, format).size() >= bound) __builtin_trap();
  registry.expire(1002);
  std::string first, second;
  registry.save_state(first, hermes::Now(1003, 1764000000));
  if (first.size() > registry.state_size_bound()) __builtin_trap();
  hermes::Registry again(config());
  again.restore_state(first, 1003);
  again.save_state(second, hermes::Now(1003, 1764000000));
  if (first != second) __builtin_trap(); // what Hermes writes it reads back whole
  return 0;
}
