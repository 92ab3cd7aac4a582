// Ingest allocates nothing per sample once a series exists. This file replaces the
// global operator new to count allocations while asked, so it is a test program of its
// own (build/allocation_tests): valgrind and sanitizers bring their own operator new.
#include "helpers.hpp"

#include <cstdlib>
#include <new>

namespace {
std::size_t allocations = 0;
bool counting = false;
} // namespace

// GCC sees new and free paired here and warns; they are the pair this replacement makes.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void *operator new(std::size_t size) {
  if (counting) ++allocations;
  if (void *memory = std::malloc(size ? size : 1)) return memory;
  throw std::bad_alloc();
}
void operator delete(void *memory) noexcept { std::free(memory); }
void operator delete(void *memory, std::size_t) noexcept { std::free(memory); }

// Ingests `datagrams` once so that their series and buffers come into being, then 1002
// times more counting allocations: none in all, and none for each datagram alone, so
// that a failure names the kind that allocates.
static void check_no_allocations(hermes::Registry &registry, const std::vector<std::string> &datagrams) {
  for (const std::string &datagram : datagrams) registry.ingest(datagram, 1);
  allocations = 0;
  counting = true;
  for (int round = 0; round < 1000; ++round)
    for (const std::string &datagram : datagrams) registry.ingest(datagram, 2);
  counting = false;
  CHECK(allocations == 0);
  for (const std::string &datagram : datagrams) {
    allocations = 0;
    counting = true;
    registry.ingest(datagram, 3);
    counting = false;
    CAPTURE(datagram);
    CHECK(allocations == 0);
  }
}

TEST_CASE("ingest allocates nothing per sample once its series exist") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "s",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue", "worker"]}],
    "gauges": [{"metric_name": "depth", "labels": ["queue"]}],
    "histograms": [{"metric_name": "latency", "labels": ["queue"]},
                   {"metric_name": "native", "labels": ["queue"], "native": true, "buckets": [1]}]})",
                                                 "test"));
  const std::vector<std::string> datagrams = {
      R"({"metric_name": "jobs_total", "payload": {"labels": {"queue": "mail", "worker": "w-1"}, "value": 2}})",
      R"({"metric_name": "depth", "payload": {"labels": {"queue": "mail"}, "operation": "increment", "value": null}})",
      R"([{"metric_name": "latency", "payload": {"labels": {"queue": "mail"}, "observation": 0.3}},
          {"metric_name": "jobs_total", "payload": {"labels": {"worker": "w-2", "queue": "mail"}}}])",
      R"({"metric_name": "native", "payload": {"labels": {"queue": "mail"}, "observation": -0.25}})",
      R"({"metric_name": "native", "payload": {"labels": {"queue": "mail"}, "observation": 12.5}})",
      R"({"metric_name": "native", "payload": {"labels": {"queue": "mail"}, "observation": 0}})",
      R"({"metric_name": "nope"})",
      "not json",
  };
  check_no_allocations(registry, datagrams);
  CHECK(registry.value("jobs_total", {"mail", "w-1"}) == std::optional<double>(2 * 1002));
  CHECK(registry.accepted() == 7 * 1002);
}

TEST_CASE("StatsD ingest allocates nothing per sample once its series exist") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "s",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue", "worker"]}],
    "gauges": [{"metric_name": "depth", "labels": ["queue"]}],
    "histograms": [{"metric_name": "latency", "labels": ["queue"]}],
    "summaries": [{"metric_name": "sizes", "labels": ["queue"]}]})",
                                                 "test"));
  const std::vector<std::string> datagrams = {
      "jobs:2|c|#queue:mail,worker:w-1",
      "jobs_total:1|c|@0.5|#worker:w-1,queue:mail\r\ndepth:+1|g|#queue:mail\n",
      "latency:250|ms|@0.1|#queue:mail\nlatency:1:2:3|h|T1656581400|#queue:mail|c:abc",
      "jobs,queue=mail,worker=w-1:1|c\njobs#queue=mail,worker=w-1:1|c\njobs[queue=mail,worker=w-1]:1|c",
      "sizes:3|d|#queue:mail",
      "a.very.long.name.that.matches.nothing.at.all.but.needs.a.longer.buffer.than.before:1|c",
      "jobs:1|c|#queue:mail,worker:w-1,extra:x,more:y,and:z",
      "users:1|s\n_e{1,1}:a|b\ngarbage\njobs:-1|c|#queue:mail,worker:w-1\nnope:1|c",
  };
  check_no_allocations(registry, datagrams);
  CHECK(registry.value("jobs_total", {"mail", "w-1"}) == std::optional<double>(7 * 1002));
  CHECK(registry.received(hermes::Wire::statsd) == 18 * 1002);
}

// At a million series the index has grown many times over, and lookups probe past
// neighbours: none of that allocates once the series are there.
TEST_CASE("ingest allocates nothing per sample with a million series, the index included") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "s",
    "counters": [{"metric_name": "jobs_total", "labels": ["id"], "max_series": 1000000}]})",
                                                 "test"));
  constexpr int series = 1000000;
  const auto sample = [](int id) {
    char text[96];
    std::snprintf(text, sizeof text, R"({"metric_name": "jobs_total", "payload": {"labels": {"id": "s%09d"}}})", id);
    return std::string(text);
  };
  for (int id = 0; id < series; ++id) registry.ingest(sample(id), 1);
  REQUIRE(registry.series_count() == series);
  std::vector<std::string> datagrams;
  for (int id = 0; id < series; id += 997) datagrams.push_back(sample(id)); // spread over the whole index
  check_no_allocations(registry, datagrams);
  CHECK(registry.value("jobs_total", {"s000000997"}) == std::optional<double>(1 + 1002));
  CHECK(registry.series_count() == series);
}

TEST_CASE("the per-metric families of Hermes' own figures allocate nothing once the body has room") {
  const hermes::Registry registry(hermes::parse_config(R"({"service_name": "s",
    "counters": [{"metric_name": "a_rather_long_metric_name_that_no_small_string_holds_total", "labels": ["queue"]}],
    "gauges": [{"metric_name": "depth"}], "histograms": [{"metric_name": "latency", "labels": ["queue"]}]})",
                                                       "test"));
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics, hermes::Format::protobuf}) {
    CAPTURE(hermes::content_type(format));
    std::string out;
    out.reserve(4096);
    hermes::detail::Exposition text(out, format);
    hermes::detail::ProtobufExposition protobuf(out);
    hermes::detail::Writer &writer = format == hermes::Format::protobuf ? static_cast<hermes::detail::Writer &>(protobuf) : text;
    std::size_t families = 0;
    allocations = 0;
    counting = true;
    for (const hermes::detail::SelfMetric &metric : hermes::detail::self_metrics)
      if (std::string_view(metric.name).rfind("hermes_metric_", 0) == 0) {
        hermes::detail::write_self_metric(writer, metric, {registry, nullptr, nullptr});
        ++families;
      }
    writer.finish();
    counting = false;
    CHECK(families == 2);
    CHECK(allocations == 0);
    CHECK(out.size() > 3 * 2 * 20); // three series in each of the two families were written
  }
}
