// Persistent HTTP connections over real sockets on loopback: HTTP/1.1 keeps a connection
// unless a request says close, HTTP/1.0 only when one asks for keep-alive; requests on
// one connection are answered in order, one at a time; an idle connection closes after
// its timeout and gives way first when every connection is taken.
#include "helpers.hpp"

#include <thread>

using test::body_of;
using test::http;
using test::RawClient;

namespace {

const std::string healthy_11 =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\r\nHermes is Healthy.\n";
const std::string ready_11 = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n\r\nHermes is Ready.\n";
const std::string healthy_11_closing = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n"
                                       "Connection: close\r\n\r\nHermes is Healthy.\n";

hermes::Options idle_after(double seconds) {
  hermes::Options options = test::loopback_options();
  options.http_idle_timeout_seconds = seconds;
  return options;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

} // namespace

TEST_CASE("an HTTP/1.1 connection carries one request after another until one says Connection: close") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  RawClient client(server.http_port());
  client.send("GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(client.next_answer(server) == healthy_11);
  client.send("GET /-/ready HTTP/1.1\r\n\r\n");
  CHECK(client.next_answer(server) == ready_11);
  client.send("HEAD /metrics HTTP/1.1\r\n\r\n");
  const std::string head = client.next_answer(server, true);
  CHECK(head.rfind("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: ", 0) == 0);
  CHECK(head.find("Connection") == std::string::npos);
  client.send("GET /metrics HTTP/1.1\r\n\r\n");
  CHECK(body_of(client.next_answer(server)).rfind("# HELP hermes_build_info", 0) == 0);
  client.send("GET /nope HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n");
  CHECK(client.finish(server) == "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\n"
                                 "Connection: close\r\n\r\n404 Not Found\n");
  CHECK(server.stats().http_requests.at(200) == 4);
  CHECK(server.stats().http_requests.at(404) == 1);
}

TEST_CASE("an HTTP/1.0 connection stays open only while its requests ask for keep-alive") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  RawClient client(server.http_port());
  client.send("GET /-/healthy HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  CHECK(client.next_answer(server) == "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n"
                                      "Connection: keep-alive\r\n\r\nHermes is Healthy.\n");
  client.send("GET /-/ready HTTP/1.0\r\n\r\n");
  CHECK(client.finish(server) == "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n"
                                 "Connection: close\r\n\r\nHermes is Ready.\n");
}

TEST_CASE("requests sent ahead on one connection are answered in order, one a step, pushes among them") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  RawClient client(server.http_port());
  client.send("GET /-/healthy HTTP/1.1\r\n\r\nGET /-/ready HTTP/1.1\r\n\r\n"
              "PUT /metrics/job/ahead HTTP/1.1\r\nContent-Length: 14\r\n\r\nahead_gauge 7\n"
              "GET /-/healthy HTTP/1.1\r\nConnection: close\r\n\r\n");
  REQUIRE(test::pump_until(server, [&] { return server.stats().http_requests.at(200) >= 1; }));
  CHECK(server.stats().http_requests.at(200) == 1); // the step that answered the first left the others waiting
  const std::string answers = client.finish(server);
  CHECK(answers == healthy_11 + ready_11 + "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 0\r\n\r\n" +
                       healthy_11_closing);
  CHECK(server.stats().http_requests.at(200) == 4);
  CHECK(body_of(http(server, "GET /metrics HTTP/1.0\r\n\r\n")).find("\nahead_gauge{instance=\"\",job=\"ahead\"} 7\n") != std::string::npos);
}

TEST_CASE("a chunked push keeps its connection: the request after its last chunk and trailer is read next") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  RawClient client(server.http_port());
  client.send("PUT /metrics/job/chunks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
              "9\r\nchunked_g\r\n7;ext=1\r\nauge 5\n\r\n0\r\nTrailer: x\r\n\r\n"
              "GET /-/healthy HTTP/1.1\r\nConnection: close\r\n\r\n");
  CHECK(client.finish(server) ==
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 0\r\n\r\n" + healthy_11_closing);
  CHECK(body_of(http(server, "GET /metrics HTTP/1.0\r\n\r\n")).find("\nchunked_gauge{instance=\"\",job=\"chunks\"} 5\n") !=
        std::string::npos);
}

TEST_CASE("a push with both Content-Length and Transfer-Encoding is 400 and closes: which ends its body is ambiguous") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  RawClient client(server.http_port());
  client.send("PUT /metrics/job/both HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              "0\r\n\r\nGET /-/healthy HTTP/1.1\r\n\r\n");
  const std::string answer = client.finish(server);
  CHECK(answer.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
  CHECK(answer.find("Connection: close\r\n") != std::string::npos);
  CHECK(answer.find("a push with both Content-Length and Transfer-Encoding\n") != std::string::npos);
  CHECK(answer.find("Healthy") == std::string::npos);
  CHECK(server.stats().push_requests.at({"PUT", 400}) == 1);
}

TEST_CASE("a request whose body framing is ambiguous is 400 and closes: its body is never read as the next request") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  const std::string smuggled = "GET /smuggled HTTP/1.1\r\n\r\n";
  const std::string length = std::to_string(smuggled.size());
  for (const std::string &framing : std::vector<std::string>{
           "GET /-/healthy HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: " + length + "\r\n\r\n",
        "GET /-/healthy HTTP/1.1\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n",
        "PUT /metrics/job/j HTTP/1.1\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\nContent-Length: " + length +
            "\r\n\r\n",
        "PUT /metrics/job/j HTTP/1.1\r\nContent-Length: " + length + "\r\nContent-Length: " + length + "\r\n\r\n",
        "PUT /metrics/job/j HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"}) {
    RawClient client(server.http_port());
    client.send(framing + smuggled);
    const std::string answer = client.finish(server);
    CHECK_MESSAGE(answer.find(" 400 Bad Request\r\n") == 8, framing);
    CHECK_MESSAGE(answer.find("Connection: close\r\n") != std::string::npos, framing);
    CHECK_MESSAGE(answer.find("404") == std::string::npos, framing);
  }
  CHECK(server.stats().http_requests.at(400) == 5);
  CHECK(server.stats().http_requests.at(404) == 0);
}

TEST_CASE("a request that does not parse, or whose body is not read, is answered and closes the connection") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  const std::string next = "GET /-/healthy HTTP/1.1\r\n\r\n"; // never answered: the connection closes before it
  for (const auto &[request, status_line] : std::vector<std::pair<std::string, std::string>>{
           {"garbage\r\n\r\n", "HTTP/1.0 400 Bad Request"},
           {"PUT /metrics/job/x HTTP/1.1\r\n\r\n", "HTTP/1.1 411 Length Required"},
           {"PUT /metrics/job/x HTTP/1.1\r\nContent-Length: 999999999\r\n\r\nx 1\n", "HTTP/1.1 413 Payload Too Large"},
           {"POST /metrics/job/x HTTP/1.1\r\nContent-Length: 4\r\nContent-Encoding: gzip\r\n\r\nx 1\n",
            "HTTP/1.1 415 Unsupported Media Type"},
           {"GET /-/ready HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.1 200 OK"},
           {"POST /-/ready HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"},
           {"GET /-/ready HTTP/2.0\r\n\r\n", "HTTP/1.0 505 HTTP Version Not Supported"}}) {
    CAPTURE(request);
    const std::string answer = http(server, request + next);
    CHECK(answer.substr(0, answer.find("\r\n")) == status_line);
    CHECK(answer.find("\r\nConnection: close\r\n\r\n") != std::string::npos);
    CHECK(answer.find("HTTP/1.", 1) == std::string::npos); // one answer only
  }
  CHECK(server.stats().http_requests.at(200) == 1);
}

TEST_CASE("an idle connection closes after Options::http_idle_timeout_seconds; a request under way has the read timeout") {
  hermes::Server server(test::sample_config(), idle_after(0.3));
  RawClient idle(server.http_port());
  idle.send("GET /-/healthy HTTP/1.1\r\n\r\n");
  CHECK(idle.next_answer(server) == healthy_11);
  const auto answered = std::chrono::steady_clock::now();
  CHECK(idle.finish(server).empty());
  CHECK(seconds_since(answered) >= 0.3);
  CHECK(seconds_since(answered) < 1.3);

  RawClient slow(server.http_port());
  slow.send("GET /-/healthy HTTP/1.1\r\n\r\n");
  CHECK(slow.next_answer(server) == healthy_11);
  slow.send("GET /-/rea");
  const auto begun = std::chrono::steady_clock::now();
  while (seconds_since(begun) < 0.6) server.poll_once(5); // past the idle timeout, within the read timeout
  slow.send("dy HTTP/1.1\r\nConnection: close\r\n\r\n");
  CHECK(slow.finish(server) == "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n"
                               "Connection: close\r\n\r\nHermes is Ready.\n");
}

TEST_CASE("with http_idle_timeout_seconds 0 every answer closes its connection") {
  hermes::Server server(test::sample_config(), idle_after(0));
  CHECK(http(server, "GET /-/healthy HTTP/1.1\r\n\r\n") == healthy_11_closing);
  CHECK(http(server, "GET /-/healthy HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") ==
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nConnection: close\r\n\r\nHermes is Healthy.\n");
}

TEST_CASE("HERMES_HTTP_IDLE_TIMEOUT_SECONDS sets the idle timeout; 0 keeps no connection") {
  const auto options = [](const char *value) {
    return hermes::options_from_environment(test::sample_config(), [value](const char *name) -> const char * {
      return std::string(name) == "HERMES_HTTP_IDLE_TIMEOUT_SECONDS" ? value : nullptr;
    });
  };
  CHECK(options(nullptr).http_idle_timeout_seconds == HERMES_HTTP_IDLE_TIMEOUT_S);
  CHECK(options("2.5").http_idle_timeout_seconds == 2.5);
  CHECK(options("0").http_idle_timeout_seconds == 0);
  CHECK_THROWS_WITH_AS(options("-1"), "HERMES_HTTP_IDLE_TIMEOUT_SECONDS: \"-1\" is not a number of seconds (0: no persistent connections)",
                       hermes::UsageError);
}

TEST_CASE("a newcomer whose request waits unread is not pushed out by silent newcomers accepted before its turn") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  std::vector<std::unique_ptr<RawClient>> slow;
  for (int i = 0; i + 1 < HERMES_MAX_CONNECTIONS; ++i) {
    slow.push_back(std::make_unique<RawClient>(server.http_port()));
    slow.back()->send("G"); // heard, mid-request
  }
  for (int i = 0; i < 5; ++i) server.poll_once(1);
  RawClient client(server.http_port());
  client.send("GET /-/healthy HTTP/1.0\r\n\r\n");
  std::vector<std::unique_ptr<RawClient>> silent;
  for (int i = 0; i < 3; ++i) silent.push_back(std::make_unique<RawClient>(server.http_port()));
  usleep(20000); // every connection is in the listen queue, its bytes in its socket, before one step takes them all
  CHECK(client.finish(server) == "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n"
                                 "Connection: close\r\n\r\nHermes is Healthy.\n");
  CHECK(slow[0]->read_available()); // the longest silent of those mid-request made room
  CHECK(server.stats().http_requests.at(503) == 0);
}

TEST_CASE("when every connection is taken, the one idle longest between requests gives way, not one mid-request") {
  hermes::Server server(test::sample_config(), test::loopback_options());
  std::vector<std::unique_ptr<RawClient>> kept;
  for (int i = 0; i < HERMES_MAX_CONNECTIONS; ++i) {
    kept.push_back(std::make_unique<RawClient>(server.http_port()));
    kept.back()->send("GET /-/healthy HTTP/1.1\r\n\r\n");
    REQUIRE(kept.back()->next_answer(server) == healthy_11);
  }
  kept[0]->send("GET /-/rea"); // under way: not idle, though it was answered first
  for (int i = 0; i < 5; ++i) server.poll_once(1);
  CHECK(body_of(http(server, "GET /-/ready HTTP/1.0\r\n\r\n")) == "Hermes is Ready.\n");
  CHECK_FALSE(kept[0]->read_available());
  CHECK(kept[1]->read_available()); // closed to make room
  CHECK_FALSE(kept[2]->read_available());
  kept[0]->send("dy HTTP/1.1\r\n\r\n");
  CHECK(kept[0]->next_answer(server) == ready_11);
  kept[2]->send("GET /-/healthy HTTP/1.1\r\n\r\n");
  CHECK(kept[2]->next_answer(server) == healthy_11);
  CHECK(server.stats().http_requests.at(503) == 0);
}
