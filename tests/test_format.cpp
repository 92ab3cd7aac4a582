// The Prometheus text format: whole bodies against expected-output files, and the
// number format against strtod.
#include "helpers.hpp"

#include <random>

namespace {

// Fixed process figures, so that a whole body can be compared with a file.
hermes::ServerStats fixed_stats() {
  hermes::ServerStats stats;
  stats.udp_packets = 12;
  stats.http_requests[200] = 3;
  stats.http_requests[404] = 1;
  stats.process = {1.25, 4096000, 10240000, 1764000000.5, 7, 1024};
  return stats;
}

// HERMES_UPDATE_EXPECTED=1 rewrites the file from the body instead; read the diff before committing it.
void check_against_file(const std::string &body, const std::string &name) {
  if (std::getenv("HERMES_UPDATE_EXPECTED")) std::ofstream(test::test_path("expected/" + name), std::ios::binary) << body;
  const std::string expected = test::read_file(test::test_path("expected/" + name));
  CHECK_MESSAGE(body == expected, "tests/expected/" << name << " differs; the body was:\n" << body);
}

} // namespace

TEST_CASE("a fresh registry renders as in expected/initial.prom and initial.om") {
  const hermes::Registry registry(test::sample_config());
  check_against_file(hermes::render_metrics(registry, fixed_stats()), "initial.prom");
  check_against_file(hermes::render_metrics(registry, fixed_stats(), hermes::Format::openmetrics), "initial.om");
}

TEST_CASE("pushed series render sorted, escaped and exact, as in expected/pushed.prom and pushed.om") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "svc \"quoted\"",
    "gauges": [{"metric_name": "temperature", "metric_description": "back\\slash and\nnewline \"kept\"", "labels": ["room", "floor"]},
               {"metric_name": "zeta"}, {"metric_name": "Upper"}, {"metric_name": ":colon"}, {"metric_name": "ingest_x"}],
    "counters": [{"metric_name": "jobs_total", "labels": ["queue"], "metric_description": "a \"counter\""}, {"metric_name": "no_help"},
                 {"metric_name": "plain_total"}]})",
                                                 "test"));
  const std::vector<std::string> datagrams = {
      R"({"metric_name": "temperature", "payload": {"labels": {"room": "b", "floor": "1"}, "value": -0.0}})",
      R"({"metric_name": "temperature", "payload": {"labels": {"room": "a\"q\\b\nc", "floor": "2"}, "value": 1e-300}})",
      R"({"metric_name": "temperature", "payload": {"labels": {"room": "a", "floor": "\u00e9"}, "value": 9007199254740993}})",
      R"({"metric_name": "temperature", "payload": {"labels": {"room": "a", "floor": "10"}, "value": 1e21}})",
      R"({"metric_name": "temperature", "payload": {"labels": {"room": "a", "floor": "9"}, "value": 0.1}})",
      R"({"metric_name": "zeta", "payload": {"value": 1.7e308}})",
      R"({"metric_name": "zeta", "payload": {"value": 1.7e308, "operation": "increment"}})",
      R"({"metric_name": "Upper", "payload": {"value": -1.7e308}})",
      R"({"metric_name": "Upper", "payload": {"value": 1.7e308, "operation": "decrement"}})",
      R"({"metric_name": ":colon", "payload": {"value": 123456.789}})",
      R"({"metric_name": "jobs_total", "payload": {"labels": {"queue": "mail"}, "value": 3}})",
      R"({"metric_name": "jobs_total", "payload": {"labels": {"queue": ""}}})",
      R"({"metric_name": "jobs_total", "payload": {"labels": {"queue": "Mail"}}})",
      R"({"metric_name": "jobs_total", "payload": {"labels": {"queue": "mail"}, "value": 0.5}})",
      R"({"metric_name": "plain_total", "payload": {"value": 7}})",
      R"({"metric_name": "no_help"})",
  };
  double now = 1764000000.25; // each push a second later, for distinct _created times
  for (const std::string &datagram : datagrams) REQUIRE(registry.ingest(datagram, now++).accepted == 1);
  registry.ingest("{nonsense");
  registry.ingest("users:42|s"); // a StatsD set: counted as received, never applied
  check_against_file(hermes::render_metrics(registry, fixed_stats()), "pushed.prom");
  check_against_file(hermes::render_metrics(registry, fixed_stats(), hermes::Format::openmetrics), "pushed.om");
}

TEST_CASE("numbers are spelled as Prometheus reads them") {
  using hermes::detail::format_double;
  CHECK(format_double(std::nan("")) == "NaN");
  CHECK(format_double(HUGE_VAL) == "+Inf");
  CHECK(format_double(-HUGE_VAL) == "-Inf");
  CHECK(format_double(-0.0) == "-0");
  CHECK(format_double(0) == "0");
  CHECK(format_double(1) == "1");
  CHECK(format_double(65.4) == "65.4");
  CHECK(format_double(0.1) == "0.1");
  CHECK(format_double(1e-300) == "1e-300");
  CHECK(format_double(4.9e-324) == "5e-324");
  CHECK(format_double(9007199254740993.0) == "9007199254740992");
  CHECK(format_double(18446744073709551616.0) == "18446744073709551616");
  CHECK(format_double(1e21) == "1e+21");
  CHECK(format_double(1.7976931348623157e308) == "1.7976931348623157e+308");
}

TEST_CASE("every double reads back to itself, in no more digits than %.17g needs") {
  std::mt19937_64 random(20261125);
  for (int i = 0; i < 200000; ++i) {
    const std::uint64_t bits = random();
    double value;
    std::memcpy(&value, &bits, sizeof value);
    if (std::isnan(value) || std::isinf(value)) continue;
    const std::string text = hermes::detail::format_double(value);
    const double back = std::strtod(text.c_str(), nullptr);
    REQUIRE_MESSAGE(std::memcmp(&back, &value, sizeof value) == 0, text << " does not read back");
    char longest[40];
    std::snprintf(longest, sizeof longest, "%.17g", value);
    REQUIRE(text.size() <= std::strlen(longest));
  }
}

TEST_CASE("whole numbers print exactly as to_chars(double) prints them, only faster") {
  const auto expected = [](double value) {
    char buffer[32];
    return std::string(buffer, std::to_chars(buffer, buffer + sizeof buffer, value).ptr);
  };
  std::mt19937_64 random(15);
  std::vector<double> values;
  for (int i = -1000; i <= 1000000; ++i) values.push_back(i);
  for (double power = 1; power < 1e16; power *= 10)
    for (const double factor : {1.0, 2.0, 10.0, 12.0, 99.0, 1001.0, -1.0, -120.0}) values.push_back(power * factor);
  for (int i = 0; i < 200000; ++i) values.push_back(static_cast<double>(random() % 1000000000000000ULL) * (i % 2 ? 1 : -1));
  for (int i = 0; i < 200000; ++i) values.push_back(static_cast<double>((random() % 100000) * 1000000000ULL));
  for (const double value : values) REQUIRE(hermes::detail::format_double(value) == expected(value));
  CHECK(hermes::detail::format_double(1000000) == "1e+06");
  CHECK(hermes::detail::format_double(1200000) == "1200000");
  CHECK(hermes::detail::format_double(-0.0) == "-0");
}

TEST_CASE("a render into a reused buffer pauses between series, never inside one, and equals a fresh render") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "svc",
    "histograms": [{"metric_name": "latency_seconds", "labels": ["id"], "buckets": [0.1, 1], "max_series": 5000}]})",
                                                 "test"));
  const int series = 2 * HERMES_RENDER_PAUSE_STRIDE + 5;
  for (int id = 0; id < series; ++id) {
    const std::string datagram = R"({"metric_name": "latency_seconds", "payload": {"labels": {"id": ")" +
                                 std::to_string(id) + R"("}, "observation": 0.5}})";
    REQUIRE(registry.ingest(datagram, 1764000000).accepted == 1);
  }
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics}) {
    CAPTURE(hermes::content_type(format));
    const std::string last_line_of_a_series = format == hermes::Format::text ? "latency_seconds_count{" : "latency_seconds_created{";
    std::string out = "left over from before";
    std::vector<std::string> last_lines;
    const std::function<void()> pause = [&] {
      REQUIRE(!out.empty());
      REQUIRE(out.back() == '\n');
      const std::size_t start = out.rfind('\n', out.size() - 2) + 1;
      last_lines.push_back(out.substr(start, last_line_of_a_series.size()));
    };
    hermes::render_metrics(out, registry, fixed_stats(), format, 1764000001, pause);
    CHECK(last_lines == std::vector<std::string>{last_line_of_a_series, last_line_of_a_series});
    CHECK(out == hermes::render_metrics(registry, fixed_stats(), format, 1764000001));
    const std::size_t capacity = out.capacity();
    hermes::render_metrics(out, registry, fixed_stats(), format, 1764000001);
    CHECK(out == hermes::render_metrics(registry, fixed_stats(), format, 1764000001));
    CHECK(out.capacity() == capacity); // the same memory, written over
  }
}
