// statsd_exporter's mapping file and undeclared metrics: StatsD lines that make metrics
// the config does not name.
#include "helpers.hpp"

#include <chrono>

using hermes::Reject;

namespace {

hermes::Config config_with(const std::string &extra = "") {
  return hermes::parse_config(R"({"service_name": "s", "gauges": [{"metric_name": "configured", "labels": ["kind"]}])" + extra + "}",
                              "config.json");
}

#ifdef HERMES_YAML
// A registry that maps through `yaml`.
hermes::Registry mapped(const std::string &yaml, const std::string &extra = "",
                        std::shared_ptr<hermes::MemoryBudget> budget = nullptr) {
  hermes::Registry registry(config_with(extra), std::move(budget));
  registry.use_statsd_mapping(hermes::parse_statsd_mapping(yaml, "mapping.yml").mapping);
  return registry;
}

#endif

std::string outcome(hermes::Registry &registry, const std::string &datagram, double now = 100) {
  const hermes::IngestResult result = registry.ingest(datagram, now);
  std::string text;
  const auto note = [&](const std::string &name, std::size_t count) {
    if (count > 0) text += (text.empty() ? "" : ", ") + name + " " + std::to_string(count);
  };
  note("accepted", result.accepted);
  for (std::size_t i = 0; i < hermes::reject_reason_count; ++i) note(hermes::to_string(static_cast<Reject>(i)), result.rejected[i]);
  return text;
}

// The sample lines of the body, without comments and without Hermes' own metrics.
std::string samples(hermes::Registry &registry) {
  registry.expire(100);
  const std::string body = hermes::render_metrics(registry);
  std::string out;
  for (const std::string_view line : hermes::detail::split(body, '\n'))
    if (!line.empty() && line[0] != '#' && !hermes::detail::starts_with(line, "hermes_") &&
        !hermes::detail::starts_with(line, "configured"))
      out += std::string(line) + "\n";
  return out;
}

#ifdef HERMES_YAML
std::string mapping_error(const std::string &yaml) {
  try {
    hermes::parse_statsd_mapping(yaml, "mapping.yml");
  } catch (const hermes::ConfigError &error) {
    return error.what();
  }
  return "";
}

#endif
} // namespace

#ifdef HERMES_YAML

TEST_CASE("glob captures fill the name and the label values; the first matching rule wins") {
  hermes::Registry registry = mapped(R"(
mappings:
- match: "test.dispatcher.*.*.*"
  name: "dispatcher_events_total"
  labels:
    processor: "$1"
    action: "$2"
    outcome: "$3"
    job: "test_dispatcher"
- match: "*.signup.*.*"
  name: "signup_events_total"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
- match: "*.signup.google.*"
  name: "never_reached"
)");
  CHECK(outcome(registry, "test.dispatcher.FooProcessor.send.success:1|c") == "accepted 1");
  CHECK(outcome(registry, "foo_product.signup.google.failure:2|c") == "accepted 1");
  CHECK(samples(registry) ==
        "dispatcher_events_total{action=\"send\",job=\"test_dispatcher\",outcome=\"success\",processor=\"FooProcessor\"} 1\n"
        "signup_events_total{job=\"foo_product_server\",outcome=\"failure\",provider=\"google\"} 2\n");
  CHECK(outcome(registry, "test.dispatcher.too.few:1|c") == "unknown_metric 1"); // unmatched, undeclared
}

TEST_CASE("regex rules come after every glob rule, whatever their place in the file") {
  hermes::Registry registry = mapped(R"Y(
mappings:
- match: "(.*)\\.latency"
  match_type: regex
  name: "regex_${1}_seconds"
- match: "api.latency"
  name: "glob_seconds"
- match: "(.*)\\.errors\\.(.*)"
  match_type: regex
  name: "errors_total"
  labels:
    service: "$1"
    code: "$2"
)Y");
  CHECK(outcome(registry, "api.latency:5|g\nweb.latency:6|g\nweb.errors.500:1|c") == "accepted 3");
  CHECK(samples(registry) == "errors_total{code=\"500\",service=\"web\"} 1\nglob_seconds 5\nregex_web_seconds 6\n");
}

TEST_CASE("templates read $N as statsd_exporter does: $1_x is nothing, ${1}_x the capture") {
  std::vector<std::string_view> captures = {"a", "b"};
  CHECK(hermes::detail::expand_glob("$1_x", captures) == "");
  CHECK(hermes::detail::expand_glob("${1}_x", captures) == "a_x");
  CHECK(hermes::detail::expand_glob("$2$1", captures) == "");
  CHECK(hermes::detail::expand_glob("${2}${1}", captures) == "ba");
  CHECK(hermes::detail::expand_glob("x_$3", captures) == "x_");
  CHECK(hermes::detail::expand_glob("cost$", captures) == "cost$");
  hermes::detail::MappingRegex regex;
  REQUIRE(regex.compile("(?P<service>\\w+)\\.(?:x|y)?(\\d+)") == "");
  std::vector<std::string_view> groups;
  const std::string name = "web.500"; // the groups are views of it
  REQUIRE(regex.search(name, groups));
  const auto expand = [&](const char *text) { return hermes::detail::expand_regex(text, groups, regex); };
  CHECK(expand("$1_$2") == "500"); // Go reads the group name "1_": nothing
  CHECK(expand("${1}_$2") == "web_500");
  CHECK(expand("$$1 $0 ${service}") == "$1 web.500 web");
  CHECK(expand("${1") == "${1");
  CHECK(expand("$99999999999999999999$nosuch") == "");
  CHECK_FALSE(regex.search(std::string("web."), groups));
  CHECK(hermes::detail::MappingRegex().compile("a.*?b") == "lazy quantifiers (*?, +?) are not supported");
  CHECK(hermes::detail::MappingRegex().compile("\\bx") == "\\b is not supported");
}

TEST_CASE("a regex whose repetitions would blow up when compiled is refused at load") {
  const auto compile = [](const char *pattern) { return hermes::detail::MappingRegex().compile(pattern); };
  CHECK(compile("a{1000}") == "");
  CHECK(compile("[a]{2}(x{10}){999}") == "");
  CHECK(compile("a{1001}") == "a repetition count over 1000");
  CHECK(compile("a{2,1001}") == "a repetition count over 1000");
  CHECK(compile("a{,1001}") == "a repetition count over 1000");
  CHECK(compile("(a{1000}){1000}") == "too large once its repetitions are written out (over 10000 elements)");
  CHECK(compile("((ab){100}c){100}") == "too large once its repetitions are written out (over 10000 elements)");
  CHECK(compile("[]{}]{1000}x{1000}") == "");
  CHECK(compile("\\d{5000}") == "a repetition count over 1000");
  CHECK(compile("(a+)+b{2,}[+*]") == "");
  CHECK(compile("a**") == "invalid nested repetition operator");
  CHECK(compile("a+{2}") == "invalid nested repetition operator");
  CHECK(compile("((((((((((((((a+)+)+)+)+)+)+)+)+)+)+)+)+)+)+") ==
        "too large once its repetitions are written out (over 10000 elements)");
  CHECK(compile("(a{999,}){10}") == "");
  CHECK(compile("(a{999,}){11}") == "too large once its repetitions are written out (over 10000 elements)");
  CHECK(compile("a{1000,}") == "");
  CHECK(compile("a{1001,}") == "a repetition count over 1000");
}

TEST_CASE("match_metric_type picks the rule by the line's type; action: drop refuses the line as dropped") {
  hermes::Registry registry = mapped(R"(
mappings:
- match: "a.*"
  match_metric_type: gauge
  name: "a_gauge"
- match: "a.*"
  match_metric_type: counter
  name: "a_count"
- match: "noise.*"
  name: "dropped"
  action: drop
)");
  CHECK(outcome(registry, "a.x:3|g\na.y:1|c\nnoise.z:1|c") == "accepted 2, dropped 1");
  CHECK(samples(registry) == "a_count_total 1\na_gauge 3\n");
}

TEST_CASE("observers: a summary with statsd_exporter's quantiles unless the rule or the defaults say otherwise") {
  hermes::Registry registry = mapped(R"(
defaults:
  ttl: 45s
mappings:
- match: "plain.*"
  name: "plain_seconds"
- match: "hist.*"
  name: "hist_seconds"
  observer_type: histogram
  histogram_options:
    buckets: [0.5, 2]
- match: "sum.*"
  name: "sum_seconds"
  summary_options:
    quantiles:
      - quantile: 0.9
        error: 0.01
    max_age: 2m
  ttl: 1h30m
)");
  CHECK(outcome(registry, "plain.a:1000|ms\nhist.a:1|h\nsum.a:3|d") == "accepted 3");
  CHECK(samples(registry) == "hist_seconds_bucket{le=\"0.5\"} 0\nhist_seconds_bucket{le=\"2\"} 1\nhist_seconds_bucket{le=\"+Inf\"} 1\n"
                             "hist_seconds_sum 1\nhist_seconds_count 1\n"
                             "plain_seconds{quantile=\"0.5\"} 1\nplain_seconds{quantile=\"0.9\"} 1\nplain_seconds{quantile=\"0.99\"} 1\n"
                             "plain_seconds_sum 1\nplain_seconds_count 1\n"
                             "sum_seconds{quantile=\"0.9\"} 3\nsum_seconds_sum 3\nsum_seconds_count 1\n");
  const hermes::StatsdMappingFile file = hermes::parse_statsd_mapping("mappings:\n- match: a.b\n  name: x\n  ttl: 1h30m\n", "m");
  CHECK(file.mapping->rules[0].shape.ttl_seconds == 5400.0);
}

TEST_CASE("a rule's ttl drops the labelled series of its metric once not pushed for that long") {
  hermes::Registry registry = mapped("mappings:\n- match: \"jobs.*\"\n  name: jobs\n  labels:\n    queue: \"$1\"\n  ttl: 10s\n");
  CHECK(outcome(registry, "jobs.mail:1|c", 100) == "accepted 1");
  CHECK(registry.value("jobs_total", {"mail"}) == 1.0);
  CHECK(registry.expire(109) == 0);
  CHECK(registry.expire(111) == 1);
}

TEST_CASE("a line's tags join the rule's labels, the rule's winning; a later line must bring the same tag names") {
  hermes::Registry registry = mapped("mappings:\n- match: \"req.*\"\n  name: requests\n  labels:\n    route: \"$1\"\n");
  CHECK(outcome(registry, "req.home:1|c|#env:prod,route:ignored") == "accepted 1");
  CHECK(outcome(registry, "req.home:1|c|#env:dev") == "accepted 1");
  CHECK(outcome(registry, "req.home:1|c") == "label_mismatch 1");
  CHECK(samples(registry) == "requests_total{env=\"dev\",route=\"home\"} 1\nrequests_total{env=\"prod\",route=\"home\"} 1\n");
}

TEST_CASE("a mapped name the config holds feeds the configured metric") {
  hermes::Registry registry = mapped("mappings:\n- match: \"conf.*\"\n  name: configured\n  labels:\n    kind: \"$1\"\n");
  CHECK(outcome(registry, "conf.a:4|g") == "accepted 1");
  CHECK(registry.value("configured", {"a"}) == 4.0);
  CHECK(outcome(registry, "conf.a:4|c") == "type_mismatch 1"); // a counter configured_total beside the gauge
}

TEST_CASE("a mapping file that cannot be used names the file, the line and the problem") {
  CHECK(mapping_error("mappings:\n- match: a.b\n  name: [x\n") ==
        "mapping.yml:4: did not find expected ',' or ']' while parsing a flow sequence");
  CHECK(mapping_error("mappings:\n- match: a.b\n") == "mapping.yml:2: metric mapping didn't set a metric name");
  CHECK(mapping_error("mappings:\n- match: a.b\n  name: 9x\n") ==
        "mapping.yml:3: metric name '9x' is not a metric name ([a-zA-Z_][a-zA-Z0-9_]*, with $1 or ${1})");
  CHECK(mapping_error("mappings:\n- match: a..b\n  name: x\n") == "mapping.yml:2: invalid match: a..b");
  CHECK(mapping_error("mappings:\n- match: a\n  name: x\n  labels:\n    l: v\n") == "mapping.yml:5: invalid label key: l");
  CHECK(mapping_error("mappings:\n- match: \"(\"\n  match_type: regex\n  name: x\n").rfind("mapping.yml:2: invalid regex ( in mapping: ", 0) == 0);
  CHECK(mapping_error("mappings:\n- match: a\n  name: x\n  observer_type: gauge\n") ==
        "mapping.yml:4: observer_type: invalid observer type 'gauge'");
  CHECK(mapping_error("mappings:\n- match: a\n  name: x\n  observer_type: histogram\n  histogram_options:\n    buckets: [2, 1]\n") ==
        "mapping.yml:6: buckets: buckets must increase strictly");
  CHECK(mapping_error("mappings:\n- match: a\n  name: x\n  histogram_options:\n    buckets: [1]\n") ==
        "mapping.yml:5: cannot use summary observer and histogram options at the same time"); // a summary by default
  CHECK(mapping_error("mappings:\n- match: a\n  name: x\n  ttl: soon\n") ==
        "mapping.yml:4: ttl: \"soon\" is not a duration (such as 30s, 5m, 1h30m)");
  CHECK(mapping_error("mappings:\n- match: a\n  name: x\n  observer_type: histogram\n  summary_options: {}\n") ==
        "mapping.yml:5: cannot use histogram observer and summary options at the same time");
  CHECK(mapping_error("a: &x [*x]\n") == "mapping.yml:1: unknown alias *x");
  std::string laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"; // each level ten of the one before: 10^7 nodes at g
  for (const char *level : {"b", "c", "d", "e", "f", "g"}) {
    const std::string before(1, static_cast<char>(level[0] - 1));
    laughs += std::string(level) + ": &" + level + " [*" + before;
    for (int i = 1; i < 10; ++i) laughs += ", *" + before;
    laughs += "]\n";
  }
  CHECK(mapping_error(laughs).find("too deep, or too many nodes once aliases are unfolded") != std::string::npos);
  CHECK(mapping_error("") == "");
}

TEST_CASE("keys Hermes does not act on load with one warning each") {
  const hermes::StatsdMappingFile file = hermes::parse_statsd_mapping(R"(
defaults:
  glob_disable_ordering: false
mappings:
- match: a
  name: x
  summary_options:
    buf_cap: 10
  colour: red
- match: b
  name: y
  colour: blue
)",
                                                                     "m.yml");
  CHECK(file.rules == 2);
  CHECK(file.warnings == std::vector<std::string>{"m.yml:3: defaults.glob_disable_ordering: not implemented by Hermes, ignored",
                                                  "m.yml:8: mappings[].summary_options.buf_cap: not implemented by Hermes, ignored",
                                                  "m.yml:9: mappings[].colour: unknown key, ignored"});
}

TEST_CASE("mapping results are kept per name, their bytes taken from the budget and given back") {
  auto budget = std::make_shared<hermes::MemoryBudget>(64 * 1024 * 1024, 2);
  {
    hermes::Registry registry = mapped("mappings:\n- match: \"a.*\"\n  name: a_$1\n", "", budget);
    const std::size_t before = budget->used();
    CHECK(outcome(registry, "zzz:1|g") == "unknown_metric 1");
    const std::size_t one = budget->used() - before;
    CHECK(one > 0);
    CHECK(outcome(registry, "zzz:2|g") == "unknown_metric 1");
    CHECK(budget->used() - before == one); // the same name again: no new entry
    registry.use_statsd_mapping(nullptr);
    CHECK(budget->used() == before);
  }
  CHECK(budget->used() == 0);
  CHECK(budget->keeps_room());
}

TEST_CASE("a reload keeps the metrics lines made, with their series") {
  hermes::Registry registry = mapped("mappings:\n- match: \"a.*\"\n  name: made\n  labels:\n    slot: \"$1\"\n", R"(, "statsd_undeclared": "accept")");
  CHECK(outcome(registry, "a.one:2|g\nloose:1|c") == "accepted 2");
  const hermes::Registry::ReloadSummary summary = registry.reload(config_with(R"(, "statsd_undeclared": "accept")"));
  CHECK(summary.kept == 3);
  CHECK(registry.value("made", {"one"}) == 2.0);
  CHECK(registry.value("loose_total", {}) == 1.0);
  registry.reload(config_with()); // lines make no metrics any more: theirs go
  CHECK(registry.metric_count() == 1);
}

#else

TEST_CASE("without HERMES_YAML, a mapping file is a ConfigError that says what the build lacks") {
  CHECK_THROWS_WITH_AS(hermes::load_statsd_mapping("/nonexistent/mapping.yml"),
                       "/nonexistent/mapping.yml: a StatsD mapping file is YAML, which this build of Hermes does not read "
                       "(build it with -DHERMES_YAML and -lyaml)",
                       hermes::ConfigError);
}

#endif // HERMES_YAML

TEST_CASE("undeclared metrics take their type from the line and their labels from its tags") {
  hermes::Registry registry(config_with(R"(, "statsd_undeclared": "accept")"));
  CHECK(outcome(registry, "jobs:1|c|#queue:mail\ndepth:7|g\nlatency:250|ms|#route:/\nsizes:3:4|h") == "accepted 5");
  CHECK(outcome(registry, "jobs:1|g") == "type_mismatch 1");
  CHECK(outcome(registry, "jobs:1|c|#other:x") == "label_mismatch 1");
  CHECK(outcome(registry, "jobs:2|c|#queue:mail") == "accepted 1");
  const std::string text = samples(registry);
  CHECK(text.find("jobs_total{queue=\"mail\"} 3\n") != std::string::npos);
  CHECK(text.find("depth 7\n") != std::string::npos);
  CHECK(text.find("latency_bucket{route=\"/\",le=\"0.25\"} 1\n") != std::string::npos);
  CHECK(text.find("sizes_count 2\n") != std::string::npos);
  hermes::Registry summaries(config_with(R"(, "statsd_undeclared": "accept", "statsd_observer_type": "summary")"));
  CHECK(outcome(summaries, "latency:250|ms") == "accepted 1");
  CHECK(samples(summaries) == "latency{quantile=\"0.5\"} 0.25\nlatency{quantile=\"0.9\"} 0.25\nlatency{quantile=\"0.99\"} 0.25\n"
                              "latency_sum 0.25\nlatency_count 1\n");
}

TEST_CASE("undeclared metrics stop at max_undeclared_metrics, as metric_limit") {
  hermes::Registry registry(config_with(R"(, "statsd_undeclared": "accept", "max_undeclared_metrics": 2)"));
  CHECK(outcome(registry, "a:1|g\nb:1|g\nc:1|g\na:2|g") == "accepted 3, metric_limit 1");
  CHECK(registry.metric_count() == 3);
}

TEST_CASE("undeclared metrics take statsd_ttl_seconds and the top-level max_series") {
  hermes::Registry registry(config_with(R"(, "statsd_undeclared": "accept", "statsd_ttl_seconds": 5, "max_series": 1)"));
  CHECK(outcome(registry, "g:1|g|#k:a\ng:1|g|#k:b", 100) == "accepted 1, series_limit 1");
  CHECK(registry.expire(106) == 1);
}

TEST_CASE("without statsd_undeclared, unknown names stay unknown_metric") {
  hermes::Registry registry(config_with());
  CHECK(outcome(registry, "jobs:1|c") == "unknown_metric 1");
  CHECK(test::config_error(R"({"service_name": "s", "statsd_undeclared": "maybe"})") ==
        "config.json: statsd_undeclared: \"maybe\" is not \"accept\" or \"reject\"");
}

TEST_CASE("the state file keeps the metrics lines made") {
  hermes::Registry registry(config_with(R"(, "statsd_undeclared": "accept")"));
  CHECK(outcome(registry, "jobs:3|c|#queue:mail\nlat:1|h") == "accepted 2");
  std::string state;
  registry.save_state(state, 100);
  hermes::Registry restarted(config_with(R"(, "statsd_undeclared": "accept")"));
  const hermes::Registry::RestoreSummary summary = restarted.restore_state(state, 100);
  CHECK(summary.skipped == 0);
  CHECK(restarted.value("jobs_total", {"mail"}) == 3.0);
  CHECK(outcome(restarted, "jobs:1|c|#queue:mail") == "accepted 1");
  CHECK(restarted.value("jobs_total", {"mail"}) == 4.0);
}

#ifdef HERMES_YAML
TEST_CASE("a mapping file of 10,000 glob rules loads within seconds and maps by its index") {
  std::string yaml = "mappings:\n";
  for (int i = 0; i < 10000; ++i)
    yaml += "- match: \"app" + std::to_string(i) + ".*.*\"\n  name: \"app" + std::to_string(i) + "_${2}\"\n  labels:\n    host: \"$1\"\n";
  const auto start = std::chrono::steady_clock::now();
  const hermes::StatsdMappingFile file = hermes::parse_statsd_mapping(yaml, "big.yml");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(file.rules == 10000);
  CHECK(seconds < 3);
  hermes::Registry registry(config_with());
  registry.use_statsd_mapping(file.mapping);
  CHECK(outcome(registry, "app9999.h1.hits:1|c") == "accepted 1");
  CHECK(registry.value("app9999_hits_total", {"h1"}) == 1.0);
}
#endif // HERMES_YAML
