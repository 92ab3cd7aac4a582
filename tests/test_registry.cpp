// The registry: which series exist, how they are keyed, and how they are counted.
#include "helpers.hpp"

#include <random>

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

// ---- histograms and summaries -----------------------------------------------------------------

namespace {
hermes::Registry observing_registry() {
  return hermes::Registry(hermes::parse_config(R"({"service_name": "s",
    "histograms": [{"metric_name": "latency", "labels": ["route"], "buckets": [0.1, 1, 10]}, {"metric_name": "plain_h"}],
    "summaries": [{"metric_name": "sizes", "labels": ["route"], "objectives": {"0.5": 0.05, "0.9": 0.01, "0.99": 0.001}},
                  {"metric_name": "plain_s"}]})",
                                               "test"));
}
} // namespace

TEST_CASE("observations: the original's field, value too, and what is rejected") {
  hermes::Registry registry = observing_registry();
  CHECK(registry.ingest(R"({"metric_name": "latency", "payload": {"labels": {"route": "/"}, "observation": 0.42}})").accepted == 1);
  CHECK(registry.ingest(R"({"metric_name": "latency", "payload": {"labels": {"route": "/"}, "value": 3}})").accepted == 1);
  CHECK(registry.ingest(R"({"metric_name": "plain_h", "payload": {"observation": -2, "value": 99}})").accepted == 1);
  CHECK(registry.ingest(R"({"metric_name": "plain_s", "payload": {"observation": 1}})").accepted == 1);
  CHECK(registry.ingest(R"({"metric_name": "latency", "payload": {"labels": {"route": "/"}}})").rejected[static_cast<std::size_t>(hermes::Reject::invalid_value)] == 1);
  CHECK(registry.ingest(R"({"metric_name": "latency", "payload": {"labels": {"route": "/"}, "observation": "1"}})").rejected[static_cast<std::size_t>(hermes::Reject::invalid_value)] == 1);
  CHECK(registry.ingest(R"({"metric_name": "latency", "payload": {"labels": {"route": "/"}, "observation": 1e999}})").rejected[static_cast<std::size_t>(hermes::Reject::invalid_value)] == 1);
  CHECK(registry.ingest(R"({"metric_name": "sizes", "payload": {"labels": {}, "observation": 1}})").rejected[static_cast<std::size_t>(hermes::Reject::label_mismatch)] == 1);
  CHECK(registry.accepted() == 4);
}

TEST_CASE("histograms and summaries render as in expected/observed.prom and observed.om") {
  hermes::Registry registry = observing_registry();
  double now = 1764000000;
  for (const double observation : {0.05, 0.1, 0.11, 1.0, 9.5, 10.0, 10.5, -3.0})
    registry.ingest(R"({"metric_name": "latency", "payload": {"labels": {"route": "/a"}, "observation": )" +
                        hermes::detail::format_double(observation) + "}}",
                    now);
  for (int i = 1; i <= 100; ++i)
    registry.ingest(R"({"metric_name": "sizes", "payload": {"labels": {"route": "/a"}, "observation": )" + std::to_string(i) + "}}", now);
  registry.ingest(R"({"metric_name": "plain_h", "payload": {"observation": 7}})", now);
  registry.expire(now + 1);
  const auto check_file = [&](hermes::Format format, const std::string &name) {
    const std::string body = hermes::render_metrics(registry, format);
    if (std::getenv("HERMES_UPDATE_EXPECTED")) std::ofstream(test::test_path("expected/" + name), std::ios::binary) << body;
    CHECK_MESSAGE(body == test::read_file(test::test_path("expected/" + name)), "tests/expected/" << name << " differs:\n" << body);
  };
  check_file(hermes::Format::text, "observed.prom");
  check_file(hermes::Format::openmetrics, "observed.om");
}

TEST_CASE("summary quantiles stay within their stated rank error, in bounded memory") {
  hermes::Registry registry = observing_registry();
  const hermes::MetricConfig config = hermes::parse_config(
      R"({"service_name": "s", "summaries": [{"metric_name": "q", "objectives": {"0.5": 0.05, "0.9": 0.01, "0.99": 0.001}}]})", "t")
                                          .metrics[0];
  hermes::detail::QuantileWindow window(config, 0);
  constexpr int n = 200000;
  std::vector<int> values(n);
  for (int i = 0; i < n; ++i) values[static_cast<std::size_t>(i)] = i + 1; // ranks are the values themselves
  std::shuffle(values.begin(), values.end(), std::mt19937(7));
  std::size_t most_memory = 0;
  for (const int value : values) {
    window.observe(value, 1);
    most_memory = std::max(most_memory, window.memory_entries());
  }
  for (const auto &[q, error] : config.objectives) {
    window.advance(1);
    const double estimate = window.query(q);
    CAPTURE(q);
    CHECK(estimate >= (q - error) * n);
    CHECK(estimate <= (q + error) * n);
  }
  // Five streams, each a few hundred entries and a 500-value buffer, whatever n is.
  CHECK(most_memory < 5 * 1500);
  for (int i = 0; i < n; ++i) window.observe(i, 2);
  CHECK(window.memory_entries() < 5 * 1500);
}

TEST_CASE("a summary forgets observations older than max_age_seconds") {
  const hermes::MetricConfig config = hermes::parse_config(
      R"({"service_name": "s", "summaries": [{"metric_name": "q", "objectives": {"0.5": 0.05}, "max_age_seconds": 100}]})", "t")
                                          .metrics[0];
  hermes::detail::QuantileWindow window(config, 1000);
  for (int i = 0; i < 1000; ++i) window.observe(5, 1000);
  window.advance(1050);
  CHECK(window.query(0.5) == 5);
  for (int i = 0; i < 500; ++i) window.observe(7, 1050);
  window.advance(1079);
  CHECK(window.query(0.5) == 5); // the oldest stream holds both, and more fives
  window.advance(1110);
  CHECK(window.query(0.5) == 7); // past max_age of the first, only the second are left
  window.advance(1300);
  CHECK(std::isnan(window.query(0.5)));
}

// ---- reload ---------------------------------------------------------------------------------

TEST_CASE("reload keeps the series of unchanged metrics, starts changed ones afresh, drops removed ones") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "before",
    "gauges": [{"metric_name": "kept", "labels": ["a"]}, {"metric_name": "relabelled", "labels": ["a"]},
               {"metric_name": "removed"}],
    "summaries": [{"metric_name": "sizes", "objectives": {"0.5": 0.05}}]})",
                                                 "before"));
  registry.ingest(R"({"metric_name": "kept", "payload": {"labels": {"a": "x"}, "value": 1}})");
  registry.ingest(R"({"metric_name": "relabelled", "payload": {"labels": {"a": "x"}, "value": 2}})");
  registry.ingest(R"({"metric_name": "removed", "payload": {"value": 3}})");
  registry.ingest(R"({"metric_name": "sizes", "payload": {"observation": 4}})");
  registry.ingest("{junk");
  const auto summary = registry.reload(hermes::parse_config(R"({"service_name": "after",
    "gauges": [{"metric_name": "kept", "labels": ["a"], "metric_description": "new help", "max_series": 5},
               {"metric_name": "relabelled", "labels": ["a", "b"]}, {"metric_name": "added"}],
    "summaries": [{"metric_name": "sizes", "objectives": {"0.5": 0.05}}]})",
                                                            "after"));
  CHECK(summary.kept == 2);
  CHECK(summary.fresh == 2);
  CHECK(summary.removed == 2);
  CHECK(registry.service_name() == "after");
  CHECK(registry.value("kept", {"x"}) == std::optional<double>(1));
  CHECK_FALSE(registry.value("relabelled", {"x"}).has_value());
  CHECK_FALSE(registry.value("removed", {}).has_value());
  CHECK(registry.value("added", {}) == std::optional<double>(0));
  CHECK(registry.accepted() == 4);
  CHECK(registry.rejected(hermes::Reject::malformed_json) == 1);
  // The summary kept its window, and answers from it after the old config is gone.
  const std::string body = hermes::render_metrics(registry);
  CHECK(body.find("\nsizes{quantile=\"0.5\"} 4\n") != std::string::npos);
  CHECK(body.find("\nsizes_count 1\n") != std::string::npos);
  CHECK(body.find("# HELP kept new help\n") != std::string::npos);
}

TEST_CASE("reload keeps a native histogram only while its native settings stay the same") {
  const auto config = [](const std::string &settings) {
    return hermes::parse_config(R"({"service_name": "s", "histograms": [{"metric_name": "h", "native": true)" + settings + "}]}",
                                "test");
  };
  hermes::Registry registry(config(""));
  registry.ingest(R"({"metric_name": "h", "payload": {"observation": 3}})", 1);
  CHECK(registry.reload(config("")).kept == 1);
  CHECK(registry.reload(config(R"(, "native_bucket_factor": 1.1, "native_max_buckets": 160)")).kept == 1);
  CHECK(hermes::render_metrics(registry).find("h_count 1\n") != std::string::npos);
  for (const char *changed : {R"(, "native_bucket_factor": 1.2)", R"(, "native_max_buckets": 100)",
                              R"(, "native_zero_threshold": 0.5)", R"(, "buckets": [1])"}) {
    hermes::Registry again(config(""));
    again.ingest(R"({"metric_name": "h", "payload": {"observation": 3}})", 1);
    CAPTURE(changed);
    CHECK(again.reload(config(changed)).fresh == 1);
    CHECK(hermes::render_metrics(again).find("h_count 0\n") != std::string::npos);
  }
}

TEST_CASE("a native histogram without classic buckets shows +Inf, _sum and _count in text, as client_golang does") {
  hermes::Registry registry(hermes::parse_config(
      R"({"service_name": "s", "histograms": [{"metric_name": "h", "metric_description": "H.", "labels": ["a"], "native": true}]})",
      "test"));
  registry.ingest(R"([{"metric_name": "h", "payload": {"labels": {"a": "x"}, "observation": -2}},
                      {"metric_name": "h", "payload": {"labels": {"a": "x"}, "observation": 0}},
                      {"metric_name": "h", "payload": {"labels": {"a": "x"}, "observation": 7.5}}])",
                  1);
  const std::string text = hermes::render_metrics(registry);
  CHECK(text.find("# HELP h H.\n# TYPE h histogram\nh_bucket{a=\"x\",le=\"+Inf\"} 3\nh_sum{a=\"x\"} 5.5\nh_count{a=\"x\"} 3\n") !=
        std::string::npos);
}

// The index against a std::map of the same series: after any sequence of new series,
// updates and drops, each is found with its value, and a walk lists them in label order
// whether or not they were sorted since they came.
TEST_CASE("the series index finds every series and lists them in label order, sorted or not") {
  std::mt19937 random(24);
  hermes::detail::SeriesTable table;
  std::map<std::vector<std::string>, double> expected;
  std::vector<std::uint32_t> pending;
  for (int step = 0; step < 20000; ++step) {
    const auto what = random() % 100;
    // First values that share their first eight bytes, or end inside them, or hold NUL
    const std::string pad(random() % 12, random() % 2 ? 'a' : '\0');
    const std::vector<std::string> labels = {pad + std::to_string(random() % 3000), std::string(random() % 20, 'x')};
    if (what < 70) {
      hermes::detail::Series *series = table.find(labels);
      REQUIRE((series != nullptr) == (expected.count(labels) == 1));
      if (!series) series = &table.add(labels, hermes::detail::Series{});
      series->value += 1;
      expected[labels] += 1;
    } else if (what < 72) {
      const auto cut = std::string(random() % 12, 'a') + std::to_string(random() % 3000);
      CHECK(table.drop_if([&](const hermes::detail::SeriesTable::Entry &entry) { return entry.first[0] < cut; }) ==
            static_cast<std::size_t>(std::count_if(expected.begin(), expected.end(), [&](const auto &e) { return e.first[0] < cut; })));
      for (auto at = expected.begin(); at != expected.end();) at = at->first[0] < cut ? expected.erase(at) : std::next(at);
    } else if (what < 80) {
      table.sort();
    } else {
      REQUIRE(table.size() == expected.size());
      auto want = expected.begin();
      for (hermes::detail::SeriesTable::InOrder walk(table, pending); !walk.done(); ++want) {
        const hermes::detail::SeriesTable::Entry &entry = walk.next();
        REQUIRE(want != expected.end());
        REQUIRE(hermes::detail::same_label_values(entry.first, want->first));
        REQUIRE(entry.second.value == want->second);
      }
      REQUIRE(want == expected.end());
    }
  }
  for (const auto &[labels, value] : expected) REQUIRE(table.find(labels)->value == value);
}

// Packed label values read back as they were given: none, empty ones, NUL bytes, values
// whose length takes two varint bytes, and as many values as a label set may have.
TEST_CASE("label values packed into one string read back value by value") {
  const std::vector<std::vector<std::string>> cases = {
      {}, {""}, {"", ""}, {"s000000001"}, {std::string("a\0b", 3), "c"}, {std::string(200, 'x'), "y", std::string(300, 'z')},
      {"mail", "w-1"}, std::vector<std::string>(130, "v")};
  for (const std::vector<std::string> &values : cases) {
    const hermes::detail::LabelValues packed(values);
    REQUIRE(packed.size() == values.size());
    std::size_t index = 0;
    for (const std::string_view value : packed) {
      REQUIRE(index < values.size());
      CHECK(value == values[index]);
      CHECK(packed[index] == values[index]);
      ++index;
    }
    CHECK(index == values.size());
    CHECK(hermes::detail::same_label_values(packed, values));
  }
}
