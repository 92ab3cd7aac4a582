// The HTTP request parser, the router and the response bytes, without sockets.
#include "helpers.hpp"

using hermes::detail::find_head_end;
using hermes::detail::parse_request_head;

namespace {
int status_for(const std::string &head) {
  const auto request = parse_request_head(head);
  if (!request) return 400;
  return hermes::detail::route(*request, [] { return std::string("metrics body\n"); }).status;
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

TEST_CASE("the /metrics body is made only when it is asked for") {
  int renders = 0;
  const auto render = [&] { return ++renders, std::string("x\n"); };
  hermes::detail::route(*parse_request_head("GET /-/healthy HTTP/1.0\r\n\r\n"), render);
  CHECK(renders == 0);
  const auto response = hermes::detail::route(*parse_request_head("GET /metrics HTTP/1.0\r\n\r\n"), render);
  CHECK(renders == 1);
  CHECK(response.content_type == "text/plain; version=0.0.4; charset=utf-8");
  CHECK(response.body == "x\n");
}

TEST_CASE("responses are HTTP/1.0 with exact headers") {
  hermes::detail::HttpResponse response;
  response.content_type = hermes::detail::metrics_content_type;
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
  CHECK(hermes::detail::serialize_response(hermes::detail::error_response(431)).rfind(
            "HTTP/1.0 431 Request Header Fields Too Large\r\n", 0) == 0);
}

TEST_CASE("HEAD of a missing path is a 404 without a body") {
  const auto response = hermes::detail::route(*parse_request_head("HEAD /nope HTTP/1.0\r\n\r\n"), [] { return std::string(); });
  CHECK(response.status == 404);
  CHECK(response.head_only);
}
