// Remote write: its config, the snappy block format, the WriteRequest encoding, and a
// server pushing to a receiver of the test's own.
#include "helpers.hpp"
#include "remote_write_decode.hpp"

#include <fstream>

using test::config_error;

namespace {

std::string with_remote_write(const std::string &targets) { return R"({"service_name": "s", "remote_write": )" + targets + "}"; }

void write_text(const std::string &path, const std::string &text) {
  std::ofstream(path) << text;
}

const char *no_variables(const char *) { return nullptr; }

} // namespace

TEST_CASE("remote_write: every key is read, several targets kept in order") {
  test::TempDir dir;
  write_text(dir.file("token"), "s3cret\n");
  write_text(dir.file("password"), "pa:ss\n");
  const auto config = hermes::parse_config(with_remote_write(R"([
    {"url": "http://127.0.0.1:9090/api/v1/write", "interval_seconds": 5, "timeout_seconds": 2,
     "max_samples_per_send": 500, "max_backoff_seconds": 8, "bearer_token_file": ")" + dir.file("token") + R"(",
     "headers": {"X-Scope-OrgID": "board-7"}, "external_labels": {"site": "north", "job": "boards"}},
    {"url": "http://[::1]/push?tenant=a", "basic_auth": {"username": "hermes", "password_file": ")" + dir.file("password") + R"("}}])"),
                                           "config.json");
  REQUIRE(config.remote_write.size() == 2);
  const hermes::RemoteWriteConfig &first = config.remote_write[0], &second = config.remote_write[1];
  CHECK(first.url == "http://127.0.0.1:9090/api/v1/write");
  CHECK(first.interval_seconds == 5);
  CHECK(first.timeout_seconds == 2);
  CHECK(first.max_samples_per_send == 500);
  CHECK(first.max_backoff_seconds == 8);
  CHECK(first.authorization == "Bearer s3cret");
  CHECK(first.headers == std::vector<std::pair<std::string, std::string>>{{"X-Scope-OrgID", "board-7"}});
  CHECK(first.external_labels == std::vector<std::pair<std::string, std::string>>{{"job", "boards"}, {"site", "north"}});
  CHECK(second.interval_seconds == HERMES_REMOTE_WRITE_INTERVAL_S);
  CHECK(second.timeout_seconds == HERMES_REMOTE_WRITE_TIMEOUT_S);
  CHECK(second.max_samples_per_send == HERMES_REMOTE_WRITE_BATCH);
  CHECK(second.max_backoff_seconds == HERMES_REMOTE_WRITE_MAX_BACKOFF_S);
  CHECK(second.authorization == "Basic aGVybWVzOnBhOnNz"); // base64("hermes:pa:ss")
  hermes::RemoteWriteUrl url;
  REQUIRE(hermes::parse_remote_write_url(second.url, url).empty());
  CHECK(url.host == "::1");
  CHECK(url.port == 80);
  CHECK(url.path == "/push?tenant=a");
}

TEST_CASE("remote_write: errors name the file, the place and the problem") {
  test::TempDir dir;
  write_text(dir.file("empty"), "\n");
  write_text(dir.file("ca.pem"), "x");
  CHECK(config_error(with_remote_write("{}")) == "config.json: remote_write: expected a list of receivers, got an object");
  CHECK(config_error(with_remote_write("[{}]")) ==
        "config.json: remote_write[0].url: missing: the receiver's URL, such as http://prometheus:9090/api/v1/write");
  CHECK(config_error(with_remote_write(R"([{"url": "prometheus:9090"}])")) ==
        "config.json: remote_write[0].url: \"prometheus:9090\": not a URL (expected http://host[:port]/path)");
  CHECK(config_error(with_remote_write(R"([{"url": "ftp://h/x"}])")) ==
        "config.json: remote_write[0].url: \"ftp://h/x\": scheme \"ftp\" is neither http nor https");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h:0/x"}])")) ==
        "config.json: remote_write[0].url: \"http://h:0/x\": port \"0\" is not a number from 1 to 65535");
  CHECK(config_error(with_remote_write(R"([{"url": "http://u:p@h/x"}])")) ==
        "config.json: remote_write[0].url: \"http://u:p@h/x\": user info in the URL; use basic_auth with a password_file");
#ifndef HERMES_TLS
  CHECK(config_error(with_remote_write(R"([{"url": "https://h/x"}])")) ==
        "config.json: remote_write[0].url: \"https://h/x\": https needs TLS, which is not compiled into this build of Hermes (HERMES_TLS)");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "tls": {"ca_file": ")" + dir.file("ca.pem") + R"("}}])")) ==
        "config.json: remote_write[0].tls: TLS is not compiled into this build of Hermes (HERMES_TLS); its settings cannot be used");
#endif
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "tls": {"ca_file": "/nonexistent/ca.pem"}}])")) ==
        "config.json: remote_write[0].tls.ca_file: /nonexistent/ca.pem: cannot read: No such file or directory");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x"}, {"url": "http://h/x"}])")) ==
        "config.json: remote_write[1].url: the same URL as remote_write[0]");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "interval_seconds": 0}])")) ==
        "config.json: remote_write[0].interval_seconds: 0 is not a number of seconds above 0 and at most 86400");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "max_samples_per_send": 1.5}])")) ==
        "config.json: remote_write[0].max_samples_per_send: 1.5 is not a whole number from 1 to 10000000");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "bearer_token": "x"}])")).rfind(
            "config.json: remote_write[0].bearer_token: unknown key (expected one of: url, ", 0) == 0);
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "bearer_token_file": "/nonexistent/token"}])")) ==
        "config.json: remote_write[0].bearer_token_file: token file /nonexistent/token: cannot read: No such file or directory");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "bearer_token_file": ")" + dir.file("empty") + R"("}])")) ==
        "config.json: remote_write[0].bearer_token_file: token file " + dir.file("empty") + ": empty: it must hold the bearer token");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "basic_auth": {"username": "u"}}])")) ==
        "config.json: remote_write[0].basic_auth.password_file: missing: the password is read from a file, never from the config");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "headers": {"Content-Type": "x"}}])")) ==
        "config.json: remote_write[0].headers.Content-Type: set by Hermes itself; use bearer_token_file or basic_auth for Authorization");
  CHECK(config_error(with_remote_write(R"([{"url": "http://h/x", "external_labels": {"__name__": "x"}}])")) ==
        "config.json: remote_write[0].external_labels.__name__: not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)");
}

TEST_CASE("remote_write: HERMES_REMOTE_WRITE_URL adds one target, its secret from a file") {
  test::TempDir dir;
  write_text(dir.file("token"), "tok\n");
  const std::string token = dir.file("token");
  const auto env = [&](const char *name) -> const char * {
    const std::string key = name;
    if (key == "HERMES_REMOTE_WRITE_URL") return "http://127.0.0.1:9/w";
    if (key == "HERMES_REMOTE_WRITE_INTERVAL") return "2.5";
    if (key == "HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE") return token.c_str();
    return nullptr;
  };
  const hermes::Options options = hermes::options_from_environment(test::sample_config(), env);
  REQUIRE(options.remote_write.size() == 1);
  CHECK(options.remote_write[0].url == "http://127.0.0.1:9/w");
  CHECK(options.remote_write[0].interval_seconds == 2.5);
  CHECK(options.remote_write[0].authorization == "Bearer tok");
  CHECK(hermes::options_from_environment(test::sample_config(), no_variables).remote_write.empty());
  const auto usage_error = [](std::function<const char *(const char *)> variables) -> std::string {
    try {
      hermes::options_from_environment(test::sample_config(), variables);
    } catch (const hermes::UsageError &error) {
      return error.what();
    }
    return "";
  };
  CHECK(usage_error([](const char *name) -> const char * {
          return std::string(name) == "HERMES_REMOTE_WRITE_INTERVAL" ? "5" : nullptr;
        }) == "HERMES_REMOTE_WRITE_INTERVAL: set without HERMES_REMOTE_WRITE_URL");
  CHECK(usage_error([](const char *name) -> const char * {
          return std::string(name) == "HERMES_REMOTE_WRITE_URL" ? "gopher://x" : nullptr;
        }) == "HERMES_REMOTE_WRITE_URL: \"gopher://x\": scheme \"gopher\" is neither http nor https");
  CHECK(usage_error([](const char *name) -> const char * {
          const std::string key = name;
          return key == "HERMES_REMOTE_WRITE_URL" ? "http://h/" : key == "HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE" ? "/nonexistent" : nullptr;
        }) == "HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE: token file /nonexistent: cannot read: No such file or directory");
}
