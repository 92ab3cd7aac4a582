// StatsD lines over TCP: the stream cut into lines, then the listener over real sockets.
#include "helpers.hpp"

#include <map>
#include <random>
#include <string>
#include <vector>

using hermes::detail::StatsdStream;

namespace {

// What a stream gives when fed `pieces` one after another, each run of lines as one string.
struct Fed {
  std::vector<std::string> runs;
  bool fits = true;
};

Fed feed(StatsdStream &stream, const std::vector<std::string> &pieces) {
  Fed fed;
  for (const std::string &piece : pieces) {
    fed.fits = stream.feed(piece, [&](std::string_view lines) { fed.runs.emplace_back(lines); });
    if (!fed.fits) break;
  }
  return fed;
}

std::vector<std::string> finish(StatsdStream &stream) {
  std::vector<std::string> last;
  stream.finish([&](std::string_view line) { last.emplace_back(line); });
  return last;
}

std::uint64_t closed(const hermes::ServerStats &stats, hermes::TcpClose reason) {
  return stats.statsd_tcp_closed[static_cast<std::size_t>(reason)];
}
std::uint64_t refused(const hermes::ServerStats &stats, hermes::TcpRefusal reason) {
  return stats.statsd_tcp_refused[static_cast<std::size_t>(reason)];
}

hermes::Options tcp_options(std::vector<std::string> *log = nullptr) {
  hermes::Options options = test::loopback_options(log);
  options.statsd_tcp_port = 0;
  return options;
}

hermes::Config counter_config() {
  return hermes::parse_config(R"({"service_name": "s", "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}],
    "gauges": [{"metric_name": "depth"}]})",
                              "test");
}

std::optional<double> jobs(const hermes::Server &server, const std::string &queue) {
  return server.registry().value("jobs_total", {queue});
}

} // namespace

TEST_CASE("a stream gives whole lines as they arrive, and holds the line not yet whole") {
  StatsdStream stream;
  const Fed fed = feed(stream, {"jobs:1|c\ndepth:", "5|g\r\njobs:2|c\njo", "bs:3|c", "\n"});
  CHECK(fed.fits);
  CHECK(fed.runs == std::vector<std::string>{"jobs:1|c\n", "depth:5|g\r", "jobs:2|c\n", "jobs:3|c"});
  CHECK(stream.held() == 0);
  CHECK(finish(stream).empty());
}

TEST_CASE("the last line, without a newline, is taken when the stream ends, as statsd_exporter takes it") {
  StatsdStream stream;
  CHECK(feed(stream, {"jobs:1|c\njobs:2|c"}).runs == std::vector<std::string>{"jobs:1|c\n"});
  CHECK(stream.held() == 8);
  CHECK(finish(stream) == std::vector<std::string>{"jobs:2|c"});
  CHECK(stream.held() == 0);
  CHECK(finish(stream).empty()); // nothing twice
}

TEST_CASE("a line of HERMES_MAX_DATAGRAM_SIZE bytes is taken, one byte more ends the stream") {
  const std::size_t longest = HERMES_MAX_DATAGRAM_SIZE;
  const std::string line(longest, 'x');
  SUBCASE("whole in one piece") {
    StatsdStream stream;
    CHECK(feed(stream, {line + "\n", line + "\r\n"}).runs == std::vector<std::string>{line + "\n", line + "\r\n"});
    StatsdStream longer;
    const Fed fed = feed(longer, {"a:1|c\n" + line + "x\nb:1|c\n"});
    CHECK_FALSE(fed.fits);
    CHECK(fed.runs == std::vector<std::string>{"a:1|c\n"}); // the lines before it are taken, none after
  }
  SUBCASE("in pieces, held") {
    StatsdStream stream;
    const Fed fed = feed(stream, {line.substr(0, 100), line.substr(100), "\r", "\n"});
    CHECK(fed.fits);
    CHECK(fed.runs == std::vector<std::string>{line + "\r"});
    CHECK(stream.capacity() <= StatsdStream::most_held - 1);
  }
  SUBCASE("too long is seen as soon as it is, without waiting for a newline") {
    StatsdStream stream;
    CHECK_FALSE(feed(stream, {line.substr(0, 100), line.substr(100) + "x"}).fits);
    StatsdStream ending_in_cr; // a '\r' may still be a line end, one more byte may not
    CHECK(feed(ending_in_cr, {line, "\r"}).fits);
    CHECK_FALSE(feed(ending_in_cr, {"x"}).fits);
    StatsdStream cr_then_more;
    CHECK_FALSE(feed(cr_then_more, {line + "\rx\n"}).fits);
  }
}

TEST_CASE("the held line's memory stays within its bound however the bytes come") {
  StatsdStream stream;
  std::string piece;
  for (std::size_t size = 1; size < HERMES_MAX_DATAGRAM_SIZE; size += 97) {
    for (std::size_t fed = 0; fed < size; fed += 13) {
      REQUIRE(stream.feed(std::string(std::min<std::size_t>(13, size - fed), 'y'), [](std::string_view) {}));
      REQUIRE(stream.capacity() <= StatsdStream::most_held - 1);
    }
    REQUIRE(stream.feed("\n", [](std::string_view) {}));
    REQUIRE(stream.held() == 0);
  }
}

TEST_CASE("however a stream is cut into reads, the same lines come out, each line's bytes once and in order") {
  std::mt19937 random(23);
  for (int round = 0; round < 2000; ++round) {
    std::string input; // lines of 0 to 60 bytes, some ending in "\r\n", some in "\n", the last maybe in nothing
    const int lines = std::uniform_int_distribution<int>(0, 12)(random);
    for (int i = 0; i < lines; ++i) {
      input += std::string(std::uniform_int_distribution<std::size_t>(0, 60)(random), static_cast<char>('a' + i));
      if (i + 1 < lines || random() % 2) input += random() % 3 == 0 ? "\r\n" : "\n";
    }
    std::string whole; // what a stream given everything at once yields
    StatsdStream at_once;
    REQUIRE(at_once.feed(input, [&](std::string_view run) { whole += run; }));
    at_once.finish([&](std::string_view last) { whole += std::string(last) + "|end"; });
    StatsdStream stream; // the same in random pieces, each run of lines ending in a line end
    std::string pieces;
    for (std::size_t at = 0; at < input.size();) {
      const std::size_t size = std::uniform_int_distribution<std::size_t>(1, 40)(random);
      REQUIRE(stream.feed(std::string_view(input).substr(at, size), [&](std::string_view run) {
        pieces += run;
        if (run.back() != '\n') pieces += '\n'; // a held line is given without its '\n'
      }));
      at += size;
    }
    stream.finish([&](std::string_view last) { pieces += std::string(last) + "|end"; });
    CHECK(pieces == whole);
  }
}

TEST_CASE("StatsD lines over TCP are applied as over UDP, with the same counts") {
  std::vector<std::string> log;
  hermes::Server server(counter_config(), tcp_options(&log));
  REQUIRE(server.statsd_tcp_port() != 0);
  CHECK(log.front().find(" statsd_tcp=127.0.0.1:" + std::to_string(server.statsd_tcp_port()) + " ") != std::string::npos);
  test::RawClient client(server.statsd_tcp_port());
  client.send("jobs:1|c|#queue:mail\r\ndepth:5|g\n{\"metric_name\": \"depth\"}\nnope:1|c\n\njobs:2|c|#queue:mail");
  REQUIRE(test::pump_until(server, [&] { return server.registry().accepted() == 2; }));
  CHECK(server.registry().rejected(hermes::Reject::unknown_metric) == 1);
  CHECK(server.registry().rejected(hermes::Reject::malformed_sample) == 1); // a JSON line is a bad StatsD line
  CHECK(server.stats().statsd_tcp_connections == 1);
  client.close(); // the last line, without a newline, is taken at the end
  REQUIRE(test::pump_until(server, [&] { return server.stats().statsd_tcp_connections == 0; }));
  CHECK(jobs(server, "mail") == 3);
  CHECK(server.registry().value("depth", {}) == 5);
  CHECK(server.registry().received(hermes::Wire::statsd) == 5);
  CHECK(server.registry().received(hermes::Wire::json) == 0);
  const hermes::ServerStats stats = server.stats();
  CHECK(stats.statsd_tcp_accepted == 1);
  CHECK(closed(stats, hermes::TcpClose::end) == 1);
  CHECK(stats.udp_packets == 0);
}

TEST_CASE("a line longer than a datagram may be is too_large and closes its connection; others go on") {
  hermes::Server server(counter_config(), tcp_options());
  test::RawClient good(server.statsd_tcp_port()), bad(server.statsd_tcp_port());
  bad.send("jobs:1|c|#queue:bad\njobs:1|c|#queue:" + std::string(HERMES_MAX_DATAGRAM_SIZE, 'x'));
  REQUIRE(test::pump_until(server, [&] { return closed(server.stats(), hermes::TcpClose::too_large) == 1; }));
  CHECK(bad.read_available()); // closed by the server
  CHECK(server.registry().rejected(hermes::Reject::too_large) == 1);
  CHECK(jobs(server, "bad") == 1);
  good.send("jobs:4|c|#queue:good\n");
  REQUIRE(test::pump_until(server, [&] { return jobs(server, "good") == 4; }));
  CHECK(server.stats().statsd_tcp_connections == 1);
}

TEST_CASE("connections past the limit, or from outside udp_allow, are closed at once and counted") {
  hermes::Options options = tcp_options();
  options.statsd_tcp_max_connections = 2;
  hermes::Server server(counter_config(), options);
  test::RawClient first(server.statsd_tcp_port()), second(server.statsd_tcp_port()), third(server.statsd_tcp_port());
  REQUIRE(test::pump_until(server, [&] { return refused(server.stats(), hermes::TcpRefusal::connection_limit) == 1; }));
  CHECK(server.stats().statsd_tcp_accepted == 2);
  CHECK(server.stats().statsd_tcp_connections == 2);
  CHECK(test::pump_until(server, [&] { return third.read_available(); }));
  first.send("jobs:1|c|#queue:a\n");
  second.send("jobs:1|c|#queue:b\n");
  REQUIRE(test::pump_until(server, [&] { return server.registry().accepted() == 2; }));

  hermes::Options elsewhere = tcp_options();
  hermes::AddressRange range;
  REQUIRE(hermes::parse_address_range("10.0.0.0/8", range).empty());
  elsewhere.udp_allow.add(range, "10.0.0.0/8");
  hermes::Server guarded(counter_config(), elsewhere);
  test::RawClient outsider(guarded.statsd_tcp_port());
  outsider.send("jobs:1|c|#queue:a\n");
  REQUIRE(test::pump_until(guarded, [&] { return refused(guarded.stats(), hermes::TcpRefusal::forbidden_source) == 1; }));
  CHECK(guarded.registry().accepted() == 0);
  CHECK(guarded.stats().statsd_tcp_accepted == 0);
}

TEST_CASE("a connection that completes no line within the idle time is closed, its start taken as a last line") {
  hermes::Options options = tcp_options();
  options.statsd_tcp_idle_seconds = 0.2;
  hermes::Server server(counter_config(), options);
  test::RawClient quiet(server.statsd_tcp_port()), talking(server.statsd_tcp_port());
  quiet.send("jobs:7|c|#queue:q"); // never a newline
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(150)) server.poll_once(5);
  talking.send("jobs:1|c|#queue:t\n"); // a whole line: its idle time starts again
  REQUIRE(test::pump_until(server, [&] { return closed(server.stats(), hermes::TcpClose::idle) == 1; }));
  CHECK(jobs(server, "q") == 7);
  CHECK(server.stats().statsd_tcp_connections == 1);
  REQUIRE(test::pump_until(server, [&] { return closed(server.stats(), hermes::TcpClose::idle) == 2; }));
  CHECK(server.stats().statsd_tcp_connections == 0);
}

TEST_CASE("each connection takes its buffer from the memory budget first; without room it is refused") {
  const hermes::Server probe(counter_config(), tcp_options());
  const std::size_t committed = static_cast<std::size_t>(probe.stats().memory_committed_bytes);
  hermes::Options options = tcp_options();
  options.max_memory = committed + hermes::detail::StatsdTcpInput::connection_bytes * 3 / 2; // room for one
  hermes::Server server(counter_config(), options);
  const double before = server.stats().memory_used_bytes;
  test::RawClient first(server.statsd_tcp_port()), second(server.statsd_tcp_port());
  REQUIRE(test::pump_until(server, [&] { return refused(server.stats(), hermes::TcpRefusal::memory_limit) == 1; }));
  CHECK(server.stats().memory_used_bytes == before + hermes::detail::StatsdTcpInput::connection_bytes);
  CHECK(server.stats().memory_committed_bytes <= static_cast<double>(options.max_memory));
  CHECK(test::pump_until(server, [&] { return server.stats().statsd_tcp_accepted == 1; }));
  first.close();
  REQUIRE(test::pump_until(server, [&] { return server.stats().statsd_tcp_connections == 0; }));
  CHECK(server.stats().memory_used_bytes == before);
  CHECK(server.render().find("hermes_statsd_tcp_connections_refused_total{reason=\"memory_limit\"} 1\n") != std::string::npos);
}

TEST_CASE("without a TCP port there is no listener and no TCP families") {
  hermes::Server server(counter_config(), test::loopback_options());
  CHECK(server.statsd_tcp_port() == 0);
  CHECK(server.render().find("hermes_statsd_tcp") == std::string::npos);
}

TEST_CASE("the TCP options come from the environment") {
  const auto options = [](std::map<std::string, std::string> variables) {
    return hermes::options_from_environment(counter_config(), [variables](const char *name) -> const char * {
      const auto found = variables.find(name);
      return found == variables.end() ? nullptr : found->second.c_str();
    });
  };
  const hermes::Options unset = options({});
  CHECK_FALSE(unset.statsd_tcp_port.has_value());
  CHECK(unset.statsd_tcp_max_connections == HERMES_MAX_STATSD_CONNECTIONS);
  CHECK(unset.statsd_tcp_idle_seconds == HERMES_STATSD_TCP_IDLE_S);
  const hermes::Options set = options(
      {{"HERMES_STATSD_TCP_PORT", "9125"}, {"HERMES_MAX_STATSD_CONNECTIONS", "10"}, {"HERMES_STATSD_TCP_IDLE_SECONDS", "0"}});
  CHECK(set.statsd_tcp_port == 9125);
  CHECK(set.statsd_tcp_max_connections == 10);
  CHECK(set.statsd_tcp_idle_seconds == 0);
  CHECK(options({{"HERMES_STATSD_TCP_IDLE_SECONDS", "1.5"}}).statsd_tcp_idle_seconds == 1.5);
  CHECK_THROWS_WITH_AS(options({{"HERMES_MAX_STATSD_CONNECTIONS", "0"}}), "HERMES_MAX_STATSD_CONNECTIONS: \"0\" is not a number from 1 to 1000000",
                       hermes::UsageError);
  CHECK_THROWS_AS(options({{"HERMES_STATSD_TCP_IDLE_SECONDS", "-1"}}), hermes::UsageError);
  CHECK_THROWS_AS(options({{"HERMES_STATSD_TCP_PORT", "65536"}}), hermes::UsageError);
}
