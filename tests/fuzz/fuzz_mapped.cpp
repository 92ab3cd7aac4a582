// libFuzzer target: StatsD lines through a mapping file's rules (globs with captures, a
// regex, a drop, observers) and undeclared metrics, against one registry that lives
// across inputs, its budget's rule checked after every datagram.
#include "hermes.hpp"

#include <cstdlib>

namespace {

constexpr const char *rules = R"(
mappings:
- match: "app.*.*"
  name: "app_${2}"
  labels:
    host: "$1"
- match: "app.*.latency"
  name: "never"
- match: "obs.*"
  name: "obs_$1"
  observer_type: histogram
  histogram_options:
    buckets: [0.1, 1]
- match: "sum.*"
  name: "sum"
  labels:
    key: "$1"
  summary_options:
    quantiles:
      - quantile: 0.5
        error: 0.05
  ttl: 5s
- match: "drop.*"
  name: "x"
  action: drop
- match: "^re\\.(\\w+)\\.(.*)$"
  match_type: regex
  name: "re_$1"
  labels:
    rest: "${2}"
)";

std::shared_ptr<hermes::MemoryBudget> budget = std::make_shared<hermes::MemoryBudget>(8 * 1024 * 1024, 2);

hermes::Registry &registry() {
  static hermes::Registry instance = [] {
    hermes::Registry made(hermes::parse_config(R"({"service_name": "fuzz", "max_series": 16,
      "statsd_undeclared": "accept", "max_undeclared_metrics": 64, "statsd_ttl_seconds": 3,
      "gauges": [{"metric_name": "g", "labels": ["a"]}]})", "fuzz"), budget);
    made.use_statsd_mapping(hermes::parse_statsd_mapping(rules, "fuzz.yml").mapping);
    return made;
  }();
  return instance;
}

void check(bool condition) {
  if (!condition) std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  static double now = 1e9;
  hermes::Registry &target = registry();
  const std::string_view datagram(reinterpret_cast<const char *>(data), size);
  const hermes::IngestResult result = target.ingest(datagram, now += 0.5);
  check(result.accepted + result.rejected_total() >= 1);
  check(target.metric_count() <= 1 + 64);
  check(budget->keeps_room());
  target.expire(now);
  const std::string text = hermes::render_metrics(target);
  check(!text.empty() && text.back() == '\n');
  return 0;
}
