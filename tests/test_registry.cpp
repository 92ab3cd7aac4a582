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
