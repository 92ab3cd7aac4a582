// libFuzzer target: one datagram of StatsD lines through the whole ingest path (parse,
// check, apply) and out through both formatters, against one registry that lives across
// inputs. Its metrics take every StatsD type and tag style.
#include "hermes.hpp"

#include <cstdlib>

namespace {

hermes::Registry &registry() {
  static hermes::Registry instance(hermes::parse_config(R"({"service_name": "fuzz", "max_series": 16,
    "gauges": [{"metric_name": "g", "labels": ["a", "b"]}, {"metric_name": "plain_gauge"}],
    "counters": [{"metric_name": "c_total", "labels": ["a"], "ttl_seconds": 5}, {"metric_name": "plain_counter"}],
    "histograms": [{"metric_name": "h", "labels": ["a"], "buckets": [-1, 0, 1]}],
    "summaries": [{"metric_name": "s", "labels": ["a"], "objectives": {"0.5": 0.05, "0.99": 0.001}, "max_age_seconds": 30},
                  {"metric_name": "plain_summary"}]})",
                                                        "fuzz"));
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
  const std::uint64_t statsd_before = target.received(hermes::Wire::statsd);
  const hermes::IngestResult result = target.ingest(datagram, now += 0.5);
  const std::uint64_t counted = result.accepted + result.rejected_total();
  check(counted >= 1); // every datagram is counted
  if (hermes::detail::is_statsd(datagram)) {
    check(target.received(hermes::Wire::statsd) == statsd_before + counted);
    check(counted <= size); // a sample takes at least one byte
    check(result.rejected[static_cast<std::size_t>(hermes::Reject::malformed_json)] == 0);
  }
  check(target.series_count() <= 16 * 4 + 3);
  target.expire(now);
  const std::string text = hermes::render_metrics(target);
  const std::string openmetrics = hermes::render_metrics(target, hermes::Format::openmetrics);
  check(!text.empty() && text.back() == '\n');
  check(openmetrics.size() >= 6 && openmetrics.compare(openmetrics.size() - 6, 6, "# EOF\n") == 0);
  return 0;
}
