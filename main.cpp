// main.cpp - the hermes daemon: reads the command line and the environment, then runs
// hermes::Server until SIGTERM or SIGINT. Everything else lives in hermes.hpp.

#include "hermes.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>

namespace {

// The signal handlers' only way to reach the loop: SIGTERM and SIGINT stop, SIGHUP reloads.
std::atomic<bool> stop_requested{false};
std::atomic<bool> reload_requested{false};

void request_stop(int) { stop_requested = true; }
void request_reload(int) { reload_requested = true; }

constexpr const char *usage_text =
    "usage: hermes [--check-config] [--version] [--help] [CONFIG_PATH]\n"
    "\n"
    "Receives metric samples as JSON or StatsD lines over UDP and serves them to Prometheus\n"
    "at /metrics.\n"
    "\n"
    "  CONFIG_PATH     the config file; else $HERMES_CONFIG_PATH, $CONFIG_FILE_PATH, config.json\n"
    "  --check-config  validate the config file, then exit: 0 when it is good, 2 when not;\n"
    "                  a good one may still get warnings on names that promtool would lint\n"
    "  --version       print the version and exit\n"
    "  --help          print this text and exit\n"
    "\n";

// After the environment variables this build reads (hermes::environment_help).
constexpr const char *signals_text =
    "\n"
    "Signals: SIGTERM and SIGINT write the state file, if any, and stop; SIGHUP reloads the\n"
    "config file, the token file and the TLS certificate and key.\n";

struct CommandLine {
  bool check_config = false;
  bool version = false;
  bool help = false;
  std::string config_path;
};

CommandLine parse_command_line(int argc, char **argv) {
  CommandLine line;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument == "--check-config") {
      line.check_config = true;
    } else if (argument == "--version") {
      line.version = true;
    } else if (argument == "--help" || argument == "-h") {
      line.help = true;
    } else if (argument.size() > 1 && argument[0] == '-') {
      throw hermes::UsageError("unknown option " + argument + " (see hermes --help)");
    } else if (!line.config_path.empty()) {
      throw hermes::UsageError("more than one config path: " + line.config_path + " and " + argument);
    } else {
      line.config_path = argument;
    }
  }
  return line;
}

const char *environment(const char *name) { return std::getenv(name); }

std::string config_path(const CommandLine &line) {
  if (!line.config_path.empty()) return line.config_path;
  for (const char *name : {"HERMES_CONFIG_PATH", "CONFIG_FILE_PATH"})
    if (const char *value = environment(name); value && *value) return value;
  return "config.json";
}

// Without SA_RESTART, so that a signal ends the server's poll() at once.
void install_signal_handlers() {
  struct sigaction action {};
  sigemptyset(&action.sa_mask);
  action.sa_handler = request_stop;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  action.sa_handler = request_reload;
  sigaction(SIGHUP, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN); // a client that hangs up is an error code, not a death
}

// What an https target trusts, as --check-config says it; "" over plain HTTP.
std::string remote_write_trust(const hermes::RemoteWriteConfig &target) {
  if (target.url.compare(0, 8, "https://") != 0 && !target.tls) return "";
  const hermes::RemoteWriteTls tls = target.tls.value_or(hermes::RemoteWriteTls{});
  if (tls.insecure_skip_verify) return ", TLS without verifying the receiver's certificate (insecure_skip_verify)";
  return std::string(", TLS trusting the CAs in ") + (tls.ca_file.empty() ? HERMES_TLS_CA_BUNDLE : tls.ca_file.c_str()) +
         (tls.server_name.empty() ? "" : " for the name " + tls.server_name) + (tls.cert_file.empty() ? "" : ", with a client certificate");
}

// Valid, and so is the StatsD mapping file if one is named: says so, with the memory its series may take at worst beside the budget, then
// gives promtool's naming advice, which does not make it invalid.
int check_config(const std::string &path, const hermes::Config &config, const hermes::Options &options) {
  const std::string mapping_path = hermes::statsd_mapping_path(config, options);
  hermes::StatsdMappingFile mapping; // a bad file throws ConfigError: exit 2, before any "ok"
  if (!mapping_path.empty()) mapping = hermes::load_statsd_mapping(mapping_path);
  std::printf("%s: ok, %zu metrics\n", path.c_str(), config.metrics.size());
  double worst = 0;
  for (const hermes::MetricConfig &metric : config.metrics) {
    const double room = static_cast<double>(HERMES_SCRAPE_BODIES) * static_cast<double>(hermes::worst_case_body_bytes(metric));
    worst += (static_cast<double>(hermes::worst_case_series_bytes(metric)) + room) * static_cast<double>(metric.max_series);
  }
  const std::size_t fixed = hermes::detail::fixed_buffer_bytes + hermes::detail::gzip_compressor_bytes(options.gzip_level);
  const double needed = worst + static_cast<double>(fixed);
  std::printf("%s: memory: at most %.0f bytes with every metric at its max_series (each series with its room in %d "
              "/metrics bodies, label values of up to 15 bytes), %zu of fixed buffers; budget %zu bytes%s\n",
              path.c_str(), worst, HERMES_SCRAPE_BODIES, fixed, options.max_memory,
              needed > static_cast<double>(options.max_memory) ? ", so new series are refused as memory_limit once it is used" : "");
  if (!options.state_file.empty()) {
    double state = 0; // the text of a write, made half as large again as it grows
    for (const hermes::MetricConfig &metric : config.metrics)
      state += 1.5 * static_cast<double>(hermes::worst_case_state_bytes(metric)) * static_cast<double>(metric.max_series);
    std::printf("%s: memory: the state file's text takes at most %.0f bytes more while a write is made\n", path.c_str(), state);
  }
  for (const hermes::RemoteWriteConfig &target : options.remote_write) // never its secrets
    std::printf("%s: remote_write: %s every %g s, %zu samples a request at most%s%s\n", path.c_str(), target.url.c_str(),
                target.interval_seconds, target.max_samples_per_send, target.authorization.empty() ? "" : ", with credentials",
                remote_write_trust(target).c_str());
  for (const std::string &advice : hermes::lint_config(config)) std::printf("%s: warning: %s\n", path.c_str(), advice.c_str());
  if (!mapping_path.empty()) {
    std::printf("%s: ok, %zu rules\n", mapping_path.c_str(), mapping.rules);
    for (const std::string &warning : mapping.warnings) std::printf("%s\n", warning.c_str());
  }
  return 0;
}

int fail(int code, const std::string &message) {
  std::fprintf(stderr, "hermes: %s\n", message.c_str());
  return code;
}

} // namespace

int main(int argc, char **argv) {
  try {
    const CommandLine line = parse_command_line(argc, argv);
    if (line.help) return std::printf("%s%s%s", usage_text, hermes::environment_help().c_str(), signals_text), 0;
    if (line.version) return std::printf("hermes %s\n", HERMES_VERSION_STR), 0;
    const std::string path = config_path(line);
    const hermes::Config config = hermes::load_config(path);
    hermes::Options options = hermes::options_from_environment(config, environment);
    if (line.check_config) return check_config(path, config, options);
    options.config_path = path;
    install_signal_handlers();
    hermes::Server server(config, options);
    server.run(stop_requested, &reload_requested);
    return 0;
  } catch (const hermes::UsageError &error) {
    return fail(2, error.what());
  } catch (const hermes::ConfigError &error) {
    return fail(2, error.what());
  } catch (const hermes::SocketError &error) {
    return fail(1, error.what());
  } catch (const hermes::StateError &error) {
    return fail(1, error.what());
  } catch (const std::bad_alloc &) {
    return fail(1, "out of memory");
  } catch (const std::exception &error) {
    return fail(1, error.what()); // anything else still ends in one line and exit code 1
  } catch (...) {
    return fail(1, "stopped by an unknown error");
  }
}
