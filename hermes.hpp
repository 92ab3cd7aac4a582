// hermes.hpp - Hermes 1.0.0, a push gateway for Prometheus metrics over UDP. MIT licence.
//
// Worker processes push samples as small JSON datagrams over UDP; Hermes keeps them
// in a registry and serves them at /metrics for Prometheus to scrape. A worker never
// waits for Hermes and never breaks when Hermes is gone.
//
// ---- Embedding ----------------------------------------------------------------------
//
//     #include "hermes.hpp"             // needs picojson.h; link nothing else
//
//     std::atomic<bool> stop{false};
//     hermes::Config config = hermes::load_config("config.json");
//     hermes::Options options;           // UDP 0.0.0.0:7789, HTTP 0.0.0.0:8080
//     options.udp_port = 0;              // 0 lets the kernel choose
//     hermes::Server server(config, options);
//     std::thread gateway([&] { server.run(stop); });
//     hermes::Client("127.0.0.1", server.udp_port()).increment_counter("jobs_total", {{"queue", "mail"}});
//     stop = true; gateway.join();
//
// ---- Config file ----------------------------------------------------------------------
//
//     {"service_name": "testing-service",                  required, non-empty
//      "gauges":   [{"metric_name": "sample_gauge",         required, [a-zA-Z_:][a-zA-Z0-9_:]*
//                    "metric_description": "...",          optional HELP text
//                    "labels": ["label_1", "label_2"]}],   optional, [a-zA-Z_][a-zA-Z0-9_]*
//      "counters": [ ...same keys... ],
//      "histograms": [{ ...same keys..., "buckets": [0.1, 1, 10]}],         default: Prometheus'
//      "summaries": [{ ...same keys..., "objectives": {"0.5": 0.05}, "max_age_seconds": 600}],
//      "listen_address": "0.0.0.0", "listen_port": 7789,   optional UDP address and port
//      "state_file": "/var/lib/hermes/state.json",         optional: keep series across restarts
//      "state_interval_seconds": 10,                       optional: between state writes
//      "max_series": 10000, "ttl_seconds": 0}              optional defaults for every metric
//
// A metric may set its own max_series (a push that would make one more series is
// rejected as series_limit) and ttl_seconds (a labelled series not pushed for that
// long disappears; 0, the default, keeps series for ever).
//
// Unknown keys, repeated names, names starting with hermes_ or process_ (the daemon's
// own), and a metric X or X_created beside a counter X_total (OpenMetrics' names for that
// counter's family) are errors: ConfigError names the file, the place and the problem.
// lint_config() gives the naming advice promtool would give, which is not an error.
//
// ---- Datagrams ------------------------------------------------------------------------
//
// One UDP datagram holds one sample object, or a JSON array of them (a batch):
//
//     {"metric_name": "sample_counter", "payload": {"labels": {"label_1": "a"}}}
//     {"metric_name": "sample_gauge", "payload": {"labels": {...}, "value": 65.4, "operation": "set"}}
//
// A counter adds `value` (finite, >= 0; default 1). A gauge sets `value`, or with
// "operation": "increment" / "decrement" moves by `value` (default 1). A histogram or
// summary takes `observation` (or `value`). `labels` holds
// exactly the configured label names with string values. JSON null counts as absent.
// A sample that is not applied is counted in hermes_samples_rejected_total under one
// reason: malformed_json, malformed_sample, unknown_metric, label_mismatch,
// invalid_label_value, invalid_value, invalid_operation, series_limit, too_large.
//
// ---- HTTP -----------------------------------------------------------------------------
//
// HTTP/1.0, one request per connection:
//     GET|HEAD /metrics          200, Prometheus text format 0.0.4, or OpenMetrics 1.0.0
//                                when the Accept header prefers it and Options allow it
//     GET|HEAD /-/healthy, /-/ready, /    200, short text
//     other paths 404; other methods 405 (Allow: GET, HEAD); a malformed request 400;
//     a request head over HERMES_MAX_REQUEST_HEAD 431; a major version other than 1, 505.
//
// Server::reload() (SIGHUP in the daemon) takes the config file again; an optional unix
// datagram socket (Options::unix_socket_path) takes samples beside UDP.
//
// ---- State across restarts ----------------------------------------------------------------
//
// With Options::state_file (HERMES_STATE_FILE, "state_file") a Server restores every
// series from that file at start, writes it every state_interval_seconds when something
// changed, and once more when run() ends, after the samples still queued on its sockets.
// A write goes to a new file in the same directory, fsynced and renamed over the old one,
// on a thread of its own. A file that is not state is renamed aside, never deleted; a
// series whose metric is gone or changed shape is skipped and logged.
//
// ---- Time -------------------------------------------------------------------------------------
//
// ttl_seconds, summary windows, log rate limits and HTTP timeouts count on the monotonic
// clock; the wall clock serves only the timestamps shown (_created, *_timestamp_seconds).
//
// ---- Limits (define before including to change) ------------------------------------------
//
//     HERMES_MAX_DATAGRAM_SIZE      8192   bytes; a longer datagram is rejected as too_large
//     HERMES_MAX_JSON_DEPTH           16   nested arrays and objects in a datagram or config
//     HERMES_MAX_CONFIG_SIZE     1048576   bytes of config file
//     HERMES_MAX_REQUEST_HEAD       8192   bytes of HTTP request line and headers
//     HERMES_MAX_CONNECTIONS          64   open HTTP connections
//     HERMES_HTTP_READ_TIMEOUT_MS   5000   time a client has to send its request head
//     HERMES_HTTP_WRITE_TIMEOUT_MS 10000   time a client has to read its response
//     HERMES_HTTP_LINGER_MS         1000   time a client has to close after its response
//     HERMES_RECEIVE_BATCH            32   datagrams one recvmmsg() call may take
//     HERMES_UDP_RECEIVE_BUFFER  4194304   default SO_RCVBUF of the UDP socket (Options)
//     HERMES_DATAGRAMS_PER_STEP      256   datagrams read before HTTP gets a turn
//     HERMES_RENDER_PAUSE_STRIDE    1024   series rendered between looks at the sockets
//     HERMES_RENDER_HOLD_BYTES   4194304   datagrams held in memory while /metrics renders
//     HERMES_POLL_INTERVAL_MS        200   longest sleep in run(); bounds the reaction to stop
//     HERMES_REJECT_LOG_INTERVAL_S    10   seconds between warn lines summarising rejects
//     HERMES_DEFAULT_MAX_SERIES    10000   series per metric unless the config sets max_series
//     HERMES_MAX_SERIES_LIMIT   10000000   the largest max_series a config may set
//     HERMES_STATE_INTERVAL_S         10   default seconds between state writes (state_interval_seconds)
//     HERMES_MAX_STATE_SIZE   1073741824   bytes of state file read at start; a larger one is set aside
//     HERMES_STATE_PAUSE_STRIDE     1024   series written to the state between looks at the sockets

#ifndef HERMES_HPP
#define HERMES_HPP

// ===== VERSION ============================================================================

#define HERMES_VERSION_MAJOR 1
#define HERMES_VERSION_MINOR 0
#define HERMES_VERSION_PATCH 0
#define HERMES_VERSION (HERMES_VERSION_MAJOR * 10000 + HERMES_VERSION_MINOR * 100 + HERMES_VERSION_PATCH)
#define HERMES_VERSION_STR "1.0.0"

// ===== LIMITS =============================================================================

#ifndef HERMES_MAX_DATAGRAM_SIZE
#define HERMES_MAX_DATAGRAM_SIZE 8192 // receive buffer; a longer datagram is too_large
#endif
#ifndef HERMES_MAX_JSON_DEPTH
#define HERMES_MAX_JSON_DEPTH 16 // a datagram needs 4 levels, a config 4
#endif
#ifndef HERMES_MAX_CONFIG_SIZE
#define HERMES_MAX_CONFIG_SIZE (1024 * 1024) // a larger file is not a config
#endif
#ifndef HERMES_MAX_REQUEST_HEAD
#define HERMES_MAX_REQUEST_HEAD 8192 // request line and headers; more is answered 431
#endif
#ifndef HERMES_MAX_CONNECTIONS
#define HERMES_MAX_CONNECTIONS 64 // when full, the oldest connection still reading is dropped
#endif
#ifndef HERMES_HTTP_READ_TIMEOUT_MS
#define HERMES_HTTP_READ_TIMEOUT_MS 5000 // from accept to a complete request head
#endif
#ifndef HERMES_HTTP_WRITE_TIMEOUT_MS
#define HERMES_HTTP_WRITE_TIMEOUT_MS 10000 // from the request head to the last byte sent
#endif
#ifndef HERMES_HTTP_LINGER_MS
#define HERMES_HTTP_LINGER_MS 1000 // after the response, how long to wait for the client to close
#endif
#ifndef HERMES_RECEIVE_BATCH
#define HERMES_RECEIVE_BATCH 32 // datagrams one recvmmsg() call may take
#endif
#ifndef HERMES_UDP_RECEIVE_BUFFER
#define HERMES_UDP_RECEIVE_BUFFER (4 * 1024 * 1024) // bytes the kernel may queue for us; a burst waits there
#endif
#ifndef HERMES_DATAGRAMS_PER_STEP
#define HERMES_DATAGRAMS_PER_STEP 256 // then HTTP clients get their turn
#endif
#ifndef HERMES_RENDER_PAUSE_STRIDE
#define HERMES_RENDER_PAUSE_STRIDE 1024 // series; 100k series render in a few ms, this pauses every ~60 us
#endif
#ifndef HERMES_RENDER_HOLD_BYTES
#define HERMES_RENDER_HOLD_BYTES (4 * 1024 * 1024) // taken off the sockets during a render; more waits in the kernel
#endif
#ifndef HERMES_POLL_INTERVAL_MS
#define HERMES_POLL_INTERVAL_MS 200 // run() looks at its stop flag at least this often
#endif
#ifndef HERMES_REJECT_LOG_INTERVAL_S
#define HERMES_REJECT_LOG_INTERVAL_S 10 // at most one warn line about rejects per interval
#endif
#ifndef HERMES_DEFAULT_MAX_SERIES
#define HERMES_DEFAULT_MAX_SERIES 10000 // series per metric, unless the config says otherwise
#endif
#ifndef HERMES_MAX_SERIES_LIMIT
#define HERMES_MAX_SERIES_LIMIT 10000000 // the largest max_series a config may ask for
#endif
#ifndef HERMES_STATE_INTERVAL_S
#define HERMES_STATE_INTERVAL_S 10 // default seconds between state writes; each writes only if something changed
#endif
#ifndef HERMES_MAX_STATE_SIZE
#define HERMES_MAX_STATE_SIZE (1024 * 1024 * 1024) // a state file larger than this is not read, but set aside
#endif
#ifndef HERMES_STATE_PAUSE_STRIDE
#define HERMES_STATE_PAUSE_STRIDE 1024 // series; as HERMES_RENDER_PAUSE_STRIDE, for the state's text
#endif
#ifndef HERMES_LISTEN_BACKLOG
#define HERMES_LISTEN_BACKLOG 128 // pending TCP connections the kernel queues for accept
#endif

#if HERMES_MAX_DATAGRAM_SIZE < 64 || HERMES_MAX_DATAGRAM_SIZE > 65536
#error "HERMES_MAX_DATAGRAM_SIZE must be between 64 and 65536 bytes"
#endif
#if HERMES_MAX_JSON_DEPTH < 4
#error "HERMES_MAX_JSON_DEPTH must be at least 4: a batch of samples nests 4 levels deep"
#endif
#if HERMES_MAX_REQUEST_HEAD < 256
#error "HERMES_MAX_REQUEST_HEAD must be at least 256 bytes"
#endif
#if HERMES_MAX_CONNECTIONS < 1
#error "HERMES_MAX_CONNECTIONS must be at least 1"
#endif
#if HERMES_STATE_INTERVAL_S < 1
#error "HERMES_STATE_INTERVAL_S must be at least 1 second"
#endif
#if HERMES_MAX_STATE_SIZE < 65536
#error "HERMES_MAX_STATE_SIZE must be at least 65536 bytes"
#endif
#if HERMES_STATE_PAUSE_STRIDE < 1
#error "HERMES_STATE_PAUSE_STRIDE must be at least 1 series"
#endif

// ===== INCLUDES ===========================================================================

#include <picojson.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

namespace hermes {

// ===== PUBLIC API: ERRORS =================================================================

// A config file that cannot be used: the message names the file, the place and the problem.
class ConfigError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A bad command-line or environment value: the message names the variable.
class UsageError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A socket that cannot be set up: the message names the address and the system error.
class SocketError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// A state file that cannot be read as state, or one that cannot be set aside: the
// message names the file, the place in it and the problem.
class StateError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// ===== PUBLIC API: CONFIG =================================================================

enum class MetricType { counter, gauge, histogram, summary };
inline const char *to_string(MetricType type);

// The buckets of a histogram whose config names none: Prometheus' defaults, as the
// original Hermes uses them.
inline std::vector<double> default_buckets() { return {.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}; }

struct MetricConfig {
  std::string name;
  std::string help;
  MetricType type = MetricType::counter;
  std::vector<std::string> labels;
  std::size_t max_series = HERMES_DEFAULT_MAX_SERIES; // a push for one more is rejected: series_limit
  double ttl_seconds = 0; // a labelled series not pushed for this long is dropped; 0: never
  std::vector<double> buckets;                        // histograms: upper bounds, strictly increasing
  std::vector<std::pair<double, double>> objectives;  // summaries: quantile and its allowed rank error
  double max_age_seconds = 600;                       // summaries: quantiles cover this window
};

struct Config {
  std::string service_name;
  std::vector<MetricConfig> metrics;       // in the order of the file
  std::string listen_address;              // UDP address from the file; empty when not set
  std::optional<std::uint16_t> listen_port; // UDP port from the file
  std::string state_file;                   // "state_file": where state is kept; empty when not set
  std::optional<double> state_interval_seconds; // "state_interval_seconds"
};

// Parses and validates a config; `origin` (the file name) starts every error message.
inline Config parse_config(std::string_view json, const std::string &origin);
// Reads, parses and validates a config file. Throws ConfigError.
inline Config load_config(const std::string &path);
// Naming advice that `promtool check metrics` would give on the configured metrics, as
// "name: problem" lines; advice, not errors.
inline std::vector<std::string> lint_config(const Config &config);

// ===== PUBLIC API: OPTIONS ================================================================

enum class LogLevel { debug, info, warn, error };
inline const char *to_string(LogLevel level);
inline std::optional<LogLevel> parse_log_level(std::string_view text); // any case
inline std::optional<std::uint16_t> parse_port(std::string_view text); // decimal 0..65535
inline std::optional<bool> parse_switch(std::string_view text);        // on/off, true/false, yes/no, 1/0

// Receives each log line (logfmt, no newline). Empty: lines go to stderr.
using LogSink = std::function<void(const std::string &line)>;

struct Options {
  std::string udp_address = "0.0.0.0";
  std::uint16_t udp_port = 7789; // 0: the kernel chooses
  int udp_receive_buffer = HERMES_UDP_RECEIVE_BUFFER; // SO_RCVBUF in bytes; the kernel may grant less
  std::string http_address = "0.0.0.0";
  std::uint16_t http_port = 8080;
  LogLevel log_level = LogLevel::info;
  bool openmetrics = true; // serve OpenMetrics to scrapers that prefer it
  std::string config_path; // the file Server::reload() reads again; empty: no reloads
  std::string unix_socket_path; // a unix datagram socket that takes samples too; empty: none
  unsigned unix_socket_mode = 0660; // its file mode, so that only its group may push
  std::string state_file; // where the series are kept across restarts; empty: nowhere
  double state_interval_seconds = HERMES_STATE_INTERVAL_S; // between writes, each only after a change
  LogSink log_sink;
};

// Looks a variable up, as std::getenv does: nullptr when unset.
using Environment = std::function<const char *(const char *name)>;

// Options from the environment over the config file's listen_* keys over the defaults:
// HERMES_UDP_ADDRESS (or LISTEN_ADDRESS), HERMES_UDP_PORT (or LISTEN_PORT),
// HERMES_HTTP_ADDRESS, HERMES_HTTP_PORT, HERMES_LOG_LEVEL (or LOG_LEVEL), HERMES_OPENMETRICS,
// HERMES_UNIX_SOCKET and HERMES_UNIX_SOCKET_MODE (octal), HERMES_UDP_RECEIVE_BUFFER (bytes),
// HERMES_STATE_FILE and HERMES_STATE_INTERVAL (seconds, over the config's state_* keys).
// An empty variable counts as unset. Throws UsageError naming a bad variable.
inline Options options_from_environment(const Config &config, const Environment &env);

// ===== PUBLIC API: SAMPLES ================================================================

// Why a sample was not applied; each is a value of hermes_samples_rejected_total's reason.
enum class Reject {
  malformed_json,      // the datagram is not JSON
  malformed_sample,    // JSON of the wrong shape
  unknown_metric,      // no such metric in the config
  label_mismatch,      // a label missing, extra or not a string
  invalid_label_value, // a label value that is not valid UTF-8
  invalid_value,       // value missing, not a number, or a negative counter increment
  invalid_operation,   // a gauge operation other than set, increment, decrement
  series_limit,        // a new series for a metric that has max_series already
  too_large,           // a datagram longer than HERMES_MAX_DATAGRAM_SIZE
};
constexpr std::size_t reject_reason_count = 9;
inline const char *to_string(Reject reason);

// Seconds since the epoch, as the timestamps of /metrics count them. It may step.
inline double wall_clock_seconds();
// Seconds on a clock that never steps (CLOCK_MONOTONIC): ttl_seconds, summary windows.
inline double monotonic_seconds();

// The two clocks a registry reads: the monotonic one for ages, the wall one for the
// timestamps it shows. One number stands for both, as unit tests step them together.
struct Now {
  double monotonic = 0; // monotonic_seconds(): ttl_seconds and summary windows count on it
  double wall = 0;      // wall_clock_seconds(): the _created timestamps
  Now(double both) : monotonic(both), wall(both) {} // implicit, so that a test may write ingest(text, 1000)
  Now(double monotonic_seconds, double wall_seconds) : monotonic(monotonic_seconds), wall(wall_seconds) {}
  static Now current() { return {monotonic_seconds(), wall_clock_seconds()}; }
};

// What one datagram did: samples applied, and samples rejected by reason.
struct IngestResult {
  std::size_t accepted = 0;
  std::array<std::size_t, reject_reason_count> rejected{};
  std::size_t rejected_total() const;
};

// ===== PUBLIC API: REGISTRY ===============================================================

namespace detail {
struct Metric;
struct ReadSample;
struct Reading;
class StateCodec;
} // namespace detail

struct ServerStats;
enum class Format;

// The metrics of a config and their series. Not thread-safe: one owner applies and renders.
class Registry {
public:
  explicit Registry(const Config &config);
  Registry(Registry &&) noexcept;
  Registry &operator=(Registry &&) noexcept;
  ~Registry();

  // Parses one datagram and applies every sample in it, at `now`. Never throws on bad input.
  IngestResult ingest(std::string_view datagram, Now now = Now::current());
  // Counts a datagram rejected before parsing, such as one that was too large.
  void count_rejected(Reject reason);
  // Takes a new config. A metric whose series have the same shape as before (type,
  // labels, buckets, objectives, max_age_seconds) keeps them; a changed one starts
  // afresh; one no longer configured disappears. The counts of samples go on.
  struct ReloadSummary {
    std::size_t kept = 0, fresh = 0, removed = 0; // metrics
  };
  ReloadSummary reload(const Config &config);
  // Drops the labelled series whose metric has a ttl_seconds and that were not pushed
  // for that long by `monotonic_now`; returns how many. A series without labels stays.
  std::size_t expire(double monotonic_now = monotonic_seconds());

  // Writes every series over `out` as the state file's JSON text (format version 1,
  // see README "State across restarts"): values, buckets, sums, counts, summary windows,
  // _created, each series' age since its last push, and each metric's shape. `pause`,
  // when given, runs after every HERMES_STATE_PAUSE_STRIDE series and must not change
  // the registry.
  void save_state(std::string &out, Now now, const std::function<void()> &pause = {}) const;
  // What restore_state() took, and what it left out and why ("metric: problem", once each).
  struct RestoreSummary {
    std::size_t restored = 0, skipped = 0; // series
    std::vector<std::string> problems;
  };
  // Takes the series of a state file whose metric is configured with the same shape;
  // series past their ttl_seconds expire at the next expire(). Throws StateError, having
  // changed nothing, when `text` is not a whole state file.
  RestoreSummary restore_state(std::string_view text, double monotonic_now = monotonic_seconds());
  // Goes up whenever a sample is applied, a series expires or one is restored: the state
  // is written only after a change. A reload alone is none: it leaves the file as it is.
  std::uint64_t changes() const { return changes_; }

  const std::string &service_name() const { return service_name_; }
  // The value of one series, label values in configured order; nullopt when it does not exist.
  std::optional<double> value(std::string_view metric, const std::vector<std::string> &label_values) const;
  std::size_t series_count() const; // live series of all configured metrics
  std::uint64_t accepted() const { return accepted_; }
  std::uint64_t expired() const { return expired_; } // series dropped by expire(), ever
  std::uint64_t rejected(Reject reason) const { return rejected_[static_cast<std::size_t>(reason)]; }

private:
  friend void render_metrics(std::string &out, const Registry &registry, const ServerStats &stats, Format format,
                             double now_seconds, const std::function<void()> &pause);
  friend class detail::StateCodec;
  std::optional<Reject> apply(const detail::ReadSample &sample, Now now);
  detail::Metric *find(std::string_view name);
  const detail::Metric *find(std::string_view name) const;

  std::string service_name_;
  std::vector<detail::Metric> metrics_; // sorted by name
  std::unique_ptr<detail::Reading> reading_; // buffers that datagrams are read into, reused
  std::uint64_t accepted_ = 0;
  std::uint64_t expired_ = 0;
  std::uint64_t changes_ = 0;
  std::array<std::uint64_t, reject_reason_count> rejected_{};
};

// ===== PUBLIC API: FORMATTING =============================================================

// The process metrics of the standard Prometheus client libraries.
struct ProcessStats {
  double cpu_seconds = 0;
  double resident_memory_bytes = 0;
  double virtual_memory_bytes = 0;
  double start_time_seconds = 0;
  double open_fds = 0;
  double max_fds = 0;
};
// Reads this process' figures from /proc; a figure that cannot be read stays 0.
inline ProcessStats read_process_stats();

// The daemon's own figures beside the registry's.
struct ServerStats {
  std::uint64_t udp_packets = 0;
  std::uint64_t udp_receive_drops = 0; // datagrams the kernel dropped: the receive buffer was full
  double udp_receive_buffer_bytes = 0;
  std::uint64_t unix_datagrams = 0;
  std::uint64_t reloads_succeeded = 0;
  std::uint64_t reloads_failed = 0;
  double last_reload_success_seconds = 0; // the start, until a reload succeeds
  std::map<int, std::uint64_t> http_requests; // by status code; every code Hermes sends, from 0
  std::uint64_t state_writes_succeeded = 0;
  std::uint64_t state_writes_failed = 0;
  double state_last_write_seconds = 0; // wall clock of the last write that succeeded; 0: none yet
  std::uint64_t state_restored_series = 0;
  ProcessStats process;
  ServerStats();
};

// The two exposition formats /metrics speaks.
enum class Format {
  text,        // Prometheus text format 0.0.4
  openmetrics, // OpenMetrics 1.0.0: counters named *_total become a family without the
               // suffix and gain *_created; other counters are typed unknown, as
               // Prometheus' Go client does; the body ends with # EOF
};
inline const char *content_type(Format format);

// The format an Accept header prefers: OpenMetrics only when it ranks above text.
inline Format negotiate_format(std::string_view accept);

// The /metrics body: every family once, sorted by configured name; summaries' quantiles
// as of `now_seconds` on the monotonic clock.
inline std::string render_metrics(const Registry &registry, const ServerStats &stats, Format format = Format::text,
                                  double now_seconds = monotonic_seconds());
// The same written over `out`, whose memory is reused. `pause`, when given, runs after
// every HERMES_RENDER_PAUSE_STRIDE series; it must not change the registry. A server
// takes the datagrams that arrive during a long render off its sockets there.
inline void render_metrics(std::string &out, const Registry &registry, const ServerStats &stats, Format format,
                           double now_seconds, const std::function<void()> &pause = {});

// ===== PUBLIC API: SERVER =================================================================

// Owns the UDP and HTTP sockets and the registry. Single-threaded: drive it from one thread.
class Server {
public:
  // Binds both sockets, logs where it listens, and restores Options::state_file. Throws
  // SocketError, or StateError when a state file that is not state cannot be set aside.
  Server(const Config &config, Options options);
  Server(const Server &) = delete;
  Server &operator=(const Server &) = delete;
  ~Server();

  // Waits up to timeout_ms for traffic and handles what arrived.
  void poll_once(int timeout_ms);
  // Steps until `stop` is set; sees it within HERMES_POLL_INTERVAL_MS. When `reload` is
  // given, each time it is set the server clears it and reloads. With a state file, it
  // then applies the samples still queued on the sockets and writes the state.
  void run(const std::atomic<bool> &stop, std::atomic<bool> *reload = nullptr);
  // Reads Options::config_path again and takes it (Registry::reload); a config that
  // fails to load is logged and counted, and the one in force stays. Listen addresses
  // and ports, the state file and its interval change only at restart.
  bool reload();

  std::uint16_t udp_port() const;
  std::uint16_t http_port() const;
  std::string udp_endpoint() const; // as bound: "0.0.0.0:7789", "[::1]:7789"
  std::string http_endpoint() const;
  const Registry &registry() const;
  const ServerStats &stats() const;
  std::string render(Format format = Format::text); // the /metrics body as of now

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ===== PUBLIC API: CLIENT =================================================================

using Labels = std::vector<std::pair<std::string, std::string>>;

// Sends samples to a Hermes over UDP. Sending never blocks and never throws: a lost
// datagram is the price of a worker that never waits.
class Client {
public:
  // Resolves host once. Throws SocketError when it cannot.
  Client(const std::string &host, std::uint16_t port);
  Client(const Client &) = delete;
  Client &operator=(const Client &) = delete;
  ~Client();

  bool send(std::string_view datagram); // false when the kernel refused it
  bool increment_counter(std::string_view metric, const Labels &labels, double by = 1);
  bool set_gauge(std::string_view metric, const Labels &labels, double value);
  bool increment_gauge(std::string_view metric, const Labels &labels, double by = 1);
  bool decrement_gauge(std::string_view metric, const Labels &labels, double by = 1);

private:
  // false without sending when the value is not finite: JSON cannot carry it.
  bool send_sample(std::string_view metric, const Labels &labels, double value, const char *operation);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace hermes

// ===== DETAIL: DECLARATIONS ===============================================================

namespace hermes {
namespace detail {

// Series of one metric, keyed by label values in configured order. The comparator is
// transparent so a lookup can use views into the datagram instead of new strings.
struct LabelValuesLess {
  using is_transparent = void;
  template <typename A, typename B> bool operator()(const A &a, const B &b) const {
    return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                        [](std::string_view x, std::string_view y) { return x < y; });
  }
};

// A stream of observations summarised so that any quantile can be read with a bounded
// rank error, in bounded memory: the targeted-quantile algorithm of Cormode, Korn,
// Muthukrishnan and Srivastava ("Effective computation of biased quantiles over data
// streams", ICDE 2005). It keeps a sorted list of values, each standing for `width`
// observations with an uncertainty of `delta` in rank, and merges neighbours as long
// as the allowed error at their rank permits.
class QuantileStream {
public:
  using Objectives = std::vector<std::pair<double, double>>; // quantile, allowed rank error

  void insert(double value, const Objectives &objectives) {
    buffer_.push_back(value);
    if (buffer_.size() >= buffer_limit) flush(objectives);
  }

  // The value at quantile q (0 < q < 1); NaN without observations.
  double query(double q, const Objectives &objectives) {
    flush(objectives);
    if (entries_.empty()) return std::nan("");
    // The first entry whose rank may reach past the wanted rank plus half the allowed
    // error has gone too far; the one before it answers.
    const double rank_wanted = std::ceil(q * count_);
    const double wanted = rank_wanted + allowed_error(rank_wanted, objectives) / 2;
    double rank = 0;
    for (std::size_t i = 1; i < entries_.size(); ++i) {
      rank += entries_[i - 1].width;
      if (rank + entries_[i].width + entries_[i].delta > wanted) return entries_[i - 1].value;
    }
    return entries_.back().value;
  }

  void reset() {
    entries_.clear();
    buffer_.clear();
    count_ = 0;
  }

  std::size_t memory_entries() const { return entries_.size() + buffer_.size(); }

private:
  friend class StateCodec;
  struct Entry {
    double value;
    double width; // observations this entry stands for
    double delta; // how far its rank may be off
  };
  static constexpr std::size_t buffer_limit = 500; // observations sorted and merged at once

  // The rank error allowed at rank r: the tightest over all objectives.
  double allowed_error(double rank, const Objectives &objectives) const {
    double allowed = std::numeric_limits<double>::max();
    for (const auto &objective : objectives) {
      const double q = objective.first, error = objective.second;
      const double here = q * count_ <= rank ? 2 * error * rank / q : 2 * error * (count_ - rank) / (1 - q);
      allowed = std::min(allowed, here);
    }
    return allowed;
  }

  void flush(const Objectives &objectives) {
    if (buffer_.empty()) return;
    std::sort(buffer_.begin(), buffer_.end());
    std::vector<Entry> merged;
    merged.reserve(entries_.size() + buffer_.size());
    double rank = 0;
    std::size_t next = 0;
    for (const double value : buffer_) {
      for (; next < entries_.size() && entries_[next].value <= value; ++next) {
        rank += entries_[next].width;
        merged.push_back(entries_[next]);
      }
      // A new value in the middle may be off by what its place allows; at either end, not at all.
      const bool inside = next < entries_.size() && !merged.empty();
      const double delta = inside ? std::max(0.0, std::floor(allowed_error(rank, objectives)) - 1) : 0;
      merged.push_back({value, 1, delta});
      count_ += 1;
      rank += 1;
    }
    merged.insert(merged.end(), entries_.begin() + static_cast<std::ptrdiff_t>(next), entries_.end());
    entries_ = std::move(merged);
    buffer_.clear();
    compress(objectives);
  }

  // Folds each entry into its right neighbour where the error allowed there permits.
  void compress(const Objectives &objectives) {
    if (entries_.size() < 2) return;
    std::vector<Entry> kept;
    kept.reserve(entries_.size());
    Entry right = entries_.back();
    double rank = count_ - 1 - right.width;
    for (std::size_t i = entries_.size() - 1; i-- > 0;) {
      const Entry &left = entries_[i];
      if (left.width + right.width + right.delta <= allowed_error(rank, objectives)) {
        right.width += left.width;
      } else {
        kept.push_back(right);
        right = left;
      }
      rank -= left.width;
    }
    kept.push_back(right);
    entries_.assign(kept.rbegin(), kept.rend());
  }

  std::vector<Entry> entries_;
  std::vector<double> buffer_;
  double count_ = 0;
};

// Quantiles over the last max_age seconds, as Prometheus' Go client keeps them: five
// streams all take every observation, each is emptied in turn every max_age / 5, and
// the oldest one answers, so an answer covers between 4/5 of max_age and max_age.
class QuantileWindow {
public:
  // A copy of the objectives, so that the window outlives any config it was made from.
  QuantileWindow(const MetricConfig &config, double now)
      : objectives_(config.objectives), step_(config.max_age_seconds / streams), head_expires_(now + step_),
        streams_(streams) {}

  void observe(double value, double now) {
    rotate(now);
    for (QuantileStream &stream : streams_) stream.insert(value, objectives_);
  }

  double query(double q, double now) {
    rotate(now);
    return streams_[head_].query(q, objectives_);
  }

  std::size_t memory_entries() const {
    std::size_t total = 0;
    for (const QuantileStream &stream : streams_) total += stream.memory_entries();
    return total;
  }

private:
  friend class StateCodec;
  static constexpr std::size_t streams = 5;

  void rotate(double now) {
    for (std::size_t turns = 0; now >= head_expires_ && turns < streams; ++turns) {
      streams_[head_].reset();
      head_ = (head_ + 1) % streams;
      head_expires_ += step_;
    }
    if (now >= head_expires_) head_expires_ = now + step_; // idle for longer than max_age: all were emptied
  }

  QuantileStream::Objectives objectives_;
  double step_;
  double head_expires_; // when the head stream is emptied and the next one answers
  std::size_t head_ = 0;
  std::vector<QuantileStream> streams_;
};

// What a histogram or summary series has seen.
struct Distribution {
  double sum = 0;
  std::uint64_t count = 0;
  std::vector<std::uint64_t> bucket_counts;  // histograms: per bucket, not cumulative; the last is +Inf
  std::unique_ptr<QuantileWindow> quantiles; // summaries with objectives
};

struct Series {
  double value = 0;
  double created = 0;   // wall clock of the push that made it; 0 when made at start
  double last_push = 0; // monotonic clock of the latest push
  std::unique_ptr<Distribution> distribution; // histograms and summaries
};

struct Metric {
  MetricConfig config;
  std::map<std::vector<std::string>, Series, LabelValuesLess> series;
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: TEXT AND FILES =============================================================

namespace hermes {
namespace detail {

inline bool is_valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    std::size_t extra = 0;
    std::uint32_t code = 0, minimum = 0;
    if (byte < 0x80) {
      ++i;
      continue;
    } else if ((byte & 0xE0) == 0xC0) {
      extra = 1, code = byte & 0x1Fu, minimum = 0x80;
    } else if ((byte & 0xF0) == 0xE0) {
      extra = 2, code = byte & 0x0Fu, minimum = 0x800;
    } else if ((byte & 0xF8) == 0xF0) {
      extra = 3, code = byte & 0x07u, minimum = 0x10000;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false; // the sequence is cut off
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3Fu);
    }
    // Overlong forms, UTF-16 surrogates and code points past Unicode are not UTF-8.
    if (code < minimum || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

inline bool is_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

inline bool is_label_name(std::string_view name) {
  return is_metric_name(name) && name.find(':') == std::string_view::npos;
}

inline bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// The parts of `text` between separators, empty ones included.
inline std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    const std::size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

// Reads at most `limit` bytes of a file into `out`; returns 0, or the errno of the failure.
inline int read_file(const char *path, std::size_t limit, std::string &out) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  out.clear();
  char buffer[16384];
  int error = 0;
  while (out.size() < limit) {
    const ssize_t length = ::read(fd, buffer, std::min(sizeof buffer, limit - out.size()));
    if (length < 0 && errno == EINTR) continue;
    if (length <= 0) {
      error = length < 0 ? errno : 0;
      break;
    }
    out.append(buffer, static_cast<std::size_t>(length));
  }
  ::close(fd);
  return error;
}

inline bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

inline std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char &c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A JSON value shortened for an error message.
inline std::string quote_json(const picojson::value &value) {
  std::string text = value.serialize();
  constexpr std::size_t max_shown = 60;
  return text.size() > max_shown ? text.substr(0, max_shown) + "..." : text;
}

// A whole number below 10^15 printed as an integer, where that is what to_chars(double)
// would print too: it prefers 1e+06 to 1000000, the shorter. Counters are mostly whole,
// and integers print in a tenth of the time.
inline bool append_whole_number(std::string &out, double value) {
  if (!(std::fabs(value) < 1e15) || value != std::trunc(value) || (value == 0 && std::signbit(value))) return false;
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, static_cast<long long>(value)).ptr;
  const std::size_t length = static_cast<std::size_t>(end - digits) - (value < 0 ? 1 : 0);
  std::size_t significant = length;
  while (significant > 1 && end[-1 - static_cast<std::ptrdiff_t>(length - significant)] == '0') --significant;
  const std::size_t scientific = significant + (significant > 1 ? 1 : 0) + 4; // d.ddd e+XX
  if (length > scientific) return false;
  out.append(digits, end);
  return true;
}

// Shortest text that reads back to the same double; NaN and infinities as Prometheus spells them.
inline void append_double(std::string &out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
  } else if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
  } else if (!append_whole_number(out, value)) {
    char buffer[32];
    const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
    out.append(buffer, result.ptr);
  }
}

inline std::string format_double(double value) {
  std::string out;
  append_double(out, value);
  return out;
}

inline void append_json_string(std::string &out, std::string_view text) {
  out += '"';
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", static_cast<unsigned>(c));
      out += escape;
    } else {
      out += c;
    }
  }
  out += '"';
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: JSON =======================================================================

namespace hermes {
namespace detail {

// Builds a picojson tree like picojson's default context, with two differences that
// matter for hostile input: nesting of arrays and objects alike is bounded, and a
// number beyond the range of double does not throw. Such a number stands in the tree
// as a boolean, so that every field expecting a number or a string rejects it with
// that field's own reason, as it would any other non-number.
class BoundedJsonContext {
public:
  BoundedJsonContext(picojson::value *out, std::size_t depth_left) : out_(out), depth_left_(depth_left) {}
  bool set_null() { return *out_ = picojson::value(), true; }
  bool set_bool(bool b) { return *out_ = picojson::value(b), true; }
  bool set_number(double f) {
    *out_ = std::isfinite(f) ? picojson::value(f) : picojson::value(true);
    return true;
  }
  template <typename Iter> bool parse_string(picojson::input<Iter> &in) {
    *out_ = picojson::value(picojson::string_type, false);
    return picojson::_parse_string(out_->get<std::string>(), in);
  }
  bool parse_array_start() { return enter(picojson::array_type); }
  template <typename Iter> bool parse_array_item(picojson::input<Iter> &in, std::size_t) {
    auto &array = out_->get<picojson::array>();
    array.emplace_back();
    BoundedJsonContext item(&array.back(), depth_left_);
    return picojson::_parse(item, in);
  }
  bool parse_array_stop(std::size_t) { return true; }
  bool parse_object_start() { return enter(picojson::object_type); }
  template <typename Iter> bool parse_object_item(picojson::input<Iter> &in, const std::string &key) {
    BoundedJsonContext item(&out_->get<picojson::object>()[key], depth_left_);
    return picojson::_parse(item, in);
  }
  bool parse_object_stop() { return true; }

private:
  bool enter(int type) { // picojson names its types in an unnamed enum
    if (depth_left_ == 0) return false;
    --depth_left_;
    *out_ = picojson::value(type, false);
    return true;
  }
  picojson::value *out_;
  std::size_t depth_left_;
};

// Parses one whole JSON text into a picojson parse context; trailing bytes other than
// white space are an error. On failure `error` (when given) says where, as
// "syntax error at line N near: ...".
template <typename Context> bool parse_json_into(Context &context, std::string_view text, std::string *error = nullptr) {
  picojson::input<const char *> in(text.data(), text.data() + text.size());
  if (!picojson::_parse(context, in)) {
    if (error) { // picojson's own words, built only when asked for: ingest has no use for them
      *error = "syntax error at line " + std::to_string(in.line()) + " near: ";
      for (int c = in.getc(); c != -1 && c != '\n'; c = in.getc())
        if (c >= ' ') error->push_back(static_cast<char>(c));
    }
    return false;
  }
  in.skip_ws();
  if (in.getc() != -1) {
    if (error) *error = "unexpected text after the JSON value";
    return false;
  }
  return true;
}

inline bool parse_json(std::string_view text, picojson::value &out, std::string *error = nullptr) {
  BoundedJsonContext context(&out, HERMES_MAX_JSON_DEPTH);
  return parse_json_into(context, text, error);
}

// ---- Reading datagrams without a tree ------------------------------------------------------
//
// A datagram is read straight into the few fields a sample has, in buffers that are
// reused from one datagram to the next, so ingest allocates nothing once they have
// grown. The reader notes what kind of JSON value stood at each place; checking it
// against the config comes after, when the whole datagram has proved to be JSON.

enum class JsonKind { absent, null, other, number, string, array, object };

struct ReadValue {
  JsonKind kind = JsonKind::absent;
  double number = 0;
  std::string text;
  bool present() const { return kind != JsonKind::absent && kind != JsonKind::null; } // null counts as absent
};

struct ReadSample {
  JsonKind shape = JsonKind::absent; // the sample itself
  ReadValue metric_name, value, observation, operation;
  JsonKind payload = JsonKind::absent, labels = JsonKind::absent;
  std::vector<std::pair<std::string, ReadValue>> label_slots; // the first label_count are this sample's
  std::size_t label_count = 0;

  void reset_payload() {
    value.kind = observation.kind = operation.kind = JsonKind::absent;
    labels = JsonKind::absent;
    label_count = 0;
  }
  // The label's slot, the same one again for a repeated name: the last value wins, as in a JSON object.
  ReadValue &label(const std::string &name) {
    for (std::size_t i = 0; i < label_count; ++i)
      if (label_slots[i].first == name) return label_slots[i].second;
    if (label_count == label_slots.size()) label_slots.emplace_back();
    auto &slot = label_slots[label_count++];
    slot.first.assign(name);
    slot.second.kind = JsonKind::absent;
    return slot.second;
  }
  const ReadValue *find_label(std::string_view name) const {
    for (std::size_t i = 0; i < label_count; ++i)
      if (label_slots[i].first == name) return &label_slots[i].second;
    return nullptr;
  }
};

// The samples of one datagram; their buffers stay for the next.
struct ReadBatch {
  std::vector<ReadSample> slots;
  std::size_t count = 0;
  bool is_array = false;

  void clear() { count = 0, is_array = false; }
  ReadSample &start(JsonKind shape) {
    if (count == slots.size()) slots.emplace_back();
    ReadSample &sample = slots[count++];
    sample.shape = shape;
    sample.metric_name.kind = sample.payload = JsonKind::absent;
    sample.reset_payload();
    return sample;
  }
  ReadSample &current() { return slots[count - 1]; }
};

// A picojson parse context for one place in a datagram: the datagram itself, a sample,
// its payload, its labels, a value to keep, or anything to skip. Nesting is bounded as
// in BoundedJsonContext; a number beyond double's range is kept as kind `other`, so
// every field that wants a number rejects it.
class SampleReader {
public:
  enum class Place { datagram, sample, payload, labels, value, skip };

  SampleReader(Place place, ReadBatch &batch, std::size_t depth_left, ReadValue *value = nullptr)
      : place_(place), batch_(batch), depth_left_(depth_left), value_(value) {}

  bool set_null() { return note(JsonKind::null); }
  bool set_bool(bool) { return note(JsonKind::other); }
  bool set_number(double f) {
    if (!std::isfinite(f)) return note(JsonKind::other);
    if (value_) value_->number = f;
    return note(JsonKind::number);
  }
  template <typename Iter> bool parse_string(picojson::input<Iter> &in) {
    note(JsonKind::string);
    if (value_) {
      value_->text.clear();
      return picojson::_parse_string(value_->text, in);
    }
    picojson::null_parse_context::dummy_str ignored;
    return picojson::_parse_string(ignored, in);
  }
  bool parse_array_start() { return enter() && note(JsonKind::array); }
  template <typename Iter> bool parse_array_item(picojson::input<Iter> &in, std::size_t) {
    SampleReader item(place_ == Place::datagram ? Place::sample : Place::skip, batch_, depth_left_);
    return picojson::_parse(item, in);
  }
  bool parse_array_stop(std::size_t) { return true; }
  bool parse_object_start() { return enter() && note(JsonKind::object); }
  template <typename Iter> bool parse_object_item(picojson::input<Iter> &in, const std::string &key) {
    SampleReader item = member_reader(key);
    return picojson::_parse(item, in);
  }
  bool parse_object_stop() { return true; }

private:
  bool enter() {
    if (depth_left_ == 0) return false;
    --depth_left_;
    return true;
  }

  // Notes the kind of value that stands at this place.
  bool note(JsonKind kind) {
    switch (place_) {
    case Place::datagram:
      if (kind == JsonKind::array) batch_.is_array = true;
      else batch_.start(kind);
      break;
    case Place::sample: batch_.start(kind); break;
    case Place::payload:
      batch_.current().reset_payload(); // a repeated payload replaces the one before
      batch_.current().payload = kind;
      break;
    case Place::labels:
      batch_.current().label_count = 0;
      batch_.current().labels = kind;
      break;
    case Place::value: value_->kind = kind; break;
    case Place::skip: break;
    }
    return true;
  }

  // Where a member of the object at this place goes.
  SampleReader member_reader(const std::string &key) {
    const bool in_sample = place_ == Place::datagram || place_ == Place::sample;
    ReadSample *sample = batch_.count ? &batch_.current() : nullptr;
    if (in_sample && key == "metric_name") return {Place::value, batch_, depth_left_, &sample->metric_name};
    if (in_sample && key == "payload") return {Place::payload, batch_, depth_left_};
    if (place_ == Place::payload) {
      if (key == "labels") return {Place::labels, batch_, depth_left_};
      if (key == "value") return {Place::value, batch_, depth_left_, &sample->value};
      if (key == "observation") return {Place::value, batch_, depth_left_, &sample->observation};
      if (key == "operation") return {Place::value, batch_, depth_left_, &sample->operation};
    }
    if (place_ == Place::labels) return {Place::value, batch_, depth_left_, &sample->label(key)};
    return {Place::skip, batch_, depth_left_};
  }

  Place place_;
  ReadBatch &batch_;
  std::size_t depth_left_;
  ReadValue *value_;
};

struct Reading {
  ReadBatch batch;
  std::vector<std::string_view> label_values;
};

// The member `key` of an object, treating JSON null as absent.
inline const picojson::value *member(const picojson::object &object, const std::string &key) {
  const auto found = object.find(key);
  if (found == object.end() || found->second.is<picojson::null>()) return nullptr;
  return &found->second;
}

inline const char *json_type_name(const picojson::value &value) {
  if (value.is<picojson::null>()) return "null";
  if (value.is<bool>()) return "a boolean";
  if (value.is<double>()) return "a number";
  if (value.is<std::string>()) return "a string";
  if (value.is<picojson::array>()) return "a list";
  return "an object";
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: CONFIG =====================================================================

namespace hermes {
namespace detail {

// The family name of a metric in OpenMetrics: a counter drops its _total.
inline std::string openmetrics_family(const MetricConfig &metric) {
  if (metric.type == MetricType::counter && ends_with(metric.name, "_total"))
    return metric.name.substr(0, metric.name.size() - 6);
  return metric.name;
}

// Every name a metric uses in either format: its family and its series' names.
inline std::vector<std::string> names_taken(const MetricConfig &metric) {
  const std::string &name = metric.name;
  const std::string family = openmetrics_family(metric);
  switch (metric.type) {
  case MetricType::counter:
    return family == name ? std::vector<std::string>{name} : std::vector<std::string>{family, name, family + "_created"};
  case MetricType::histogram: return {name, name + "_bucket", name + "_sum", name + "_count", name + "_created"};
  case MetricType::summary: return {name, name + "_sum", name + "_count", name + "_created"};
  default: return {name};
  }
}

// Reads a config tree; every error names the file and the JSON path of the place.
class ConfigReader {
public:
  explicit ConfigReader(std::string origin) : origin_(std::move(origin)) {}

  Config read(const picojson::value &root) {
    if (!root.is<picojson::object>()) fail("", std::string("expected an object, got ") + json_type_name(root));
    const auto &top = root.get<picojson::object>();
    reject_unknown_keys(top, "", {"service_name", "gauges", "counters", "histograms", "summaries", "listen_address",
                                  "listen_port", "max_series", "ttl_seconds", "state_file", "state_interval_seconds"});
    Config config;
    config.service_name = read_service_name(top);
    read_series_limits(top, "", defaults_);
    read_metrics(top, "gauges", MetricType::gauge, config.metrics);
    read_metrics(top, "counters", MetricType::counter, config.metrics);
    read_metrics(top, "histograms", MetricType::histogram, config.metrics);
    read_metrics(top, "summaries", MetricType::summary, config.metrics);
    if (const auto *address = member(top, "listen_address")) config.listen_address = string_at(*address, "listen_address");
    if (const auto *port = member(top, "listen_port")) config.listen_port = port_at(*port, "listen_port");
    if (const auto *path = member(top, "state_file")) config.state_file = string_at(*path, "state_file");
    if (const auto *interval = member(top, "state_interval_seconds")) {
      if (!interval->is<double>() || !(interval->get<double>() > 0))
        fail("state_interval_seconds", quote_json(*interval) + " is not a number of seconds above 0");
      config.state_interval_seconds = interval->get<double>();
    }
    check_name_collisions(config.metrics);
    return config;
  }

private:
  [[noreturn]] void fail(const std::string &place, const std::string &problem) const {
    throw ConfigError(origin_ + ": " + (place.empty() ? "" : place + ": ") + problem);
  }

  void reject_unknown_keys(const picojson::object &object, const std::string &place,
                           std::initializer_list<const char *> known) const {
    for (const auto &entry : object) {
      const bool is_known = std::any_of(known.begin(), known.end(), [&](const char *k) { return entry.first == k; });
      if (is_known) continue;
      std::string expected;
      for (const char *k : known) expected += (expected.empty() ? "" : ", ") + std::string(k);
      fail(join(place, entry.first), "unknown key (expected one of: " + expected + ")");
    }
  }

  static std::string join(const std::string &place, const std::string &key) {
    return place.empty() ? key : place + "." + key;
  }

  std::string string_at(const picojson::value &value, const std::string &place) const {
    if (!value.is<std::string>()) fail(place, std::string("expected a string, got ") + json_type_name(value));
    return value.get<std::string>();
  }

  std::uint16_t port_at(const picojson::value &value, const std::string &place) const {
    std::optional<std::uint16_t> port;
    if (value.is<double>()) {
      const double number = value.get<double>();
      if (number >= 0 && number <= 65535 && number == std::floor(number)) port = static_cast<std::uint16_t>(number);
    } else if (value.is<std::string>()) {
      port = parse_port(value.get<std::string>());
    }
    if (!port) fail(place, quote_json(value) + " is not a port number (0-65535)");
    return *port;
  }

  // max_series and ttl_seconds, of the top level (the defaults) or of one metric.
  void read_series_limits(const picojson::object &object, const std::string &place, MetricConfig &limits) const {
    if (const auto *max = member(object, "max_series")) {
      const std::string where = join(place, "max_series");
      const bool whole = max->is<double>() && max->get<double>() == std::floor(max->get<double>());
      if (!whole || max->get<double>() < 1 || max->get<double>() > HERMES_MAX_SERIES_LIMIT)
        fail(where, quote_json(*max) + " is not a whole number from 1 to " + std::to_string(HERMES_MAX_SERIES_LIMIT));
      limits.max_series = static_cast<std::size_t>(max->get<double>());
    }
    if (const auto *ttl = member(object, "ttl_seconds")) {
      if (!ttl->is<double>() || ttl->get<double>() < 0)
        fail(join(place, "ttl_seconds"), quote_json(*ttl) + " is not a number of seconds (0 or more; 0: never)");
      limits.ttl_seconds = ttl->get<double>();
    }
  }

  std::string read_service_name(const picojson::object &top) const {
    const auto *name = member(top, "service_name");
    if (!name) fail("service_name", "missing: every config names its service");
    std::string text = string_at(*name, "service_name");
    if (text.empty()) fail("service_name", "must not be empty");
    if (!is_valid_utf8(text)) fail("service_name", "is not valid UTF-8");
    return text;
  }

  void read_metrics(const picojson::object &top, const char *key, MetricType type, std::vector<MetricConfig> &out) {
    const auto *list = member(top, key);
    if (!list) return;
    if (!list->is<picojson::array>()) fail(key, std::string("expected a list, got ") + json_type_name(*list));
    const auto &items = list->get<picojson::array>();
    for (std::size_t i = 0; i < items.size(); ++i) {
      out.push_back(read_metric(items[i], std::string(key) + "[" + std::to_string(i) + "]", type));
      check_unique(out.back().name, join(std::string(key) + "[" + std::to_string(i) + "]", "metric_name"));
    }
  }

  MetricConfig read_metric(const picojson::value &item, const std::string &place, MetricType type) const {
    if (!item.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(item));
    const auto &object = item.get<picojson::object>();
    if (type == MetricType::histogram)
      reject_unknown_keys(object, place, {"metric_name", "metric_description", "labels", "max_series", "ttl_seconds", "buckets"});
    else if (type == MetricType::summary)
      reject_unknown_keys(object, place, {"metric_name", "metric_description", "labels", "max_series", "ttl_seconds",
                                          "objectives", "max_age_seconds"});
    else
      reject_unknown_keys(object, place, {"metric_name", "metric_description", "labels", "max_series", "ttl_seconds"});
    MetricConfig metric = defaults_;
    read_series_limits(object, place, metric);
    metric.type = type;
    metric.name = read_metric_name(object, join(place, "metric_name"));
    if (const auto *help = member(object, "metric_description")) {
      metric.help = string_at(*help, join(place, "metric_description"));
      if (!is_valid_utf8(metric.help)) fail(join(place, "metric_description"), "is not valid UTF-8");
    }
    if (const auto *labels = member(object, "labels")) metric.labels = read_labels(*labels, join(place, "labels"));
    if (type == MetricType::histogram) read_histogram(object, place, metric);
    if (type == MetricType::summary) read_summary(object, place, metric);
    return metric;
  }

  void reject_label(const MetricConfig &metric, const std::string &place, const char *label, const char *why) const {
    const auto found = std::find(metric.labels.begin(), metric.labels.end(), label);
    if (found != metric.labels.end())
      fail(join(place, "labels") + "[" + std::to_string(found - metric.labels.begin()) + "]",
           std::string("\"") + label + "\" is reserved: " + why);
  }

  void read_histogram(const picojson::object &object, const std::string &place, MetricConfig &metric) const {
    reject_label(metric, place, "le", "a histogram's buckets use it");
    metric.buckets = default_buckets();
    const auto *buckets = member(object, "buckets");
    if (!buckets) return;
    const std::string where = join(place, "buckets");
    if (!buckets->is<picojson::array>()) fail(where, std::string("expected a list, got ") + json_type_name(*buckets));
    const auto &items = buckets->get<picojson::array>();
    if (items.empty()) fail(where, "must hold at least one bucket");
    metric.buckets.clear();
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string item_place = where + "[" + std::to_string(i) + "]";
      if (!items[i].is<double>()) fail(item_place, quote_json(items[i]) + " is not a finite number");
      const double bound = items[i].get<double>();
      if (!metric.buckets.empty() && bound <= metric.buckets.back())
        fail(item_place, quote_json(items[i]) + " is not above the bucket before it: buckets must increase strictly");
      metric.buckets.push_back(bound);
    }
  }

  void read_summary(const picojson::object &object, const std::string &place, MetricConfig &metric) const {
    reject_label(metric, place, "quantile", "a summary's quantiles use it");
    if (const auto *age = member(object, "max_age_seconds")) {
      if (!age->is<double>() || age->get<double>() <= 0)
        fail(join(place, "max_age_seconds"), quote_json(*age) + " is not a number of seconds above 0");
      metric.max_age_seconds = age->get<double>();
    }
    const auto *objectives = member(object, "objectives");
    if (!objectives) return;
    const std::string where = join(place, "objectives");
    if (!objectives->is<picojson::object>())
      fail(where, std::string("expected an object of quantile: error, got ") + json_type_name(*objectives));
    for (const auto &entry : objectives->get<picojson::object>()) {
      const std::string item_place = where + "." + entry.first;
      char *end = nullptr;
      const double quantile = std::strtod(entry.first.c_str(), &end);
      if (entry.first.empty() || *end != '\0' || !(quantile > 0 && quantile < 1))
        fail(item_place, "\"" + entry.first + "\" is not a quantile between 0 and 1");
      if (!entry.second.is<double>() || !(entry.second.get<double>() > 0 && entry.second.get<double>() <= 0.5))
        fail(item_place, quote_json(entry.second) + " is not an allowed rank error above 0 and at most 0.5");
      metric.objectives.emplace_back(quantile, entry.second.get<double>());
    }
    std::sort(metric.objectives.begin(), metric.objectives.end());
  }

  std::string read_metric_name(const picojson::object &object, const std::string &place) const {
    const auto *name = member(object, "metric_name");
    if (!name) fail(place, "missing");
    std::string text = string_at(*name, place);
    if (!is_metric_name(text)) fail(place, quote_json(*name) + " is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
    if (starts_with(text, "hermes_") || starts_with(text, "process_"))
      fail(place, quote_json(*name) + " is reserved: hermes_* and process_* are Hermes' own metrics");
    return text;
  }

  std::vector<std::string> read_labels(const picojson::value &labels, const std::string &place) const {
    if (!labels.is<picojson::array>()) fail(place, std::string("expected a list, got ") + json_type_name(labels));
    std::vector<std::string> names;
    const auto &items = labels.get<picojson::array>();
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string item_place = place + "[" + std::to_string(i) + "]";
      std::string name = string_at(items[i], item_place);
      if (!is_label_name(name)) fail(item_place, quote_json(items[i]) + " is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)");
      if (starts_with(name, "__")) fail(item_place, quote_json(items[i]) + " is reserved: names starting with __ are Prometheus' own");
      if (std::find(names.begin(), names.end(), name) != names.end()) fail(item_place, quote_json(items[i]) + " is listed twice");
      names.push_back(std::move(name));
    }
    return names;
  }

  // No two metrics may expose the same name in either format: a histogram X also has
  // X_bucket, X_sum, X_count; in OpenMetrics a counter X_total is the family X, and
  // counters, histograms and summaries add X_created.
  void check_name_collisions(const std::vector<MetricConfig> &metrics) const {
    for (std::size_t i = 0; i < metrics.size(); ++i)
      for (std::size_t j = i + 1; j < metrics.size(); ++j)
        for (const std::string &name : names_taken(metrics[i])) {
          const std::vector<std::string> other = names_taken(metrics[j]);
          if (std::find(other.begin(), other.end(), name) != other.end())
            fail("", "\"" + metrics[i].name + "\" and \"" + metrics[j].name + "\" would both expose the name " + name);
        }
  }

  void check_unique(const std::string &name, const std::string &place) {
    if (std::find(seen_names_.begin(), seen_names_.end(), name) != seen_names_.end())
      fail(place, "\"" + name + "\" is defined twice");
    seen_names_.push_back(name);
  }

  std::string origin_;
  MetricConfig defaults_; // the top level's max_series and ttl_seconds
  std::vector<std::string> seen_names_;
};

// The unit a name part stands for, with the base unit promtool asks for instead.
inline std::optional<std::pair<std::string, std::string>> unit_in(std::string_view part) {
  static constexpr std::pair<const char *, const char *> units[] = {
      {"amperes", "amperes"}, {"bytes", "bytes"},     {"celsius", "celsius"}, {"grams", "grams"},     {"joules", "joules"},
      {"kelvin", "kelvin"},   {"meters", "meters"},   {"metres", "metres"},   {"seconds", "seconds"}, {"volts", "volts"},
      {"minutes", "seconds"}, {"hours", "seconds"},   {"days", "seconds"},    {"weeks", "seconds"},   {"kelvins", "kelvin"},
      {"fahrenheit", "celsius"}, {"rankine", "celsius"}, {"inches", "meters"}, {"yards", "meters"}, {"miles", "meters"},
      {"bits", "bytes"},      {"calories", "joules"}, {"pounds", "grams"},    {"ounces", "grams"}};
  static constexpr const char *prefixes[] = {"", "pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo",
                                             "kibi", "mega", "mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi"};
  for (const char *prefix : prefixes) {
    if (!starts_with(part, prefix)) continue;
    for (const auto &unit : units)
      if (part.substr(std::strlen(prefix)) == unit.first) return std::make_pair(std::string(part), std::string(unit.second));
  }
  return std::nullopt;
}

// Whether a name has `word` as a whole _-separated part in the middle or at the end.
inline bool has_part(std::string_view name, std::string_view word) {
  const std::string middle = "_" + std::string(word) + "_";
  return name.find(middle) != std::string_view::npos || ends_with(name, "_" + std::string(word));
}

inline bool is_camel_case(std::string_view name) {
  for (std::size_t i = 1; i < name.size(); ++i)
    if (std::islower(static_cast<unsigned char>(name[i - 1])) && std::isupper(static_cast<unsigned char>(name[i]))) return true;
  return false;
}

inline std::vector<std::string> lint_names(const MetricConfig &metric) {
  std::vector<std::string> problems;
  const std::string &name = metric.name;
  const std::string lower = lowercase(name);
  const bool counter = metric.type == MetricType::counter;
  if (metric.help.empty()) problems.push_back("no help text");
  for (const std::string_view part : split(name, '_')) {
    if (const auto unit = unit_in(part)) {
      if (unit->first != unit->second) problems.push_back("use base unit \"" + unit->second + "\" instead of \"" + unit->first + "\"");
      break;
    }
  }
  if (counter && !ends_with(name, "_total")) problems.push_back("counter metrics should have \"_total\" suffix");
  if (!counter && ends_with(name, "_total")) problems.push_back("non-counter metrics should not have \"_total\" suffix");
  const bool plain = counter || metric.type == MetricType::gauge;
  if (plain && ends_with(name, "_bucket")) problems.push_back("non-histogram metrics should not have \"_bucket\" suffix");
  if (plain && ends_with(name, "_count"))
    problems.push_back("non-histogram and non-summary metrics should not have \"_count\" suffix");
  if (plain && ends_with(name, "_sum")) problems.push_back("non-histogram and non-summary metrics should not have \"_sum\" suffix");
  for (const char *type : {"counter", "gauge", "histogram", "summary"})
    if (has_part(lower, type)) problems.push_back(std::string("metric name should not include type '") + type + "'");
  if (name.find(':') != std::string::npos) problems.push_back("metric names should not contain ':'");
  if (is_camel_case(name)) problems.push_back("metric names should be written in 'snake_case' not 'camelCase'");
  for (const std::string &label : metric.labels) {
    if (is_camel_case(label)) problems.push_back("label names should be written in 'snake_case' not 'camelCase'");
    if (label == "le") problems.push_back("non-histogram metrics should not have \"le\" label");
    if (label == "quantile") problems.push_back("non-summary metrics should not have \"quantile\" label");
  }
  for (const char *abbreviation : {"s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d"})
    if (has_part(lower, abbreviation)) problems.push_back("metric names should not contain abbreviated units");
  return problems;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: SOCKETS ====================================================================

namespace hermes {
namespace detail {

// Owns one file descriptor and closes it; movable, not copyable.
class FileDescriptor {
public:
  explicit FileDescriptor(int fd = -1) : fd_(fd) {}
  FileDescriptor(FileDescriptor &&other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  FileDescriptor &operator=(FileDescriptor &&other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  FileDescriptor(const FileDescriptor &) = delete;
  FileDescriptor &operator=(const FileDescriptor &) = delete;
  ~FileDescriptor() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_); // close is not retried on EINTR: Linux frees the descriptor anyway
    fd_ = fd;
  }

private:
  int fd_;
};

// Runs a system call again while a signal interrupts it, so callers see only real results.
template <typename Call> auto retry_on_eintr(Call call) -> decltype(call()) {
  decltype(call()) result;
  do {
    result = call();
  } while (result == -1 && errno == EINTR);
  return result;
}

// EAGAIN means "not now": the socket is non-blocking and has nothing more for us.
inline bool is_not_now(int error) { return error == EAGAIN || error == EWOULDBLOCK; }

// "bind 0.0.0.0:80: Permission denied": the call, the address and the system error.
inline std::string system_error_message(const std::string &what, int error) {
  return what + ": " + std::strerror(error);
}

// Waits for the descriptors. A signal ends the wait early, with no events, so the
// caller can look at its stop flag at once instead of sleeping on.
inline int wait_for_events(std::vector<pollfd> &fds, int timeout_ms) {
  const int ready = ::poll(fds.data(), static_cast<nfds_t>(fds.size()), timeout_ms);
  if (ready < 0 && errno == EINTR) return 0;
  return ready;
}

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  const sockaddr *get() const { return reinterpret_cast<const sockaddr *>(&storage); }
};

// "1.2.3.4:80" or "[::1]:80".
inline std::string format_endpoint(const sockaddr *address) {
  char host[INET6_ADDRSTRLEN] = "?";
  std::uint16_t port = 0;
  if (address->sa_family == AF_INET6) {
    const auto *v6 = reinterpret_cast<const sockaddr_in6 *>(address);
    ::inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
    port = ntohs(v6->sin6_port);
    return std::string("[") + host + "]:" + std::to_string(port);
  }
  const auto *v4 = reinterpret_cast<const sockaddr_in *>(address);
  ::inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
  port = ntohs(v4->sin_port);
  return std::string(host) + ":" + std::to_string(port);
}

// Accepts "[::1]" as well as "::1", as addresses are often written next to ports.
inline std::string strip_brackets(const std::string &host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') return host.substr(1, host.size() - 2);
  return host;
}

// A numeric address first, then a name: a static binary in an empty image has no
// resolver, and numeric addresses need none.
inline SocketAddress resolve(const std::string &host, std::uint16_t port, int socket_type, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = socket_type;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo *found = nullptr;
  const std::string name = strip_brackets(host);
  const std::string service = std::to_string(port);
  int status = ::getaddrinfo(name.c_str(), service.c_str(), &hints, &found);
  if (status == EAI_NONAME) {
    hints.ai_flags &= ~AI_NUMERICHOST;
    status = ::getaddrinfo(name.c_str(), service.c_str(), &hints, &found);
  }
  if (status != 0) throw SocketError("cannot resolve address \"" + host + "\": " + ::gai_strerror(status));
  SocketAddress address;
  std::memcpy(&address.storage, found->ai_addr, found->ai_addrlen);
  address.length = found->ai_addrlen;
  ::freeaddrinfo(found);
  return address;
}

inline std::string local_endpoint(int fd) {
  SocketAddress address;
  address.length = sizeof address.storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr *>(&address.storage), &address.length) != 0) return "?";
  return format_endpoint(address.get());
}

inline FileDescriptor open_socket(const SocketAddress &address, int socket_type, const std::string &what) {
  FileDescriptor fd(::socket(address.storage.ss_family, socket_type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) throw SocketError(system_error_message("socket " + what, errno));
  return fd;
}

inline void bind_socket(const FileDescriptor &fd, const SocketAddress &address, const std::string &what) {
  if (::bind(fd.get(), address.get(), address.length) != 0)
    throw SocketError(system_error_message("bind " + what + " " + format_endpoint(address.get()), errno));
}

// A burst larger than the receive buffer is lost in the kernel, so ask for a large one:
// SO_RCVBUFFORCE passes the system's cap (net.core.rmem_max) where we may, SO_RCVBUF
// gets what the cap allows elsewhere. SO_RXQ_OVFL has the kernel tell, with each
// datagram, how many it dropped, so that no loss goes unseen.
inline FileDescriptor open_udp_listener(const std::string &host, std::uint16_t port, int receive_buffer) {
  const SocketAddress address = resolve(host, port, SOCK_DGRAM, true);
  FileDescriptor fd = open_socket(address, SOCK_DGRAM, "udp");
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &receive_buffer, sizeof receive_buffer) != 0)
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
  const int on = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof on);
  bind_socket(fd, address, "udp");
  return fd;
}

inline int receive_buffer_size(int fd) {
  int bytes = 0;
  socklen_t length = sizeof bytes;
  ::getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, &length);
  return bytes / 2; // Linux reports twice what it grants, the other half for its bookkeeping
}

// Where recvmmsg() puts a batch of datagrams: one slot of HERMES_MAX_DATAGRAM_SIZE each,
// and room for each one's drop counter.
class ReceiveBatch {
public:
  ReceiveBatch() : data_(new char[HERMES_RECEIVE_BATCH * std::size_t{HERMES_MAX_DATAGRAM_SIZE}]) {}

  // Receives what is waiting, up to a batch; returns how many, 0 when nothing is.
  int receive(int fd) {
    for (std::size_t i = 0; i < HERMES_RECEIVE_BATCH; ++i) {
      chunks_[i] = {data_.get() + i * HERMES_MAX_DATAGRAM_SIZE, HERMES_MAX_DATAGRAM_SIZE};
      messages_[i] = {};
      messages_[i].msg_hdr.msg_iov = &chunks_[i];
      messages_[i].msg_hdr.msg_iovlen = 1;
      messages_[i].msg_hdr.msg_control = controls_[i].data();
      messages_[i].msg_hdr.msg_controllen = controls_[i].size();
    }
    const int got = retry_on_eintr([&] { return ::recvmmsg(fd, messages_.data(), HERMES_RECEIVE_BATCH, MSG_DONTWAIT, nullptr); });
    return got > 0 ? got : 0;
  }

  std::string_view datagram(int i) const {
    return {data_.get() + static_cast<std::size_t>(i) * HERMES_MAX_DATAGRAM_SIZE, messages_[static_cast<std::size_t>(i)].msg_len};
  }
  bool truncated(int i) const { return messages_[static_cast<std::size_t>(i)].msg_hdr.msg_flags & MSG_TRUNC; }

  // The kernel's count of datagrams this socket dropped, if this datagram carries it.
  std::optional<std::uint32_t> drop_counter(int i) {
    msghdr &header = messages_[static_cast<std::size_t>(i)].msg_hdr;
    for (cmsghdr *c = CMSG_FIRSTHDR(&header); c; c = CMSG_NXTHDR(&header, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SO_RXQ_OVFL) continue;
      std::uint32_t dropped = 0;
      std::memcpy(&dropped, CMSG_DATA(c), sizeof dropped);
      return dropped;
    }
    return std::nullopt;
  }

private:
  std::unique_ptr<char[]> data_; // not zeroed: only the slots a burst fills become resident
  std::array<mmsghdr, HERMES_RECEIVE_BATCH> messages_{};
  std::array<iovec, HERMES_RECEIVE_BATCH> chunks_{};
  std::array<std::array<char, CMSG_SPACE(sizeof(std::uint32_t))>, HERMES_RECEIVE_BATCH> controls_{};
};

// Datagrams copied out of a ReceiveBatch to be applied later, in the order they came,
// within HERMES_RENDER_HOLD_BYTES. Each one's bookkeeping counts against that budget
// too, so that a flood of empty datagrams is bounded as well. Its memory is reused.
class HeldDatagrams {
public:
  enum class Source { udp, unix_socket };

  bool full() const { return cost_ >= HERMES_RENDER_HOLD_BYTES; }

  void hold(std::string_view datagram, bool truncated, Source source) {
    entries_.push_back({bytes_.size(), datagram.size(), truncated, source});
    bytes_ += datagram;
    cost_ += datagram.size() + sizeof(Entry);
  }

  // Calls take(datagram, truncated, source) for each, oldest first, and forgets them.
  template <typename Take> void release(Take &&take) {
    for (const Entry &entry : entries_)
      take(std::string_view(bytes_).substr(entry.offset, entry.length), entry.truncated, entry.source);
    entries_.clear();
    bytes_.clear();
    cost_ = 0;
  }

private:
  struct Entry {
    std::size_t offset, length;
    bool truncated;
    Source source;
  };
  std::string bytes_;
  std::vector<Entry> entries_;
  std::size_t cost_ = 0;
};

inline FileDescriptor open_tcp_listener(const std::string &host, std::uint16_t port) {
  const SocketAddress address = resolve(host, port, SOCK_STREAM, true);
  FileDescriptor fd = open_socket(address, SOCK_STREAM, "http");
  // A restarted daemon must bind again at once, while old connections sit in TIME_WAIT.
  const int on = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  bind_socket(fd, address, "http");
  if (::listen(fd.get(), HERMES_LISTEN_BACKLOG) != 0)
    throw SocketError(system_error_message("listen http " + format_endpoint(address.get()), errno));
  return fd;
}

// A unix datagram socket bound to a path, which it removes when it closes. A socket file
// left by a daemon that died is removed first; any other file at the path is an error.
class UnixSocket {
public:
  UnixSocket(const std::string &path, unsigned mode) : path_(path) {
    if (path.empty()) return;
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.size() >= sizeof address.sun_path)
      throw SocketError("unix socket " + path + ": longer than " + std::to_string(sizeof address.sun_path - 1) + " bytes");
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    struct stat existing {};
    if (::lstat(path.c_str(), &existing) == 0) {
      if (!S_ISSOCK(existing.st_mode)) throw SocketError("unix socket " + path + ": a file that is not a socket is there");
      ::unlink(path.c_str());
    }
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd_) throw SocketError(system_error_message("socket unix " + path, errno));
    if (::bind(fd_.get(), reinterpret_cast<const sockaddr *>(&address), sizeof address) != 0)
      throw SocketError(system_error_message("bind unix " + path, errno));
    if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
      const int error = errno;
      ::unlink(path.c_str());
      throw SocketError(system_error_message("chmod unix " + path, error));
    }
    bound_ = true;
  }
  UnixSocket(const UnixSocket &) = delete;
  UnixSocket &operator=(const UnixSocket &) = delete;
  ~UnixSocket() {
    if (bound_) ::unlink(path_.c_str());
  }
  int get() const { return fd_.get(); }
  const std::string &path() const { return path_; }

private:
  std::string path_;
  FileDescriptor fd_;
  bool bound_ = false;
};

inline std::uint16_t local_port(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr *>(&storage), &length) != 0) return 0;
  if (storage.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6 *>(&storage)->sin6_port);
  return ntohs(reinterpret_cast<const sockaddr_in *>(&storage)->sin_port);
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: HTTP =======================================================================

namespace hermes {
namespace detail {

struct HttpRequest {
  std::string method;
  std::string path; // the target without its query string
  std::string version;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Where the request head ends (just past the blank line), or npos while it is incomplete.
// Bare LF line ends are accepted as well as CRLF, as robust servers do.
inline std::size_t find_head_end(std::string_view buffer) {
  for (std::size_t i = buffer.find('\n'); i != std::string_view::npos; i = buffer.find('\n', i + 1)) {
    if (i + 1 < buffer.size() && buffer[i + 1] == '\n') return i + 2;
    if (i + 2 < buffer.size() && buffer[i + 1] == '\r' && buffer[i + 2] == '\n') return i + 3;
  }
  return std::string_view::npos;
}

inline bool is_token_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

inline bool is_token(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), is_token_char);
}

// Splits the head into lines without their CR.
inline std::vector<std::string_view> head_lines(std::string_view head) {
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    const std::size_t end = head.find('\n');
    std::string_view line = head.substr(0, end);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    if (end == std::string_view::npos) break;
    head.remove_prefix(end + 1);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

inline std::string_view trim(std::string_view text) {
  const std::size_t first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

// "GET /metrics?x=1 HTTP/1.1": method, target and version; absolute-form targets
// (http://host/metrics) are reduced to their path.
inline bool parse_request_line(std::string_view line, HttpRequest &request) {
  const std::size_t first_space = line.find(' ');
  const std::size_t last_space = line.rfind(' ');
  if (first_space == std::string_view::npos || first_space == last_space) return false;
  const std::string_view method = line.substr(0, first_space);
  std::string_view target = line.substr(first_space + 1, last_space - first_space - 1);
  const std::string_view version = line.substr(last_space + 1);
  if (!is_token(method) || target.empty() || target.find(' ') != std::string_view::npos) return false;
  const bool version_ok = version.size() == 8 && starts_with(version, "HTTP/") && std::isdigit(static_cast<unsigned char>(version[5])) &&
                          version[6] == '.' && std::isdigit(static_cast<unsigned char>(version[7]));
  if (!version_ok) return false;
  if (starts_with(target, "http://") || starts_with(target, "https://")) {
    const std::size_t path_start = target.find('/', target.find("//") + 2);
    target = path_start == std::string_view::npos ? std::string_view("/") : target.substr(path_start);
  }
  if (target.front() != '/' && target != "*") return false;
  request.method = std::string(method);
  request.path = std::string(target.substr(0, target.find('?')));
  request.version = std::string(version);
  return true;
}

// Parses a complete request head; nullopt when it is malformed (answered 400).
inline std::optional<HttpRequest> parse_request_head(std::string_view head) {
  const std::vector<std::string_view> lines = head_lines(head);
  HttpRequest request;
  if (lines.empty() || !parse_request_line(lines[0], request)) return std::nullopt;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const std::size_t colon = lines[i].find(':');
    // No colon, a folded line or white space before the colon: RFC 9112 says reject.
    if (colon == std::string_view::npos || !is_token(lines[i].substr(0, colon))) return std::nullopt;
    request.headers.emplace_back(lowercase(lines[i].substr(0, colon)), std::string(trim(lines[i].substr(colon + 1))));
  }
  return request;
}

inline const char *status_text(int status) {
  switch (status) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 431: return "Request Header Fields Too Large";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

// Every status Hermes sends; hermes_http_requests_total lists each from the start.
constexpr std::array<int, 7> http_statuses{200, 400, 404, 405, 431, 503, 505};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  bool head_only = false; // HEAD: the headers of GET, no body
};

// The status line and headers, up to the blank line.
inline std::string response_head(const HttpResponse &response) {
  std::string out = "HTTP/1.0 " + std::to_string(response.status) + " " + status_text(response.status) + "\r\n";
  out += "Content-Type: " + response.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
  if (response.status == 405) out += "Allow: GET, HEAD\r\n";
  out += "Connection: close\r\n\r\n";
  return out;
}

inline std::string serialize_response(const HttpResponse &response) {
  return response_head(response) + (response.head_only ? std::string() : response.body);
}

inline HttpResponse error_response(int status) {
  HttpResponse response;
  response.status = status;
  response.body = std::to_string(status) + " " + status_text(status) + "\n";
  return response;
}

inline const char *index_page() {
  return "Hermes " HERMES_VERSION_STR ", a push gateway for Prometheus metrics.\n\n"
         "/metrics     the metrics, in Prometheus text format\n"
         "/-/healthy   200 while the process runs\n"
         "/-/ready     200 while it accepts samples\n";
}

inline std::string_view header(const HttpRequest &request, std::string_view name) {
  for (const auto &entry : request.headers)
    if (entry.first == name) return entry.second;
  return {};
}

// Answers one parsed request; `render(format)` makes the /metrics body when it is needed.
// OpenMetrics is served when the client prefers it and `openmetrics` allows it.
template <typename Render> HttpResponse route(const HttpRequest &request, bool openmetrics, Render &&render) {
  if (request.version[5] != '1') return error_response(505);
  if (request.method != "GET" && request.method != "HEAD") return error_response(405);
  HttpResponse response;
  response.head_only = request.method == "HEAD";
  if (request.path == "/metrics") {
    const Format format = openmetrics ? negotiate_format(header(request, "accept")) : Format::text;
    response.content_type = content_type(format);
    response.body = render(format);
  } else if (request.path == "/-/healthy") {
    response.body = "Hermes is Healthy.\n";
  } else if (request.path == "/-/ready") {
    response.body = "Hermes is Ready.\n";
  } else if (request.path == "/") {
    response.body = index_page();
  } else {
    const bool head_only = response.head_only;
    response = error_response(404);
    response.head_only = head_only;
  }
  return response;
}

// One HTTP client: its request head as it arrives, then its response as it leaves.
// After the response it lingers: reads and drops what the client still sends until
// the client closes, because closing a socket with unread input resets the connection
// and can destroy the response before the client has read it.
struct Connection {
  enum class Phase { reading, writing, lingering, done };
  FileDescriptor fd;
  std::uint64_t sequence = 0; // order of accept; the lowest is the oldest
  Phase phase = Phase::reading;
  std::string input;
  std::string head; // the response's, sent before its body: the body is not copied
  std::string body;
  std::size_t sent = 0; // of head and body together
  std::chrono::steady_clock::time_point deadline;
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: LOGGING ====================================================================

namespace hermes {
namespace detail {

// A logfmt value: bare when it is a plain word, else quoted with \ " and controls escaped.
inline void append_logfmt_value(std::string &out, std::string_view value) {
  const bool plain = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) {
    return static_cast<unsigned char>(c) > 0x20 && c != '=' && c != '"' && c != '\\' && c != 0x7f;
  });
  if (plain) {
    out += value;
    return;
  }
  out += '"';
  for (const char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += escape;
    } else {
      out += c;
    }
  }
  out += '"';
}

using LogFields = std::vector<std::pair<std::string_view, std::string_view>>;

// Writes `level=info msg="..." key=value` lines to the sink, or to stderr.
class Logger {
public:
  Logger(LogLevel minimum, LogSink sink) : minimum_(minimum), sink_(std::move(sink)) {}
  bool enabled(LogLevel level) const { return level >= minimum_; }
  void log(LogLevel level, std::string_view message, LogFields fields = {}) const {
    if (!enabled(level)) return;
    std::string line = "level=";
    line += to_string(level);
    line += " msg=";
    append_logfmt_value(line, message);
    for (const auto &field : fields) {
      line += ' ';
      line += field.first;
      line += '=';
      append_logfmt_value(line, field.second);
    }
    if (sink_) {
      sink_(line);
    } else {
      line += '\n';
      std::fwrite(line.data(), 1, line.size(), stderr);
    }
  }

private:
  LogLevel minimum_;
  LogSink sink_;
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: PROCESS ====================================================================

namespace hermes {
namespace detail {

inline std::string read_small_file(const char *path) {
  std::string text;
  read_file(path, 65536, text);
  return text;
}

// The fields of /proc/self/stat from the third (state) on; the second, the command
// name in parentheses, may itself hold spaces and parentheses.
inline std::vector<std::string> proc_stat_fields() {
  const std::string text = read_small_file("/proc/self/stat");
  const std::size_t close = text.rfind(')');
  if (close == std::string::npos) return {};
  std::vector<std::string> fields;
  for (const std::string_view field : split(std::string_view(text).substr(close + 1), ' '))
    if (!field.empty()) fields.emplace_back(field);
  return fields;
}

// Field N of proc(5)'s numbering (1-based, counting pid and comm).
inline double proc_stat_field(const std::vector<std::string> &fields, std::size_t number) {
  const std::size_t index = number - 3;
  return index < fields.size() ? std::strtod(fields[index].c_str(), nullptr) : 0;
}

inline double boot_time_seconds() {
  const std::string text = read_small_file("/proc/stat");
  for (const std::string_view line : split(text, '\n'))
    if (starts_with(line, "btime ")) return std::strtod(std::string(line.substr(6)).c_str(), nullptr);
  return 0;
}

inline double process_start_time_seconds() {
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double started = proc_stat_field(proc_stat_fields(), 22);
  return ticks > 0 && started > 0 ? boot_time_seconds() + started / ticks : 0;
}

inline double count_open_fds() {
  DIR *dir = ::opendir("/proc/self/fd");
  if (!dir) return 0;
  double count = 0;
  while (const dirent *entry = ::readdir(dir))
    if (entry->d_name[0] != '.') ++count;
  ::closedir(dir);
  return count - 1; // the directory being read is itself open
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: STATE ======================================================================
//
// The state file: every series as JSON text, one series a line, written by Hermes' own
// writer (no tree of 100k series in memory) and read back with picojson, as a stream of
// one series at a time. Numbers are
// written in their shortest round-trip form; infinities and NaN, which JSON has no
// numbers for, as the strings "+Inf", "-Inf" and "NaN". Times that must survive a reboot
// are ages: how long before the write a series was last pushed, how long until a summary
// window turned next. The monotonic clock starts again at every boot; the wall clock may
// be decades off on a board without a real-time clock.

namespace hermes {
namespace detail {

inline Series new_series(const MetricConfig &metric, Now now); // SAMPLES
inline bool same_shape(const MetricConfig &a, const MetricConfig &b); // REGISTRY

constexpr const char *state_format_name = "hermes-state";
constexpr double state_format_version = 1;
constexpr std::size_t state_json_depth = 10; // the deepest place: a quantile stream's entry

inline void append_state_number(std::string &out, double value) {
  if (std::isnan(value)) {
    out += "\"NaN\"";
  } else if (std::isinf(value)) {
    out += value > 0 ? "\"+Inf\"" : "\"-Inf\"";
  } else {
    char buffer[32];
    out.append(buffer, std::to_chars(buffer, buffer + sizeof buffer, value).ptr);
  }
}

inline void append_state_count(std::string &out, std::uint64_t value) {
  char buffer[24];
  out.append(buffer, std::to_chars(buffer, buffer + sizeof buffer, value).ptr);
}

// `"key": ` with the comma before it unless it is the first of its object.
inline void append_state_key(std::string &out, const char *key, bool first = false) {
  if (!first) out += ", ";
  out += '"';
  out += key;
  out += "\": ";
}

template <typename Items, typename Write> void append_state_list(std::string &out, const Items &items, Write write) {
  out += '[';
  bool first = true;
  for (const auto &item : items) {
    if (!first) out += ", ";
    first = false;
    write(item);
  }
  out += ']';
}

// A series of a state file, read and checked, waiting to be put in place.
struct RestoredSeries {
  std::vector<std::string> labels;
  Series series;
};
struct RestoredMetric {
  MetricConfig shape;
  std::vector<RestoredSeries> series;
};

// Writes and reads the state file's text; a friend of Registry and the quantile
// classes, so that none of them needs a public surface for it.
class StateCodec {
public:
  static void save(const Registry &registry, std::string &out, Now now, const std::function<void()> &pause);
  static Registry::RestoreSummary restore(Registry &registry, std::string_view text, double monotonic_now);

  // The reading side: every problem names its place in the file.
  explicit StateCodec(double monotonic_now) : monotonic_now_(monotonic_now) {}
  void check_format(const picojson::object &top) const;
  MetricConfig read_shape(const picojson::object &metric, const std::string &place) const;
  RestoredSeries read_series(const MetricConfig &shape, const picojson::value &value, const std::string &place) const;
  [[noreturn]] void fail(const std::string &place, const std::string &problem) const;

private:
  static void write_shape(std::string &out, const MetricConfig &config);
  static void write_series(std::string &out, const MetricConfig &config, const std::vector<std::string> &labels,
                           const Series &series, double monotonic_now);
  static void write_window(std::string &out, const QuantileWindow &window, double monotonic_now);
  static Registry::RestoreSummary put_in_place(Registry &registry, std::vector<RestoredMetric> &metrics);

  const picojson::value &at(const picojson::object &object, const std::string &key, const std::string &place) const;
  const picojson::array &list_at(const picojson::value &value, const std::string &place) const;
  const picojson::object &object_at(const picojson::value &value, const std::string &place) const;
  std::string text_at(const picojson::value &value, const std::string &place) const;
  double number_at(const picojson::value &value, const std::string &place) const;
  double finite_at(const picojson::value &value, const std::string &place, double low, double high) const;
  std::uint64_t count_at(const picojson::value &value, const std::string &place) const;
  void read_distribution(const MetricConfig &shape, const picojson::object &object, Distribution &seen,
                         const std::string &place) const;
  std::unique_ptr<QuantileWindow> read_window(const MetricConfig &shape, const picojson::value &value,
                                              const std::string &place) const;
  void read_stream(const picojson::value &value, QuantileStream &stream, const std::string &place) const;

  double monotonic_now_;
};

// ---- writing ---------------------------------------------------------------------------

inline void StateCodec::save(const Registry &registry, std::string &out, Now now, const std::function<void()> &pause) {
  out.clear();
  out += "{\"format\": \"";
  out += state_format_name;
  out += "\", \"version\": ";
  append_state_number(out, state_format_version);
  append_state_key(out, "written_at");
  append_state_number(out, now.wall);
  append_state_key(out, "service_name");
  append_json_string(out, registry.service_name());
  out += ", \"metrics\": [";
  std::size_t since_pause = 0;
  for (std::size_t m = 0; m < registry.metrics_.size(); ++m) {
    const Metric &metric = registry.metrics_[m];
    out += m == 0 ? "\n" : ",\n";
    write_shape(out, metric.config);
    out += ", \"series\": [";
    bool first = true;
    for (const auto &[labels, series] : metric.series) {
      out += first ? "\n  " : ",\n  ";
      first = false;
      write_series(out, metric.config, labels, series, now.monotonic);
      if (pause && ++since_pause == HERMES_STATE_PAUSE_STRIDE) {
        since_pause = 0;
        pause();
      }
    }
    out += "]}";
  }
  out += "]}\n";
}

// What a series must match to be restored: as Registry::reload, type, labels, buckets,
// objectives and max_age_seconds.
inline void StateCodec::write_shape(std::string &out, const MetricConfig &config) {
  append_state_key(out += '{', "name", true);
  append_json_string(out, config.name);
  append_state_key(out, "type");
  append_json_string(out, to_string(config.type));
  append_state_key(out, "labels");
  append_state_list(out, config.labels, [&](const std::string &label) { append_json_string(out, label); });
  if (config.type == MetricType::histogram) {
    append_state_key(out, "buckets");
    append_state_list(out, config.buckets, [&](double bound) { append_state_number(out, bound); });
  }
  if (config.type == MetricType::summary) {
    append_state_key(out, "objectives");
    append_state_list(out, config.objectives, [&](const std::pair<double, double> &objective) {
      append_state_number(out += '[', objective.first);
      append_state_number(out += ", ", objective.second);
      out += ']';
    });
    append_state_key(out, "max_age_seconds");
    append_state_number(out, config.max_age_seconds);
  }
}

inline void StateCodec::write_series(std::string &out, const MetricConfig &config, const std::vector<std::string> &labels,
                                     const Series &series, double monotonic_now) {
  append_state_key(out += '{', "labels", true);
  append_state_list(out, labels, [&](const std::string &value) { append_json_string(out, value); });
  if (const Distribution *seen = series.distribution.get()) {
    append_state_key(out, "sum");
    append_state_number(out, seen->sum);
    append_state_key(out, "count");
    append_state_count(out, seen->count);
    if (config.type == MetricType::histogram) {
      append_state_key(out, "bucket_counts");
      append_state_list(out, seen->bucket_counts, [&](std::uint64_t count) { append_state_count(out, count); });
    }
    if (seen->quantiles) write_window(out, *seen->quantiles, monotonic_now);
  } else {
    append_state_key(out, "value");
    append_state_number(out, series.value);
  }
  append_state_key(out, "created");
  append_state_number(out, series.created);
  append_state_key(out, "pushed_ago");
  append_state_number(out, std::max(0.0, monotonic_now - series.last_push));
  out += '}';
}

// The five streams as they are, buffers unmerged (the file must not change the window),
// with the stream that answers and how long until the next turn.
inline void StateCodec::write_window(std::string &out, const QuantileWindow &window, double monotonic_now) {
  append_state_key(out, "window");
  append_state_key(out += '{', "head", true);
  append_state_count(out, window.head_);
  append_state_key(out, "turns_in"); // below 0 when overdue: no observation or query has turned it yet
  append_state_number(out, window.head_expires_ - monotonic_now);
  append_state_key(out, "streams");
  append_state_list(out, window.streams_, [&](const QuantileStream &stream) {
    append_state_key(out += '{', "entries", true);
    append_state_list(out, stream.entries_, [&](const QuantileStream::Entry &entry) {
      append_state_number(out += '[', entry.value);
      append_state_number(out += ", ", entry.width);
      append_state_number(out += ", ", entry.delta);
      out += ']';
    });
    append_state_key(out, "buffer");
    append_state_list(out, stream.buffer_, [&](double value) { append_state_number(out, value); });
    out += '}';
  });
  out += '}';
}

// ---- reading ---------------------------------------------------------------------------

inline void StateCodec::fail(const std::string &place, const std::string &problem) const {
  throw StateError((place.empty() ? "" : place + ": ") + problem);
}

inline const picojson::value &StateCodec::at(const picojson::object &object, const std::string &key,
                                             const std::string &place) const {
  const auto found = object.find(key);
  if (found == object.end()) fail(place + (place.empty() ? "" : ".") + key, "missing");
  return found->second;
}

inline const picojson::array &StateCodec::list_at(const picojson::value &value, const std::string &place) const {
  if (!value.is<picojson::array>()) fail(place, std::string("expected a list, got ") + json_type_name(value));
  return value.get<picojson::array>();
}

inline const picojson::object &StateCodec::object_at(const picojson::value &value, const std::string &place) const {
  if (!value.is<picojson::object>()) fail(place, std::string("expected an object, got ") + json_type_name(value));
  return value.get<picojson::object>();
}

inline std::string StateCodec::text_at(const picojson::value &value, const std::string &place) const {
  if (!value.is<std::string>() || !is_valid_utf8(value.get<std::string>()))
    fail(place, std::string("expected a UTF-8 string, got ") + json_type_name(value));
  return value.get<std::string>();
}

// A number, or one of the strings "+Inf", "-Inf", "NaN".
inline double StateCodec::number_at(const picojson::value &value, const std::string &place) const {
  if (value.is<double>()) return value.get<double>();
  if (value.is<std::string>()) {
    const std::string &text = value.get<std::string>();
    if (text == "+Inf") return HUGE_VAL;
    if (text == "-Inf") return -HUGE_VAL;
    if (text == "NaN") return std::nan("");
  }
  fail(place, quote_json(value) + " is not a number");
}

inline double StateCodec::finite_at(const picojson::value &value, const std::string &place, double low, double high) const {
  const double number = number_at(value, place);
  if (!std::isfinite(number) || number < low || number > high) fail(place, quote_json(value) + " is out of range");
  return number;
}

inline std::uint64_t StateCodec::count_at(const picojson::value &value, const std::string &place) const {
  const double number = finite_at(value, place, 0, 18446744073709549568.0); // the largest double below 2^64
  if (number != std::floor(number)) fail(place, quote_json(value) + " is not a whole number");
  return static_cast<std::uint64_t>(number);
}

inline void StateCodec::check_format(const picojson::object &top) const {
  const auto format = top.find("format");
  if (format == top.end() || !format->second.is<std::string>() || format->second.get<std::string>() != state_format_name)
    fail("format", std::string("not a Hermes state file (no \"format\": \"") + state_format_name + "\")");
  const picojson::value &version = at(top, "version", "");
  if (!version.is<double>() || version.get<double>() != state_format_version)
    fail("version", "format version " + quote_json(version) + ", this Hermes reads version 1");
}

inline MetricConfig StateCodec::read_shape(const picojson::object &metric, const std::string &place) const {
  MetricConfig shape;
  shape.name = text_at(at(metric, "name", place), place + ".name");
  const std::string type = text_at(at(metric, "type", place), place + ".type");
  const auto types = {MetricType::counter, MetricType::gauge, MetricType::histogram, MetricType::summary};
  const auto found = std::find_if(types.begin(), types.end(), [&](MetricType t) { return type == to_string(t); });
  if (found == types.end()) fail(place + ".type", "\"" + type + "\" is not a metric type");
  shape.type = *found;
  const picojson::array &labels = list_at(at(metric, "labels", place), place + ".labels");
  for (std::size_t i = 0; i < labels.size(); ++i)
    shape.labels.push_back(text_at(labels[i], place + ".labels[" + std::to_string(i) + "]"));
  if (shape.type == MetricType::histogram) {
    const picojson::array &buckets = list_at(at(metric, "buckets", place), place + ".buckets");
    for (std::size_t i = 0; i < buckets.size(); ++i)
      shape.buckets.push_back(finite_at(buckets[i], place + ".buckets[" + std::to_string(i) + "]", -HUGE_VAL, HUGE_VAL));
  }
  if (shape.type == MetricType::summary) {
    const picojson::array &objectives = list_at(at(metric, "objectives", place), place + ".objectives");
    for (std::size_t i = 0; i < objectives.size(); ++i) {
      const std::string where = place + ".objectives[" + std::to_string(i) + "]";
      const picojson::array &pair = list_at(objectives[i], where);
      if (pair.size() != 2) fail(where, "expected [quantile, error]");
      shape.objectives.emplace_back(finite_at(pair[0], where, 0, 1), finite_at(pair[1], where, 0, 1));
    }
    shape.max_age_seconds = finite_at(at(metric, "max_age_seconds", place), place + ".max_age_seconds", 0, HUGE_VAL);
  }
  return shape;
}

inline RestoredSeries StateCodec::read_series(const MetricConfig &shape, const picojson::value &value,
                                              const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  RestoredSeries restored;
  const picojson::array &labels = list_at(at(object, "labels", place), place + ".labels");
  if (labels.size() != shape.labels.size())
    fail(place + ".labels", std::to_string(labels.size()) + " values for " + std::to_string(shape.labels.size()) + " labels");
  for (std::size_t i = 0; i < labels.size(); ++i)
    restored.labels.push_back(text_at(labels[i], place + ".labels[" + std::to_string(i) + "]"));
  const double created = finite_at(at(object, "created", place), place + ".created", -HUGE_VAL, HUGE_VAL);
  const double pushed_ago = finite_at(at(object, "pushed_ago", place), place + ".pushed_ago", 0, HUGE_VAL);
  restored.series = new_series(shape, Now(monotonic_now_ - pushed_ago, created));
  if (restored.series.distribution) read_distribution(shape, object, *restored.series.distribution, place);
  else restored.series.value = number_at(at(object, "value", place), place + ".value");
  return restored;
}

inline void StateCodec::read_distribution(const MetricConfig &shape, const picojson::object &object, Distribution &seen,
                                          const std::string &place) const {
  seen.sum = number_at(at(object, "sum", place), place + ".sum");
  seen.count = count_at(at(object, "count", place), place + ".count");
  if (shape.type == MetricType::histogram) {
    const picojson::array &counts = list_at(at(object, "bucket_counts", place), place + ".bucket_counts");
    if (counts.size() != seen.bucket_counts.size())
      fail(place + ".bucket_counts", std::to_string(counts.size()) + " counts for " +
                                         std::to_string(seen.bucket_counts.size()) + " buckets with +Inf");
    for (std::size_t i = 0; i < counts.size(); ++i)
      seen.bucket_counts[i] = count_at(counts[i], place + ".bucket_counts[" + std::to_string(i) + "]");
  }
  if (seen.quantiles) seen.quantiles = read_window(shape, at(object, "window", place), place + ".window");
}

inline std::unique_ptr<QuantileWindow> StateCodec::read_window(const MetricConfig &shape, const picojson::value &value,
                                                               const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  auto window = std::make_unique<QuantileWindow>(shape, monotonic_now_);
  window->head_ = static_cast<std::size_t>(count_at(at(object, "head", place), place + ".head"));
  if (window->head_ >= QuantileWindow::streams) fail(place + ".head", "not a stream of the window");
  // Never later than one step from now: a longer wait was not written by Hermes, or only
  // by a rounding error (502.2 + 20 - 502.2 > 20).
  const double turns_in = finite_at(at(object, "turns_in", place), place + ".turns_in", -HUGE_VAL, HUGE_VAL);
  window->head_expires_ = monotonic_now_ + std::min(turns_in, window->step_);
  const picojson::array &streams = list_at(at(object, "streams", place), place + ".streams");
  if (streams.size() != QuantileWindow::streams) fail(place + ".streams", "a window has 5 streams");
  for (std::size_t i = 0; i < streams.size(); ++i)
    read_stream(streams[i], window->streams_[i], place + ".streams[" + std::to_string(i) + "]");
  return window;
}

inline void StateCodec::read_stream(const picojson::value &value, QuantileStream &stream, const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  const picojson::array &entries = list_at(at(object, "entries", place), place + ".entries");
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::string where = place + ".entries[" + std::to_string(i) + "]";
    const picojson::array &entry = list_at(entries[i], where);
    if (entry.size() != 3) fail(where, "expected [value, width, delta]");
    const QuantileStream::Entry read{number_at(entry[0], where), finite_at(entry[1], where, 1, HUGE_VAL),
                                     finite_at(entry[2], where, 0, HUGE_VAL)};
    if (!stream.entries_.empty() && !(stream.entries_.back().value <= read.value)) fail(where, "entries out of order");
    stream.entries_.push_back(read);
    stream.count_ += read.width;
  }
  const picojson::array &buffer = list_at(at(object, "buffer", place), place + ".buffer");
  if (buffer.size() >= QuantileStream::buffer_limit) fail(place + ".buffer", "longer than a stream's buffer");
  for (std::size_t i = 0; i < buffer.size(); ++i)
    stream.buffer_.push_back(number_at(buffer[i], place + ".buffer[" + std::to_string(i) + "]"));
}

// Every metric of the file that is configured with the same shape takes its series, up
// to max_series; the rest are counted and named once each.
inline Registry::RestoreSummary StateCodec::put_in_place(Registry &registry, std::vector<RestoredMetric> &metrics) {
  Registry::RestoreSummary summary;
  for (RestoredMetric &restored : metrics) {
    Metric *metric = registry.find(restored.shape.name);
    const char *problem = !metric ? "no longer configured"
                          : !same_shape(metric->config, restored.shape) ? "type, labels, buckets or objectives changed"
                                                                        : nullptr;
    std::size_t skipped = problem ? restored.series.size() : 0;
    for (std::size_t i = 0; !problem && i < restored.series.size(); ++i) {
      RestoredSeries &series = restored.series[i];
      const auto existing = metric->series.find(series.labels);
      if (existing == metric->series.end() && metric->series.size() >= metric->config.max_series) {
        ++skipped;
        continue;
      }
      metric->series[std::move(series.labels)] = std::move(series.series);
      ++summary.restored;
    }
    if (skipped == 0) continue;
    summary.skipped += skipped;
    summary.problems.push_back(restored.shape.name + ": " + (problem ? problem : "more series than max_series") + ", " +
                               std::to_string(skipped) + " series not restored");
  }
  registry.changes_ += summary.restored;
  return summary;
}

// ---- reading as a stream ------------------------------------------------------------------

// What a state file holds, read: its top-level members but the metrics, and the metrics.
struct StateDocument {
  picojson::object top;
  std::vector<RestoredMetric> metrics;
};

// A picojson parse context for one place of a state file: the whole file, its list of
// metrics, one metric, or a metric's list of series. Only one series, or a metric's
// members before its series, is ever a tree: restoring 100k series takes little more
// memory than they do. A metric's "series" comes after its shape, as Hermes writes it.
// A problem throws StateError naming its place.
class StateReader {
public:
  enum class Place { root, metrics, metric, series };

  StateReader(Place place, std::string where, const StateCodec &codec, StateDocument &document)
      : place_(place), where_(std::move(where)), codec_(codec), document_(document) {}

  bool set_null() { return wrong("null"); }
  bool set_bool(bool) { return wrong("a boolean"); }
  bool set_number(double) { return wrong("a number"); }
  template <typename Iter> bool parse_string(picojson::input<Iter> &) { return wrong("a string"); }
  bool parse_array_start() { return place_ == Place::metrics || place_ == Place::series || wrong("a list"); }
  template <typename Iter> bool parse_array_item(picojson::input<Iter> &in, std::size_t index) {
    const std::string where = where_ + "[" + std::to_string(index) + "]";
    if (place_ == Place::metrics) {
      document_.metrics.emplace_back();
      StateReader metric(Place::metric, where, codec_, document_);
      if (!picojson::_parse(metric, in)) return false;
      if (!metric.seen_series_) codec_.fail(where + ".series", "missing");
      return true;
    }
    picojson::value tree; // one series
    BoundedJsonContext context(&tree, state_json_depth - 4);
    if (!picojson::_parse(context, in)) return false;
    RestoredMetric &metric = document_.metrics.back();
    metric.series.push_back(codec_.read_series(metric.shape, tree, where));
    return true;
  }
  bool parse_array_stop(std::size_t) { return true; }
  bool parse_object_start() { return place_ == Place::root || place_ == Place::metric || wrong("an object"); }
  template <typename Iter> bool parse_object_item(picojson::input<Iter> &in, const std::string &key) {
    if (place_ == Place::root && key == "metrics") {
      document_.top[key] = picojson::value(true); // present; its content is in document_.metrics
      StateReader metrics(Place::metrics, "metrics", codec_, document_);
      return picojson::_parse(metrics, in);
    }
    if (place_ == Place::metric && key == "series") {
      seen_series_ = true;
      document_.metrics.back().shape = codec_.read_shape(header_, where_);
      StateReader series(Place::series, where_ + ".series", codec_, document_);
      return picojson::_parse(series, in);
    }
    BoundedJsonContext member(&(place_ == Place::root ? document_.top : header_)[key], state_json_depth - 2);
    return picojson::_parse(member, in);
  }
  bool parse_object_stop() { return true; }

private:
  bool wrong(const char *got) const {
    const bool list = place_ == Place::metrics || place_ == Place::series;
    codec_.fail(where_, std::string(list ? "expected a list, got " : "expected an object, got ") + got);
  }

  Place place_;
  std::string where_;
  const StateCodec &codec_;
  StateDocument &document_;
  picojson::object header_; // a metric's members before its series
  bool seen_series_ = false;
};

inline Registry::RestoreSummary StateCodec::restore(Registry &registry, std::string_view text, double monotonic_now) {
  const StateCodec codec(monotonic_now);
  StateDocument document;
  StateReader reader(StateReader::Place::root, "", codec, document);
  std::string error;
  if (!parse_json_into(reader, text, &error)) throw StateError("not valid JSON: " + error);
  codec.check_format(document.top);
  if (document.top.find("metrics") == document.top.end()) codec.fail("metrics", "missing");
  return put_in_place(registry, document.metrics);
}

// ---- files -----------------------------------------------------------------------------

inline std::string directory_of(const std::string &path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Writes `bytes` to `path` so that a crash at any moment leaves the old file or the new
// one, whole: a new file beside it, written and fsynced, renamed over it, and the
// directory fsynced so that the rename itself is on disk. Returns "" on success, else
// the call that failed, its file and the system error; the old file is then untouched.
inline bool write_all(int fd, std::string_view bytes) {
  for (std::size_t written = 0; written < bytes.size();) {
    const ssize_t length = retry_on_eintr([&] { return ::write(fd, bytes.data() + written, bytes.size() - written); });
    if (length < 0) return false;
    written += static_cast<std::size_t>(length);
  }
  return true;
}

inline std::string write_file_atomically(const std::string &path, const std::string &bytes) {
  const std::string pattern = path + ".XXXXXX"; // mkstemp: a new name, never another file's
  std::string temporary = pattern;
  const int fd = ::mkostemp(&temporary[0], O_CLOEXEC);
  if (fd < 0) return system_error_message("create " + pattern, errno);
  const auto failed = [&](const char *call, const std::string &file, int error) {
    ::unlink(temporary.c_str());
    return system_error_message(std::string(call) + " " + file, error);
  };
  const bool written = write_all(fd, bytes);
  const bool synced = written && ::fsync(fd) == 0;
  const int error = errno;
  if (::close(fd) != 0 && synced) return failed("close", temporary, errno);
  if (!synced) return failed(written ? "fsync" : "write", temporary, error);
  if (::rename(temporary.c_str(), path.c_str()) != 0) return failed("rename", temporary + " to " + path, errno);
  const std::string directory = directory_of(path);
  FileDescriptor dir(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  // Some file systems cannot fsync a directory (EINVAL); the rename is then as durable as they make it.
  if (!dir || (::fsync(dir.get()) != 0 && errno != EINVAL))
    return system_error_message("fsync directory " + directory + " (the new state is in place, perhaps not yet on disk)", errno);
  return "";
}

// Moves a file that is not state out of the way, to "<path>.corrupt-<seconds since the
// epoch>" (with "-2", "-3"... while that name is taken), never over another file.
// Returns the new name; throws StateError when it cannot be moved.
inline std::string set_aside(const std::string &path) {
  const std::string base = path + ".corrupt-" + std::to_string(static_cast<long long>(wall_clock_seconds()));
  for (int attempt = 1; attempt <= 100; ++attempt) {
    const std::string aside = attempt == 1 ? base : base + "-" + std::to_string(attempt);
    if (::renameat2(AT_FDCWD, path.c_str(), AT_FDCWD, aside.c_str(), RENAME_NOREPLACE) == 0) return aside;
    if (errno == EINVAL && ::link(path.c_str(), aside.c_str()) == 0) { // a file system without RENAME_NOREPLACE
      ::unlink(path.c_str());
      return aside;
    }
    if (errno != EEXIST) break;
  }
  throw StateError(system_error_message("cannot set " + path + " aside (nothing was written over it; move it away and start again)", errno));
}

// ---- the keeper ------------------------------------------------------------------------

// A message that quotes a file's bytes, safe for a log line: other bytes become '?'.
inline std::string printable_ascii(std::string_view text) {
  std::string out(text);
  for (char &c : out)
    if (c < 0x20 || c > 0x7e) c = '?';
  return out;
}

// The state file of a server: restores it at start, writes it every interval when the
// registry changed, and once more at stop. The slow part of a write (write, fsync,
// rename) runs on a thread of its own that owns only a finished buffer, so that the
// loop never waits for a disk; the text is made on the loop, between looks at the sockets.
class StateKeeper {
public:
  StateKeeper(const Options &options, ServerStats &stats, const Logger &logger)
      : path_(options.state_file), interval_(options.state_interval_seconds), stats_(stats), logger_(logger) {}
  StateKeeper(const StateKeeper &) = delete;
  StateKeeper &operator=(const StateKeeper &) = delete;
  ~StateKeeper() { wait(); }

  bool enabled() const { return !path_.empty(); }
  void restore(Registry &registry, double monotonic_now);
  // Takes the result of a finished write; true when a write is due: the interval has
  // passed, the registry changed since the last write and none is in flight.
  bool due(const Registry &registry, double monotonic_now);
  bool changed(const Registry &registry) const { return enabled() && registry.changes() != written_changes_; }
  // Where to make the text of the next write.
  std::string &buffer() { return bytes_; }
  // Hands buffer() to the writing thread; `changes` is registry.changes() as it was made.
  void write(std::uint64_t changes, double monotonic_now);
  // Waits for the write in flight, if any, and takes its result.
  void wait();

private:
  void take_result();

  std::string path_;
  double interval_;
  ServerStats &stats_;
  const Logger &logger_;
  std::string bytes_;            // the loop's; moved to job_ for a write, and back after it
  std::string job_;              // the writing thread's while it runs
  std::string error_;            // its result: "" or what failed
  std::atomic<bool> done_{false}; // set by the thread when job_ and error_ are the loop's again
  std::thread writer_;
  std::uint64_t written_changes_ = 0, pending_changes_ = 0;
  double next_write_ = 0;
};

inline void StateKeeper::restore(Registry &registry, double monotonic_now) {
  next_write_ = monotonic_now + interval_;
  written_changes_ = registry.changes();
  if (!enabled()) return;
  struct stat info {};
  if (::stat(path_.c_str(), &info) != 0 && errno == ENOENT)
    return logger_.log(LogLevel::info, "no state file yet; starting empty", {{"path", path_}});
  std::string text;
  const bool too_large = info.st_size > HERMES_MAX_STATE_SIZE; // not read at all
  const int error = too_large ? 0 : read_file(path_.c_str(), std::size_t{HERMES_MAX_STATE_SIZE} + 1, text);
  try {
    if (error) throw StateError(std::string("cannot read: ") + std::strerror(error));
    if (too_large || text.size() > HERMES_MAX_STATE_SIZE) throw StateError("larger than " + std::to_string(HERMES_MAX_STATE_SIZE) + " bytes");
    const Registry::RestoreSummary summary = registry.restore_state(text, monotonic_now);
    for (const std::string &problem : summary.problems) logger_.log(LogLevel::warn, "state not restored", {{"path", path_}, {"metric", problem}});
    stats_.state_restored_series = summary.restored;
    logger_.log(LogLevel::info, "state restored", {{"path", path_}, {"series", std::to_string(summary.restored)},
                                                   {"skipped", std::to_string(summary.skipped)}});
  } catch (const StateError &problem) {
    const std::string aside = set_aside(path_);
    logger_.log(LogLevel::error, "state file is not state; set aside, starting empty",
                {{"path", path_}, {"error", printable_ascii(problem.what())}, {"moved_to", aside}});
  }
  written_changes_ = registry.changes();
}

inline bool StateKeeper::due(const Registry &registry, double monotonic_now) {
  if (!enabled()) return false;
  if (writer_.joinable() && done_.load(std::memory_order_acquire)) take_result();
  return !writer_.joinable() && monotonic_now >= next_write_ && changed(registry);
}

inline void StateKeeper::write(std::uint64_t changes, double monotonic_now) {
  wait();
  next_write_ = monotonic_now + interval_;
  pending_changes_ = changes;
  job_ = std::move(bytes_);
  done_.store(false, std::memory_order_relaxed);
  try {
    writer_ = std::thread([this] {
      error_ = write_file_atomically(path_, job_);
      done_.store(true, std::memory_order_release);
    });
  } catch (const std::system_error &problem) { // no thread to be had: a failed write, tried again later
    bytes_ = std::move(job_);
    ++stats_.state_writes_failed;
    logger_.log(LogLevel::error, "state write failed; the previous file stays, retrying next interval",
                {{"path", path_}, {"error", std::string("cannot start a thread: ") + problem.what()}});
  }
}

inline void StateKeeper::wait() {
  if (writer_.joinable()) take_result();
}

// One line per failed write, and writes come at most once per interval.
inline void StateKeeper::take_result() {
  writer_.join();
  bytes_ = std::move(job_); // its memory serves the next write
  if (error_.empty()) {
    written_changes_ = pending_changes_;
    ++stats_.state_writes_succeeded;
    stats_.state_last_write_seconds = wall_clock_seconds();
    logger_.log(LogLevel::debug, "state written", {{"path", path_}, {"bytes", std::to_string(bytes_.size())}});
  } else {
    ++stats_.state_writes_failed;
    logger_.log(LogLevel::error, "state write failed; the previous file stays, retrying next interval",
                {{"path", path_}, {"error", error_}});
  }
}

} // namespace detail
} // namespace hermes

// ===== CONFIG =============================================================================

namespace hermes {

inline const char *to_string(MetricType type) {
  switch (type) {
  case MetricType::counter: return "counter";
  case MetricType::gauge: return "gauge";
  case MetricType::histogram: return "histogram";
  default: return "summary";
  }
}

inline Config parse_config(std::string_view json, const std::string &origin) {
  picojson::value root;
  std::string error;
  if (!detail::parse_json(json, root, &error)) throw ConfigError(origin + ": not valid JSON: " + error);
  return detail::ConfigReader(origin).read(root);
}

inline Config load_config(const std::string &path) {
  std::string text;
  if (const int error = detail::read_file(path.c_str(), HERMES_MAX_CONFIG_SIZE + 1, text))
    throw ConfigError(path + ": cannot read: " + std::strerror(error));
  if (text.size() > HERMES_MAX_CONFIG_SIZE)
    throw ConfigError(path + ": larger than " + std::to_string(HERMES_MAX_CONFIG_SIZE) + " bytes");
  return parse_config(text, path);
}

inline std::vector<std::string> lint_config(const Config &config) {
  std::vector<std::string> advice;
  for (const MetricConfig &metric : config.metrics)
    for (const std::string &problem : detail::lint_names(metric)) advice.push_back(metric.name + ": " + problem);
  return advice;
}

// ===== OPTIONS ============================================================================

inline const char *to_string(LogLevel level) {
  switch (level) {
  case LogLevel::debug: return "debug";
  case LogLevel::info: return "info";
  case LogLevel::warn: return "warn";
  default: return "error";
  }
}

inline std::optional<LogLevel> parse_log_level(std::string_view text) {
  const std::string name = detail::lowercase(text);
  for (const LogLevel level : {LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error})
    if (name == to_string(level)) return level;
  if (name == "warning") return LogLevel::warn;
  return std::nullopt;
}

namespace detail {

// The whole text as a number in `base` from `low` to `high`; nothing else.
template <typename Number> std::optional<Number> parse_number(std::string_view text, int base, Number low, Number high) {
  Number value{};
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size() || value < low || value > high)
    return std::nullopt;
  return value;
}

} // namespace detail

inline std::optional<std::uint16_t> parse_port(std::string_view text) {
  return detail::parse_number<std::uint16_t>(text, 10, 0, 65535);
}

inline std::optional<bool> parse_switch(std::string_view text) {
  const std::string word = detail::lowercase(text);
  if (word == "on" || word == "true" || word == "yes" || word == "1") return true;
  if (word == "off" || word == "false" || word == "no" || word == "0") return false;
  return std::nullopt;
}

namespace detail {

// The first of `names` that is set and not empty, with the name it was found under.
inline std::optional<std::pair<std::string, std::string>> first_set(const Environment &env,
                                                                    std::initializer_list<const char *> names) {
  for (const char *name : names) {
    const char *value = env(name);
    if (value && *value) return std::make_pair(std::string(name), std::string(value));
  }
  return std::nullopt;
}

// Sets `option` from the first of `names` that is set, read by `parse`; a value it
// cannot read stops start-up with the variable's name and what was `expected`.
template <typename Option, typename Parse>
void override_from(Option &option, const Environment &env, std::initializer_list<const char *> names, Parse parse,
                   const char *expected) {
  const auto found = first_set(env, names);
  if (!found) return;
  const auto parsed = parse(found->second);
  if (!parsed) throw UsageError(found->first + ": \"" + found->second + "\" is not " + expected);
  option = *parsed;
}

inline std::optional<std::string> any_text(const std::string &text) { return text; }

inline std::optional<double> positive_seconds(const std::string &text) {
  double value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (result.ec != std::errc() || result.ptr != text.data() + text.size() || !(value > 0) || !std::isfinite(value))
    return std::nullopt;
  return value;
}

} // namespace detail

inline Options options_from_environment(const Config &config, const Environment &env) {
  using detail::override_from;
  Options options;
  if (!config.listen_address.empty()) options.udp_address = config.listen_address;
  if (config.listen_port) options.udp_port = *config.listen_port;
  options.state_file = config.state_file;
  if (config.state_interval_seconds) options.state_interval_seconds = *config.state_interval_seconds;
  override_from(options.udp_address, env, {"HERMES_UDP_ADDRESS", "LISTEN_ADDRESS"}, detail::any_text, "");
  override_from(options.udp_port, env, {"HERMES_UDP_PORT", "LISTEN_PORT"}, parse_port, "a port number (0-65535)");
  override_from(options.http_address, env, {"HERMES_HTTP_ADDRESS"}, detail::any_text, "");
  override_from(options.http_port, env, {"HERMES_HTTP_PORT"}, parse_port, "a port number (0-65535)");
  override_from(options.log_level, env, {"HERMES_LOG_LEVEL", "LOG_LEVEL"}, parse_log_level,
                "a log level (debug, info, warn, error)");
  override_from(options.openmetrics, env, {"HERMES_OPENMETRICS"}, parse_switch, "on or off");
  override_from(
      options.udp_receive_buffer, env, {"HERMES_UDP_RECEIVE_BUFFER"},
      [](std::string_view text) { return detail::parse_number<int>(text, 10, 4096, INT32_MAX); }, "a number of bytes (4096 or more)");
  override_from(options.unix_socket_path, env, {"HERMES_UNIX_SOCKET"}, detail::any_text, "");
  override_from(
      options.unix_socket_mode, env, {"HERMES_UNIX_SOCKET_MODE"},
      [](std::string_view text) { return detail::parse_number<unsigned>(text, 8, 0, 0777); }, "an octal file mode (such as 660)");
  override_from(options.state_file, env, {"HERMES_STATE_FILE"}, detail::any_text, "");
  override_from(options.state_interval_seconds, env, {"HERMES_STATE_INTERVAL"}, detail::positive_seconds,
                "a number of seconds above 0");
  return options;
}

// ===== SAMPLES ============================================================================

inline const char *to_string(Reject reason) {
  switch (reason) {
  case Reject::malformed_json: return "malformed_json";
  case Reject::malformed_sample: return "malformed_sample";
  case Reject::unknown_metric: return "unknown_metric";
  case Reject::label_mismatch: return "label_mismatch";
  case Reject::invalid_label_value: return "invalid_label_value";
  case Reject::invalid_value: return "invalid_value";
  case Reject::invalid_operation: return "invalid_operation";
  case Reject::series_limit: return "series_limit";
  default: return "too_large";
  }
}

inline double wall_clock_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

inline double monotonic_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline std::size_t IngestResult::rejected_total() const {
  std::size_t total = 0;
  for (const std::size_t count : rejected) total += count;
  return total;
}

namespace detail {

// How a sample changes its series.
struct Update {
  enum class Kind { add, set, observe } kind = Kind::add;
  double amount = 0;
};

// The label values of a sample in the configured order, as views into the sample.
inline std::optional<Reject> read_label_values(const MetricConfig &metric, const ReadSample &sample,
                                               std::vector<std::string_view> &values) {
  values.clear();
  const bool has_labels = sample.payload == JsonKind::object && sample.labels != JsonKind::absent && sample.labels != JsonKind::null;
  if (has_labels && sample.labels != JsonKind::object) return Reject::malformed_sample;
  const std::size_t given = has_labels ? sample.label_count : 0;
  if (given != metric.labels.size()) return Reject::label_mismatch;
  for (const std::string &name : metric.labels) {
    const ReadValue *found = sample.find_label(name);
    if (!found || found->kind != JsonKind::string) return Reject::label_mismatch;
    if (!is_valid_utf8(found->text)) return Reject::invalid_label_value;
    values.push_back(found->text);
  }
  return std::nullopt;
}

inline std::optional<Reject> read_counter_update(const ReadValue *value, Update &update) {
  update.amount = value ? value->number : 1;
  if (update.amount < 0) return Reject::invalid_value; // counters only go up
  return std::nullopt;
}

inline std::optional<Reject> read_gauge_update(const ReadValue *value, const ReadValue *operation, Update &update) {
  if (operation && operation->kind != JsonKind::string) return Reject::invalid_operation;
  const std::string_view name = operation ? std::string_view(operation->text) : "set";
  const double by = value ? value->number : 1;
  if (name == "set") {
    if (!value) return Reject::invalid_value;
    update = {Update::Kind::set, by};
  } else if (name == "increment") {
    update = {Update::Kind::add, by};
  } else if (name == "decrement") {
    update = {Update::Kind::add, -by};
  } else {
    return Reject::invalid_operation;
  }
  return std::nullopt;
}

inline std::optional<Reject> read_update(MetricType type, const ReadSample &sample, Update &update) {
  const bool has_payload = sample.payload == JsonKind::object;
  const auto field = [&](const ReadValue &value) { return has_payload && value.present() ? &value : nullptr; };
  // Histograms and summaries take an observation, under the original's name or as value.
  const bool observes = type == MetricType::histogram || type == MetricType::summary;
  const ReadValue *value = observes && field(sample.observation) ? field(sample.observation) : field(sample.value);
  if (value && value->kind != JsonKind::number) return Reject::invalid_value; // also numbers beyond double
  if (type == MetricType::counter) return read_counter_update(value, update);
  if (type == MetricType::gauge) return read_gauge_update(value, field(sample.operation), update);
  if (!value) return Reject::invalid_value;
  update = {Update::Kind::observe, value->number};
  return std::nullopt;
}

// A new series of `metric`, first pushed at `now`.
inline Series new_series(const MetricConfig &metric, Now now) {
  Series series;
  series.created = now.wall;
  series.last_push = now.monotonic;
  if (metric.type == MetricType::histogram || metric.type == MetricType::summary) {
    series.distribution = std::make_unique<Distribution>();
    if (metric.type == MetricType::histogram) series.distribution->bucket_counts.assign(metric.buckets.size() + 1, 0);
    if (!metric.objectives.empty()) series.distribution->quantiles = std::make_unique<QuantileWindow>(metric, now.monotonic);
  }
  return series;
}

// `now` on the monotonic clock.
inline void apply_update(const MetricConfig &metric, Series &series, const Update &update, double now) {
  series.last_push = now;
  if (update.kind == Update::Kind::set) {
    series.value = update.amount;
  } else if (update.kind == Update::Kind::add) {
    series.value += update.amount;
  } else {
    Distribution &seen = *series.distribution;
    seen.sum += update.amount;
    seen.count += 1;
    if (!seen.bucket_counts.empty()) { // the first bucket whose upper bound holds it; else +Inf
      const auto bucket = std::lower_bound(metric.buckets.begin(), metric.buckets.end(), update.amount);
      seen.bucket_counts[static_cast<std::size_t>(bucket - metric.buckets.begin())] += 1;
    }
    if (seen.quantiles) seen.quantiles->observe(update.amount, now);
  }
}

} // namespace detail

// ===== REGISTRY ===========================================================================

inline Registry::Registry(const Config &config)
    : service_name_(config.service_name), reading_(std::make_unique<detail::Reading>()) {
  for (const MetricConfig &metric_config : config.metrics) {
    detail::Metric metric{metric_config, {}};
    // A metric without labels has exactly one series; it shows 0 before the first push.
    if (metric_config.labels.empty()) metric.series.emplace(std::vector<std::string>{}, detail::new_series(metric_config, 0));
    metrics_.push_back(std::move(metric));
  }
  std::sort(metrics_.begin(), metrics_.end(),
            [](const detail::Metric &a, const detail::Metric &b) { return a.config.name < b.config.name; });
}

inline Registry::Registry(Registry &&) noexcept = default;
inline Registry &Registry::operator=(Registry &&) noexcept = default;
inline Registry::~Registry() = default;

inline const detail::Metric *Registry::find(std::string_view name) const {
  const auto found = std::lower_bound(metrics_.begin(), metrics_.end(), name,
                                      [](const detail::Metric &m, std::string_view n) { return m.config.name < n; });
  return found != metrics_.end() && found->config.name == name ? &*found : nullptr;
}

inline detail::Metric *Registry::find(std::string_view name) {
  return const_cast<detail::Metric *>(static_cast<const Registry *>(this)->find(name));
}

inline IngestResult Registry::ingest(std::string_view datagram, Now now) {
  IngestResult result;
  const auto count = [&](std::optional<Reject> reason) {
    if (reason) {
      ++result.rejected[static_cast<std::size_t>(*reason)];
      ++rejected_[static_cast<std::size_t>(*reason)];
    } else {
      ++result.accepted;
      ++accepted_;
    }
  };
  detail::ReadBatch &batch = reading_->batch;
  batch.clear();
  detail::SampleReader reader(detail::SampleReader::Place::datagram, batch, HERMES_MAX_JSON_DEPTH);
  if (!detail::parse_json_into(reader, datagram)) {
    count(Reject::malformed_json); // nothing of a datagram that is not JSON as a whole is applied
  } else if (batch.is_array && batch.count == 0) {
    count(Reject::malformed_sample); // a batch of nothing is still counted
  } else {
    for (std::size_t i = 0; i < batch.count; ++i) count(apply(batch.slots[i], now));
  }
  return result;
}

inline void Registry::count_rejected(Reject reason) { ++rejected_[static_cast<std::size_t>(reason)]; }

namespace detail {
inline bool same_shape(const MetricConfig &a, const MetricConfig &b) {
  return a.type == b.type && a.labels == b.labels && a.buckets == b.buckets && a.objectives == b.objectives &&
         a.max_age_seconds == b.max_age_seconds;
}
} // namespace detail

inline Registry::ReloadSummary Registry::reload(const Config &config) {
  ReloadSummary summary;
  Registry next(config);
  for (detail::Metric &metric : next.metrics_) {
    detail::Metric *before = find(metric.config.name);
    if (before && detail::same_shape(before->config, metric.config)) {
      metric.series = std::move(before->series);
      ++summary.kept;
    } else {
      ++summary.fresh;
    }
  }
  summary.removed = metrics_.size() - summary.kept;
  service_name_ = next.service_name_;
  metrics_ = std::move(next.metrics_);
  return summary;
}

inline std::size_t Registry::expire(double monotonic_now) {
  std::size_t dropped = 0;
  for (detail::Metric &metric : metrics_) {
    if (metric.config.ttl_seconds <= 0 || metric.config.labels.empty()) continue;
    const double stale_before = monotonic_now - metric.config.ttl_seconds;
    for (auto series = metric.series.begin(); series != metric.series.end();) {
      if (series->second.last_push <= stale_before) {
        series = metric.series.erase(series);
        ++dropped;
      } else {
        ++series;
      }
    }
  }
  expired_ += dropped;
  changes_ += dropped;
  return dropped;
}

inline std::optional<Reject> Registry::apply(const detail::ReadSample &sample, Now now) {
  using detail::JsonKind;
  const bool payload_ok = sample.payload == JsonKind::absent || sample.payload == JsonKind::null || sample.payload == JsonKind::object;
  if (sample.shape != JsonKind::object || sample.metric_name.kind != JsonKind::string || !payload_ok)
    return Reject::malformed_sample;
  detail::Metric *metric = find(sample.metric_name.text);
  if (!metric) return Reject::unknown_metric;
  std::vector<std::string_view> &label_values = reading_->label_values;
  if (const auto reason = detail::read_label_values(metric->config, sample, label_values)) return reason;
  detail::Update update;
  if (const auto reason = detail::read_update(metric->config.type, sample, update)) return reason;

  auto series = metric->series.find(label_values);
  if (series == metric->series.end()) {
    if (metric->series.size() >= metric->config.max_series) return Reject::series_limit;
    series = metric->series
                 .emplace(std::vector<std::string>(label_values.begin(), label_values.end()),
                          detail::new_series(metric->config, now))
                 .first;
  }
  detail::apply_update(metric->config, series->second, update, now.monotonic);
  ++changes_;
  return std::nullopt;
}

inline std::optional<double> Registry::value(std::string_view metric, const std::vector<std::string> &label_values) const {
  const detail::Metric *found = find(metric);
  if (!found) return std::nullopt;
  const auto series = found->series.find(label_values);
  if (series == found->series.end()) return std::nullopt;
  return series->second.value;
}

inline std::size_t Registry::series_count() const {
  std::size_t count = 0;
  for (const detail::Metric &metric : metrics_) count += metric.series.size();
  return count;
}

} // namespace hermes

// ===== STATE ==============================================================================

namespace hermes {

inline void Registry::save_state(std::string &out, Now now, const std::function<void()> &pause) const {
  detail::StateCodec::save(*this, out, now, pause);
}

inline Registry::RestoreSummary Registry::restore_state(std::string_view text, double monotonic_now) {
  return detail::StateCodec::restore(*this, text, monotonic_now);
}

} // namespace hermes

// ===== FORMATTING =========================================================================

namespace hermes {

inline ProcessStats read_process_stats() {
  ProcessStats stats;
  const std::vector<std::string> fields = detail::proc_stat_fields();
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page_size = static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (ticks > 0) stats.cpu_seconds = (detail::proc_stat_field(fields, 14) + detail::proc_stat_field(fields, 15)) / ticks;
  stats.virtual_memory_bytes = detail::proc_stat_field(fields, 23);
  stats.resident_memory_bytes = detail::proc_stat_field(fields, 24) * page_size;
  stats.open_fds = detail::count_open_fds();
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) stats.max_fds = static_cast<double>(limit.rlim_cur);
  return stats;
}

inline ServerStats::ServerStats() {
  for (const int status : detail::http_statuses) http_requests[status] = 0;
}

inline const char *content_type(Format format) {
  return format == Format::openmetrics ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                                       : "text/plain; version=0.0.4; charset=utf-8";
}

namespace detail {

// The q value of one media range of an Accept header ("type/sub;version=1.0.0;q=0.5").
inline double accept_quality(std::string_view range) {
  double quality = 1;
  for (std::size_t semicolon = range.find(';'); semicolon != std::string_view::npos;) {
    const std::size_t next = range.find(';', semicolon + 1);
    const std::string_view parameter = trim(range.substr(semicolon + 1, next - semicolon - 1));
    if (starts_with(parameter, "q=")) quality = std::strtod(std::string(parameter.substr(2)).c_str(), nullptr);
    semicolon = next;
  }
  return quality;
}

} // namespace detail

inline Format negotiate_format(std::string_view accept) {
  double openmetrics = 0, text = 0;
  while (!accept.empty()) {
    const std::size_t comma = accept.find(',');
    const std::string_view range = detail::trim(accept.substr(0, comma));
    const std::string type = detail::lowercase(detail::trim(range.substr(0, range.find(';'))));
    const double quality = detail::accept_quality(range);
    if (type == "application/openmetrics-text") openmetrics = std::max(openmetrics, quality);
    if (type == "text/plain" || type == "text/*" || type == "*/*") text = std::max(text, quality);
    accept = comma == std::string_view::npos ? std::string_view() : accept.substr(comma + 1);
  }
  return openmetrics > 0 && openmetrics > text ? Format::openmetrics : Format::text;
}

namespace detail {

// Label values escape backslash, newline and double quote; HELP text escapes the first
// two in text 0.0.4 and all three in OpenMetrics.
inline void append_escaped(std::string &out, std::string_view text, bool escape_quote) {
  if (text.find_first_of(escape_quote ? "\\\n\"" : "\\\n") == std::string_view::npos) {
    out += text; // the common case: nothing to escape
    return;
  }
  for (const char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && escape_quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// Writes families in one format. In OpenMetrics a counter named *_total is the family
// without the suffix; a counter without the suffix cannot be an OpenMetrics counter under
// its name, so it is typed unknown; and counters, histograms and summaries add *_created
// to each series a push made. Either way every sample keeps its text-format name, so
// Prometheus stores the same series.
class Exposition {
public:
  // `pause` may be empty; it must outlive the Exposition.
  Exposition(std::string &out, Format format, const std::function<void()> &pause)
      : out_(out), format_(format), pause_(pause) {}

  void family(std::string_view name, std::string_view help, MetricType type) {
    const bool openmetrics = format_ == Format::openmetrics;
    const bool total = type == MetricType::counter && ends_with(name, "_total");
    family_ = openmetrics && total ? name.substr(0, name.size() - 6) : name;
    const char *type_name = openmetrics && type == MetricType::counter && !total ? "unknown" : to_string(type);
    with_created_ = openmetrics && (total || type == MetricType::histogram || type == MetricType::summary);
    out_ += "# HELP ";
    out_ += family_;
    out_ += ' '; // OpenMetrics wants the space even before an empty text
    append_escaped(out_, help, openmetrics);
    out_ += "\n# TYPE ";
    out_ += family_;
    out_ += ' ';
    out_ += type_name;
    out_ += '\n';
  }

  // One sample; `extra` is a last label of its own, such as a bucket's le.
  template <typename Values>
  void sample(std::string_view name, const std::vector<std::string> &label_names, const Values &label_values, double value,
              std::pair<std::string_view, std::string_view> extra = {}) {
    out_ += name;
    append_labels(label_names, label_values, extra);
    out_ += ' ';
    append_double(out_, value);
    out_ += '\n';
  }

  // The series' creation time, where the format has a place for it.
  template <typename Values>
  void created(const std::vector<std::string> &label_names, const Values &label_values, double seconds) {
    if (!with_created_ || seconds <= 0) return;
    const std::string name = std::string(family_) + "_created";
    sample(name, label_names, label_values, seconds);
  }

  // A family of one series without labels.
  void single(std::string_view name, std::string_view help, MetricType type, double value) {
    family(name, help, type);
    sample(name, {}, std::vector<std::string>{}, value);
  }

  // After each series of a configured metric: the pause falls between series, never
  // inside a histogram's or summary's lines.
  void end_series() {
    if (pause_ && ++series_since_pause_ == HERMES_RENDER_PAUSE_STRIDE) {
      series_since_pause_ = 0;
      pause_();
    }
  }

  void finish() {
    if (format_ == Format::openmetrics) out_ += "# EOF\n";
  }

private:
  template <typename Values>
  void append_labels(const std::vector<std::string> &names, const Values &values,
                     std::pair<std::string_view, std::string_view> extra) {
    if (names.empty() && extra.first.empty()) return;
    out_ += '{';
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (i > 0) out_ += ',';
      append_label(names[i], values[i]);
    }
    if (!extra.first.empty()) {
      if (!names.empty()) out_ += ',';
      append_label(extra.first, extra.second);
    }
    out_ += '}';
  }

  void append_label(std::string_view name, std::string_view value) {
    out_ += name;
    out_ += "=\"";
    append_escaped(out_, value, true);
    out_ += '"';
  }

  std::string &out_;
  Format format_;
  const std::function<void()> &pause_;
  std::size_t series_since_pause_ = 0;
  bool with_created_ = false;
  std::string_view family_;
};

// Cumulative buckets with their upper bound as le, then _sum and _count.
inline void write_histogram(Exposition &out, const MetricConfig &config, const std::vector<std::string> &labels,
                            const Distribution &seen) {
  const std::string bucket = config.name + "_bucket";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < seen.bucket_counts.size(); ++i) {
    cumulative += seen.bucket_counts[i];
    const std::string le = i < config.buckets.size() ? format_double(config.buckets[i]) : "+Inf";
    out.sample(bucket, config.labels, labels, static_cast<double>(cumulative), {"le", le});
  }
  out.sample(config.name + "_sum", config.labels, labels, seen.sum);
  out.sample(config.name + "_count", config.labels, labels, static_cast<double>(seen.count));
}

// Each objective's quantile over the window (NaN while it is empty), then _sum and _count.
// Reading a quantile brings the window up to `now`, which no reader can tell apart.
inline void write_summary(Exposition &out, const MetricConfig &config, const std::vector<std::string> &labels,
                          const Distribution &seen, double now) {
  for (const auto &objective : config.objectives)
    out.sample(config.name, config.labels, labels, seen.quantiles->query(objective.first, now),
               {"quantile", format_double(objective.first)});
  out.sample(config.name + "_sum", config.labels, labels, seen.sum);
  out.sample(config.name + "_count", config.labels, labels, static_cast<double>(seen.count));
}

inline void write_metric(Exposition &out, const Metric &metric, double now) {
  const MetricConfig &config = metric.config;
  out.family(config.name, config.help, config.type);
  for (const auto &[labels, series] : metric.series) {
    if (config.type == MetricType::histogram) {
      write_histogram(out, config, labels, *series.distribution);
    } else if (config.type == MetricType::summary) {
      write_summary(out, config, labels, *series.distribution, now);
    } else {
      out.sample(config.name, config.labels, labels, series.value);
    }
    out.created(config.labels, labels, series.created);
    out.end_series();
  }
}

// One family of the /metrics body: its name, and how to write it.
struct FamilyWriter {
  std::string_view name;
  std::function<void(Exposition &)> write;
};

inline std::vector<FamilyWriter> self_families(const Registry &registry, const ServerStats &stats) {
  const ProcessStats &process = stats.process;
  constexpr MetricType counter = MetricType::counter, gauge = MetricType::gauge;
  return {
      {"hermes_build_info", [&](Exposition &out) {
         out.family("hermes_build_info", "Hermes version and the configured service, always 1.", gauge);
         out.sample("hermes_build_info", {"version", "service"}, std::vector<std::string>{HERMES_VERSION_STR, registry.service_name()}, 1);
       }},
      {"hermes_unix_datagrams_total", [&](Exposition &out) {
         out.single("hermes_unix_datagrams_total", "Datagrams received on the unix socket.", counter,
                    static_cast<double>(stats.unix_datagrams));
       }},
      {"hermes_udp_receive_drops_total", [&](Exposition &out) {
         out.single("hermes_udp_receive_drops_total", "UDP datagrams the kernel dropped because the receive buffer was full.",
                    counter, static_cast<double>(stats.udp_receive_drops));
       }},
      {"hermes_udp_receive_buffer_bytes", [&](Exposition &out) {
         out.single("hermes_udp_receive_buffer_bytes", "The UDP socket's receive buffer, as the kernel granted it.", gauge,
                    stats.udp_receive_buffer_bytes);
       }},
      {"hermes_udp_packets_total", [&](Exposition &out) {
         out.single("hermes_udp_packets_total", "UDP datagrams received.", counter, static_cast<double>(stats.udp_packets));
       }},
      {"hermes_samples_accepted_total", [&](Exposition &out) {
         out.single("hermes_samples_accepted_total", "Samples applied to the registry.", counter, static_cast<double>(registry.accepted()));
       }},
      {"hermes_samples_rejected_total", [&](Exposition &out) {
         out.family("hermes_samples_rejected_total", "Samples dropped, by reason.", counter);
         for (std::size_t i = 0; i < reject_reason_count; ++i) {
           const auto reason = static_cast<Reject>(i);
           out.sample("hermes_samples_rejected_total", {"reason"}, std::vector<std::string>{to_string(reason)},
                      static_cast<double>(registry.rejected(reason)));
         }
       }},
      {"hermes_series_expired_total", [&](Exposition &out) {
         out.single("hermes_series_expired_total", "Series dropped after ttl_seconds without a push.", counter,
                    static_cast<double>(registry.expired()));
       }},
      {"hermes_series", [&](Exposition &out) {
         out.single("hermes_series", "Live series of the configured metrics.", gauge, static_cast<double>(registry.series_count()));
       }},
      {"hermes_config_reloads_total", [&](Exposition &out) {
         out.family("hermes_config_reloads_total", "Config reloads, by result.", counter);
         out.sample("hermes_config_reloads_total", {"result"}, std::vector<std::string>{"success"},
                    static_cast<double>(stats.reloads_succeeded));
         out.sample("hermes_config_reloads_total", {"result"}, std::vector<std::string>{"failure"},
                    static_cast<double>(stats.reloads_failed));
       }},
      {"hermes_config_last_reload_success_timestamp_seconds", [&](Exposition &out) {
         out.single("hermes_config_last_reload_success_timestamp_seconds",
                    "When the config in force was loaded, in seconds since the epoch.", gauge, stats.last_reload_success_seconds);
       }},
      {"hermes_state_writes_total", [&](Exposition &out) {
         out.family("hermes_state_writes_total", "Writes of the state file, by result.", counter);
         out.sample("hermes_state_writes_total", {"result"}, std::vector<std::string>{"success"},
                    static_cast<double>(stats.state_writes_succeeded));
         out.sample("hermes_state_writes_total", {"result"}, std::vector<std::string>{"failure"},
                    static_cast<double>(stats.state_writes_failed));
       }},
      {"hermes_state_last_write_timestamp_seconds", [&](Exposition &out) {
         out.single("hermes_state_last_write_timestamp_seconds",
                    "When the state file was last written, in seconds since the epoch; 0 before the first write.", gauge,
                    stats.state_last_write_seconds);
       }},
      {"hermes_state_restored_series", [&](Exposition &out) {
         out.single("hermes_state_restored_series", "Series restored from the state file at start.", gauge,
                    static_cast<double>(stats.state_restored_series));
       }},
      {"hermes_http_requests_total", [&](Exposition &out) {
         out.family("hermes_http_requests_total", "HTTP requests answered, by status code.", counter);
         for (const auto &entry : stats.http_requests)
           out.sample("hermes_http_requests_total", {"code"}, std::vector<std::string>{std::to_string(entry.first)},
                      static_cast<double>(entry.second));
       }},
      {"process_cpu_seconds_total", [&](Exposition &out) {
         out.single("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", counter, process.cpu_seconds);
       }},
      {"process_max_fds", [&](Exposition &out) {
         out.single("process_max_fds", "Maximum number of open file descriptors.", gauge, process.max_fds);
       }},
      {"process_open_fds", [&](Exposition &out) {
         out.single("process_open_fds", "Number of open file descriptors.", gauge, process.open_fds);
       }},
      {"process_resident_memory_bytes", [&](Exposition &out) {
         out.single("process_resident_memory_bytes", "Resident memory size in bytes.", gauge, process.resident_memory_bytes);
       }},
      {"process_start_time_seconds", [&](Exposition &out) {
         out.single("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", gauge,
                    process.start_time_seconds);
       }},
      {"process_virtual_memory_bytes", [&](Exposition &out) {
         out.single("process_virtual_memory_bytes", "Virtual memory size in bytes.", gauge, process.virtual_memory_bytes);
       }},
  };
}

} // namespace detail

inline std::string render_metrics(const Registry &registry, const ServerStats &stats, Format format, double now_seconds) {
  std::string out;
  render_metrics(out, registry, stats, format, now_seconds);
  return out;
}

inline void render_metrics(std::string &out, const Registry &registry, const ServerStats &stats, Format format,
                           double now_seconds, const std::function<void()> &pause) {
  std::vector<detail::FamilyWriter> families = detail::self_families(registry, stats);
  for (const detail::Metric &metric : registry.metrics_)
    families.push_back({metric.config.name, [&metric, now_seconds](detail::Exposition &exposition) {
                          detail::write_metric(exposition, metric, now_seconds);
                        }});
  std::sort(families.begin(), families.end(),
            [](const detail::FamilyWriter &a, const detail::FamilyWriter &b) { return a.name < b.name; });
  out.clear();
  std::size_t estimate = 8192; // Hermes' own families; then each series' line, roughly
  for (const detail::Metric &metric : registry.metrics_) estimate += metric.series.size() * (metric.config.name.size() + 16 * metric.config.labels.size() + 24);
  out.reserve(estimate);
  detail::Exposition exposition(out, format, pause);
  for (const detail::FamilyWriter &family : families) family.write(exposition);
  exposition.finish();
}

} // namespace hermes

// ===== SERVER =============================================================================

namespace hermes {

struct Server::Impl {
  using Clock = std::chrono::steady_clock;
  using Connection = detail::Connection;

  Impl(const Config &config, Options &options)
      : registry(config), logger(options.log_level, std::move(options.log_sink)), openmetrics(options.openmetrics),
        config_path(options.config_path),
        udp(detail::open_udp_listener(options.udp_address, options.udp_port, options.udp_receive_buffer)),
        unix_socket(options.unix_socket_path, options.unix_socket_mode),
        http(detail::open_tcp_listener(options.http_address, options.http_port)),
        start_time_seconds(detail::process_start_time_seconds()), state(options, stats, logger) {
    stats.udp_receive_buffer_bytes = detail::receive_buffer_size(udp.get());
  }

  void poll_once(int timeout_ms);
  std::string render(Format format);

  // UDP and unix socket ingest
  void receive_datagrams(int socket, std::uint64_t &received);
  void count_kernel_drops(int index_in_batch);
  void take_datagram(std::string_view datagram, bool truncated, std::uint64_t &received, Now now);
  void hold_datagrams();
  void hold_from(int socket, detail::HeldDatagrams::Source source);
  void apply_held_datagrams();
  void note_rejects(const IngestResult &result, std::string_view datagram, Clock::time_point now);
  void log_reject_summary(Clock::time_point now, bool force);

  // HTTP
  void accept_connections(Clock::time_point now);
  void admit(detail::FileDescriptor fd, Clock::time_point now);
  bool close_oldest_reader();
  void serve(Connection &connection, Clock::time_point now);
  void read_request(Connection &connection, Clock::time_point now);
  void respond(Connection &connection, detail::HttpResponse response, Clock::time_point now);
  void write_response(Connection &connection, Clock::time_point now);
  void drain(Connection &connection);
  void expire_and_remove(Clock::time_point now);
  int poll_timeout(int timeout_ms, Clock::time_point now) const;

  // State file
  void save_state();
  void save_state_at_stop();

  Registry registry;
  ServerStats stats;
  detail::Logger logger;
  bool openmetrics;
  std::string config_path;
  detail::FileDescriptor udp;
  detail::UnixSocket unix_socket;
  detail::FileDescriptor http;
  std::vector<std::unique_ptr<Connection>> connections;
  std::vector<pollfd> poll_fds;
  detail::ReceiveBatch batch;
  detail::HeldDatagrams held; // taken off the sockets during a render, applied after it
  std::string spare_body;     // the memory of the largest /metrics body sent, for the next
  std::uint32_t last_drop_counter = 0;
  double start_time_seconds;
  std::uint64_t accepted_connections = 0;
  std::array<std::uint64_t, reject_reason_count> pending_rejects{};
  Clock::time_point next_reject_log{};
  Clock::time_point accept_paused_until{};
  Clock::time_point next_fd_warning{};
  Clock::time_point next_series_sweep{};
  detail::StateKeeper state; // last: its writing thread ends first
};

inline Server::Server(const Config &config, Options options) : impl_(std::make_unique<Impl>(config, options)) {
  impl_->stats.last_reload_success_seconds = wall_clock_seconds();
  const std::string udp = udp_endpoint(), http = http_endpoint();
  detail::LogFields fields = {{"udp", udp}, {"http", http}};
  if (impl_->unix_socket.get() >= 0) fields.emplace_back("unix", impl_->unix_socket.path());
  fields.insert(fields.end(), {{"service", config.service_name}, {"version", HERMES_VERSION_STR}});
  impl_->logger.log(LogLevel::info, "hermes listening", fields);
  impl_->state.restore(impl_->registry, monotonic_seconds());
}

inline Server::~Server() = default;

inline void Server::poll_once(int timeout_ms) { impl_->poll_once(timeout_ms); }

inline void Server::run(const std::atomic<bool> &stop, std::atomic<bool> *reload_requested) {
  while (!stop.load()) {
    impl_->poll_once(HERMES_POLL_INTERVAL_MS);
    if (reload_requested && reload_requested->exchange(false)) reload();
  }
  impl_->save_state_at_stop();
  impl_->log_reject_summary(Impl::Clock::now(), true);
  impl_->logger.log(LogLevel::info, "hermes stopped");
}

inline bool Server::reload() {
  Impl &impl = *impl_;
  try {
    if (impl.config_path.empty()) throw ConfigError("no config file to reload");
    const Registry::ReloadSummary summary = impl.registry.reload(load_config(impl.config_path));
    ++impl.stats.reloads_succeeded;
    impl.stats.last_reload_success_seconds = wall_clock_seconds();
    impl.logger.log(LogLevel::info, "config reloaded",
                    {{"path", impl.config_path}, {"kept", std::to_string(summary.kept)},
                     {"fresh", std::to_string(summary.fresh)}, {"removed", std::to_string(summary.removed)}});
    return true;
  } catch (const ConfigError &error) {
    ++impl.stats.reloads_failed;
    impl.logger.log(LogLevel::error, "config reload failed; the config in force stays", {{"error", error.what()}});
    return false;
  }
}

inline std::uint16_t Server::udp_port() const { return detail::local_port(impl_->udp.get()); }
inline std::uint16_t Server::http_port() const { return detail::local_port(impl_->http.get()); }
inline std::string Server::udp_endpoint() const { return detail::local_endpoint(impl_->udp.get()); }
inline std::string Server::http_endpoint() const { return detail::local_endpoint(impl_->http.get()); }
inline const Registry &Server::registry() const { return impl_->registry; }
inline const ServerStats &Server::stats() const { return impl_->stats; }
inline std::string Server::render(Format format) { return impl_->render(format); }

// A long render pauses every HERMES_RENDER_PAUSE_STRIDE series to take waiting datagrams
// off the sockets, so that the kernel's buffer does not overflow meanwhile; they are
// applied once the registry is no longer being read.
inline std::string Server::Impl::render(Format format) {
  registry.expire(); // a scrape never shows a series past its ttl
  stats.process = read_process_stats();
  stats.process.start_time_seconds = start_time_seconds;
  std::string body = std::move(spare_body);
  render_metrics(body, registry, stats, format, monotonic_seconds(), [this] { hold_datagrams(); });
  apply_held_datagrams();
  return body;
}

// One step: wait for any socket, then UDP first (it cannot wait), existing HTTP
// clients next, new HTTP clients last.
inline void Server::Impl::poll_once(int timeout_ms) {
  enum { udp_slot, unix_slot, http_slot, first_connection_slot };
  Clock::time_point now = Clock::now();
  poll_fds.clear();
  // A negative descriptor is skipped by poll(): no unix socket, or accepting paused
  // while descriptors run out.
  poll_fds.push_back({udp.get(), POLLIN, 0});
  poll_fds.push_back({unix_socket.get(), POLLIN, 0});
  poll_fds.push_back({now >= accept_paused_until ? http.get() : -1, POLLIN, 0});
  for (const auto &connection : connections)
    poll_fds.push_back({connection->fd.get(), connection->phase == Connection::Phase::writing ? short(POLLOUT) : short(POLLIN), 0});
  const int ready = detail::wait_for_events(poll_fds, poll_timeout(timeout_ms, now));
  now = Clock::now();
  if (ready > 0) {
    if (poll_fds[udp_slot].revents) receive_datagrams(udp.get(), stats.udp_packets);
    if (poll_fds[unix_slot].revents) receive_datagrams(unix_socket.get(), stats.unix_datagrams);
    const std::size_t polled = poll_fds.size() - first_connection_slot;
    for (std::size_t i = 0; i < polled; ++i)
      if (poll_fds[i + first_connection_slot].revents) serve(*connections[i], now);
    if (poll_fds[http_slot].revents) accept_connections(now);
  }
  expire_and_remove(now);
  log_reject_summary(now, false);
  if (now >= next_series_sweep) { // frees the memory of stale series, scraped or not
    registry.expire();
    next_series_sweep = now + std::chrono::seconds(1);
  }
  if (state.due(registry, monotonic_seconds())) save_state();
}

// ----- State file ----------------------------------------------------------------------------

// The text is made on the loop, taking waiting datagrams off the sockets every
// HERMES_STATE_PAUSE_STRIDE series as a render does; its writing runs on the keeper's thread.
inline void Server::Impl::save_state() {
  const std::uint64_t changes = registry.changes(); // what the text holds; held datagrams come after it
  registry.save_state(state.buffer(), Now::current(), [this] { hold_datagrams(); });
  apply_held_datagrams();
  state.write(changes, monotonic_seconds());
}

// At stop: the samples still queued on the sockets are applied, then the state is
// written, and run() returns once it is on disk.
inline void Server::Impl::save_state_at_stop() {
  if (!state.enabled()) return;
  constexpr int most_rounds = 1024; // of HERMES_DATAGRAMS_PER_STEP: more than a receive buffer holds
  for (int round = 0; round < most_rounds; ++round) {
    const std::uint64_t before = stats.udp_packets + stats.unix_datagrams;
    receive_datagrams(udp.get(), stats.udp_packets);
    if (unix_socket.get() >= 0) receive_datagrams(unix_socket.get(), stats.unix_datagrams);
    if (stats.udp_packets + stats.unix_datagrams == before) break;
  }
  state.wait();
  if (!state.changed(registry)) return;
  const std::uint64_t changes = registry.changes();
  registry.save_state(state.buffer(), Now::current());
  state.write(changes, monotonic_seconds());
  state.wait();
}

// How long poll() may sleep: the caller's timeout (negative: no limit), or less when a
// connection deadline, the end of an accept pause or the next reject summary falls due.
inline int Server::Impl::poll_timeout(int timeout_ms, Clock::time_point now) const {
  std::optional<Clock::time_point> due;
  const auto consider = [&due](Clock::time_point when) {
    if (!due || when < *due) due = when;
  };
  for (const auto &connection : connections) consider(connection->deadline);
  if (accept_paused_until > now) consider(accept_paused_until);
  if (std::any_of(pending_rejects.begin(), pending_rejects.end(), [](std::uint64_t n) { return n > 0; }))
    consider(next_reject_log);
  if (!due) return timeout_ms;
  const auto until_due = std::chrono::ceil<std::chrono::milliseconds>(*due - now).count();
  const int wait = static_cast<int>(std::clamp<std::int64_t>(until_due, 0, INT32_MAX));
  return timeout_ms < 0 ? wait : std::min(timeout_ms, wait);
}

// ----- UDP ingest --------------------------------------------------------------------------

inline void Server::Impl::receive_datagrams(int socket, std::uint64_t &received) {
  for (int taken = 0; taken < HERMES_DATAGRAMS_PER_STEP;) {
    const int got = batch.receive(socket);
    const Now now = Now::current();
    for (int i = 0; i < got; ++i) {
      count_kernel_drops(i);
      take_datagram(batch.datagram(i), batch.truncated(i), received, now);
    }
    if (got < HERMES_RECEIVE_BATCH) return; // all read
    taken += got;
  }
}

// The UDP socket's drop counter rides on its datagrams; it wraps at 2^32, the difference does not.
inline void Server::Impl::count_kernel_drops(int index_in_batch) {
  if (const auto dropped = batch.drop_counter(index_in_batch)) {
    stats.udp_receive_drops += static_cast<std::uint32_t>(*dropped - last_drop_counter);
    last_drop_counter = *dropped;
  }
}

inline void Server::Impl::take_datagram(std::string_view datagram, bool truncated, std::uint64_t &received, Now now) {
  ++received;
  if (truncated) { // the kernel cut it to fit: never parse a cut datagram
    IngestResult result;
    result.rejected[static_cast<std::size_t>(Reject::too_large)] = 1;
    registry.count_rejected(Reject::too_large);
    note_rejects(result, datagram, Clock::now());
    return;
  }
  const IngestResult result = registry.ingest(datagram, now);
  if (result.rejected_total() > 0) note_rejects(result, datagram, Clock::now());
}

// The render's pause: copies what waits on either socket into `held`, up to its budget.
inline void Server::Impl::hold_datagrams() {
  hold_from(udp.get(), detail::HeldDatagrams::Source::udp);
  hold_from(unix_socket.get(), detail::HeldDatagrams::Source::unix_socket);
}

inline void Server::Impl::hold_from(int socket, detail::HeldDatagrams::Source source) {
  if (socket < 0) return;
  while (!held.full()) {
    const int got = batch.receive(socket);
    for (int i = 0; i < got; ++i) {
      count_kernel_drops(i);
      held.hold(batch.datagram(i), batch.truncated(i), source);
    }
    if (got < HERMES_RECEIVE_BATCH) return;
  }
}

inline void Server::Impl::apply_held_datagrams() {
  const Now now = Now::current();
  held.release([this, now](std::string_view datagram, bool truncated, detail::HeldDatagrams::Source source) {
    const bool from_udp = source == detail::HeldDatagrams::Source::udp;
    take_datagram(datagram, truncated, from_udp ? stats.udp_packets : stats.unix_datagrams, now);
  });
}

inline void Server::Impl::note_rejects(const IngestResult &result, std::string_view datagram, Clock::time_point now) {
  if (result.rejected_total() == 0) return;
  constexpr std::size_t shown = 200; // of the datagram, in the debug line
  for (std::size_t i = 0; i < reject_reason_count; ++i) {
    if (result.rejected[i] == 0) continue;
    pending_rejects[i] += result.rejected[i];
    if (logger.enabled(LogLevel::debug))
      logger.log(LogLevel::debug, "sample rejected",
                 {{"reason", to_string(static_cast<Reject>(i))}, {"count", std::to_string(result.rejected[i])},
                  {"datagram", datagram.substr(0, shown)}});
  }
  log_reject_summary(now, false);
}

// One warn line per interval at most, with the count of each reason since the last one.
inline void Server::Impl::log_reject_summary(Clock::time_point now, bool force) {
  if (!force && now < next_reject_log) return;
  std::vector<std::pair<std::string, std::string>> counts;
  for (std::size_t i = 0; i < reject_reason_count; ++i)
    if (pending_rejects[i] > 0) counts.emplace_back(to_string(static_cast<Reject>(i)), std::to_string(pending_rejects[i]));
  if (counts.empty()) return;
  std::string line;
  for (const auto &count : counts) line += (line.empty() ? "" : " ") + count.first + "=" + count.second;
  logger.log(LogLevel::warn, "samples rejected", {{"counts", line}});
  pending_rejects.fill(0);
  next_reject_log = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
}

// ----- HTTP --------------------------------------------------------------------------------

inline void Server::Impl::accept_connections(Clock::time_point now) {
  for (int i = 0; i < HERMES_MAX_CONNECTIONS; ++i) {
    const int fd = detail::retry_on_eintr([&] { return ::accept4(http.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC); });
    if (fd >= 0) {
      admit(detail::FileDescriptor(fd), now);
      continue;
    }
    if (errno == EMFILE || errno == ENFILE) {
      // Out of descriptors: an idle client gives its own up for the newcomer.
      if (close_oldest_reader()) continue;
    }
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      // The pending connection stays queued and the socket stays readable: without a
      // pause, poll() would wake at once, again and again.
      accept_paused_until = now + std::chrono::milliseconds(100);
      if (now >= next_fd_warning) {
        logger.log(LogLevel::warn, "cannot accept HTTP connections", {{"error", std::strerror(errno)}});
        next_fd_warning = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
      }
    }
    if (errno != ECONNABORTED) return;
  }
}

inline void Server::Impl::admit(detail::FileDescriptor fd, Clock::time_point now) {
  if (connections.size() >= HERMES_MAX_CONNECTIONS && !close_oldest_reader()) {
    const std::string busy = detail::serialize_response(detail::error_response(503));
    ::send(fd.get(), busy.data(), busy.size(), MSG_NOSIGNAL); // best effort; the socket is new and empty
    ++stats.http_requests[503];
    return;
  }
  auto connection = std::make_unique<Connection>();
  connection->fd = std::move(fd);
  connection->sequence = ++accepted_connections;
  connection->deadline = now + std::chrono::milliseconds(HERMES_HTTP_READ_TIMEOUT_MS);
  connections.push_back(std::move(connection));
}

// A full house is most often idle or slow clients: the one waiting longest for its
// request head gives its place to the newcomer.
inline bool Server::Impl::close_oldest_reader() {
  Connection *oldest = nullptr;
  for (const auto &connection : connections)
    if (connection->phase == Connection::Phase::reading && (!oldest || connection->sequence < oldest->sequence))
      oldest = connection.get();
  if (!oldest) return false;
  const auto position = std::find_if(connections.begin(), connections.end(), [&](const auto &c) { return c.get() == oldest; });
  connections.erase(position);
  return true;
}

inline void Server::Impl::serve(Connection &connection, Clock::time_point now) {
  switch (connection.phase) {
  case Connection::Phase::reading: read_request(connection, now); break;
  case Connection::Phase::writing: write_response(connection, now); break;
  case Connection::Phase::lingering: drain(connection); break;
  case Connection::Phase::done: break;
  }
}

inline void Server::Impl::read_request(Connection &connection, Clock::time_point now) {
  char buffer[4096];
  for (;;) {
    const std::size_t room = std::min(sizeof buffer, HERMES_MAX_REQUEST_HEAD + 1 - connection.input.size());
    const ssize_t length = detail::retry_on_eintr([&] { return ::recv(connection.fd.get(), buffer, room, 0); });
    if (length <= 0) {
      // End of stream before a whole head, or an error: nobody to answer.
      if (length == 0 || !detail::is_not_now(errno)) connection.phase = Connection::Phase::done;
      return;
    }
    const std::size_t searched = connection.input.size() >= 2 ? connection.input.size() - 2 : 0;
    connection.input.append(buffer, static_cast<std::size_t>(length));
    const std::size_t head_end = detail::find_head_end(std::string_view(connection.input).substr(searched));
    if (head_end == std::string::npos && connection.input.size() <= HERMES_MAX_REQUEST_HEAD) continue;
    if (head_end == std::string::npos || searched + head_end > HERMES_MAX_REQUEST_HEAD)
      return respond(connection, detail::error_response(431), now);
    const auto request = detail::parse_request_head(std::string_view(connection.input).substr(0, searched + head_end));
    if (!request) return respond(connection, detail::error_response(400), now);
    const auto render_body = [this](Format format) { return render(format); };
    return respond(connection, detail::route(*request, openmetrics, render_body), now);
  }
}

inline void Server::Impl::respond(Connection &connection, detail::HttpResponse response, Clock::time_point now) {
  ++stats.http_requests[response.status];
  connection.head = detail::response_head(response);
  if (!response.head_only) connection.body = std::move(response.body);
  connection.input.clear();
  connection.input.shrink_to_fit();
  connection.phase = Connection::Phase::writing;
  connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_WRITE_TIMEOUT_MS);
  write_response(connection, now); // most responses fit the socket buffer at once
}

inline void Server::Impl::write_response(Connection &connection, Clock::time_point now) {
  const std::string &head = connection.head, &body = connection.body;
  while (connection.sent < head.size() + body.size()) {
    std::array<iovec, 2> parts{};
    std::size_t count = 0;
    if (connection.sent < head.size())
      parts[count++] = {const_cast<char *>(head.data()) + connection.sent, head.size() - connection.sent};
    const std::size_t body_sent = connection.sent > head.size() ? connection.sent - head.size() : 0;
    if (body_sent < body.size()) parts[count++] = {const_cast<char *>(body.data()) + body_sent, body.size() - body_sent};
    msghdr message{};
    message.msg_iov = parts.data();
    message.msg_iovlen = count;
    const ssize_t length = detail::retry_on_eintr([&] { return ::sendmsg(connection.fd.get(), &message, MSG_NOSIGNAL); });
    if (length < 0) {
      if (!detail::is_not_now(errno)) connection.phase = Connection::Phase::done; // the client went away
      return;
    }
    connection.sent += static_cast<std::size_t>(length);
  }
  connection.head = std::string();
  if (connection.body.capacity() > spare_body.capacity()) spare_body = std::move(connection.body);
  connection.body = std::string(); // frees any other large body at once
  ::shutdown(connection.fd.get(), SHUT_WR); // the end of the body, for an HTTP/1.0 client
  connection.phase = Connection::Phase::lingering;
  connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_LINGER_MS);
}

inline void Server::Impl::drain(Connection &connection) {
  char buffer[4096];
  for (;;) {
    const ssize_t length = detail::retry_on_eintr([&] { return ::recv(connection.fd.get(), buffer, sizeof buffer, 0); });
    if (length > 0) continue;
    if (length == 0 || !detail::is_not_now(errno)) connection.phase = Connection::Phase::done;
    return;
  }
}

inline void Server::Impl::expire_and_remove(Clock::time_point now) {
  for (const auto &connection : connections)
    if (now >= connection->deadline) connection->phase = Connection::Phase::done;
  connections.erase(std::remove_if(connections.begin(), connections.end(),
                                   [](const auto &c) { return c->phase == Connection::Phase::done; }),
                    connections.end());
}

} // namespace hermes

// ===== CLIENT =============================================================================

namespace hermes {

struct Client::Impl {
  detail::FileDescriptor socket;
};

inline Client::Client(const std::string &host, std::uint16_t port) : impl_(std::make_unique<Impl>()) {
  const detail::SocketAddress address = detail::resolve(host, port, SOCK_DGRAM, false);
  impl_->socket = detail::open_socket(address, SOCK_DGRAM, "client");
  // Connected, so each send names no address and the kernel checks it once.
  if (::connect(impl_->socket.get(), address.get(), address.length) != 0)
    throw SocketError(detail::system_error_message("connect " + detail::format_endpoint(address.get()), errno));
}

inline Client::~Client() = default;

inline bool Client::send(std::string_view datagram) {
  const ssize_t sent = detail::retry_on_eintr(
      [&] { return ::send(impl_->socket.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL | MSG_DONTWAIT); });
  return sent == static_cast<ssize_t>(datagram.size());
}

inline bool Client::send_sample(std::string_view metric, const Labels &labels, double value, const char *operation) {
  if (!std::isfinite(value)) return false;
  std::string json = "{\"metric_name\":";
  detail::append_json_string(json, metric);
  json += ",\"payload\":{\"labels\":{";
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) json += ',';
    detail::append_json_string(json, labels[i].first);
    json += ':';
    detail::append_json_string(json, labels[i].second);
  }
  json += "},\"value\":";
  detail::append_double(json, value);
  if (operation) {
    json += ",\"operation\":";
    detail::append_json_string(json, operation);
  }
  json += "}}";
  return send(json);
}

inline bool Client::increment_counter(std::string_view metric, const Labels &labels, double by) {
  return send_sample(metric, labels, by, nullptr);
}
inline bool Client::set_gauge(std::string_view metric, const Labels &labels, double value) {
  return send_sample(metric, labels, value, "set");
}
inline bool Client::increment_gauge(std::string_view metric, const Labels &labels, double by) {
  return send_sample(metric, labels, by, "increment");
}
inline bool Client::decrement_gauge(std::string_view metric, const Labels &labels, double by) {
  return send_sample(metric, labels, by, "decrement");
}

} // namespace hermes

#endif // HERMES_HPP
