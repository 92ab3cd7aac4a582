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
  const std::size_t one = hermes::detail::series_bytes(labelled_config().metrics[0], std::vector<std::string>{"0"});
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
  CHECK(budget->used() == hermes::detail::series_bytes(config, std::vector<std::string>{"a"}));
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
  const double new_series = static_cast<double>(hermes::detail::series_bytes(wide, std::vector<std::string>{"new"}));
  CHECK(server.stats().memory_used_bytes - before == one_body + new_series);
  stalled.reset();
  const std::string fresh = test::body_of(test::http(server, "GET /metrics HTTP/1.0\r\n\r\n"));
  CHECK(fresh.find("wide{id=\"new\"} 1\n") != std::string::npos);
  // Written over the memory of the one before, which nobody sends any more: still one body.
  CHECK(server.stats().memory_used_bytes - before <= one_body + new_series + 4096);
}

TEST_CASE("with the budget full of series, a scrape is 503 with Retry-After, and the server goes on") {
  hermes::Options options = test::loopback_options();
  options.max_memory = hermes::detail::fixed_buffer_bytes + 200 * 1024;
  hermes::Server server(hermes::parse_config(wide_config, "c"), options);
  fill_wide(server, 4000, 60);
  CHECK(server.registry().rejected(hermes::Reject::memory_limit) > 0);
  CHECK(server.stats().memory_used_bytes <= server.stats().memory_budget_bytes);
  const std::string refused = test::http(server, "GET /metrics HTTP/1.0\r\n\r\n");
  CHECK(refused == "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\n"
                   "Retry-After: 1\r\nConnection: close\r\n\r\n503 Service Unavailable\n");
  CHECK(server.stats().memory_used_bytes <= server.stats().memory_budget_bytes);
  CHECK(test::body_of(test::http(server, "GET /-/healthy HTTP/1.0\r\n\r\n")) == "Hermes is Healthy.\n");
}

TEST_CASE("a budget below the fixed buffers stops start-up with what they need") {
  hermes::Options options = test::loopback_options();
  options.max_memory = 1 << 20;
  CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options),
                       ("HERMES_MAX_MEMORY: 1048576 bytes is less than the " + std::to_string(hermes::detail::fixed_buffer_bytes) +
                        " bytes of Hermes' fixed buffers").c_str(),
                       hermes::UsageError);
}
