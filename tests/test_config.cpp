// Config loading and validation: what loads, and the exact message of every error.
#include "helpers.hpp"

#include <cstdlib>
#include <map>

using hermes::MetricType;
using test::config_error;

TEST_CASE("the sample config loads with every field") {
  const hermes::Config config = test::sample_config();
  CHECK(config.service_name == "testing-service");
  REQUIRE(config.metrics.size() == 2);
  CHECK(config.metrics[0].name == "sample_gauge");
  CHECK(config.metrics[0].type == MetricType::gauge);
  CHECK(config.metrics[0].help == "gauges are awesome");
  CHECK(config.metrics[0].labels == std::vector<std::string>{"label_1", "label_2"});
  CHECK(config.metrics[1].name == "sample_counter");
  CHECK(config.metrics[1].type == MetricType::counter);
  CHECK(config.metrics[1].labels == std::vector<std::string>{"label_1"});
  CHECK(config.listen_address.empty());
  CHECK_FALSE(config.listen_port.has_value());
}

TEST_CASE("the top-level config.json is the sample config") {
  const hermes::Config config = hermes::load_config(test::test_path("../config.json"));
  CHECK(config.service_name == "testing-service");
  REQUIRE(config.metrics.size() == 2);
  CHECK(config.metrics[0].name == "sample_gauge");
  CHECK(config.metrics[1].name == "sample_counter");
}

TEST_CASE("optional parts may be left out") {
  const hermes::Config config = hermes::parse_config(R"({"service_name": "s", "counters": [{"metric_name": "c"}]})", "f");
  REQUIRE(config.metrics.size() == 1);
  CHECK(config.metrics[0].help.empty());
  CHECK(config.metrics[0].labels.empty());
  CHECK(hermes::parse_config(R"({"service_name": "s"})", "f").metrics.empty());
  CHECK(hermes::parse_config(R"({"service_name": "s", "gauges": null, "counters": []})", "f").metrics.empty());
}

TEST_CASE("listen_address and listen_port are read as the original reads them") {
  const auto config = hermes::parse_config(R"({"service_name": "s", "listen_address": "::1", "listen_port": 9000})", "f");
  CHECK(config.listen_address == "::1");
  CHECK(config.listen_port == std::optional<std::uint16_t>(9000));
  CHECK(hermes::parse_config(R"({"service_name": "s", "listen_port": "7001"})", "f").listen_port == std::optional<std::uint16_t>(7001));
  CHECK(config_error(R"({"service_name": "s", "listen_port": 70000})") ==
        "config.json: listen_port: 70000 is not a port number (0-65535)");
  CHECK(config_error(R"({"service_name": "s", "listen_port": 1.5})") ==
        "config.json: listen_port: 1.5 is not a port number (0-65535)");
  CHECK(config_error(R"({"service_name": "s", "listen_address": 5})") ==
        "config.json: listen_address: expected a string, got a number");
}

TEST_CASE("JSON syntax errors name the file and the line") {
  CHECK(config_error("{\"service_name\": \"s\",\n \"gauges\": [\n  {\"metric_name\" \"x\"}]}") ==
        "config.json: not valid JSON: syntax error at line 3 near: \"x\"}]}");
  CHECK(config_error("") == "config.json: not valid JSON: syntax error at line 1 near: ");
  CHECK(config_error(R"({"service_name": "s"} trailing)") == "config.json: not valid JSON: unexpected text after the JSON value");
  CHECK(config_error("[]") == "config.json: expected an object, got a list");
}

TEST_CASE("service_name is required, a non-empty string") {
  CHECK(config_error(R"({"gauges": []})") == "config.json: service_name: missing: every config names its service");
  CHECK(config_error(R"({"service_name": ""})") == "config.json: service_name: must not be empty");
  CHECK(config_error(R"({"service_name": 3})") == "config.json: service_name: expected a string, got a number");
}

TEST_CASE("wrong types name the place") {
  CHECK(config_error(R"({"service_name": "s", "gauges": {}})") == "config.json: gauges: expected a list, got an object");
  CHECK(config_error(R"({"service_name": "s", "counters": ["c"]})") == "config.json: counters[0]: expected an object, got a string");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": 1}]})") ==
        "config.json: counters[0].metric_name: expected a string, got a number");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "c", "labels": "a"}]})") ==
        "config.json: counters[0].labels: expected a list, got a string");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "c", "labels": [true]}]})") ==
        "config.json: counters[0].labels[0]: expected a string, got a boolean");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "c", "metric_description": []}]})") ==
        "config.json: counters[0].metric_description: expected a string, got a list");
  CHECK(config_error(R"({"service_name": "s", "counters": [{}]})") == "config.json: counters[0].metric_name: missing");
}

TEST_CASE("metric names must be Prometheus names") {
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "ok"}, {"metric_name": "bad-name"}]})") ==
        "config.json: counters[1].metric_name: \"bad-name\" is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": "9lives"}]})") ==
        "config.json: gauges[0].metric_name: \"9lives\" is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": ""}]})") ==
        "config.json: gauges[0].metric_name: \"\" is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": "a:b_C9"}]})").empty());
}

TEST_CASE("label names must be Prometheus label names, not reserved, not repeated") {
  const auto with_labels = [](const std::string &labels) {
    return config_error(R"({"service_name": "s", "gauges": [{"metric_name": "g", "labels": )" + labels + "}]}");
  };
  CHECK(with_labels(R"(["a:b"])") ==
        "config.json: gauges[0].labels[0]: \"a:b\" is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)");
  CHECK(with_labels(R"(["ok", "1a"])") ==
        "config.json: gauges[0].labels[1]: \"1a\" is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)");
  CHECK(with_labels(R"(["__name__"])") ==
        "config.json: gauges[0].labels[0]: \"__name__\" is reserved: names starting with __ are Prometheus' own");
  CHECK(with_labels(R"(["a", "b", "a"])") == "config.json: gauges[0].labels[2]: \"a\" is listed twice");
  CHECK(with_labels(R"(["_a", "B_2"])").empty());
}

TEST_CASE("a metric name is defined once, across kinds too") {
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": "x"}], "counters": [{"metric_name": "x"}]})") ==
        "config.json: counters[0].metric_name: \"x\" is defined twice");
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": "x"}, {"metric_name": "x"}]})") ==
        "config.json: gauges[1].metric_name: \"x\" is defined twice");
}

TEST_CASE("Hermes' own metric names are reserved") {
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "hermes_udp_packets_total"}]})") ==
        "config.json: counters[0].metric_name: \"hermes_udp_packets_total\" is reserved: hermes_* and process_* are Hermes' own metrics");
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": "process_open_fds"}]})") ==
        "config.json: gauges[0].metric_name: \"process_open_fds\" is reserved: hermes_* and process_* are Hermes' own metrics");
}

TEST_CASE("unknown keys are errors, so a typo is never ignored") {
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "c", "lables": ["a"]}]})") ==
        "config.json: counters[0].lables: unknown key (expected one of: metric_name, metric_description, labels, max_series, ttl_seconds)");
  CHECK(config_error(R"({"service_name": "s", "gauge": []})") ==
        "config.json: gauge: unknown key (expected one of: service_name, gauges, counters, histograms, summaries, listen_address, listen_port, max_series, ttl_seconds, max_memory_bytes, state_file, state_interval_seconds, udp_allow, http_allow, max_push_groups, push_ttl_seconds, remote_write, tls_server, statsd_mapping_file, statsd_undeclared, statsd_observer_type, statsd_ttl_seconds, max_undeclared_metrics)");
}

TEST_CASE("load_config names a file it cannot read, and one that is too large") {
  CHECK_THROWS_WITH_AS(hermes::load_config("/nonexistent/hermes.json"), "/nonexistent/hermes.json: cannot read: No such file or directory",
                       hermes::ConfigError);
  const test::TempDir folder;
  const std::string big = folder.file("big-config.json");
  {
    std::ofstream file(big);
    file << "{\"service_name\": \"" << std::string(HERMES_MAX_CONFIG_SIZE, 'x') << "\"}";
  }
  CHECK_THROWS_WITH_AS(hermes::load_config(big), (big + ": larger than 1048576 bytes").c_str(), hermes::ConfigError);
}

TEST_CASE("deep nesting in a config is a syntax error, not a crash") {
  const std::string deep = "{\"service_name\": \"s\", \"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  CHECK(config_error(deep).rfind("config.json: not valid JSON: syntax error at line 1 near: ", 0) == 0);
}

// ---- options from the environment ----------------------------------------------------------

namespace {
struct FakeEnvironment {
  std::map<std::string, std::string> values;
  hermes::Environment lookup() const {
    return [this](const char *name) -> const char * {
      const auto found = values.find(name);
      return found == values.end() ? nullptr : found->second.c_str();
    };
  }
};

std::string usage_error(const hermes::Config &config, const FakeEnvironment &env) {
  try {
    hermes::options_from_environment(config, env.lookup());
  } catch (const hermes::UsageError &error) {
    return error.what();
  }
  return "";
}
} // namespace

TEST_CASE("options default to the original's ports") {
  const hermes::Options options = hermes::options_from_environment(test::sample_config(), FakeEnvironment{}.lookup());
  CHECK(options.udp_address == "0.0.0.0");
  CHECK(options.udp_port == 7789);
  CHECK(options.http_address == "0.0.0.0");
  CHECK(options.http_port == 8080);
  CHECK(options.log_level == hermes::LogLevel::info);
}

TEST_CASE("the environment wins over the file, the file over the defaults") {
  hermes::Config config = test::sample_config();
  config.listen_address = "127.0.0.2";
  config.listen_port = 9100;
  FakeEnvironment env;
  CHECK(hermes::options_from_environment(config, env.lookup()).udp_address == "127.0.0.2");
  CHECK(hermes::options_from_environment(config, env.lookup()).udp_port == 9100);
  env.values = {{"LISTEN_ADDRESS", "::1"}, {"LISTEN_PORT", "9200"}, {"LOG_LEVEL", "WARN"}};
  hermes::Options options = hermes::options_from_environment(config, env.lookup());
  CHECK(options.udp_address == "::1");
  CHECK(options.udp_port == 9200);
  CHECK(options.log_level == hermes::LogLevel::warn);
  env.values = {{"LISTEN_PORT", "9200"}, {"HERMES_UDP_PORT", "9300"}, {"HERMES_UDP_ADDRESS", "10.0.0.1"}, {"LISTEN_ADDRESS", "::1"},
                {"HERMES_HTTP_ADDRESS", "::"}, {"HERMES_HTTP_PORT", "0"}, {"HERMES_LOG_LEVEL", "Debug"}, {"LOG_LEVEL", "error"}};
  options = hermes::options_from_environment(config, env.lookup());
  CHECK(options.udp_address == "10.0.0.1");
  CHECK(options.udp_port == 9300);
  CHECK(options.http_address == "::");
  CHECK(options.http_port == 0);
  CHECK(options.log_level == hermes::LogLevel::debug);
  env.values = {{"HERMES_UDP_PORT", ""}, {"LISTEN_PORT", "9400"}};
  CHECK(hermes::options_from_environment(config, env.lookup()).udp_port == 9400);
}

TEST_CASE("a bad environment value names the variable") {
  const hermes::Config config = test::sample_config();
  CHECK(usage_error(config, {{{"HERMES_UDP_PORT", "abc"}}}) == "HERMES_UDP_PORT: \"abc\" is not a port number (0-65535)");
  CHECK(usage_error(config, {{{"LISTEN_PORT", "70000"}}}) == "LISTEN_PORT: \"70000\" is not a port number (0-65535)");
  CHECK(usage_error(config, {{{"HERMES_HTTP_PORT", "-1"}}}) == "HERMES_HTTP_PORT: \"-1\" is not a port number (0-65535)");
  CHECK(usage_error(config, {{{"HERMES_HTTP_PORT", "80 "}}}) == "HERMES_HTTP_PORT: \"80 \" is not a port number (0-65535)");
  CHECK(usage_error(config, {{{"HERMES_LOG_LEVEL", "loud"}}}) ==
        "HERMES_LOG_LEVEL: \"loud\" is not a log level (debug, info, warn, error)");
  CHECK(usage_error(config, {{{"HERMES_OPENMETRICS", "maybe"}}}) == "HERMES_OPENMETRICS: \"maybe\" is not on or off");
  CHECK(usage_error(config, {{{"HERMES_UNIX_SOCKET_MODE", "999"}}}) ==
        "HERMES_UNIX_SOCKET_MODE: \"999\" is not an octal file mode (such as 660)");
  CHECK(usage_error(config, {{{"HERMES_UNIX_SOCKET_MODE", "1777"}}}) ==
        "HERMES_UNIX_SOCKET_MODE: \"1777\" is not an octal file mode (such as 660)");
  const hermes::Options with_socket = hermes::options_from_environment(
      config, FakeEnvironment{{{"HERMES_UNIX_SOCKET", "/run/hermes.sock"}, {"HERMES_UNIX_SOCKET_MODE", "0600"}}}.lookup());
  CHECK(with_socket.unix_socket_path == "/run/hermes.sock");
  CHECK(with_socket.unix_socket_mode == 0600);
  CHECK(hermes::options_from_environment(config, FakeEnvironment{}.lookup()).unix_socket_mode == 0660);
}

TEST_CASE("HERMES_OPENMETRICS turns OpenMetrics off; it is on by default") {
  const hermes::Config config = test::sample_config();
  CHECK(hermes::options_from_environment(config, FakeEnvironment{}.lookup()).openmetrics);
  for (const char *off : {"off", "OFF", "false", "no", "0"})
    CHECK_FALSE(hermes::options_from_environment(config, FakeEnvironment{{{"HERMES_OPENMETRICS", off}}}.lookup()).openmetrics);
  for (const char *on : {"on", "True", "yes", "1"})
    CHECK(hermes::options_from_environment(config, FakeEnvironment{{{"HERMES_OPENMETRICS", on}}}.lookup()).openmetrics);
}

TEST_CASE("parse_port and parse_log_level") {
  CHECK(hermes::parse_port("0") == std::optional<std::uint16_t>(0));
  CHECK(hermes::parse_port("65535") == std::optional<std::uint16_t>(65535));
  CHECK_FALSE(hermes::parse_port("65536"));
  CHECK_FALSE(hermes::parse_port(""));
  CHECK_FALSE(hermes::parse_port("+1"));
  CHECK_FALSE(hermes::parse_port("0x10"));
  CHECK(hermes::parse_log_level("ERROR") == std::optional<hermes::LogLevel>(hermes::LogLevel::error));
  CHECK(hermes::parse_log_level("warning") == std::optional<hermes::LogLevel>(hermes::LogLevel::warn));
  CHECK_FALSE(hermes::parse_log_level("trace"));
}

// ---- OpenMetrics names and lint advice ----------------------------------------------------

TEST_CASE("a counter X_total leaves no room for metrics named X or X_created") {
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "jobs_total"}], "gauges": [{"metric_name": "jobs"}]})") ==
        "config.json: \"jobs\" and \"jobs_total\" would both expose the name jobs");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "jobs_total"}, {"metric_name": "jobs_created"}]})") ==
        "config.json: \"jobs_total\" and \"jobs_created\" would both expose the name jobs_created");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "jobs"}], "gauges": [{"metric_name": "jobs_total"}]})").empty());
}

TEST_CASE("lint_config gives promtool's advice on configured names") {
  const auto advice = [](const std::string &metrics) {
    return hermes::lint_config(hermes::parse_config(R"({"service_name": "s", )" + metrics + "}", "test"));
  };
  CHECK(advice(R"("counters": [{"metric_name": "jobs_total", "metric_description": "d"}])").empty());
  CHECK(advice(R"("gauges": [{"metric_name": "queue_length", "metric_description": "d", "labels": ["queue_name"]}])").empty());
  CHECK(advice(R"("counters": [{"metric_name": "sample_counter", "metric_description": "d"}])") ==
        std::vector<std::string>{"sample_counter: counter metrics should have \"_total\" suffix",
                                 "sample_counter: metric name should not include type 'counter'"});
  CHECK(advice(R"("gauges": [{"metric_name": "latency_ms"}])") ==
        std::vector<std::string>{"latency_ms: no help text", "latency_ms: metric names should not contain abbreviated units"});
  CHECK(advice(R"("gauges": [{"metric_name": "uptime_minutes", "metric_description": "d"}])") ==
        std::vector<std::string>{"uptime_minutes: use base unit \"seconds\" instead of \"minutes\""});
  CHECK(advice(R"("gauges": [{"metric_name": "read_kilobytes_total", "metric_description": "d"}])") ==
        std::vector<std::string>{"read_kilobytes_total: use base unit \"bytes\" instead of \"kilobytes\"",
                                 "read_kilobytes_total: non-counter metrics should not have \"_total\" suffix"});
  CHECK(advice(R"("gauges": [{"metric_name": "ns:rate_sum", "metric_description": "d", "labels": ["le", "quantile", "camelCase"]}])") ==
        std::vector<std::string>{"ns:rate_sum: non-histogram and non-summary metrics should not have \"_sum\" suffix",
                                 "ns:rate_sum: metric names should not contain ':'",
                                 "ns:rate_sum: non-histogram metrics should not have \"le\" label",
                                 "ns:rate_sum: non-summary metrics should not have \"quantile\" label",
                                 "ns:rate_sum: label names should be written in 'snake_case' not 'camelCase'"});
  CHECK(advice(R"("gauges": [{"metric_name": "requestCount", "metric_description": "d"}])") ==
        std::vector<std::string>{"requestCount: metric names should be written in 'snake_case' not 'camelCase'"});
}

// ---- series limits --------------------------------------------------------------------------

TEST_CASE("max_series and ttl_seconds: defaults, top-level defaults, per metric") {
  const hermes::Config config = hermes::parse_config(R"({"service_name": "s", "max_series": 50, "ttl_seconds": 300,
    "gauges": [{"metric_name": "a"}, {"metric_name": "b", "max_series": 7, "ttl_seconds": 0.5}],
    "counters": [{"metric_name": "c", "ttl_seconds": 0}]})",
                                                     "test");
  CHECK(config.metrics[0].max_series == 50);
  CHECK(config.metrics[0].ttl_seconds == 300);
  CHECK(config.metrics[1].max_series == 7);
  CHECK(config.metrics[1].ttl_seconds == 0.5);
  CHECK(config.metrics[2].max_series == 50);
  CHECK(config.metrics[2].ttl_seconds == 0);
  const hermes::Config plain = test::sample_config();
  CHECK(plain.metrics[0].max_series == 10000);
  CHECK(plain.metrics[0].ttl_seconds == 0);
}

TEST_CASE("bad series limits name their place") {
  CHECK(config_error(R"({"service_name": "s", "max_series": 0})") ==
        "config.json: max_series: 0 is not a whole number from 1 to 10000000");
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": "g", "max_series": 2.5}]})") ==
        "config.json: gauges[0].max_series: 2.5 is not a whole number from 1 to 10000000");
  CHECK(config_error(R"({"service_name": "s", "max_series": 1e9})") ==
        "config.json: max_series: 1000000000 is not a whole number from 1 to 10000000");
  CHECK(config_error(R"({"service_name": "s", "max_series": "5"})") ==
        "config.json: max_series: \"5\" is not a whole number from 1 to 10000000");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "c", "ttl_seconds": -1}]})") ==
        "config.json: counters[0].ttl_seconds: -1 is not a number of seconds (0 or more; 0: never)");
  CHECK(config_error(R"({"service_name": "s", "ttl_seconds": "1m"})") ==
        "config.json: ttl_seconds: \"1m\" is not a number of seconds (0 or more; 0: never)");
}

// ---- histograms and summaries -----------------------------------------------------------------

TEST_CASE("a config written for the original, histograms and summaries without options, loads") {
  const hermes::Config config = hermes::parse_config(R"({"service_name": "original",
    "histograms": [{"metric_name": "request_seconds", "metric_description": "latency", "labels": ["route"]}],
    "summaries": [{"metric_name": "payload_bytes", "metric_description": "sizes", "labels": ["route"]}]})",
                                                     "original.json");
  REQUIRE(config.metrics.size() == 2);
  CHECK(config.metrics[0].type == hermes::MetricType::histogram);
  CHECK(config.metrics[0].buckets == std::vector<double>{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10});
  CHECK(config.metrics[1].type == hermes::MetricType::summary);
  CHECK(config.metrics[1].objectives.empty());
  CHECK(config.metrics[1].max_age_seconds == 600);
}

TEST_CASE("histogram buckets and summary objectives are read and checked") {
  const hermes::Config config = hermes::parse_config(R"({"service_name": "s",
    "histograms": [{"metric_name": "h", "buckets": [-1, 0, 0.5, 1e3]}],
    "summaries": [{"metric_name": "q", "objectives": {"0.99": 0.001, "0.5": 0.05}, "max_age_seconds": 60}]})",
                                                     "test");
  CHECK(config.metrics[0].buckets == std::vector<double>{-1, 0, 0.5, 1000});
  CHECK(config.metrics[1].objectives == std::vector<std::pair<double, double>>{{0.5, 0.05}, {0.99, 0.001}});
  CHECK(config.metrics[1].max_age_seconds == 60);
  CHECK(config_error(R"({"service_name": "s", "histograms": [{"metric_name": "h", "buckets": [1, 1]}]})") ==
        "config.json: histograms[0].buckets[1]: 1 is not above the bucket before it: buckets must increase strictly");
  CHECK(config_error(R"({"service_name": "s", "histograms": [{"metric_name": "h", "buckets": [2, "3"]}]})") ==
        "config.json: histograms[0].buckets[1]: \"3\" is not a finite number");
  CHECK(config_error(R"({"service_name": "s", "histograms": [{"metric_name": "h", "buckets": []}]})") ==
        "config.json: histograms[0].buckets: must hold at least one bucket");
  CHECK(config_error(R"({"service_name": "s", "histograms": [{"metric_name": "h", "labels": ["a", "le"]}]})") ==
        "config.json: histograms[0].labels[1]: \"le\" is reserved: a histogram's buckets use it");
  CHECK(config_error(R"({"service_name": "s", "summaries": [{"metric_name": "q", "labels": ["quantile"]}]})") ==
        "config.json: summaries[0].labels[0]: \"quantile\" is reserved: a summary's quantiles use it");
  CHECK(config_error(R"({"service_name": "s", "summaries": [{"metric_name": "q", "objectives": {"1.5": 0.1}}]})") ==
        "config.json: summaries[0].objectives.1.5: \"1.5\" is not a quantile between 0 and 1");
  CHECK(config_error(R"({"service_name": "s", "summaries": [{"metric_name": "q", "objectives": {"0.9": 0}}]})") ==
        "config.json: summaries[0].objectives.0.9: 0 is not an allowed rank error above 0 and at most 0.5");
  CHECK(config_error(R"({"service_name": "s", "summaries": [{"metric_name": "q", "objectives": [0.5]}]})") ==
        "config.json: summaries[0].objectives: expected an object of quantile: error, got a list");
  CHECK(config_error(R"({"service_name": "s", "summaries": [{"metric_name": "q", "max_age_seconds": 0}]})") ==
        "config.json: summaries[0].max_age_seconds: 0 is not a number of seconds above 0");
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": "g", "buckets": [1]}]})") ==
        "config.json: gauges[0].buckets: unknown key (expected one of: metric_name, metric_description, labels, max_series, ttl_seconds)");
}

TEST_CASE("a histogram's and a summary's series names are theirs alone") {
  CHECK(config_error(R"({"service_name": "s", "gauges": [{"metric_name": "h_bucket"}], "histograms": [{"metric_name": "h"}]})") ==
        "config.json: \"h_bucket\" and \"h\" would both expose the name h_bucket");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "q_count"}], "summaries": [{"metric_name": "q"}]})") ==
        "config.json: \"q_count\" and \"q\" would both expose the name q_count");
}

TEST_CASE("a summary's quantile written twice is an error, however it is spelled") {
  CHECK(config_error(R"({"service_name": "s", "summaries": [{"metric_name": "q", "objectives": {"0.5": 0.05, "0.50": 0.01}}]})") ==
        "config.json: summaries[0].objectives.0.50: \"0.50\" is the quantile 0.5 again");
  CHECK(config_error(R"({"service_name": "s", "summaries": [{"metric_name": "q", "objectives": {"5e-1": 0.05, "0.5": 0.01}}]})") ==
        "config.json: summaries[0].objectives.5e-1: \"5e-1\" is the quantile 0.5 again");
  CHECK(config_error(R"({"service_name": "s", "summaries": [{"metric_name": "q", "objectives": {" 0.5": 0.05}}]})") ==
        "config.json: summaries[0].objectives. 0.5: \" 0.5\" is not a quantile between 0 and 1");
}

TEST_CASE("a number beyond the range of a double is named as such") {
  CHECK(config_error("{\"service_name\": \"s\",\n \"max_series\": 1e999}") ==
        "config.json: max_series: a number beyond the range of a double (about 1.8e308)");
  CHECK(config_error(R"({"service_name": "s", "histograms": [{"metric_name": "h", "buckets": [1, -1e400]}]})") ==
        "config.json: histograms[0].buckets[1]: a number beyond the range of a double (about 1.8e308)");
}

TEST_CASE("native histograms: their settings are read, checked and named where they are wrong") {
  const hermes::Config config = hermes::parse_config(R"({"service_name": "s", "histograms": [
    {"metric_name": "a", "native": true},
    {"metric_name": "b", "native": true, "buckets": [1, 2], "native_bucket_factor": 1.5, "native_max_buckets": 20,
     "native_zero_threshold": 0},
    {"metric_name": "c", "native": false}]})",
                                                     "config.json");
  CHECK(config.metrics[0].native);
  CHECK(config.metrics[0].buckets.empty()); // no classic buckets unless asked for
  CHECK(config.metrics[1].buckets == std::vector<double>{1, 2});
  CHECK(config.metrics[1].native_bucket_factor == 1.5);
  CHECK(config.metrics[1].native_max_buckets == 20);
  CHECK(config.metrics[1].native_zero_threshold == 0);
  CHECK_FALSE(config.metrics[2].native);
  CHECK(config.metrics[2].buckets == hermes::default_buckets());
  const auto error = [](const std::string &histogram) {
    return config_error(R"({"service_name": "s", "histograms": [{"metric_name": "h", )" + histogram + "}]}");
  };
  CHECK(error(R"("native": 1)") == "config.json: histograms[0].native: 1 is not true or false");
  CHECK(error(R"("native_bucket_factor": 1.5)") ==
        "config.json: histograms[0].native_bucket_factor: applies only to a histogram with \"native\": true");
  CHECK(error(R"("native": false, "native_max_buckets": 10)") ==
        "config.json: histograms[0].native_max_buckets: applies only to a histogram with \"native\": true");
  CHECK(error(R"("native": true, "native_bucket_factor": 1)") ==
        "config.json: histograms[0].native_bucket_factor: 1 is not a number above 1 (the growth from bucket to bucket)");
  CHECK(error(R"("native": true, "native_bucket_factor": "2")") ==
        "config.json: histograms[0].native_bucket_factor: \"2\" is not a number above 1 (the growth from bucket to bucket)");
  CHECK(error(R"("native": true, "native_max_buckets": 0)") ==
        "config.json: histograms[0].native_max_buckets: 0 is not a whole number from 1 to 10000");
  CHECK(error(R"("native": true, "native_max_buckets": 2.5)") ==
        "config.json: histograms[0].native_max_buckets: 2.5 is not a whole number from 1 to 10000");
  CHECK(error(R"("native": true, "native_zero_threshold": -1)") ==
        "config.json: histograms[0].native_zero_threshold: -1 is not a finite number of 0 or more");
  CHECK(error(R"("native": true, "buckets": [])") == "config.json: histograms[0].buckets: must hold at least one bucket");
  CHECK(config_error(R"({"service_name": "s", "counters": [{"metric_name": "c", "native": true}]})") ==
        "config.json: counters[0].native: unknown key (expected one of: metric_name, metric_description, labels, max_series, "
        "ttl_seconds)");
}

TEST_CASE("HERMES_PROTOBUF turns the protobuf format off; it is on by default") {
  const hermes::Config config = test::sample_config();
  CHECK(hermes::options_from_environment(config, FakeEnvironment{}.lookup()).protobuf);
  CHECK_FALSE(hermes::options_from_environment(config, FakeEnvironment{{{"HERMES_PROTOBUF", "off"}}}.lookup()).protobuf);
  CHECK(hermes::options_from_environment(config, FakeEnvironment{{{"HERMES_PROTOBUF", "on"}}}.lookup()).protobuf);
  CHECK_THROWS_WITH_AS(hermes::options_from_environment(config, FakeEnvironment{{{"HERMES_PROTOBUF", "maybe"}}}.lookup()),
                       doctest::Contains("HERMES_PROTOBUF"), hermes::UsageError);
}

TEST_CASE("state_file and state_interval_seconds: from the config, the environment over it, 10 s by default") {
  hermes::Config config = hermes::parse_config(
      R"({"service_name": "s", "state_file": "/var/lib/hermes/state.json", "state_interval_seconds": 2.5})", "f");
  CHECK(config.state_file == "/var/lib/hermes/state.json");
  CHECK(config.state_interval_seconds == std::optional<double>(2.5));
  hermes::Options options = hermes::options_from_environment(config, FakeEnvironment{}.lookup());
  CHECK(options.state_file == "/var/lib/hermes/state.json");
  CHECK(options.state_interval_seconds == 2.5);
  options = hermes::options_from_environment(
      config, FakeEnvironment{{{"HERMES_STATE_FILE", "/data/s.json"}, {"HERMES_STATE_INTERVAL", "0.5"}}}.lookup());
  CHECK(options.state_file == "/data/s.json");
  CHECK(options.state_interval_seconds == 0.5);
  options = hermes::options_from_environment(test::sample_config(), FakeEnvironment{}.lookup());
  CHECK(options.state_file.empty()); // no state is kept
  CHECK(options.state_interval_seconds == 10);
  CHECK(usage_error(config, {{{"HERMES_STATE_INTERVAL", "0"}}}) == "HERMES_STATE_INTERVAL: \"0\" is not a number of seconds above 0");
  CHECK(usage_error(config, {{{"HERMES_STATE_INTERVAL", "10s"}}}) == "HERMES_STATE_INTERVAL: \"10s\" is not a number of seconds above 0");
  CHECK(usage_error(config, {{{"HERMES_STATE_INTERVAL", "inf"}}}) == "HERMES_STATE_INTERVAL: \"inf\" is not a number of seconds above 0");
  CHECK(config_error(R"({"service_name": "s", "state_interval_seconds": 0})") ==
        "config.json: state_interval_seconds: 0 is not a number of seconds above 0");
  CHECK(config_error(R"({"service_name": "s", "state_interval_seconds": "10"})") ==
        "config.json: state_interval_seconds: \"10\" is not a number of seconds above 0");
  CHECK(config_error(R"({"service_name": "s", "state_file": 3})") == "config.json: state_file: expected a string, got a number");
}
