// The Prometheus text format: whole bodies against expected-output files, and the
// number format against strtod.
#include "helpers.hpp"

#include <random>

namespace {

// A server's body with fixed daemon and process figures, so that it can be compared with a file.
std::string render_as_server(const hermes::Registry &registry, hermes::Format format = hermes::Format::text) {
  hermes::ServerStats stats;
  stats.udp_packets = 12;
  stats.http_requests[200] = 3;
  stats.http_requests[404] = 1;
  const hermes::detail::ProcessStats process{1.25, 4096000, 10240000, 1764000000.5, 7, 1024};
  std::string out;
  hermes::detail::Renderer renderer(out, registry, {registry, &stats, &process}, format);
  while (!renderer.write_some(1)) {
  }
  return out;
}

// The expected files are the full build's: its lines of gzip's figures go in a build
// without HERMES_GZIP (the cross builds).
std::string without_gzip_lines(const std::string &text) {
  std::string kept;
  std::size_t start = 0;
  while (start < text.size()) {
    const std::size_t end = std::min(text.find('\n', start), text.size() - 1) + 1;
    const std::string_view line(text.data() + start, end - start);
    if (line.find("gzip") == std::string_view::npos) kept.append(line);
    start = end;
  }
  return kept;
}

// HERMES_UPDATE_EXPECTED=1 rewrites the file from the body instead; read the diff before committing it.
void check_against_file(const std::string &body, const std::string &name) {
  if (std::getenv("HERMES_UPDATE_EXPECTED")) std::ofstream(test::test_path("expected/" + name), std::ios::binary) << body;
  std::string expected = test::read_file(test::test_path("expected/" + name));
  if (!hermes::has_gzip) expected = without_gzip_lines(expected); // a build without gzip shows none of its figures
  CHECK_MESSAGE(body == expected, "tests/expected/" << name << " differs; the body was:\n" << body);
}

} // namespace

TEST_CASE("a fresh registry renders as in expected/initial.prom and initial.om") {
  const hermes::Registry registry(test::sample_config());
  check_against_file(render_as_server(registry), "initial.prom");
  check_against_file(render_as_server(registry, hermes::Format::openmetrics), "initial.om");
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
  check_against_file(render_as_server(registry), "pushed.prom");
  check_against_file(render_as_server(registry, hermes::Format::openmetrics), "pushed.om");
}

TEST_CASE("a bare registry renders its metrics and its own figures, no daemon or process figures") {
  hermes::Registry registry(test::sample_config());
  registry.ingest(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "a"}}})", 1764000000);
  const std::string body = hermes::render_metrics(registry);
  CHECK(body == R"(# HELP hermes_build_info Hermes version and the configured service, always 1.
# TYPE hermes_build_info gauge
hermes_build_info{version=")" HERMES_VERSION_STR R"(",service="testing-service"} 1
# HELP hermes_metric_max_series The max_series of each configured metric: a push for one series more is series_limit.
# TYPE hermes_metric_max_series gauge
hermes_metric_max_series{metric="sample_counter"} 10000
hermes_metric_max_series{metric="sample_gauge"} 10000
# HELP hermes_metric_series Live series of each configured metric.
# TYPE hermes_metric_series gauge
hermes_metric_series{metric="sample_counter"} 1
hermes_metric_series{metric="sample_gauge"} 0
# HELP hermes_samples_accepted_total Samples applied to the registry.
# TYPE hermes_samples_accepted_total counter
hermes_samples_accepted_total 1
# HELP hermes_samples_received_total Samples received, applied or not, by wire format.
# TYPE hermes_samples_received_total counter
hermes_samples_received_total{format="json"} 1
hermes_samples_received_total{format="statsd"} 0
# HELP hermes_samples_rejected_total Samples dropped, by reason; for malformed_json, too_large and forbidden_source, whole datagrams.
# TYPE hermes_samples_rejected_total counter
hermes_samples_rejected_total{reason="malformed_json"} 0
hermes_samples_rejected_total{reason="malformed_sample"} 0
hermes_samples_rejected_total{reason="unknown_metric"} 0
hermes_samples_rejected_total{reason="label_mismatch"} 0
hermes_samples_rejected_total{reason="invalid_label_value"} 0
hermes_samples_rejected_total{reason="invalid_value"} 0
hermes_samples_rejected_total{reason="invalid_operation"} 0
hermes_samples_rejected_total{reason="series_limit"} 0
hermes_samples_rejected_total{reason="too_large"} 0
hermes_samples_rejected_total{reason="unsupported_type"} 0
hermes_samples_rejected_total{reason="memory_limit"} 0
hermes_samples_rejected_total{reason="forbidden_source"} 0
hermes_samples_rejected_total{reason="dropped"} 0
hermes_samples_rejected_total{reason="type_mismatch"} 0
hermes_samples_rejected_total{reason="metric_limit"} 0
# HELP hermes_series Live series of the configured metrics.
# TYPE hermes_series gauge
hermes_series 1
# HELP hermes_series_expired_total Series dropped after ttl_seconds without a push.
# TYPE hermes_series_expired_total counter
hermes_series_expired_total 0
# HELP sample_counter counters are awesome too
# TYPE sample_counter counter
sample_counter{label_1="a"} 1
# HELP sample_gauge gauges are awesome
# TYPE sample_gauge gauge
)");
}

TEST_CASE("process figures that /proc cannot tell are left out, not written as 0") {
  const hermes::Registry registry(test::sample_config());
  const hermes::ServerStats stats;
  hermes::detail::ProcessStats process;
  process.resident_memory_bytes = 4096;
  std::string out;
  hermes::detail::Renderer renderer(out, registry, {registry, &stats, &process}, hermes::Format::text);
  REQUIRE(renderer.write_some(SIZE_MAX));
  CHECK(out.find("process_resident_memory_bytes 4096\n") != std::string::npos);
  for (const char *absent : {"process_cpu_seconds_total", "process_max_fds", "process_open_fds", "process_start_time_seconds",
                             "process_virtual_memory_bytes"})
    CHECK_MESSAGE(out.find(absent) == std::string::npos, absent);
}

TEST_CASE("Hermes' own families are listed in name order, as the body needs them") {
  const auto &table = hermes::detail::self_metrics;
  for (std::size_t i = 1; i < std::size(table); ++i) CHECK(std::string_view(table[i - 1].name) < table[i].name);
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
  CHECK(format_double(9007199254740993.0) == "9.007199254740992e+15");
  CHECK(format_double(18446744073709551616.0) == "1.8446744073709552e+19");
  CHECK(format_double(1e21) == "1e+21");
  CHECK(format_double(1.7976931348623157e308) == "1.7976931348623157e+308");
}

TEST_CASE("numbers are written as client_golang writes them: Go's FormatFloat(v, 'g', -1, 64)") {
  // Each as Go 1.21 prints it.
  const std::pair<double, const char *> go[] = {
      {100000, "100000"},
      {123456.7, "123456.7"},
      {1234567, "1.234567e+06"},
      {1e6, "1e+06"},
      {999999, "999999"},
      {-999999.5, "-999999.5"},
      {0.0001, "0.0001"},
      {0.00012345, "0.00012345"},
      {1e-05, "1e-05"},
      {2.5e-05, "2.5e-05"},
      {1795686863.2611153, "1.7956868632611153e+09"},
      {1.7976931348623157e+308, "1.7976931348623157e+308"},
      {-1e6, "-1e+06"},
      {1200000, "1.2e+06"},
      {0.005, "0.005"},
      {2.5, "2.5"},
      {1e21, "1e+21"},
      {1e100, "1e+100"},
      {5e-324, "5e-324"},
      {9007199254740993.0, "9.007199254740992e+15"},
      {-0.0, "-0"},
  };
  for (const auto &[value, text] : go) CHECK(hermes::detail::format_double(value) == text);
}

TEST_CASE("every double reads back to itself, in the fewest digits, in exponent form exactly where Go uses it") {
  std::mt19937_64 random(20261125);
  for (int i = 0; i < 200000; ++i) {
    const std::uint64_t bits = random();
    double value;
    std::memcpy(&value, &bits, sizeof value);
    if (std::isnan(value) || std::isinf(value)) continue;
    const std::string text = hermes::detail::format_double(value);
    CAPTURE(text);
    const double back = std::strtod(text.c_str(), nullptr);
    REQUIRE(std::memcmp(&back, &value, sizeof value) == 0);
    // The decimal exponent and the significant digits, as %.16e would show them.
    char scientific[40];
    std::snprintf(scientific, sizeof scientific, "%.16e", value);
    const int exponent = std::atoi(std::strchr(scientific, 'e') + 1);
    REQUIRE((text.find('e') != std::string::npos) == (exponent < -4 || exponent >= 6));
    std::string digits;
    for (const char c : text.substr(0, text.find('e')))
      if (c >= '0' && c <= '9') digits += c;
    digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size()));
    while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
    // Fewer digits than these would not read back: the shortest, as to_chars finds them.
    char shortest[40];
    const char *end = std::to_chars(shortest, shortest + sizeof shortest, value, std::chars_format::scientific).ptr;
    const std::string mantissa(static_cast<const char *>(shortest), std::find(static_cast<const char *>(shortest), end, 'e'));
    std::size_t needed = 0;
    for (const char c : mantissa) needed += c >= '0' && c <= '9';
    REQUIRE(digits.size() <= needed);
  }
}

TEST_CASE("whole numbers below 10^6 are integers, and from 10^6 on in exponent form, as Go writes them") {
  std::mt19937_64 random(15);
  for (int i = -1000000 + 1; i < 1000000; i += 1 + static_cast<int>(random() % 7)) {
    CAPTURE(i);
    REQUIRE(hermes::detail::format_double(i) == std::to_string(i));
  }
  for (int i = 0; i < 100000; ++i) {
    const double value = static_cast<double>(1000000 + random() % 1000000000000000ULL) * (i % 2 ? 1 : -1);
    const std::string text = hermes::detail::format_double(value);
    CAPTURE(text);
    REQUIRE(text.find('e') != std::string::npos);
    REQUIRE(std::strtod(text.c_str(), nullptr) == value);
  }
}

TEST_CASE("a render in steps stops between series, never inside one, and equals a render at once") {
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
    hermes::detail::Renderer renderer(out, registry, {registry, nullptr, nullptr}, format);
    while (!renderer.write_some(HERMES_RENDER_PAUSE_STRIDE)) {
      REQUIRE(out.back() == '\n');
      const std::size_t start = out.rfind('\n', out.size() - 2) + 1;
      last_lines.push_back(out.substr(start, last_line_of_a_series.size()));
    }
    CHECK(last_lines == std::vector<std::string>{last_line_of_a_series, last_line_of_a_series});
    CHECK(out == hermes::render_metrics(registry, format));
    hermes::render_metrics(out, registry, format);
    const std::size_t capacity = out.capacity();
    hermes::render_metrics(out, registry, format);
    CHECK(out == hermes::render_metrics(registry, format));
    CHECK(out.capacity() == capacity); // the same memory, written over
  }
}

TEST_CASE("each configured metric shows its live series and its max_series, in every format") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "s", "max_series": 3,
    "gauges": [{"metric_name": "full", "labels": ["k"]}, {"metric_name": "plain"}],
    "counters": [{"metric_name": "jobs_total", "labels": ["k"], "max_series": 1000000}]})",
                                                 "test"));
  for (const char *k : {"a", "b", "c", "d"})
    registry.ingest(std::string(R"({"metric_name": "full", "payload": {"labels": {"k": ")") + k + R"("}, "value": 1}})", 1);
  registry.ingest(R"({"metric_name": "jobs_total", "payload": {"labels": {"k": "x"}}})", 1);
  CHECK(registry.rejected(hermes::Reject::series_limit) == 1);
  CHECK(registry.metric_count() == 3);
  const hermes::Registry::MetricFill fill = registry.metric_fill(0);
  CHECK((fill.name == "full" && fill.series == 3 && fill.max_series == 3));
  const std::string lines = R"(# TYPE hermes_metric_max_series gauge
hermes_metric_max_series{metric="full"} 3
hermes_metric_max_series{metric="jobs_total"} 1e+06
hermes_metric_max_series{metric="plain"} 3
# HELP hermes_metric_series Live series of each configured metric.
# TYPE hermes_metric_series gauge
hermes_metric_series{metric="full"} 3
hermes_metric_series{metric="jobs_total"} 1
hermes_metric_series{metric="plain"} 1
)";
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics}) {
    CAPTURE(hermes::content_type(format));
    CHECK(hermes::render_metrics(registry, format).find(lines) != std::string::npos);
  }
  // Protobuf carries the same: see test_protobuf.cpp, which reads whole bodies back as text.
}

TEST_CASE("Hermes' own families, per-metric lines included, stay within the fixed part of the body bound") {
  for (const std::size_t name_size : {std::size_t{1}, std::size_t{20}, std::size_t{200}}) {
    const std::string name(name_size, 'm');
    hermes::Registry registry(hermes::parse_config(R"({"service_name": "s \"quoted\"", "max_series": 9999999,
      "gauges": [{"metric_name": ")" + name + R"(", "labels": ["k"], "metric_description": "help \\ with \n escapes"}]})",
                                                   "test"));
    hermes::ServerStats server; // figures as long as figures are written
    server.udp_packets = server.udp_receive_drops = 18446744073709551615u;
    server.last_reload_success_seconds = server.memory_used_bytes = -2.2250738585072014e-308;
    for (auto &entry : server.http_requests) entry.second = 18446744073709551615u;
    server.statsd_tcp = true; // a StatsD TCP listener's families too
    server.statsd_tcp_connections = server.statsd_tcp_accepted = 18446744073709551615u;
    server.statsd_tcp_refused.fill(18446744073709551615u);
    server.statsd_tcp_closed.fill(18446744073709551615u);
    server.tls = true; // the TLS families too, shown on a TLS port
    server.tls_handshakes_ok = server.tls_handshakes_failed = server.tls_handshakes_timeout = 18446744073709551615u;
    server.tls_certificate_expiry_seconds = -2.2250738585072014e-308;
    const hermes::detail::ProcessStats process{-1.2345678901234567e-300, 1e300, 1.7976931348623157e308, 0.1, 5e-324, -1e-5};
    for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics, hermes::Format::protobuf}) {
      CAPTURE(name_size);
      CAPTURE(hermes::content_type(format));
      std::string out;
      hermes::detail::Renderer renderer(out, registry, {registry, &server, &process}, format);
      while (!renderer.write_some(1000)) {
      }
      CHECK(out.size() < hermes::detail::fixed_body_bound(registry));
      CHECK(out.size() * 2 > hermes::detail::fixed_body_bound(registry)); // a bound, not a wild one
    }
  }
}

TEST_CASE("OpenMetrics: a histogram whose sum is no counter has no _sum and no _count; text keeps both") {
  hermes::Registry registry(hermes::parse_config(R"({"service_name": "s",
    "histograms": [{"metric_name": "offset_seconds", "labels": ["k"], "buckets": [-1, 0, 1]},
                   {"metric_name": "latency_seconds", "labels": ["k"], "buckets": [0.5, 1]}]})",
                                                 "test"));
  for (const char *datagram : {R"({"metric_name": "offset_seconds", "payload": {"labels": {"k": "a"}, "observation": -2}})",
                               R"({"metric_name": "offset_seconds", "payload": {"labels": {"k": "a"}, "observation": 3}})",
                               R"({"metric_name": "latency_seconds", "payload": {"labels": {"k": "up"}, "observation": -0.25}})",
                               R"({"metric_name": "latency_seconds", "payload": {"labels": {"k": "up"}, "observation": 0.75}})",
                               R"({"metric_name": "latency_seconds", "payload": {"labels": {"k": "down"}, "observation": -0.25}})"})
    REQUIRE(registry.ingest(datagram, hermes::Now(1, 1764000000)).accepted == 1);
  const std::string openmetrics = hermes::render_metrics(registry, hermes::Format::openmetrics);
  // A negative bound: never a sum, so never a count; the +Inf bucket counts them all.
  CHECK(openmetrics.find(R"(offset_seconds_bucket{k="a",le="-1"} 1
offset_seconds_bucket{k="a",le="0"} 1
offset_seconds_bucket{k="a",le="1"} 1
offset_seconds_bucket{k="a",le="+Inf"} 2
offset_seconds_created{k="a"} 1.764e+09
)") != std::string::npos);
  // Bounds from 0 up: the sum and the count while the sum is not negative.
  CHECK(openmetrics.find(R"(latency_seconds_bucket{k="down",le="0.5"} 1
latency_seconds_bucket{k="down",le="1"} 1
latency_seconds_bucket{k="down",le="+Inf"} 1
latency_seconds_created{k="down"} 1.764e+09
latency_seconds_bucket{k="up",le="0.5"} 1
latency_seconds_bucket{k="up",le="1"} 2
latency_seconds_bucket{k="up",le="+Inf"} 2
latency_seconds_sum{k="up"} 0.5
latency_seconds_count{k="up"} 2
latency_seconds_created{k="up"} 1.764e+09
)") != std::string::npos);
  const std::string text = hermes::render_metrics(registry, hermes::Format::text);
  for (const char *line : {"offset_seconds_sum{k=\"a\"} 1\n", "offset_seconds_count{k=\"a\"} 2\n",
                           "latency_seconds_sum{k=\"down\"} -0.25\n", "latency_seconds_count{k=\"down\"} 1\n"}) {
    CHECK_MESSAGE(text.find(line) != std::string::npos, line);
    CHECK_MESSAGE(openmetrics.find(line) == std::string::npos, line);
  }
}
