// libFuzzer target: one datagram through the whole ingest path (parse, check, apply)
// and out through every format, against one registry that lives across inputs. Each
// datagram is also read by both JSON readers: where the plain one reads it, picojson
// must read it too, into the same samples.
#include "hermes.hpp"
#include "tests/reading.hpp"

#include <cstdlib>

namespace {

hermes::Registry &registry() {
  static hermes::Registry instance(hermes::parse_config(R"({"service_name": "fuzz", "max_series": 64,
    "gauges": [{"metric_name": "g", "labels": ["a", "b"]}, {"metric_name": "plain_gauge"}],
    "counters": [{"metric_name": "c_total", "labels": ["a"], "ttl_seconds": 5}, {"metric_name": "plain_counter"}],
    "histograms": [{"metric_name": "h", "labels": ["a"], "buckets": [-1, 0, 1]},
                   {"metric_name": "n", "labels": ["a"], "native": true, "native_max_buckets": 8, "native_zero_threshold": 0.5},
                   {"metric_name": "nb", "native": true, "buckets": [0], "native_bucket_factor": 1.01, "native_zero_threshold": 0}],
    "summaries": [{"metric_name": "s", "labels": ["a"], "objectives": {"0.5": 0.05, "0.99": 0.001}, "max_age_seconds": 30}]})",
                                                        "fuzz"));
  return instance;
}

void check(bool condition) {
  if (!condition) std::abort();
}

// The protobuf body is a sequence of varint-length-prefixed families that fill it exactly.
void check_protobuf(std::string_view body) {
  check(!body.empty());
  while (!body.empty()) {
    std::uint64_t size = 0;
    int shift = 0;
    for (bool more = true; more; shift += 7) {
      check(!body.empty() && shift < 64);
      const auto byte = static_cast<unsigned char>(body.front());
      body.remove_prefix(1);
      size |= std::uint64_t{byte & 0x7fu} << shift;
      more = byte >= 0x80;
    }
    check(size > 0 && size <= body.size());
    body.remove_prefix(size);
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  static double now = 1e9;
  hermes::Registry &target = registry();
  const std::string_view datagram(reinterpret_cast<const char *>(data), size);
  const reading::Both both = reading::read_both(datagram);
  check(!both.plain || (both.picojson && reading::same(both.plain_batch, both.picojson_batch)));
  const hermes::IngestResult result = target.ingest(datagram, now += 0.5);
  check(result.accepted + result.rejected_total() >= 1); // every datagram is counted
  check(target.series_count() <= 64 * 5 + 3);
  target.expire(now);
  const std::string text = hermes::render_metrics(target);
  const std::string openmetrics = hermes::render_metrics(target, hermes::Format::openmetrics);
  check(!text.empty() && text.back() == '\n');
  check(openmetrics.size() >= 6 && openmetrics.compare(openmetrics.size() - 6, 6, "# EOF\n") == 0);
  const std::string protobuf = hermes::render_metrics(target, hermes::Format::protobuf);
  check_protobuf(protobuf);
  // Every body within the bound the memory budget keeps room for, its NUL included.
  const std::size_t bound = hermes::detail::Renderer::bound(target);
  check(text.size() < bound && openmetrics.size() < bound && protobuf.size() < bound);
  return 0;
}
