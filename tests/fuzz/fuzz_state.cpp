// libFuzzer target: the state file reader. Any bytes either restore or throw StateError
// having changed nothing; what restores must render within the body bound, be written
// again within the state's bound and read back to the same text, pushed groups and all,
// these within the memory budget.
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
  using hermes::detail::StateCodec;
  hermes::Registry registry(config());
  auto budget = std::make_shared<hermes::MemoryBudget>(std::size_t{1} << 26, 2);
  hermes::detail::PushStore pushes(budget, 100, 0);
  pushes.reserve_names({"jobs_total", "plain_total", "temperature"});
  try {
    StateCodec::restore(registry, text, 1000, &pushes);
  } catch (const hermes::StateError &) {
    // A refused file changes nothing.
    if (registry.changes() != 0 || registry.series_count() != 2 || pushes.group_count() != 0) __builtin_trap();
    return 0;
  }
  if (!budget->keeps_room()) __builtin_trap();
  registry.expire(1001);
  // Restored series, whatever their values, stay within the bounds the budget keeps room for.
  const std::size_t bound = hermes::detail::Renderer::bound(registry);
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics, hermes::Format::protobuf})
    if (hermes::render_metrics(registry, format).size() >= bound) __builtin_trap();
  registry.expire(1002);
  std::string first, second, series_only;
  registry.save_state(series_only, hermes::Now(1003, 1764000000));
  if (series_only.size() > registry.state_size_bound()) __builtin_trap();
  if (!StateCodec::save(registry, first, hermes::Now(1003, 1764000000), {}, {}, &pushes)) __builtin_trap();
  hermes::Registry again(config());
  hermes::detail::PushStore pushes_again(budget, 100, 0);
  pushes_again.reserve_names({"jobs_total", "plain_total", "temperature"});
  StateCodec::restore(again, first, 1003, &pushes_again);
  if (!StateCodec::save(again, second, hermes::Now(1003, 1764000000), {}, {}, &pushes_again)) __builtin_trap();
  if (first != second) __builtin_trap(); // what Hermes writes it reads back whole
  return 0;
}
