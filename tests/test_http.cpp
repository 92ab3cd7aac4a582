// The HTTP request parser, the router and the response bytes, without sockets.
#include "helpers.hpp"

using hermes::detail::find_head_end;
using hermes::detail::parse_request_head;

namespace {
int status_for(const std::string &head) {
  const auto request = parse_request_head(head);
  if (!request) return 400;
  return hermes::detail::route(*request, true, true, [](hermes::Format) { return std::make_shared<const std::string>("metrics body\n"); }).status;
}
} // namespace

TEST_CASE("the request head ends at the first blank line, CRLF or LF") {
  CHECK(find_head_end("GET / HTTP/1.0\r\n\r\n") == 18);
  CHECK(find_head_end("GET / HTTP/1.0\r\nHost: x\r\n\r\nbody") == 27);
  CHECK(find_head_end("GET / HTTP/1.0\n\n") == 16);
  CHECK(find_head_end("GET / HTTP/1.0\r\n\n") == 17);
  CHECK(find_head_end("GET / HTTP/1.0\r\nHost: x\r\n") == std::string_view::npos);
  CHECK(find_head_end("GET / HTTP/1.0\r\n\r") == std::string_view::npos);
  CHECK(find_head_end("") == std::string_view::npos);
}

TEST_CASE("a well-formed request is parsed into method, path, version and headers") {
  const auto request = parse_request_head("GET /metrics?x=1&y HTTP/1.1\r\nHost: localhost\r\nAccept:  text/plain ;q=1 \r\n\r\n");
  REQUIRE(request.has_value());
  CHECK(request->method == "GET");
  CHECK(request->path == "/metrics");
  CHECK(request->version == "HTTP/1.1");
  REQUIRE(request->headers.size() == 2);
  CHECK(request->headers[0] == std::make_pair(std::string("host"), std::string("localhost")));
  CHECK(request->headers[1] == std::make_pair(std::string("accept"), std::string("text/plain ;q=1")));
  const auto absolute = parse_request_head("GET http://example:8080/metrics HTTP/1.1\r\n\r\n");
  REQUIRE(absolute.has_value());
  CHECK(absolute->path == "/metrics");
}

TEST_CASE("malformed requests are rejected") {
  for (const char *head : {"\r\n\r\n", "GET\r\n\r\n", "GET /\r\n\r\n", "GET / HTTP/1.0 extra\r\n\r\n", "GET  / HTTP/1.0\r\n\r\n",
                           "GET / HTTP/1\r\n\r\n", "GET / http/1.0\r\n\r\n", "GET / HTTP/1.x\r\n\r\n", "G(T / HTTP/1.0\r\n\r\n",
                           "GET metrics HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\r\nno colon\r\n\r\n", "GET / HTTP/1.0\r\n folded: x\r\n\r\n",
                           "GET / HTTP/1.0\r\nBad Name: x\r\n\r\n", "GET / HTTP/1.0\r\n: empty\r\n\r\n"}) {
    CAPTURE(head);
    CHECK_FALSE(parse_request_head(head).has_value());
  }
}

TEST_CASE("routes: paths, methods and versions") {
  CHECK(status_for("GET /metrics HTTP/1.0\r\n\r\n") == 200);
  CHECK(status_for("GET /metrics?name[]=x HTTP/1.1\r\n\r\n") == 200);
  CHECK(status_for("HEAD /metrics HTTP/1.0\r\n\r\n") == 200);
  CHECK(status_for("GET /-/healthy HTTP/1.0\r\n\r\n") == 200);
  CHECK(status_for("GET /-/ready HTTP/1.0\r\n\r\n") == 200);
  CHECK(status_for("GET / HTTP/1.0\r\n\r\n") == 200);
  CHECK(status_for("GET /metrics/ HTTP/1.0\r\n\r\n") == 404);
  CHECK(status_for("GET /favicon.ico HTTP/1.0\r\n\r\n") == 404);
  CHECK(status_for("POST /metrics HTTP/1.0\r\n\r\n") == 405);
  CHECK(status_for("DELETE / HTTP/1.1\r\n\r\n") == 405);
  CHECK(status_for("get /metrics HTTP/1.0\r\n\r\n") == 405); // methods are case-sensitive
  CHECK(status_for("GET /metrics HTTP/2.0\r\n\r\n") == 505);
  CHECK(status_for("GET /metrics HTTP/0.9\r\n\r\n") == 505);
}

TEST_CASE("the /metrics body is made only when it is asked for, in the negotiated format") {
  std::vector<hermes::Format> renders;
  const auto render = [&](hermes::Format format) { return renders.push_back(format), std::make_shared<const std::string>("x\n"); };
  hermes::detail::route(*parse_request_head("GET /-/healthy HTTP/1.0\r\n\r\n"), true, true, render);
  CHECK(renders.empty());
  auto response = hermes::detail::route(*parse_request_head("GET /metrics HTTP/1.0\r\n\r\n"), true, true, render);
  CHECK(response.content_type == "text/plain; version=0.0.4; charset=utf-8");
  CHECK(response.text() == "x\n");
  const std::string prometheus_accept = "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,"
                                        "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\r\n";
  response = hermes::detail::route(*parse_request_head(prometheus_accept), true, true, render);
  CHECK(response.content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8");
  response = hermes::detail::route(*parse_request_head(prometheus_accept), false, false, render);
  CHECK(response.content_type == "text/plain; version=0.0.4; charset=utf-8");
  CHECK(renders == std::vector<hermes::Format>{hermes::Format::text, hermes::Format::openmetrics, hermes::Format::text});
}

TEST_CASE("Accept negotiation picks OpenMetrics only when it ranks above text") {
  using hermes::Format;
  using hermes::negotiate_format;
  CHECK(negotiate_format("") == Format::text);
  CHECK(negotiate_format("*/*") == Format::text);
  CHECK(negotiate_format("application/openmetrics-text") == Format::openmetrics);
  CHECK(negotiate_format("Application/OpenMetrics-Text; version=1.0.0") == Format::openmetrics);
  CHECK(negotiate_format("text/plain;q=0.5, application/openmetrics-text;q=0.6") == Format::openmetrics);
  CHECK(negotiate_format("text/plain, application/openmetrics-text") == Format::text);
  CHECK(negotiate_format("application/openmetrics-text;q=0.4, */*;q=0.5") == Format::text);
  CHECK(negotiate_format("application/openmetrics-text;q=0") == Format::text);
  CHECK(negotiate_format("application/json") == Format::text);
}

TEST_CASE("responses are HTTP/1.0 with exact headers") {
  hermes::detail::HttpResponse response;
  response.content_type = hermes::content_type(hermes::Format::text);
  response.body = "a 1\n";
  CHECK(hermes::detail::serialize_response(response) ==
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 4\r\n"
        "Connection: close\r\n\r\na 1\n");
  response.head_only = true;
  CHECK(hermes::detail::serialize_response(response) ==
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 4\r\n"
        "Connection: close\r\n\r\n");
  CHECK(hermes::detail::serialize_response(hermes::detail::error_response(405)) ==
        "HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 23\r\n"
        "Allow: GET, HEAD\r\nConnection: close\r\n\r\n405 Method Not Allowed\n");
  CHECK(hermes::detail::serialize_response(hermes::detail::error_response(431)) ==
        "HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 36\r\n"
        "Connection: close\r\n\r\n431 Request Header Fields Too Large\n");
  CHECK(hermes::detail::serialize_response(hermes::detail::error_response(503)) ==
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\n"
        "Retry-After: 1\r\nConnection: close\r\n\r\n503 Service Unavailable\n");
}

TEST_CASE("an answer names its version and whether the connection stays open in that version's words") {
  const hermes::detail::HttpResponse response = hermes::detail::error_response(404);
  const std::string fields = " 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\n";
  CHECK(hermes::detail::response_head(response, true, true) == "HTTP/1.1" + fields + "\r\n");
  CHECK(hermes::detail::response_head(response, true, false) == "HTTP/1.1" + fields + "Connection: close\r\n\r\n");
  CHECK(hermes::detail::response_head(response, false, true) == "HTTP/1.0" + fields + "Connection: keep-alive\r\n\r\n");
  CHECK(hermes::detail::response_head(response, false, false) == "HTTP/1.0" + fields + "Connection: close\r\n\r\n");
}

TEST_CASE("a connection persists in HTTP/1.1 unless told close, in HTTP/1.0 only when told keep-alive, never past an unread body") {
  const auto keeps = [](const std::string &head, bool body_read = false) {
    return hermes::detail::keeps_connection(*parse_request_head(head + "\r\n"), body_read);
  };
  CHECK(keeps("GET / HTTP/1.1\r\n"));
  CHECK(keeps("GET / HTTP/1.9\r\n"));
  CHECK(keeps("GET / HTTP/1.1\r\nConnection: Upgrade, Keep-Alive\r\n"));
  CHECK_FALSE(keeps("GET / HTTP/1.1\r\nConnection: close\r\n"));
  CHECK_FALSE(keeps("GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: te,  Close \r\n"));
  CHECK_FALSE(keeps("GET / HTTP/1.0\r\n"));
  CHECK(keeps("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n"));
  CHECK_FALSE(keeps("GET / HTTP/1.0\r\nConnection: keep-alive-ish\r\n"));
  CHECK_FALSE(keeps("GET / HTTP/2.0\r\n"));
  CHECK(keeps("GET / HTTP/1.1\r\nContent-Length: 0\r\n"));
  CHECK_FALSE(keeps("GET / HTTP/1.1\r\nContent-Length: 3\r\n"));
  CHECK(keeps("PUT /metrics/job/j HTTP/1.1\r\nContent-Length: 3\r\n", true));
  CHECK_FALSE(keeps("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"));
}

TEST_CASE("HEAD /metrics has exactly the headers of GET /metrics, Content-Length included") {
  const auto render = [](hermes::Format) { return std::make_shared<const std::string>("metric_a 1\nmetric_b 22\n"); };
  const auto get = hermes::detail::route(*parse_request_head("GET /metrics HTTP/1.0\r\n\r\n"), true, true, render);
  const auto head = hermes::detail::route(*parse_request_head("HEAD /metrics HTTP/1.0\r\n\r\n"), true, true, render);
  CHECK(hermes::detail::response_head(head) == hermes::detail::response_head(get));
  CHECK(hermes::detail::serialize_response(head) ==
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 23\r\n"
        "Connection: close\r\n\r\n");
}

TEST_CASE("every status Hermes sends has its reason phrase") {
  for (const auto &status : hermes::detail::http_statuses) {
    CAPTURE(status.code);
    CHECK(std::string(hermes::detail::status_text(status.code)) == status.text);
    CHECK(std::string(status.text) != "Unknown");
  }
}

TEST_CASE("HEAD of a missing path is a 404 without a body") {
  const auto response =
      hermes::detail::route(*parse_request_head("HEAD /nope HTTP/1.0\r\n\r\n"), true, true, [](hermes::Format) { return std::make_shared<const std::string>(); });
  CHECK(response.status == 404);
  CHECK(response.head_only);
}
