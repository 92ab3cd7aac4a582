// The registry: which series exist, how they are keyed, and how they are counted.
#include "helpers.hpp"

TEST_CASE("metrics without labels have their one series from the start; labelled ones have none") {
  const hermes::Registry registry(hermes::parse_config(R"({"service_name": "s",
      "gauges": [{"metric_name": "g"}, {"metric_name": "gl", "labels": ["a"]}],
      "counters": [{"metric_name": "c"}]})",
                                                        "test"));
  CHECK(registry.series_count() == 2);
  CHECK(registry.value("g", {}) == std::optional<double>(0));
  CHECK(registry.value("c", {}) == std::optional<double>(0));
  CHECK_FALSE(registry.value("gl", {"x"}).has_value());
  CHECK_FALSE(registry.value("gl", {}).has_value());
  CHECK_FALSE(registry.value("missing", {}).has_value());
  CHECK(registry.service_name() == "s");
}

TEST_CASE("each distinct set of label values is its own series") {
  hermes::Registry registry(test::sample_config());
  CHECK(registry.series_count() == 0);
  for (const char *value : {"a", "b", "a", "", "a"})
    registry.ingest(std::string(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": ")") + value + "\"}}}");
  CHECK(registry.series_count() == 3);
  CHECK(registry.value("sample_counter", {"a"}) == std::optional<double>(3));
  CHECK(registry.value("sample_counter", {"b"}) == std::optional<double>(1));
  CHECK(registry.value("sample_counter", {""}) == std::optional<double>(1));
  // Label values are keyed in configured order, whatever order the datagram uses.
  registry.ingest(R"({"metric_name": "sample_gauge", "payload": {"labels": {"label_2": "second", "label_1": "first"}, "value": 5}})");
  CHECK(registry.value("sample_gauge", {"first", "second"}) == std::optional<double>(5));
  CHECK_FALSE(registry.value("sample_gauge", {"second", "first"}).has_value());
  CHECK(registry.series_count() == 4);
}

TEST_CASE("a counter sums many pushes exactly") {
  hermes::Registry registry(test::sample_config());
  for (int i = 0; i < 10000; ++i)
    registry.ingest(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x"}}})");
  CHECK(registry.value("sample_counter", {"x"}) == std::optional<double>(10000));
  CHECK(registry.accepted() == 10000);
}

TEST_CASE("values run to infinity and stay finite-safe") {
  hermes::Registry registry(test::sample_config());
  const std::string labels = R"("labels": {"label_1": "a", "label_2": "b"})";
  registry.ingest(R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "value": 1.7e308}})");
  registry.ingest(R"({"metric_name": "sample_gauge", "payload": {)" + labels + R"(, "operation": "increment", "value": 1.7e308}})");
  CHECK(registry.value("sample_gauge", {"a", "b"}) == std::optional<double>(HUGE_VAL));
}

TEST_CASE("a registry moves with its series") {
  hermes::Registry registry(test::sample_config());
  registry.ingest(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x"}, "value": 4}})");
  hermes::Registry moved(std::move(registry));
  CHECK(moved.value("sample_counter", {"x"}) == std::optional<double>(4));
  CHECK(moved.accepted() == 1);
}

TEST_CASE("a metric at max_series rejects new series and keeps updating the ones it has") {
  hermes::Registry registry(hermes::parse_config(
      R"({"service_name": "s", "counters": [{"metric_name": "c", "labels": ["id"], "max_series": 3}, {"metric_name": "d", "labels": ["id"]}]})",
      "test"));
  const auto push = [&](const char *metric, int id) {
    return registry.ingest(std::string(R"({"metric_name": ")") + metric + R"(", "payload": {"labels": {"id": ")" +
                           std::to_string(id) + "\"}}}");
  };
  for (int id = 0; id < 1000; ++id) push("c", id);
  CHECK(registry.series_count() == 3);
  CHECK(registry.accepted() == 3);
  CHECK(registry.rejected(hermes::Reject::series_limit) == 997);
  CHECK(push("c", 1).accepted == 1); // an existing series still updates
  CHECK(registry.value("c", {"1"}) == std::optional<double>(2));
  CHECK(push("c", 5).rejected[static_cast<std::size_t>(hermes::Reject::series_limit)] == 1);
  for (int id = 0; id < 20000; ++id) push("d", id); // the default limit
  CHECK(registry.series_count() == 3 + 10000);
  CHECK(registry.rejected(hermes::Reject::series_limit) == 998 + 10000);
}

TEST_CASE("series not pushed for ttl_seconds expire; the others and label-less ones stay") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "s", "ttl_seconds": 60,
      "gauges": [{"metric_name": "g", "labels": ["worker"]}, {"metric_name": "plain"},
                 {"metric_name": "kept", "labels": ["worker"], "ttl_seconds": 0}]})",
                                                 "test"));
  const auto set = [&](const char *metric, const char *worker, double now) {
    registry.ingest(std::string(R"({"metric_name": ")") + metric + R"(", "payload": {"labels": {"worker": ")" + worker +
                        R"("}, "value": 1}})",
                    now);
  };
  set("g", "dead", 1000);
  set("g", "alive", 1000);
  set("kept", "dead", 1000);
  registry.ingest(R"({"metric_name": "plain", "payload": {"value": 5}})", 1000);
  set("g", "alive", 1050);
  CHECK(registry.expire(1059) == 0);
  CHECK(registry.expire(1060) == 1); // exactly ttl_seconds after its last push
  CHECK_FALSE(registry.value("g", {"dead"}).has_value());
  CHECK(registry.value("g", {"alive"}) == std::optional<double>(1));
  CHECK(registry.value("kept", {"dead"}) == std::optional<double>(1));
  CHECK(registry.value("plain", {}) == std::optional<double>(5));
  CHECK(registry.expire(1110) == 1);
  CHECK(registry.series_count() == 2);
  CHECK(registry.expired() == 2);
  set("g", "dead", 2000); // a returning worker starts a new series
  CHECK(registry.value("g", {"dead"}) == std::optional<double>(1));
}
