// The memory budget: series, summary windows and /metrics bodies take from it and give
// back, and what would cross it is refused and counted.
#include "helpers.hpp"

#include <random>

namespace {

hermes::Config labelled_config() {
  return hermes::parse_config(R"({"service_name": "s", "ttl_seconds": 10,
    "counters": [{"metric_name": "jobs_total", "labels": ["id"]}],
    "summaries": [{"metric_name": "sizes", "labels": ["id"], "objectives": {"0.5": 0.05, "0.9": 0.01, "0.99": 0.001}}]})",
                              "memory test");
}

std::string job(int id) { return R"({"metric_name": "jobs_total", "payload": {"labels": {"id": ")" + std::to_string(id) + R"("}}})"; }

const char *wide_config = R"({"service_name": "s", "gauges": [{"metric_name": "wide", "labels": ["id"], "max_series": 100000}]})";

// Pushes `series` series of "wide", with label values of `width` bytes and more, in
// batches of 40, a hundred datagrams at a time so that none overflows the receive buffer.
void fill_wide(hermes::Server &server, int series, std::size_t width) {
  std::vector<std::string> batches;
  for (int start = 0; start < series; start += 40) {
    std::string batch = "[";
    for (int id = start; id < start + 40; ++id)
      batch += (id > start ? "," : "") + std::string(R"({"metric_name": "wide", "payload": {"labels": {"id": ")") +
               std::string(width, 'x') + std::to_string(id) + R"("}, "value": 1}})";
    batches.push_back(batch + "]");
    if (batches.size() == 100) test::push(server, batches), batches.clear();
  }
  test::push(server, batches);
}

} // namespace

TEST_CASE("parse_bytes reads bytes and binary suffixes, nothing else") {
  CHECK(hermes::parse_bytes("67108864") == std::optional<std::size_t>(67108864));
  CHECK(hermes::parse_bytes("64MiB") == std::optional<std::size_t>(64u << 20));
  CHECK(hermes::parse_bytes("512 KiB") == std::optional<std::size_t>(512u << 10));
  CHECK(hermes::parse_bytes("2GiB") == std::optional<std::size_t>(std::size_t{2} << 30));
  for (const char *bad : {"", "64MB", "-1", "1.5MiB", "MiB", "64 mib", "99999999999999999999GiB"}) {
    CAPTURE(bad);
    CHECK_FALSE(hermes::parse_bytes(bad).has_value());
  }
}

TEST_CASE("HERMES_MAX_MEMORY wins over max_memory_bytes, which wins over the 64 MiB default") {
  const auto env = [](const char *value) {
    return [value](const char *name) -> const char * { return std::string(name) == "HERMES_MAX_MEMORY" ? value : nullptr; };
  };
  CHECK(hermes::options_from_environment(test::sample_config(), env(nullptr)).max_memory == 64u << 20);
  const hermes::Config config = hermes::parse_config(R"({"service_name": "s", "max_memory_bytes": "16MiB"})", "c");
  CHECK(hermes::options_from_environment(config, env(nullptr)).max_memory == 16u << 20);
  CHECK(hermes::options_from_environment(config, env("20971520")).max_memory == 20u << 20);
  CHECK_THROWS_WITH_AS(hermes::options_from_environment(config, env("lots")),
                       "HERMES_MAX_MEMORY: \"lots\" is not a number of bytes (such as 67108864 or 64MiB)", hermes::UsageError);
  CHECK(test::config_error(R"({"service_name": "s", "max_memory_bytes": -5})") ==
        "config.json: max_memory_bytes: -5 is not a number of bytes (such as 67108864 or \"64MiB\")");
}

TEST_CASE("a new series the budget has no room for is memory_limit; existing series go on, and room comes back") {
  auto budget = std::make_shared<hermes::MemoryBudget>(0);
  const std::size_t one = hermes::detail::series_cost(labelled_config().metrics[0], std::vector<std::string>{"0"}).own;
  *budget = hermes::MemoryBudget(2 * one);
  hermes::Registry registry(labelled_config(), budget);
  CHECK(registry.ingest(job(1), 100).accepted == 1);
  CHECK(registry.ingest(job(2), 100).accepted == 1);
  CHECK(budget->used() == 2 * one);
  const hermes::IngestResult refused = registry.ingest(job(3), 100);
  CHECK(refused.rejected[static_cast<std::size_t>(hermes::Reject::memory_limit)] == 1);
  CHECK(registry.rejected(hermes::Reject::memory_limit) == 1);
  CHECK(registry.ingest(job(1), 105).accepted == 1); // an existing series takes nothing more
  CHECK(registry.value("jobs_total", {"1"}) == std::optional<double>(2));
  CHECK(registry.expire(111) == 1); // series 2, pushed at 100, is past its ttl
  CHECK(budget->used() == one);
  CHECK(registry.ingest(job(3), 111).accepted == 1);
  registry.reload(hermes::parse_config(R"({"service_name": "s", "gauges": [{"metric_name": "other", "labels": ["a"]}]})", "c"));
  CHECK(budget->used() == 0); // the removed metric's series gave their room back
}

TEST_CASE("a summary series takes its worst case at once, and its windows never outgrow it") {
  const hermes::MetricConfig config = labelled_config().metrics[1];
  const std::size_t worst = hermes::worst_case_series_bytes(config);
  CHECK(worst <= 40000); // 64 MiB hold 1,600 of them
  auto budget = std::make_shared<hermes::MemoryBudget>();
  hermes::Registry registry(labelled_config(), budget);
  REQUIRE(registry.ingest(R"({"metric_name": "sizes", "payload": {"labels": {"id": "a"}, "observation": 1}})", 1).accepted == 1);
  CHECK(budget->used() == hermes::detail::series_cost(config, std::vector<std::string>{"a"}).own);
  CHECK(budget->used() >= worst);
  // Values that only ever decrease defeat the targeted-quantile summary: without its
  // entry limit it kept one entry in 40 of them. The window reaches its worst case and
  // never passes it, though each merge holds a stream's entries and a run at once.
  hermes::detail::QuantileWindow window(config, 0);
  const std::size_t limit = hermes::detail::QuantileStream::entry_limit(config.objectives);
  const std::size_t run = hermes::detail::QuantileStream::run_limit;
  const std::size_t most_held = hermes::detail::QuantileWindow::worst_case_bytes(config.objectives) - sizeof window;
  std::size_t held = 0;
  for (int i = 300000; i > 0; --i) {
    window.observe(i, 0);
    REQUIRE(window.memory_entries() <= 5 * limit + run);
    held = std::max(held, window.held_bytes());
    REQUIRE(held <= most_held);
  }
  CHECK(held == most_held);
  window.advance(0);
  CHECK(window.memory_entries() <= 5 * limit);
  CHECK(limit == 186); // {0.5: 0.05, 0.9: 0.01, 0.99: 0.001}
}

TEST_CASE("a summary window that has seen a few observations holds room for a few") {
  const hermes::MetricConfig config = labelled_config().metrics[1];
  hermes::detail::QuantileWindow window(config, 0);
  const std::size_t empty = window.held_bytes(); // its objectives and its five streams
  window.observe(1, 0);
  CHECK(window.held_bytes() - empty == 8 * sizeof(double)); // not the 100 of a full buffer
  for (int i = 0; i < 20; ++i) window.observe(i, 0);
  CHECK(window.held_bytes() - empty == 32 * sizeof(double));
  window.advance(0); // each stream takes the 21, in room for 21 entries
  CHECK(window.held_bytes() - empty == 32 * sizeof(double) + 5 * 21 * 3 * sizeof(double));
}

TEST_CASE("a scrape that comes while another still reads the body shares it; one after it sees what came since") {
  hermes::Server server(hermes::parse_config(wide_config, "c"), test::loopback_options());
  fill_wide(server, 60000, 40);
  // A scraper that reads nothing, with a small window: its 4 MB body waits in Hermes.
  hermes::detail::FileDescriptor stalled(::socket(AF_INET, SOCK_STREAM, 0));
  const int small = 4096;
  ::setsockopt(stalled.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(server.http_port());
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(stalled.get(), reinterpret_cast<sockaddr *>(&address), sizeof address) == 0);
  REQUIRE(::send(stalled.get(), "GET /metrics HTTP/1.0\r\n\r\n", 25, 0) == 25);
  const double before = server.stats().memory_used_bytes;
  REQUIRE(test::pump_until(server, [&] { return server.stats().http_requests.at(200) == 1; }));
  const double one_body = server.stats().memory_used_bytes - before;
  CHECK(one_body > 3e6);
  test::push(server, {R"({"metric_name": "wide", "payload": {"labels": {"id": "new"}, "value": 1}})"});
  const std::string shared = test::body_of(test::http(server, "GET /metrics HTTP/1.0\r\n\r\n"));
  CHECK(shared.find("wide{id=\"new\"}") == std::string::npos); // the body being sent, not a second copy
  const hermes::MetricConfig wide = hermes::parse_config(wide_config, "c").metrics[0];
  const double new_series = static_cast<double>(hermes::detail::series_cost(wide, std::vector<std::string>{"new"}).own);
  CHECK(server.stats().memory_used_bytes - before == one_body + new_series);
  stalled.reset();
  const std::string fresh = test::body_of(test::http(server, "GET /metrics HTTP/1.0\r\n\r\n"));
  CHECK(fresh.find("wide{id=\"new\"} 1\n") != std::string::npos);
  // Written over the memory of the one before, which nobody sends any more: still one body.
  CHECK(server.stats().memory_used_bytes - before <= one_body + new_series + 4096);
}

TEST_CASE("a series flood before the first scrape costs new series, never a scrape, in any format") {
  hermes::Options options = test::loopback_options();
  options.max_memory = hermes::detail::fixed_buffer_bytes + 400 * 1024;
  hermes::Server server(hermes::parse_config(wide_config, "c"), options);
  fill_wide(server, 4000, 60);
  const double refused = static_cast<double>(server.registry().rejected(hermes::Reject::memory_limit));
  CHECK(refused > 0);
  CHECK(static_cast<double>(server.registry().series_count()) + refused == 4000);
  CHECK(server.stats().memory_used_bytes <= server.stats().memory_budget_bytes);
  const char *accepts[] = {"text/plain", "application/openmetrics-text; version=1.0.0",
                           "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"};
  for (int round = 0; round < 2; ++round) {
    for (const char *accept : accepts) {
      CAPTURE(accept);
      const std::string response = test::http(server, std::string("GET /metrics HTTP/1.0\r\nAccept: ") + accept + "\r\n\r\n");
      CHECK(response.rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
      CHECK(server.stats().memory_used_bytes <= server.stats().memory_budget_bytes);
    }
  }
  // Still full: one more series as large as those refused is refused (the scrapes took
  // nothing from the series' room), and the scrape after it is answered.
  test::push(server, {R"({"metric_name": "wide", "payload": {"labels": {"id": ")" + std::string(60, 'x') + R"(9999"}, "value": 1}})"});
  CHECK(static_cast<double>(server.registry().rejected(hermes::Reject::memory_limit)) == refused + 1);
  const std::string body = test::body_of(test::http(server, "GET /metrics HTTP/1.0\r\n\r\n"));
  CHECK(body.find("hermes_samples_rejected_total{reason=\"memory_limit\"} " + hermes::detail::format_double(refused + 1) + "\n") !=
        std::string::npos);
  CHECK(server.stats().http_requests.at(503) == 0);
}

TEST_CASE("a budget with no room for the metrics without labels stops start-up, and a reload that needs more fails") {
  auto budget = std::make_shared<hermes::MemoryBudget>(4096, 2);
  CHECK_THROWS_WITH_AS(hermes::Registry(test::sample_config(), budget),
                       doctest::Contains("the memory budget of 4096 bytes has no room for the config's metrics"), hermes::ConfigError);
  CHECK(budget->used() == 0);
  CHECK(budget->body_room() == 0);
  const hermes::Config small = hermes::parse_config(R"({"service_name": "s", "gauges": [{"metric_name": "one"}]})", "c");
  // Room for this config and a little more, not for a hundred more metrics without labels.
  budget = std::make_shared<hermes::MemoryBudget>(64 * 1024, 2);
  hermes::Registry registry(small, budget);
  registry.ingest(R"({"metric_name": "one", "payload": {"value": 5}})");
  const std::size_t used = budget->used(), room = budget->body_room();
  std::string many = R"({"service_name": "s", "histograms": [)";
  for (int i = 0; i < 100; ++i) many += std::string(i ? "," : "") + R"({"metric_name": "h)" + std::to_string(i) + R"(", "buckets": [1, 2, 3]})";
  many += "], \"gauges\": [{\"metric_name\": \"one\"}]}";
  CHECK_THROWS_WITH_AS(registry.reload(hermes::parse_config(many, "c")),
                       doctest::Contains("the memory budget of 65536 bytes has no room for the config's metrics"), hermes::ConfigError);
  CHECK(budget->used() == used);
  CHECK(budget->body_room() == room);
  CHECK(registry.value("one", {}) == std::optional<double>(5));
  CHECK(budget->keeps_room());
}

namespace {

// Label values that escape, and numbers as long as numbers are written.
std::string random_label(std::mt19937 &random) {
  static const char *pieces[] = {"a", "\\\\", "\\n", "\\\"", "\u00e9", "route/", "x"};
  std::string value;
  for (int n = static_cast<int>(random() % 6); n >= 0; --n) value += pieces[random() % std::size(pieces)];
  return value;
}

double random_value(std::mt19937 &random) {
  static const double values[] = {-2.2250738585072014e-308, 1.7976931348623157e308, -0.00012345678901234567, 123456.78901234567,
                                  0, 1, -1e-300, 5e-324, 0.1, 1e6};
  return values[random() % std::size(values)];
}

const char *invariant_configs[] = {
    R"({"service_name": "one", "ttl_seconds": 5,
        "counters": [{"metric_name": "jobs_total", "labels": ["queue"], "metric_description": "a \\ b\n \"c\""}],
        "gauges": [{"metric_name": "depth", "labels": ["queue", "host"]}, {"metric_name": "plain"}],
        "histograms": [{"metric_name": "latency", "labels": ["route"]},
                       {"metric_name": "sizes", "labels": ["route"], "native": true, "native_max_buckets": 20, "buckets": [-1, 0, 1]}],
        "summaries": [{"metric_name": "quantiles", "labels": ["route"], "objectives": {"0.5": 0.05, "0.99": 0.001}}]})",
    R"({"service_name": "two and more", "ttl_seconds": 3,
        "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}],
        "gauges": [{"metric_name": "depth", "labels": ["queue"]}],
        "histograms": [{"metric_name": "sizes", "labels": ["route"], "native": true, "native_max_buckets": 20, "buckets": [-1, 0, 1]}],
        "summaries": [{"metric_name": "other", "objectives": {"0.9": 0.01}}]})"};

std::string random_sample(std::mt19937 &random) {
  static const char *metrics[][2] = {{"jobs_total", "queue"}, {"depth", "queue"}, {"latency", "route"},
                                     {"sizes", "route"},      {"quantiles", "route"}, {"plain", ""}, {"other", ""}};
  const auto &metric = metrics[random() % std::size(metrics)];
  std::string labels = "{}";
  if (*metric[1]) labels = std::string(R"({")") + metric[1] + R"(": ")" + random_label(random) + R"(")" +
                           (std::string(metric[0]) == "depth" ? R"(, "host": "h")" : "") + "}";
  return std::string(R"({"metric_name": ")") + metric[0] + R"(", "payload": {"labels": )" + labels + R"(, "value": )" +
         hermes::detail::format_double(std::fabs(random_value(random))) + "}}";
}

} // namespace

TEST_CASE("after any sequence of admissions, growth, expiry and reloads, used + room for bodies stays within the budget") {
  std::mt19937 random(20);
  for (const std::size_t limit : {std::size_t{48} * 1024, std::size_t{160} * 1024, std::size_t{1} << 20}) {
    CAPTURE(limit);
    auto budget = std::make_shared<hermes::MemoryBudget>(limit, 2);
    int config = 0;
    hermes::Registry registry(hermes::parse_config(invariant_configs[config], "c"), budget);
    double now = 1000;
    std::size_t bodies_checked = 0;
    std::vector<std::unique_ptr<hermes::detail::BudgetedBody>> alive; // bodies in flight across steps
    for (int step = 0; step < 3000; ++step) {
      const auto what = random() % 100;
      if (what < 80) {
        registry.ingest(random_sample(random), now);
      } else if (what < 90) {
        now += static_cast<double>(random() % 3);
        registry.expire(now);
      } else if (what < 93) {
        config = 1 - config;
        try {
          registry.reload(hermes::parse_config(invariant_configs[config], "c"));
        } catch (const hermes::ConfigError &) {
          config = 1 - config; // no room: the old config stays
        }
      } else if (what < 97 && alive.size() < budget->bodies()) {
        // While fewer bodies than the room holds are in flight, one more always fits,
        // whatever expired or came since the others were made; each is within its bound.
        alive.push_back(std::make_unique<hermes::detail::BudgetedBody>(*budget));
        const std::size_t bound = budget->body_bound();
        REQUIRE(alive.back()->reserve(bound));
        hermes::render_metrics(alive.back()->text, registry, static_cast<hermes::Format>(random() % 3));
        REQUIRE(alive.back()->text.size() < bound); // and its NUL
        REQUIRE(alive.back()->settle());
        ++bodies_checked;
      } else if (!alive.empty()) {
        alive.erase(alive.begin() + static_cast<std::ptrdiff_t>(random() % alive.size())); // its scraper is done
      }
      REQUIRE(budget->keeps_room());
      REQUIRE(budget->used() <= limit);
    }
    CHECK(bodies_checked > 40);
    if (limit < (1 << 20)) CHECK(registry.rejected(hermes::Reject::memory_limit) > 0);
  }
}

TEST_CASE("a native histogram's protobuf message stays within its bound at its most buckets and largest counts") {
  const hermes::MetricConfig config = hermes::parse_config(
      R"({"service_name": "s", "histograms": [{"metric_name": "n", "labels": ["k"], "native": true, "native_max_buckets": 20}]})", "c").metrics[0];
  const std::vector<std::string> labels{"v"};
  for (const int gap : {1, 2, 3, 4}) { // 2 and 3: empty buckets' deltas; 4 and more: a span per bucket
    CAPTURE(gap);
    hermes::detail::Series series = hermes::detail::new_series(config, 1000);
    hermes::detail::NativeHistogram &native = *series.distribution->native;
    native.schema = hermes::detail::native_schema_min;
    native.zero_count = UINT64_MAX;
    for (int i = 0; i < 134; ++i) { // the most a side holds at schema -4, counts that swing as far as they can
      // Deltas of 2^62 (ten bytes) between neighbours, or into and out of empty buckets.
      const std::uint64_t count = gap > 1 || i % 2 ? std::uint64_t{1} << 62 : 1;
      native.positive.push_back({-67 + i * gap, count});
      native.negative.push_back({-67 + i * gap, count});
    }
    series.distribution->count = UINT64_MAX;
    series.distribution->sum = -2.2250738585072014e-308;
    series.created = 1.7640000001234567e9;
    std::string body;
    hermes::detail::ProtobufExposition out(body);
    out.family(config.name, config.help, config.type);
    const std::size_t head = body.size();
    out.series(config, labels, series);
    CHECK(body.size() - head <= hermes::detail::series_cost(config, labels).body);
    if (gap == 2 || gap == 3) // the patterns that come nearest the bound
      CHECK((body.size() - head) * 4 > hermes::detail::series_cost(config, labels).body * 3);
  }
}

TEST_CASE("a body never outgrows its bound: the longest numbers, escaped labels, native buckets, every format") {
  std::mt19937 random(21);
  auto budget = std::make_shared<hermes::MemoryBudget>(SIZE_MAX, 1);
  hermes::Registry registry(hermes::parse_config(invariant_configs[0], "c"), budget);
  for (int i = 0; i < 400; ++i) registry.ingest(random_sample(random), hermes::Now(1000, 1.7640000001234567e9));
  for (int i = 0; i < 2000; ++i) // a native histogram at its most buckets, both signs
    registry.ingest(R"({"metric_name": "sizes", "payload": {"labels": {"route": "n"}, "observation": )" +
                        hermes::detail::format_double((i % 2 ? -1 : 1) * std::ldexp(1.0, i % 2000 - 1000)) + "}}",
                    1000);
  registry.expire(1000);
  for (const hermes::Format format : {hermes::Format::text, hermes::Format::openmetrics, hermes::Format::protobuf}) {
    const std::string body = hermes::render_metrics(registry, format);
    CAPTURE(static_cast<int>(format));
    CHECK(body.size() < budget->body_bound());
  }
  std::string state;
  registry.save_state(state, 1000);
  CHECK(state.size() <= registry.state_size_bound());
  // A bound, and not a wild one: counters with short labels and values, as most are.
  hermes::Registry counters(labelled_config(), std::make_shared<hermes::MemoryBudget>(SIZE_MAX, 1));
  for (int i = 0; i < 1000; ++i) counters.ingest(job(i), 1000);
  const std::string body = hermes::render_metrics(counters, hermes::Format::openmetrics);
  CHECK(body.size() * 3 > hermes::detail::Renderer::bound(counters));
}

TEST_CASE("a budget below the fixed buffers stops start-up with what they need") {
  hermes::Options options = test::loopback_options();
  options.max_memory = 1 << 20;
  CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options),
                       ("HERMES_MAX_MEMORY: 1048576 bytes is less than the " + std::to_string(hermes::detail::fixed_buffer_bytes) +
                        " bytes of Hermes' fixed buffers").c_str(),
                       hermes::UsageError);
}
