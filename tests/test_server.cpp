// The server over real sockets on loopback, stepped from the test's own thread.
#include "helpers.hpp"

#include <thread>
#include <tuple>

using test::body_of;
using test::http;

namespace {

bool contains_line(const std::string &body, const std::string &line) {
  return ("\n" + body).find("\n" + line + "\n") != std::string::npos;
}

std::string scrape(hermes::Server &server) { return body_of(http(server, "GET /metrics HTTP/1.0\r\n\r\n")); }

// "many" renders before "sample_counter", in more than one step of a render.
hermes::Config many_series_config() {
  return hermes::parse_config(R"({"service_name": "svc",
    "gauges": [{"metric_name": "many", "labels": ["id"], "max_series": 5000}],
    "counters": [{"metric_name": "sample_counter", "labels": ["label_1"]}]})",
                              "test");
}

// A series of "many" for one more than a render's step of series, 50 to a datagram.
void push_many_series(hermes::Server &server) {
  std::vector<std::string> batches;
  for (int start = 0; start < HERMES_RENDER_PAUSE_STRIDE + 50; start += 50) {
    std::string batch = "[";
    for (int id = start; id < start + 50; ++id)
      batch += (id > start ? "," : "") + std::string(R"({"metric_name": "many", "payload": {"labels": {"id": ")") +
               std::to_string(id) + R"("}, "value": 1}})";
    batches.push_back(batch + "]");
  }
  test::push(server, batches);
}

} // namespace

TEST_CASE("samples pushed over UDP appear at /metrics") {
  std::vector<std::string> log;
  hermes::Server server(test::sample_config(), test::loopback_options(&log));
  test::push(server, {R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "testing label 1"}}})",
                      R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "testing label 1"}}})",
                      R"({"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"}, "value": 65.4}})",
                      R"([{"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x"}, "value": 5}}, {"metric_name": "nope"}])",
                      "{not json", "sample_counter:3|c|#label_1:x\nsample_gauge:-1|g|#label_2:b,label_1:a\nnope:1|c"});
  const std::string body = scrape(server);
  CHECK(contains_line(body, "sample_counter{label_1=\"testing label 1\"} 2"));
  CHECK(contains_line(body, "sample_counter{label_1=\"x\"} 8"));
  CHECK(contains_line(body, "sample_gauge{label_1=\"a\",label_2=\"b\"} 64.4"));
  CHECK(contains_line(body, "hermes_udp_packets_total 6"));
  CHECK(contains_line(body, "hermes_samples_accepted_total 6"));
  CHECK(contains_line(body, "hermes_samples_rejected_total{reason=\"unknown_metric\"} 2"));
  CHECK(contains_line(body, "hermes_samples_rejected_total{reason=\"malformed_json\"} 1"));
  CHECK(contains_line(body, "hermes_samples_received_total{format=\"json\"} 6"));
  CHECK(contains_line(body, "hermes_samples_received_total{format=\"statsd\"} 3"));
  CHECK(contains_line(body, "hermes_series 3"));
  CHECK(contains_line(body, "hermes_build_info{version=\"" HERMES_VERSION_STR "\",service=\"testing-service\"} 1"));
}

TEST_CASE("a datagram of exactly the limit is read; one byte more is too_large and never parsed") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  std::string fits = R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x"}}})";
  fits += std::string(HERMES_MAX_DATAGRAM_SIZE - fits.size(), ' ');
  std::string too_large = R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "y"}}})";
  too_large += std::string(HERMES_MAX_DATAGRAM_SIZE + 1 - too_large.size(), ' ');
  test::push(server, {fits, too_large, std::string(65507, '{')});
  CHECK(server.registry().value("sample_counter", {"x"}) == std::optional<double>(1));
  CHECK_FALSE(server.registry().value("sample_counter", {"y"}).has_value());
  CHECK(server.registry().rejected(hermes::Reject::too_large) == 2);
  CHECK(server.registry().rejected(hermes::Reject::malformed_json) == 0);
}

TEST_CASE("HTTP answers: status, headers and bodies") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  const std::string metrics = http(server, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const std::string body = body_of(metrics);
  CHECK(metrics.rfind("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n",
                      0) == 0);
  CHECK(body.back() == '\n');
  const std::string head = http(server, "HEAD /metrics HTTP/1.0\r\n\r\n");
  CHECK(head.rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
  CHECK(body_of(head).empty());
  CHECK(head.find("Content-Length: 0\r\n") == std::string::npos);
  CHECK(http(server, "HEAD /-/healthy HTTP/1.0\r\n\r\n") ==
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nConnection: close\r\n\r\n");
  CHECK(http(server, "GET /-/healthy HTTP/1.0\r\n\r\n") ==
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nConnection: close\r\n\r\nHermes is Healthy.\n");
  CHECK(body_of(http(server, "GET /-/ready HTTP/1.0\r\n\r\n")) == "Hermes is Ready.\n");
  CHECK(body_of(http(server, "GET / HTTP/1.0\r\n\r\n")).find("/metrics") != std::string::npos);
  CHECK(http(server, "GET /other HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 404 Not Found\r\n", 0) == 0);
  const std::string post = http(server, "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
  CHECK(post.rfind("HTTP/1.0 405 Method Not Allowed\r\n", 0) == 0);
  CHECK(post.find("\r\nAllow: GET, HEAD\r\n") != std::string::npos);
  CHECK(http(server, "BLAH\r\n\r\n").rfind("HTTP/1.0 400 Bad Request\r\n", 0) == 0);
  CHECK(http(server, "GET / HTTP/3.0\r\n\r\n").rfind("HTTP/1.0 505 HTTP Version Not Supported\r\n", 0) == 0);
  const std::string huge = "GET /metrics HTTP/1.0\r\nX-Fill: " + std::string(HERMES_MAX_REQUEST_HEAD, 'a') + "\r\n\r\n";
  CHECK(http(server, huge).rfind("HTTP/1.0 431 Request Header Fields Too Large\r\n", 0) == 0);
  const std::string counted = scrape(server);
  CHECK(contains_line(counted, "hermes_http_requests_total{code=\"200\"} 6"));
  CHECK(contains_line(counted, "hermes_http_requests_total{code=\"404\"} 1"));
  CHECK(contains_line(counted, "hermes_http_requests_total{code=\"405\"} 1"));
  CHECK(contains_line(counted, "hermes_http_requests_total{code=\"400\"} 1"));
  CHECK(contains_line(counted, "hermes_http_requests_total{code=\"431\"} 1"));
  CHECK(contains_line(counted, "hermes_http_requests_total{code=\"505\"} 1"));
  CHECK(contains_line(counted, "hermes_http_requests_total{code=\"503\"} 0"));
}

TEST_CASE("a request head that arrives in pieces is answered once whole") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  test::RawClient client(server.http_port());
  for (const char *piece : {"GET /-/rea", "dy HTTP/1.0\r", "\nHost: x\r\n", "\r", "\n"}) {
    client.send(piece);
    for (int i = 0; i < 5; ++i) server.poll_once(1);
  }
  CHECK(body_of(client.finish(server)) == "Hermes is Ready.\n");
}

TEST_CASE("a slow client stalls neither UDP ingest nor other scrapes") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  test::RawClient slow(server.http_port());
  slow.send("GET /metr");
  server.poll_once(1);
  test::push(server, {R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "during"}}})"});
  CHECK(server.registry().value("sample_counter", {"during"}) == std::optional<double>(1));
  CHECK(contains_line(scrape(server), "sample_counter{label_1=\"during\"} 1"));
  slow.send("ics HTTP/1.0\r\n\r\n");
  CHECK(contains_line(body_of(slow.finish(server)), "sample_counter{label_1=\"during\"} 1"));
}

TEST_CASE("when every connection is taken, the oldest idle one makes room") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  std::vector<std::unique_ptr<test::RawClient>> idle;
  for (int i = 0; i < HERMES_MAX_CONNECTIONS; ++i) {
    idle.push_back(std::make_unique<test::RawClient>(server.http_port()));
    server.poll_once(1);
  }
  for (int i = 0; i < 10; ++i) server.poll_once(1);
  REQUIRE_FALSE(idle.front()->read_available());
  CHECK(body_of(http(server, "GET /-/healthy HTTP/1.0\r\n\r\n")) == "Hermes is Healthy.\n");
  CHECK(idle.front()->read_available()); // closed to make room
  CHECK_FALSE(idle.back()->read_available());
}

TEST_CASE("the server logs where it listens, rejected samples at debug, and a warn summary") {
  std::vector<std::string> log;
  hermes::Server server(test::sample_config(), test::loopback_options(&log));
  REQUIRE(log.size() == 1);
  CHECK(log[0] == "level=info msg=\"hermes listening\" udp=127.0.0.1:" + std::to_string(server.udp_port()) +
                      " http=127.0.0.1:" + std::to_string(server.http_port()) + " service=testing-service version=" HERMES_VERSION_STR);
  test::push(server, {R"({"metric_name": "nope"})", R"({"metric_name": "nope"})"});
  REQUIRE(log.size() == 4);
  CHECK(log[1] == R"(level=debug msg="sample rejected" reason=unknown_metric count=1 datagram="{\"metric_name\": \"nope\"}")");
  CHECK(log[2] == R"(level=warn msg="samples rejected" counts="unknown_metric=1")");
  CHECK(log[3] == log[1]); // the second waits for the next summary
  std::atomic<bool> stop{true};
  server.run(stop);
  REQUIRE(log.size() == 6);
  CHECK(log[4] == R"(level=warn msg="samples rejected" counts="unknown_metric=1")");
  CHECK(log[5] == R"(level=info msg="hermes stopped")");
}

TEST_CASE("a port in use is a SocketError naming the address and the system error") {
  hermes::Server first(test::sample_config(), test::loopback_options());
  hermes::Options options = test::loopback_options();
  options.http_port = first.http_port();
  CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options),
                       ("bind http 127.0.0.1:" + std::to_string(first.http_port()) + ": Address already in use").c_str(),
                       hermes::SocketError);
  options = test::loopback_options();
  options.udp_address = "not an address";
  CHECK_THROWS_AS(hermes::Server(test::sample_config(), options), hermes::SocketError);
}

TEST_CASE("IPv6 loopback works and is shown in brackets") {
  if (!test::has_ipv6_loopback()) {
    MESSAGE("this host has no IPv6 loopback: the IPv6 case is not run here");
    return;
  }
  hermes::Options options = test::loopback_options();
  options.udp_address = "::1";
  options.http_address = "[::1]";
  std::unique_ptr<hermes::Server> server;
  try {
    server = std::make_unique<hermes::Server>(test::sample_config(), options);
  } catch (const hermes::SocketError &error) {
    FAIL("IPv6 loopback is not available here: " << error.what());
  }
  CHECK(server->udp_endpoint() == "[::1]:" + std::to_string(server->udp_port()));
  CHECK(server->http_endpoint() == "[::1]:" + std::to_string(server->http_port()));
  hermes::Client client("::1", server->udp_port());
  REQUIRE(client.increment_counter("sample_counter", {{"label_1", "v6"}}));
  REQUIRE(test::pump_until(*server, [&] { return server->stats().udp_packets == 1; }));
  CHECK(server->registry().value("sample_counter", {"v6"}) == std::optional<double>(1));
}

TEST_CASE("the Client sends every kind of sample the server accepts") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  hermes::Client client("127.0.0.1", server.udp_port());
  const hermes::Labels gauge_labels = {{"label_1", "a \"quoted\"\n"}, {"label_2", "b\\"}};
  CHECK(client.increment_counter("sample_counter", {{"label_1", "c"}}));
  CHECK(client.increment_counter("sample_counter", {{"label_1", "c"}}, 2.5));
  CHECK(client.set_gauge("sample_gauge", gauge_labels, 10));
  CHECK(client.increment_gauge("sample_gauge", gauge_labels, 5));
  CHECK(client.decrement_gauge("sample_gauge", gauge_labels));
  CHECK_FALSE(client.set_gauge("sample_gauge", gauge_labels, std::nan("")));
  REQUIRE(test::pump_until(server, [&] { return server.stats().udp_packets == 5; }));
  CHECK(server.registry().accepted() == 5);
  CHECK(server.registry().value("sample_counter", {"c"}) == std::optional<double>(3.5));
  CHECK(server.registry().value("sample_gauge", {"a \"quoted\"\n", "b\\"}) == std::optional<double>(14));
}

TEST_CASE("the Client observes histograms and summaries, and sends a batch in one datagram") {
  hermes::Server server(hermes::parse_config(R"({"service_name": "svc",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}], "gauges": [{"metric_name": "depth"}],
    "histograms": [{"metric_name": "latency_seconds", "buckets": [0.1, 1]}],
    "summaries": [{"metric_name": "sizes_bytes", "objectives": {"0.5": 0.05}}]})",
                                             "test"),
                        test::loopback_options());
  hermes::Client client("127.0.0.1", server.udp_port());
  CHECK(client.observe("latency_seconds", {}, 0.5));
  hermes::Batch batch;
  batch.increment_counter("jobs_total", {{"queue", "mail"}}, 2)
      .set_gauge("depth", {}, 7)
      .increment_gauge("depth", {}, 3)
      .decrement_gauge("depth", {})
      .observe("latency_seconds", {}, 2)
      .observe("sizes_bytes", {}, 1024)
      .set_gauge("depth", {}, std::nan("")); // left out: JSON cannot carry it
  CHECK(batch.size() == 6);
  CHECK(batch.size_bytes() == batch.json().size());
  CHECK(batch.json().rfind(R"([{"metric_name":"jobs_total","payload":{"labels":{"queue":"mail"},"value":2}},)", 0) == 0);
  CHECK(client.send(batch));
  CHECK_FALSE(client.send(hermes::Batch()));
  REQUIRE(test::pump_until(server, [&] { return server.stats().udp_packets == 2; }));
  CHECK(server.registry().accepted() == 7);
  CHECK(server.registry().value("jobs_total", {"mail"}) == std::optional<double>(2));
  CHECK(server.registry().value("depth", {}) == std::optional<double>(9));
  const std::string body = server.render();
  CHECK(contains_line(body, "latency_seconds_bucket{le=\"1\"} 1"));
  CHECK(contains_line(body, "latency_seconds_count 2"));
  CHECK(contains_line(body, "latency_seconds_sum 2.5"));
  CHECK(contains_line(body, "sizes_bytes{quantile=\"0.5\"} 1024"));
  batch.clear();
  CHECK(batch.size() == 0);
  CHECK(batch.json() == "[]");
}

TEST_CASE("run() returns soon after stop is set from another thread") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  std::atomic<bool> stop{false};
  const auto started = std::chrono::steady_clock::now();
  std::thread runner([&] { server.run(stop); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  runner.join();
  // How soon is the property itself, so this one test measures time: run() must see the
  // flag within a poll interval; twice that leaves room for a busy machine.
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::milliseconds(50 + 2 * HERMES_POLL_INTERVAL_MS));
}

TEST_CASE("Server::reload reads its config file again; a bad one is counted and changes nothing") {
  const test::TempDir folder;
  const std::string path = folder.file("reload.json");
  const auto write = [&](const std::string &json) { std::ofstream(path) << json; };
  write(test::sample_config_json);
  std::vector<std::string> log;
  hermes::Options options = test::loopback_options(&log);
  options.config_path = path;
  hermes::Server server(hermes::load_config(path), options);
  test::push(server, {R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x"}}})"});
  write(R"({"service_name": "testing-service", "counters": [{"metric_name": "sample_counter", "labels": ["label_1"]}],
            "gauges": [{"metric_name": "new_gauge"}]})");
  CHECK(server.reload());
  CHECK(log.back() == "level=info msg=\"config reloaded\" path=" + path + " kept=1 fresh=1 removed=1");
  CHECK(server.registry().value("sample_counter", {"x"}) == std::optional<double>(1));
  CHECK(server.registry().value("new_gauge", {}) == std::optional<double>(0));
  write(R"({"service_name": "testing-service", "counters": [{"metric_name": "bad-name"}]})");
  CHECK_FALSE(server.reload());
  CHECK(log.back() == "level=error msg=\"config reload failed; the config in force stays\" error=\"" + path + ": "
                      "counters[0].metric_name: \\\"bad-name\\\" is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)\"");
  CHECK(server.registry().value("new_gauge", {}) == std::optional<double>(0));
  const std::string body = scrape(server);
  CHECK(contains_line(body, "hermes_config_reloads_total{result=\"success\"} 1"));
  CHECK(contains_line(body, "hermes_config_reloads_total{result=\"failure\"} 1"));
  std::atomic<bool> stop{false}, reload{true};
  std::thread runner([&] { server.run(stop, &reload); });
  while (reload.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1)); // run() clears it as it reloads
  stop = true;
  runner.join();
  CHECK(contains_line(scrape(server), "hermes_config_reloads_total{result=\"failure\"} 2"));
}

TEST_CASE("a unix datagram socket takes samples too, with its mode, and is removed at the end") {
  const test::TempDir folder;
  const std::string path = folder.file("hermes.sock");
  std::vector<std::string> log;
  hermes::Options options = test::loopback_options(&log);
  options.unix_socket_path = path;
  options.unix_socket_mode = 0620;
  {
    std::ofstream(path) << "not a socket";
    CHECK_THROWS_WITH_AS(hermes::Server(test::sample_config(), options), ("unix socket " + path + ": a file that is not a socket is there").c_str(),
                         hermes::SocketError);
    ::unlink(path.c_str());
  }
  {
    hermes::Server stale(test::sample_config(), options); // leaves no file: removed below by hand, as a crash would not
  }
  CHECK(::access(path.c_str(), F_OK) != 0);
  hermes::detail::FileDescriptor leftover(::socket(AF_UNIX, SOCK_DGRAM, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::bind(leftover.get(), reinterpret_cast<sockaddr *>(&address), sizeof address) == 0); // a stale socket file
  log.clear();
  {
    hermes::Server server(test::sample_config(), options);
    CHECK(log[0].find(" unix=" + path + " ") != std::string::npos);
    struct stat info {};
    REQUIRE(::stat(path.c_str(), &info) == 0);
    CHECK(S_ISSOCK(info.st_mode));
    CHECK((info.st_mode & 0777) == 0620);
    hermes::detail::FileDescriptor sender(::socket(AF_UNIX, SOCK_DGRAM, 0));
    const std::string datagram = R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "unix"}}})";
    REQUIRE(::sendto(sender.get(), datagram.data(), datagram.size(), 0, reinterpret_cast<sockaddr *>(&address), sizeof address) ==
            static_cast<ssize_t>(datagram.size()));
    REQUIRE(test::pump_until(server, [&] { return server.stats().unix_datagrams == 1; }));
    CHECK(server.registry().value("sample_counter", {"unix"}) == std::optional<double>(1));
    CHECK(server.stats().udp_packets == 0);
    CHECK(contains_line(scrape(server), "hermes_unix_datagrams_total 1"));
  }
  CHECK(::access(path.c_str(), F_OK) != 0);
}

TEST_CASE("datagrams the kernel drops for a full receive buffer are counted, so none is lost unseen") {
  hermes::Options options = test::loopback_options();
  options.udp_receive_buffer = 4096;
  hermes::Server server(test::sample_config(), options);
  // Linux doubles what it is asked for, for its bookkeeping, and reports the double.
  CHECK(server.stats().udp_receive_buffer_bytes == 4096);
  hermes::Client client("127.0.0.1", server.udp_port());
  for (int i = 0; i < 300; ++i) client.send(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "burst"}}})");
  // The kernel's count is asked for when the figures are: it is whole at once, with no
  // datagram after the burst to carry it.
  REQUIRE(test::pump_until(server, [&] {
    const hermes::ServerStats stats = server.stats();
    return stats.udp_packets + stats.udp_receive_drops == 300;
  }));
  const hermes::ServerStats stats = server.stats();
  CHECK(stats.udp_receive_drops > 0);
  CHECK(server.registry().value("sample_counter", {"burst"}) == std::optional<double>(static_cast<double>(stats.udp_packets)));
  CHECK(contains_line(scrape(server), "hermes_udp_receive_drops_total " + std::to_string(stats.udp_receive_drops)));
}

TEST_CASE("the count of datagrams the kernel drops, on kernels that attach it to datagrams, is read from them") {
  // The path of kernels before 4.12, taken here by asking for the counter on a socket.
  hermes::detail::FileDescriptor receiver(::socket(AF_INET, SOCK_DGRAM, 0));
  const int small = 4096, on = 1;
  ::setsockopt(receiver.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  REQUIRE(::setsockopt(receiver.get(), SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof on) == 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(receiver.get(), reinterpret_cast<sockaddr *>(&address), sizeof address) == 0);
  socklen_t length = sizeof address;
  REQUIRE(::getsockname(receiver.get(), reinterpret_cast<sockaddr *>(&address), &length) == 0);
  for (int i = 0; i < 300; ++i) test::send_udp(ntohs(address.sin_port), "x");
  hermes::detail::ReceiveBatch batch;
  hermes::detail::KernelDrops drops(-1); // asks nothing: only what datagrams carry counts
  int received = 0;
  const auto receive_all = [&] {
    for (int got; (got = batch.receive(receiver.get(), HERMES_RECEIVE_BATCH, false, true)) > 0; received += got)
      for (int i = 0; i < got; ++i)
        if (const auto counter = batch.drop_counter(i)) drops.note_carried(*counter);
  };
  receive_all();
  CHECK(drops.total() == 0); // those queued before the drops carry none
  test::send_udp(ntohs(address.sin_port), "y"); // the kernel attaches the count to the next one it queues
  receive_all();
  CHECK(drops.total() > 0);
  CHECK(received + drops.total() == 301);
}

TEST_CASE("the kernel's drop counter wraps at 2^32; the total does not") {
  hermes::detail::KernelDrops drops(-1);
  drops.note_carried(0xFFFFFFF0u);
  CHECK(drops.total() == 0xFFFFFFF0u);
  drops.note_carried(0x10u);
  CHECK(drops.total() == 0x100000010u);
}

TEST_CASE("datagrams that wait while /metrics renders are taken off the socket during it and applied after it") {
  hermes::Server server(many_series_config(), test::loopback_options());
  push_many_series(server);
  const std::uint64_t packets = server.stats().udp_packets;
  hermes::Client client("127.0.0.1", server.udp_port());
  for (int i = 0; i < 3; ++i) REQUIRE(client.send(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "held"}}})"));
  // "many" renders before "sample_counter": its first pause finds the three datagrams,
  // and the registry does not change until the body is whole.
  const std::string body = server.render(hermes::Format::text);
  CHECK(body.find("sample_counter{") == std::string::npos);
  CHECK(contains_line(body, "hermes_udp_packets_total " + std::to_string(packets)));
  CHECK(server.registry().value("sample_counter", {"held"}) == std::optional<double>(3));
  CHECK(server.stats().udp_packets == packets + 3);
  CHECK(contains_line(scrape(server), "sample_counter{label_1=\"held\"} 3"));
}

TEST_CASE("held datagrams come back in order and stay within their budget, empty ones too") {
  using Source = hermes::detail::HeldDatagrams::Source;
  hermes::detail::HeldDatagrams held;
  held.hold("first", false, Source::udp);
  held.hold("", true, Source::unix_socket);
  held.hold("third", false, Source::udp);
  std::vector<std::tuple<std::string, bool, Source>> seen;
  const auto take = [&](std::string_view datagram, bool truncated, Source source) { seen.emplace_back(datagram, truncated, source); };
  held.release(take);
  CHECK(seen == std::vector<std::tuple<std::string, bool, Source>>{
                    {"first", false, Source::udp}, {"", true, Source::unix_socket}, {"third", false, Source::udp}});
  seen.clear();
  held.release(take);
  CHECK(seen.empty());

  // The hold takes a datagram only while one of the largest size still fits, so that
  // a whole batch read off a socket never crosses the budget.
  constexpr std::size_t budget = HERMES_RENDER_HOLD_BYTES, largest = HERMES_MAX_DATAGRAM_SIZE;
  constexpr std::size_t bookkeeping = hermes::detail::HeldDatagrams::bookkeeping_bytes;
  std::size_t empty = 0;
  for (; held.room() > 0; ++empty) held.hold("", false, Source::udp);
  CHECK(held.cost() == empty * bookkeeping); // each one's bookkeeping counts
  CHECK(budget - held.cost() < largest + bookkeeping);
  CHECK(budget - held.cost() >= largest);
  held.release([](std::string_view, bool, Source) {});
  CHECK(held.cost() == 0);
  const std::string longest(largest, 'x');
  std::size_t full_size = 0;
  for (; held.room() > 0; ++full_size) held.hold(longest, false, Source::udp);
  CHECK(full_size == budget / (largest + bookkeeping));
  CHECK(held.cost() == full_size * (largest + bookkeeping));
  CHECK(held.cost() <= budget);
}

TEST_CASE("with every connection busy, a newcomer's request is read and answered 503, not reset") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  // Clients that were answered and have not closed yet linger: none of them is an idle
  // reader that could make room.
  std::vector<std::unique_ptr<test::RawClient>> lingering;
  for (int i = 0; i < HERMES_MAX_CONNECTIONS; ++i) {
    lingering.push_back(std::make_unique<test::RawClient>(server.http_port()));
    lingering.back()->send("GET /-/healthy HTTP/1.0\r\n\r\n");
    REQUIRE(test::pump_until(server, [&] { return server.stats().http_requests.at(200) == static_cast<std::uint64_t>(i + 1); }));
  }
  const std::string refused = http(server, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
  CHECK(refused == "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\n"
                   "Retry-After: 1\r\nConnection: close\r\n\r\n503 Service Unavailable\n");
  CHECK(server.stats().http_requests.at(503) == 1);
  for (const auto &client : lingering) CHECK(body_of(client->finish(server)) == "Hermes is Healthy.\n");
}

TEST_CASE("empty lines before the request line are ignored") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  CHECK(body_of(http(server, "\r\n\r\nGET /-/ready HTTP/1.0\r\n\r\n")) == "Hermes is Ready.\n");
  CHECK(body_of(http(server, "\nGET /-/healthy HTTP/1.0\n\n")) == "Hermes is Healthy.\n");
  test::RawClient pieces(server.http_port());
  for (const char *piece : {"\r\n", "\r", "\nGET /-/ready HTTP/1.0\r\n", "\r\n"}) {
    pieces.send(piece);
    for (int i = 0; i < 5; ++i) server.poll_once(1);
  }
  CHECK(body_of(pieces.finish(server)) == "Hermes is Ready.\n");
}

TEST_CASE("a server and a client can be moved") {
  hermes::Server first(test::sample_config(), test::loopback_options());
  const std::uint16_t port = first.udp_port();
  hermes::Server server = std::move(first);
  CHECK(server.udp_port() == port);
  hermes::Client moved("127.0.0.1", port);
  hermes::Client client = std::move(moved);
  REQUIRE(client.increment_counter("sample_counter", {{"label_1", "moved"}}));
  REQUIRE(test::pump_until(server, [&] { return server.stats().udp_packets == 1; }));
  CHECK(server.registry().value("sample_counter", {"moved"}) == std::optional<double>(1));
}

TEST_CASE("Client(\"localhost\") reaches a server bound to IPv4, the default") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  hermes::Client client("localhost", server.udp_port());
  REQUIRE(client.increment_counter("sample_counter", {{"label_1", "by name"}}));
  REQUIRE(test::pump_until(server, [&] { return server.stats().udp_packets == 1; }));
  CHECK(server.registry().value("sample_counter", {"by name"}) == std::optional<double>(1));
}

TEST_CASE("a scraper that prefers protobuf gets it, with datagrams held while it renders; Options::protobuf turns it off") {
  const std::string accept = "GET /metrics HTTP/1.0\r\nAccept: application/vnd.google.protobuf;"
                             "proto=io.prometheus.client.MetricFamily;encoding=delimited,text/plain;version=0.0.4;q=0.5\r\n\r\n";
  hermes::Server server(many_series_config(), test::loopback_options());
  push_many_series(server);
  REQUIRE(server.registry().series_count() >= HERMES_RENDER_PAUSE_STRIDE + 1);
  const std::string response = http(server, accept);
  CHECK(response.find("Content-Type: application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
                      "encoding=delimited\r\n") != std::string::npos);
  CHECK(body_of(response).substr(1, 19) == "\x0a\x11hermes_build_info");
  // "many" renders before "sample_counter": its first pause finds the datagram, which
  // waits until the body is whole.
  hermes::Client client("127.0.0.1", server.udp_port());
  REQUIRE(client.send(R"({"metric_name": "sample_counter", "payload": {"labels": {"label_1": "held"}}})"));
  const std::string body = server.render(hermes::Format::protobuf);
  CHECK(body.find("\x0a\x0esample_counter") != std::string::npos); // its family, without the held series
  CHECK(body.find("held") == std::string::npos);
  CHECK(server.registry().value("sample_counter", {"held"}).value_or(-1) == 1);
  CHECK(body.find("\x0a\x18hermes_udp_packets_total") != std::string::npos);

  hermes::Options options = test::loopback_options();
  options.protobuf = false;
  hermes::Server text_only(test::sample_config(), options);
  CHECK(http(text_only, accept).find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != std::string::npos);
}
