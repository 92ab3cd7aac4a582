// libFuzzer target: remote write's encoders. Any bytes, compressed with Hermes' snappy,
// decode to themselves with the test's own decoder, within the bound. Read as datagrams
// into a registry, a snapshot of it decodes as a WriteRequest with one sample per series,
// labels sorted and unique, in batches of at most max_samples_per_send that compress and
// decode back whole.
#include "hermes.hpp"
#include "tests/remote_write_decode.hpp"

namespace {

const hermes::Config &config() {
  static const hermes::Config parsed = hermes::parse_config(R"({"service_name": "fuzz",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue", "job"], "max_series": 50}],
    "gauges": [{"metric_name": "temperature", "labels": ["room"], "ttl_seconds": 60}],
    "histograms": [{"metric_name": "latency", "labels": ["route"], "buckets": [0.1, 1, 10]},
                   {"metric_name": "sizes", "native": true, "native_max_buckets": 20}],
    "summaries": [{"metric_name": "rtt", "objectives": {"0.5": 0.05}}]})",
                                                             "fuzz.json");
  return parsed;
}

void round_trip(std::string_view raw) {
  std::string packed;
  hermes::detail::snappy_compress(raw, packed);
  if (packed.size() > hermes::detail::snappy_max_compressed_length(raw.size())) __builtin_trap();
  const auto unpacked = test::snappy_decompress(packed);
  if (!unpacked || *unpacked != raw) __builtin_trap();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char *>(data), size);
  round_trip(bytes);
  hermes::Registry registry(config());
  registry.ingest(bytes, 1000);
  static const std::string job = "fuzz", instance = "board";
  static const std::vector<std::pair<std::string, std::string>> external = {{"instance", "x"}, {"zone", "z"}};
  hermes::detail::SnapshotWriter writer({&job, &instance, &external, 3}, 1000000, [](std::size_t) { return true; });
  hermes::detail::Renderer renderer(writer, registry, {registry, nullptr, nullptr});
  while (!renderer.write_some(SIZE_MAX)) {
  }
  if (!writer.add_stale_markers({}, {})) __builtin_trap();
  const hermes::detail::PendingSnapshot &snapshot = writer.snapshot();
  const auto series = test::decode_write_request(snapshot.series);
  if (!series || series->size() != snapshot.samples) __builtin_trap();
  for (const test::DecodedSeries &one : *series) {
    if (one.samples.size() + one.histograms.size() != 1) __builtin_trap();
    for (std::size_t i = 1; i < one.labels.size(); ++i)
      if (!(one.labels[i - 1].first < one.labels[i].first)) __builtin_trap(); // sorted, each name once
    if (one.label("__name__").empty() || one.label("instance") != "x" || one.label("zone") != "z") __builtin_trap();
  }
  std::size_t start = 0, samples = 0;
  for (std::size_t b = 0; b < snapshot.batch_ends.size(); ++b) {
    const std::string_view batch = std::string_view(snapshot.series).substr(start, snapshot.batch_ends[b] - start);
    const auto decoded = test::decode_write_request(batch);
    if (!decoded || decoded->size() != snapshot.batch_samples[b] || decoded->size() > 3) __builtin_trap();
    round_trip(batch);
    samples += decoded->size(), start = snapshot.batch_ends[b];
  }
  if (samples != snapshot.samples || start != snapshot.series.size()) __builtin_trap();
  return 0;
}
