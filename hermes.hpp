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
//                     optional: "native": true, "native_bucket_factor": 1.1, "native_max_buckets": 160,
//                     "native_zero_threshold": 2^-128 (a native histogram; "buckets" then optional)
//      "summaries": [{ ...same keys..., "objectives": {"0.5": 0.05}, "max_age_seconds": 600}],
//      "listen_address": "0.0.0.0", "listen_port": 7789,   optional UDP address and port
//      "state_file": "/var/lib/hermes/state.json",         optional: keep series across restarts
//      "state_interval_seconds": 10,                       optional: between state writes
//      "max_series": 10000, "ttl_seconds": 0,              optional defaults for every metric
//      "max_memory_bytes": "64MiB"}                        optional memory budget (HERMES_MAX_MEMORY wins)
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
// invalid_label_value, invalid_value, invalid_operation, series_limit, too_large,
// unsupported_type, memory_limit, forbidden_source (a UDP datagram from outside
// udp_allow, never parsed). malformed_json, too_large and forbidden_source count whole
// datagrams.
//
// A datagram is JSON when its first byte that is not white space is {, or is [ and the
// rest goes on as a JSON array could: nothing more, ] and only white space after it, or a
// first element that opens with {, [ or ", or is true, false, null or a number ended by
// white space, ',', ] or the datagram's end. So a batch broken further on
// ([{"metric_name": ... cut short, [1, 2) is still malformed_json, and [], [ ], ["x"],
// [null] malformed_sample. Any other datagram holds StatsD lines (below), such as
// [env=prod]jobs:1|c.
//
// ---- StatsD ---------------------------------------------------------------------------
//
// A datagram that is not JSON (see Datagrams) holds StatsD lines, one sample each
// (Options::statsd, HERMES_STATSD=off, turns this off: every datagram is then JSON):
//
//     jobs:1|c|@0.5|#queue:mail     counter jobs_total{queue="mail"} += 1 / 0.5
//     depth:7|g   depth:+2|g        gauge set to 7; a sign moves it
//     latency:250|ms|#route:/       histogram or summary observes 0.25 (seconds)
//     sizes:3:4:5|h   sizes:3|d     each value observed; |@r counts it int(1/r) times
//     jobs,queue=mail:1|c   jobs#queue=mail:1|c   jobs[queue=mail]:1|c   tags in the name
//     [queue=mail]jobs:1|c          SignalFx tags first, as statsd_exporter reads them
//
// With statsd_exporter's meanings: names escape [^a-zA-Z0-9_:] to '_'; a counter X_total
// also takes lines named X; tags must be exactly the metric's labels. Fields after the
// type come in any order; DogStatsD's |c:, |T, |e: and |card: are checked and ignored.
// Sets, events and service checks are unsupported_type. A bad line spoils no other.
// Where both could be meant, JSON wins: a datagram whose first line opens with SignalFx
// tags that could start JSON ([{a=b}]x:1|c, ["k"=v]x:1|c, [1]x:1|c) is malformed_json,
// where statsd_exporter would read the tags with {, [ and " escaped to _.
//
// ---- HTTP -----------------------------------------------------------------------------
//
// HTTP/1.0, one request per connection:
//     GET|HEAD /metrics          200, Prometheus text format 0.0.4, or OpenMetrics 1.0.0 or
//                                Prometheus' delimited protobuf format (the one with native
//                                histograms) when the Accept header prefers it and Options allow it
//     GET|HEAD /-/healthy, /-/ready, /    200, short text
//     other paths 404; other methods 405 (Allow: GET, HEAD); a malformed request 400;
//     a request head over HERMES_MAX_REQUEST_HEAD 431; a major version other than 1, 505;
//     503 with Retry-After when every connection is busy, or when more /metrics bodies
//     are in flight at once than the memory budget keeps room for (HERMES_SCRAPE_BODIES).
// Empty lines before the request line are ignored. Rendering only reads the registry.
//     PUT|POST|DELETE /metrics/job/<JOB>{/<NAME>/<VALUE>}   the Pushgateway API (below)
//
// ---- Pushgateway API --------------------------------------------------------------------
//
// Options::push (HERMES_PUSH, on by default) takes pushes as Pushgateway 1.5.1 answers
// them: PUT replaces a group's families, POST those of the same name, DELETE removes the
// group (202); a name suffixed @base64 carries a base64url value; the body is the text
// format 0.0.4, or the delimited protobuf format (native histograms too) when the
// Content-Type names it; one that does not parse gets 400 with Pushgateway's message. Each
// sample carries the grouping labels and instance=""; each group its push_time_seconds
// and push_failure_time_seconds. A push with timestamps, or one that would make /metrics
// inconsistent (a name of the config's or Hermes' own, another type than another
// group's, two samples with the same labels) is 400 and changes nothing but the failure
// time. Each group takes its bytes and its room in the bodies from the memory budget: a
// push with no room, or one group past max_push_groups, is 507. A body over
// max_push_bytes is 413, one without Content-Length 411, a Content-Encoding 415. Groups
// not pushed for push_ttl_seconds disappear; push_token_file guards pushes (401).
//
// Server::reload() (SIGHUP in the daemon) takes the config file again; an optional unix
// datagram socket (Options::unix_socket_path) takes samples beside UDP.
//
// ---- Memory ---------------------------------------------------------------------------
//
// One budget (Options::max_memory, 64 MiB by default) bounds what input can grow: fixed
// buffers are taken at start; a new series takes its worst case (worst_case_series_bytes)
// and room for its lines in each of HERMES_SCRAPE_BODIES /metrics bodies
// (worst_case_body_bytes), or is refused as memory_limit; bodies take from that room
// and nothing else does. So after every step
//
//     buffers + series + (each body in flight, at its size or the bound if more)
//                      + (the bound for each body not yet in flight) <= budget
//
// where the bound is the most one body of every series can take (MemoryBudget).
//
// and pressure costs new series, never a scrape: while no more bodies are in flight at
// once than HERMES_SCRAPE_BODIES (scrapes that come while a body is being sent share it),
// /metrics is never 503 for lack of memory. A summary's windows and a native histogram's
// buckets never grow past the worst case their series took. The state file's text takes
// its memory part by part as it grows (a write with no room fails, and is tried again),
// and the file read at start its size. The config's metrics without labels and every
// family's room must fit at start and at each reload (ConfigError otherwise).
//
// ---- State across restarts ----------------------------------------------------------------
//
// With Options::state_file (HERMES_STATE_FILE, "state_file") a Server restores every
// series from that file at start, writes it every state_interval_seconds when something
// changed, and once more when run() ends, after the samples still queued on its sockets.
// A write goes to a new file in the same directory, fsynced and renamed over the old one,
// on a thread of its own. A file that is not state is renamed aside, never deleted; a
// series whose metric is gone or changed shape is skipped and logged. A path with a
// directory missing, or a file where a directory should be, holds no state yet: the
// server starts empty, and counts and logs each write that fails until it is fixed.
//
// ---- Time -------------------------------------------------------------------------------------
//
// ttl_seconds, summary windows, log rate limits and HTTP timeouts count on the monotonic
// clock; the wall clock serves only the timestamps shown (_created, *_timestamp_seconds).
//
// ---- Access control -------------------------------------------------------------------
//
// Options::udp_allow ("udp_allow" in the config, HERMES_UDP_ALLOW) and http_allow
// ("http_allow", HERMES_HTTP_ALLOW) are lists of CIDR ranges, IPv4 or IPv6; a bare address
// is a /32 or a /128, and an IPv4 range also matches the same senders written as
// IPv4-mapped IPv6 (::ffff:a.b.c.d), as a dual-stack socket sees them. Empty: everyone.
// A UDP datagram from elsewhere is dropped unparsed and counted as forbidden_source; the
// unix socket is not filtered. An HTTP client from elsewhere has its request read and
// answered 403. With Options::http_token_file (HERMES_HTTP_TOKEN_FILE), /metrics and /
// answer only requests carrying "Authorization: Bearer <the file's token>" (compared in
// constant time), others get 401 with "WWW-Authenticate: Bearer"; /-/healthy and /-/ready
// stay open. The file is read at start (missing, empty or unfit: an error) and on each
// reload (then a bad file keeps the token in force and the reload counts as failed).
// Allow lists change only at restart. None of this is a substitute for TLS or a
// firewall: see the README's security section.
//
// ---- Limits (define before including to change) ------------------------------------------
//
//     HERMES_MAX_DATAGRAM_SIZE      8192   bytes; a longer datagram is rejected as too_large
//     HERMES_MAX_JSON_DEPTH           16   nested arrays and objects in a datagram or config
//     HERMES_MAX_CONFIG_SIZE     1048576   bytes of config file
//     HERMES_MAX_REQUEST_HEAD       8192   bytes of HTTP request line and headers
//     HERMES_MAX_CONNECTIONS          64   open HTTP connections
//     HERMES_MAX_REFUSED_CONNECTIONS  16   more connections, read and answered 503; beyond, closed
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
//     HERMES_LISTEN_BACKLOG          128   pending TCP connections the kernel queues for accept
//     HERMES_DEFAULT_MAX_MEMORY     64 MiB the memory budget unless HERMES_MAX_MEMORY or the config sets one
//     HERMES_SHARED_BODY_MS         1000   scrapes this close together share one /metrics body
//     HERMES_SCRAPE_BODIES             2   /metrics bodies the memory budget always keeps room for
//     HERMES_MAX_NATIVE_BUCKETS    10000   the largest native_max_buckets a config may set
//     HERMES_STATE_INTERVAL_S         10   default seconds between state writes (state_interval_seconds)
//     HERMES_MAX_STATE_SIZE   1073741824   bytes of state file read at start; a larger one is set aside
//     HERMES_STATE_PAUSE_STRIDE     1024   series written to the state between looks at the sockets
//     HERMES_MAX_TOKEN_SIZE         1024   bytes of bearer token in HERMES_HTTP_TOKEN_FILE
//     HERMES_MAX_PUSH_BYTES      4194304   default largest push body (Options::max_push_bytes)
//     HERMES_DEFAULT_MAX_PUSH_GROUPS 10000 pushed groups unless max_push_groups says otherwise

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
#ifndef HERMES_MAX_REFUSED_CONNECTIONS
#define HERMES_MAX_REFUSED_CONNECTIONS 16 // beyond those, connections read and answered 503; more are closed
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
#ifndef HERMES_DEFAULT_MAX_MEMORY
#define HERMES_DEFAULT_MAX_MEMORY (64 * 1024 * 1024) // the memory budget unless HERMES_MAX_MEMORY or the config sets one
#endif
#ifndef HERMES_SHARED_BODY_MS
#define HERMES_SHARED_BODY_MS 1000 // scrapes this close together share one /metrics body while it is sent
#endif
#ifndef HERMES_SCRAPE_BODIES
#define HERMES_SCRAPE_BODIES 2 // /metrics bodies the budget always has room for: one being sent, the next
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
#ifndef HERMES_MAX_NATIVE_BUCKETS
#define HERMES_MAX_NATIVE_BUCKETS 10000 // the largest native_max_buckets a config may ask for
#endif
#ifndef HERMES_MAX_TOKEN_SIZE
#define HERMES_MAX_TOKEN_SIZE 1024 // bytes of bearer token in HERMES_HTTP_TOKEN_FILE
#endif
#ifndef HERMES_MAX_PUSH_BYTES
#define HERMES_MAX_PUSH_BYTES (4 * 1024 * 1024) // default largest push body; HERMES_MAX_PUSH_BYTES in the environment wins
#endif
#ifndef HERMES_DEFAULT_MAX_PUSH_GROUPS
#define HERMES_DEFAULT_MAX_PUSH_GROUPS 10000 // pushed groups unless max_push_groups says otherwise
#endif

// Each limit is checked here, so that a wrong value stops the build with what to do
// instead of a daemon that loops for ever or refuses every datagram.
static_assert(HERMES_MAX_DATAGRAM_SIZE >= 64 && HERMES_MAX_DATAGRAM_SIZE <= 65536,
              "HERMES_MAX_DATAGRAM_SIZE must be between 64 and 65536 bytes");
static_assert(HERMES_MAX_JSON_DEPTH >= 4, "HERMES_MAX_JSON_DEPTH must be at least 4: a batch of samples nests 4 levels deep");
static_assert(HERMES_MAX_CONFIG_SIZE >= 1024, "HERMES_MAX_CONFIG_SIZE must be at least 1024 bytes");
static_assert(HERMES_MAX_REQUEST_HEAD >= 256, "HERMES_MAX_REQUEST_HEAD must be at least 256 bytes");
static_assert(HERMES_MAX_CONNECTIONS >= 1 && HERMES_MAX_CONNECTIONS <= 65536,
              "HERMES_MAX_CONNECTIONS must be between 1 and 65536");
static_assert(HERMES_MAX_REFUSED_CONNECTIONS >= 0, "HERMES_MAX_REFUSED_CONNECTIONS must not be negative");
static_assert(HERMES_HTTP_READ_TIMEOUT_MS >= 1, "HERMES_HTTP_READ_TIMEOUT_MS must be at least 1 ms");
static_assert(HERMES_HTTP_WRITE_TIMEOUT_MS >= 1, "HERMES_HTTP_WRITE_TIMEOUT_MS must be at least 1 ms");
static_assert(HERMES_HTTP_LINGER_MS >= 0, "HERMES_HTTP_LINGER_MS must not be negative");
static_assert(HERMES_RECEIVE_BATCH >= 1 && HERMES_RECEIVE_BATCH <= 1024, "HERMES_RECEIVE_BATCH must be between 1 and 1024");
static_assert(HERMES_UDP_RECEIVE_BUFFER >= 4096, "HERMES_UDP_RECEIVE_BUFFER must be at least 4096 bytes");
static_assert(HERMES_DATAGRAMS_PER_STEP >= HERMES_RECEIVE_BATCH,
              "HERMES_DATAGRAMS_PER_STEP must be at least HERMES_RECEIVE_BATCH, or a step reads nothing");
static_assert(HERMES_RENDER_PAUSE_STRIDE >= 1, "HERMES_RENDER_PAUSE_STRIDE must be at least 1 series");
static_assert(HERMES_RENDER_HOLD_BYTES >= 0, "HERMES_RENDER_HOLD_BYTES must not be negative (0: hold nothing)");
static_assert(HERMES_POLL_INTERVAL_MS >= 1, "HERMES_POLL_INTERVAL_MS must be at least 1 ms");
static_assert(HERMES_REJECT_LOG_INTERVAL_S >= 1, "HERMES_REJECT_LOG_INTERVAL_S must be at least 1 second");
static_assert(HERMES_DEFAULT_MAX_SERIES >= 1 && HERMES_DEFAULT_MAX_SERIES <= HERMES_MAX_SERIES_LIMIT,
              "HERMES_DEFAULT_MAX_SERIES must be between 1 and HERMES_MAX_SERIES_LIMIT");
static_assert(HERMES_MAX_SERIES_LIMIT >= 1, "HERMES_MAX_SERIES_LIMIT must be at least 1");
static_assert(HERMES_LISTEN_BACKLOG >= 1, "HERMES_LISTEN_BACKLOG must be at least 1");
static_assert(HERMES_DEFAULT_MAX_MEMORY >= 8 * 1024 * 1024, "HERMES_DEFAULT_MAX_MEMORY must be at least 8 MiB");
static_assert(HERMES_SHARED_BODY_MS >= 0, "HERMES_SHARED_BODY_MS must not be negative (0: every scrape renders)");
static_assert(HERMES_SCRAPE_BODIES >= 1 && HERMES_SCRAPE_BODIES <= 16,
              "HERMES_SCRAPE_BODIES must be between 1 and 16: room for at least the body being sent");
static_assert(HERMES_MAX_NATIVE_BUCKETS >= 160 && HERMES_MAX_NATIVE_BUCKETS <= 1000000,
              "HERMES_MAX_NATIVE_BUCKETS must be between 160 (the default native_max_buckets) and 1000000");
static_assert(HERMES_STATE_INTERVAL_S >= 1, "HERMES_STATE_INTERVAL_S must be at least 1 second");
static_assert(HERMES_MAX_STATE_SIZE >= 65536, "HERMES_MAX_STATE_SIZE must be at least 65536 bytes");
static_assert(HERMES_STATE_PAUSE_STRIDE >= 1, "HERMES_STATE_PAUSE_STRIDE must be at least 1 series");
static_assert(HERMES_MAX_PUSH_BYTES >= 1024, "HERMES_MAX_PUSH_BYTES must be at least 1024 bytes");
static_assert(HERMES_DEFAULT_MAX_PUSH_GROUPS >= 1, "HERMES_DEFAULT_MAX_PUSH_GROUPS must be at least 1");
static_assert(HERMES_MAX_TOKEN_SIZE >= 16 && HERMES_MAX_TOKEN_SIZE <= HERMES_MAX_REQUEST_HEAD - 64,
              "HERMES_MAX_TOKEN_SIZE must be at least 16 bytes and fit a request head (HERMES_MAX_REQUEST_HEAD - 64)");

// ===== INCLUDES ===========================================================================

// Quoted, so that a copy of picojson.h beside this header is found first, and an
// installed one (<picojson.h>) otherwise.
#include "picojson.h"

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
#include <limits>
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
#include <linux/sock_diag.h>
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

// ===== PUBLIC API: ACCESS =================================================================

// A CIDR range, held as an IPv6 network and mask in two 64-bit halves, so that a check
// is two XORs and two ANDs. An IPv4 range is held as its IPv4-mapped IPv6 range
// (a.b.c.d/n as ::ffff:a.b.c.d/96+n), and an IPv4 sender is checked as its mapped address.
struct AddressRange {
  std::uint64_t high = 0, low = 0;           // the network; bits past the prefix are zero
  std::uint64_t high_mask = 0, low_mask = 0; // the prefix's bits set
  bool contains(std::uint64_t address_high, std::uint64_t address_low) const {
    return (((address_high ^ high) & high_mask) | ((address_low ^ low) & low_mask)) == 0; // no branch
  }
};

// Reads "10.0.0.0/8", "2001:db8::/32", or a bare address ("192.0.2.7" is a /32, "::1" a
// /128). Returns "" and sets `range`, or says what is wrong with the text. Bits set past
// the prefix are an error: "10.0.0.1/8" is more likely a mistake than 10.0.0.0/8 meant.
inline std::string parse_address_range(std::string_view text, AddressRange &range);

// The addresses allowed to send samples or to scrape. Empty allows everyone. It keeps
// what each range says of IPv4 senders as a 32-bit network and mask, in blocks of four
// that the compiler checks with a few vector instructions, and apart from them the
// ranges that hold IPv6 addresses other than IPv4-mapped ones.
class AllowList {
public:
  void add(const AddressRange &range, std::string text);
  bool empty() const { return ranges_.empty(); }
  const std::vector<std::string> &texts() const { return texts_; } // as written, for logs
  // Whether a sender may: always when the list is empty; else an AF_INET or AF_INET6
  // address in one of the ranges. Allocates nothing.
  bool allows(const sockaddr *address, socklen_t length) const {
    return ranges_.empty() || listed(address, length);
  }

private:
  bool listed(const sockaddr *address, socklen_t length) const;
  bool listed_v4(std::uint32_t address) const;
  static constexpr std::size_t v4_block = 4; // 128 bits of networks or masks
  std::vector<AddressRange> ranges_;         // as given
  std::vector<AddressRange> v6_ranges_;      // those that hold other IPv6 addresses than IPv4-mapped ones
  std::vector<std::uint32_t> v4_networks_, v4_masks_; // of those that hold IPv4 addresses; whole blocks
  std::size_t v4_count_ = 0;                          // of them, the rest of the last block are copies
  std::vector<std::string> texts_;
};

// ===== PUBLIC API: CONFIG =================================================================

enum class MetricType { counter, gauge, histogram, summary, count_ };
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
  std::vector<double> buckets;                        // histograms: upper bounds, strictly increasing; may be
                                                      // empty when native
  bool native = false;                                // histograms: keep a native (sparse, exponential) histogram
  double native_bucket_factor = 1.1;                  // its buckets grow by at most this factor: the schema
  std::size_t native_max_buckets = 160;               // more buckets halve the resolution (schema minus one)
  double native_zero_threshold = 0x1p-128;            // observations this close to 0 count in the zero bucket
  std::vector<std::pair<double, double>> objectives;  // summaries: quantile and its allowed rank error
  double max_age_seconds = 600;                       // summaries: quantiles cover this window
};

struct Config {
  std::string service_name;
  std::vector<MetricConfig> metrics;       // in the order of the file
  std::string listen_address;              // UDP address from the file; empty when not set
  std::optional<std::uint16_t> listen_port; // UDP port from the file
  std::optional<std::size_t> max_memory_bytes; // the memory budget from the file
  std::string state_file;                   // "state_file": where state is kept; empty when not set
  std::optional<double> state_interval_seconds; // "state_interval_seconds"
  AllowList udp_allow;                      // "udp_allow": who may send; empty: everyone
  AllowList http_allow;                     // "http_allow": who may use HTTP; empty: everyone
  std::optional<std::size_t> max_push_groups; // "max_push_groups"
  std::optional<double> push_ttl_seconds;     // "push_ttl_seconds"
};

// What a series of `metric` may cost at most, in bytes of the memory budget, besides its
// label values: a summary's windows at their fullest. --check-config shows it.
inline std::size_t worst_case_series_bytes(const MetricConfig &metric);
// What a series of `metric` may add to one /metrics body, in the format that writes the
// most of it, with label values of `label_value_bytes` bytes that need no escaping. The
// budget keeps this room for every series in each body a server keeps in flight.
inline std::size_t worst_case_body_bytes(const MetricConfig &metric, std::size_t label_value_bytes = 15);
// What a series of `metric` may add to the state file's text at most, with label values
// of that length: its summary windows and native buckets at their fullest. While a
// write's text is made, it holds up to half as much again.
inline std::size_t worst_case_state_bytes(const MetricConfig &metric, std::size_t label_value_bytes = 15);

// Parses and validates a config; `origin` (the file name) starts every error message.
inline Config parse_config(std::string_view json, const std::string &origin);
// Reads, parses and validates a config file. Throws ConfigError.
inline Config load_config(const std::string &path);
// Naming advice that `promtool check metrics` would give on the configured metrics, as
// "name: problem" lines; advice, not errors.
inline std::vector<std::string> lint_config(const Config &config);

// ===== PUBLIC API: OPTIONS ================================================================

enum class LogLevel { debug, info, warn, error, count_ };
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
  bool protobuf = true;    // serve the protobuf format to scrapers that prefer it
  std::string config_path; // the file Server::reload() reads again; empty: no reloads
  std::string unix_socket_path; // a unix datagram socket that takes samples too; empty: none
  unsigned unix_socket_mode = 0660; // its file mode, so that only its group may push
  bool statsd = true; // datagrams that are not JSON hold StatsD lines; off: they are malformed_json
  std::size_t max_memory = HERMES_DEFAULT_MAX_MEMORY; // the memory budget, in bytes
  std::string state_file; // where the series are kept across restarts; empty: nowhere
  double state_interval_seconds = HERMES_STATE_INTERVAL_S; // between writes, each only after a change
  AllowList udp_allow;  // UDP senders outside these ranges are dropped (forbidden_source); empty: everyone
  AllowList http_allow; // HTTP clients outside these ranges are answered 403; empty: everyone
  std::string http_token_file; // a file holding the bearer token /metrics and / ask for; empty: none
  bool push = true;            // take pushes over the Pushgateway API on the HTTP port
  std::size_t max_push_bytes = HERMES_MAX_PUSH_BYTES; // a longer push body is answered 413
  std::size_t max_push_groups = HERMES_DEFAULT_MAX_PUSH_GROUPS; // a push for one group more is answered 507
  double push_ttl_seconds = 0;  // a group not pushed for this long disappears; 0: never
  std::string push_token_file;  // a file holding the bearer token pushes and deletes must carry; empty: none
  bool push_admin = false;      // PUT /api/v1/admin/wipe deletes every group
  LogSink log_sink;
};

// "67108864", "64MiB", "512 KiB", "1GiB": bytes, or with a binary suffix.
inline std::optional<std::size_t> parse_bytes(std::string_view text);

// Looks a variable up, as std::getenv does: nullptr when unset.
using Environment = std::function<const char *(const char *name)>;

// Options from the environment over the config file's listen_* keys over the defaults:
// HERMES_UDP_ADDRESS (or LISTEN_ADDRESS), HERMES_UDP_PORT (or LISTEN_PORT),
// HERMES_HTTP_ADDRESS, HERMES_HTTP_PORT, HERMES_LOG_LEVEL (or LOG_LEVEL), HERMES_OPENMETRICS, HERMES_PROTOBUF,
// HERMES_UNIX_SOCKET and HERMES_UNIX_SOCKET_MODE (octal), HERMES_UDP_RECEIVE_BUFFER (bytes),
// HERMES_STATSD (on or off), HERMES_MAX_MEMORY (bytes),
// HERMES_STATE_FILE and HERMES_STATE_INTERVAL (seconds, over the config's state_* keys),
// HERMES_UDP_ALLOW and HERMES_HTTP_ALLOW (comma-separated CIDR ranges, over the config's
// udp_allow and http_allow), HERMES_HTTP_TOKEN_FILE.
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
  unsupported_type,    // a StatsD set, event or service check
  memory_limit,        // a new series that the memory budget has no room for
  forbidden_source,    // a UDP datagram from an address outside Options::udp_allow, not parsed
  count_
};
constexpr std::size_t reject_reason_count = static_cast<std::size_t>(Reject::count_);
inline const char *to_string(Reject reason);

// The two formats a datagram may speak: JSON samples, or StatsD lines.
enum class Wire { json, statsd, count_ };
constexpr std::size_t wire_count = static_cast<std::size_t>(Wire::count_);
inline const char *to_string(Wire wire);

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

// ===== PUBLIC API: MEMORY BUDGET ==========================================================

// The bytes Hermes may hold for what input can grow: series and their summary windows,
// /metrics bodies, HTTP connections, datagrams held during a render, the state file's
// text. Each is taken before it is allocated and given back when it is freed; what would
// cross the limit is refused. The binary and the C and C++ libraries are outside it.
//
// The rule that keeps scrapes answered: every series takes its own bytes and, besides,
// room for its lines in each of the bodies a server keeps in flight (`bodies`). Bodies
// are taken from that room, other buffers never are, so that after every step
//
//     held + (each body in flight, at its size or the bound if more)
//          + (the bound for each of the `bodies` not in flight) <= limit
//
// where the bound is the most one body of every existing series can take. A new series
// that does not fit with its room is refused; while fewer than `bodies` are in flight, a
// body of the bound always fits, whatever came before it: series that expire only
// lower the bound, and a body made before them keeps its place.
class MemoryBudget {
public:
  // `bodies`: the /metrics bodies to keep room for; 0 (a registry without a server) keeps none.
  explicit MemoryBudget(std::size_t limit_bytes = SIZE_MAX, std::size_t bodies = 0) : limit_(limit_bytes), bodies_(bodies) {}

  // A buffer: takes `bytes`, or nothing and false when they would cross the limit or
  // eat the room kept for bodies.
  bool take(std::size_t bytes) { return fits(held_ + bytes, body_bound_) && (held_ += bytes, true); }
  void give_back(std::size_t bytes) { held_ -= std::min(bytes, held_); }

  // A series: its own bytes, and `body_bytes` more room in each body; false when they
  // do not fit.
  bool take_for_series(std::size_t own_bytes, std::size_t body_bytes) {
    if (!fits(held_ + own_bytes, body_bound_ + body_bytes)) return false;
    held_ += own_bytes, body_bound_ += body_bytes;
    return true;
  }
  void give_back_series(std::size_t own_bytes, std::size_t body_bytes) {
    held_ -= std::min(own_bytes, held_);
    body_bound_ -= std::min(body_bytes, body_bound_);
  }
  // Whether series could be exchanged: given back, then others taken (a reload).
  bool can_exchange(std::size_t own_freed, std::size_t body_freed, std::size_t own_wanted, std::size_t body_wanted) const {
    const std::size_t held = held_ - std::min(own_freed, held_) + own_wanted;
    return fits(held, body_bound_ - std::min(body_freed, body_bound_) + body_wanted);
  }

  // A /metrics body that holds `from` bytes (0: a new one) and would hold `to` (0: it is
  // freed). Growing takes from the room kept for bodies, and beyond it only what nothing
  // else holds; false, with nothing changed, when there is no room.
  bool resize_body(std::size_t from, std::size_t to) {
    const auto at = std::find(bodies_held_.begin(), bodies_held_.end(), from);
    if (from == 0) bodies_held_.push_back(to);
    else *at = to;
    if (to > from && committed() > limit_) {
      if (from == 0) bodies_held_.pop_back();
      else *at = from;
      return false;
    }
    if (to == 0) bodies_held_.erase(std::find(bodies_held_.begin(), bodies_held_.end(), std::size_t{0}));
    in_bodies_ = in_bodies_ - from + to;
    return true;
  }

  std::size_t limit() const { return limit_; }
  std::size_t used() const { return held_ + in_bodies_; }          // what is taken: buffers, series and bodies
  std::size_t body_bound() const { return body_bound_; }          // the most one body of every series can take
  std::size_t body_room() const { return bodies_ * body_bound_; } // kept for bodies, taken or not
  std::size_t bodies() const { return bodies_; }
  std::size_t committed() const { return committed_with(held_, body_bound_); } // what the rule adds up
  // The rule above; true after every step.
  bool keeps_room() const { return committed() <= limit_; }

private:
  // Buffers and series, with each body in flight at its size or the bound, whichever is
  // more (a body made before series expired may be larger than a body now), and the
  // bound for each body not in flight yet.
  std::size_t committed_with(std::size_t held, std::size_t bound) const {
    std::size_t total = held, slots = bodies_;
    for (const std::size_t body : bodies_held_) {
      total += std::max(body, bound);
      slots -= slots > 0 ? 1 : 0;
    }
    return total + slots * bound;
  }
  bool fits(std::size_t held, std::size_t bound) const { return committed_with(held, bound) <= limit_; }

  std::size_t limit_;
  std::size_t bodies_;                    // bodies kept room for
  std::size_t held_ = 0;                  // buffers and series
  std::size_t body_bound_ = 0;            // one body of every series, at most
  std::size_t in_bodies_ = 0;             // bodies in flight, in all
  std::vector<std::size_t> bodies_held_;  // each body in flight; a few
};

// ===== PUBLIC API: REGISTRY ===============================================================

// Declared here so that Registry can hold them; defined in the detail sections below.
namespace detail {
struct Metric;
struct Reading;
struct ReadSample;
struct StatsdReading;
class Renderer;
class StateCodec;
struct SeriesCost;
} // namespace detail

// The metrics of a config and their series. Not thread-safe: one owner applies samples
// and sweeps; any number of readers may render a Registry that nobody changes meanwhile.
class Registry {
public:
  // Series are taken from `budget` (shared with a server's other buffers), each with its
  // room in the /metrics bodies the budget keeps room for; without one, only max_series
  // bounds them. Throws ConfigError when the budget has no room for the series of the
  // metrics without labels and the room of every family.
  explicit Registry(const Config &config, std::shared_ptr<MemoryBudget> budget = nullptr);
  Registry(Registry &&) noexcept;
  Registry &operator=(Registry &&) noexcept;
  ~Registry();

  // Parses one datagram and applies every sample in it, at `now`. Never throws on bad input.
  IngestResult ingest(std::string_view datagram, Now now = Now::current());
  // Counts a datagram rejected before parsing, such as one that was too large.
  void count_rejected(Reject reason);
  // Off: every datagram is read as JSON, so StatsD lines are malformed_json. On by default.
  void accept_statsd(bool on) { statsd_ = on; }
  // Takes a new config. A metric whose series have the same shape as before (type,
  // labels, buckets, objectives, max_age_seconds, the native_* settings) keeps them; a changed one starts
  // afresh; one no longer configured disappears. The counts of samples go on. Throws
  // ConfigError, having changed nothing, when the budget has no room for what the new
  // config makes.
  struct ReloadSummary {
    std::size_t kept = 0, fresh = 0, removed = 0; // metrics
  };
  ReloadSummary reload(const Config &config);
  // Brings the registry up to `monotonic_now`: drops the labelled series whose metric
  // has a ttl_seconds and that were not pushed for that long, and moves summary windows
  // on, forgetting observations older than max_age_seconds. Returns how many series it
  // dropped. A series without labels stays. Call it before rendering, which only reads.
  std::size_t expire(double monotonic_now = monotonic_seconds());

  // Writes every series over `out` as the state file's JSON text (format version 2,
  // see README "State across restarts"): values, buckets, sums, counts, summary windows,
  // _created, each series' age since its last push, and each metric's shape. `pause`,
  // when given, runs after every HERMES_STATE_PAUSE_STRIDE series and must not change
  // the registry.
  void save_state(std::string &out, Now now, const std::function<void()> &pause = {}) const;
  // The most bytes save_state() would write now: what a server takes from its budget first.
  std::size_t state_size_bound() const;
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
  // Each configured metric, by index in name order (0 to metric_count() - 1): its live
  // series and its max_series, so that an operator sees which one is full.
  struct MetricFill {
    std::string_view name;
    std::size_t series = 0, max_series = 0;
  };
  std::size_t metric_count() const;
  MetricFill metric_fill(std::size_t index) const;
  std::uint64_t accepted() const { return accepted_; }
  std::uint64_t expired() const { return expired_; } // series dropped by expire(), ever
  std::uint64_t rejected(Reject reason) const { return rejected_[static_cast<std::size_t>(reason)]; }
  // Samples that arrived in each format, applied or not; a too_large datagram is in neither.
  std::uint64_t received(Wire wire) const { return received_[static_cast<std::size_t>(wire)]; }

private:
  friend class detail::Renderer;
  friend class detail::StateCodec;
  void ingest_json(std::string_view datagram, Now now, IngestResult &result);
  void ingest_statsd(std::string_view datagram, Now now, IngestResult &result);
  void apply_statsd(detail::StatsdReading &reading, Now now, IngestResult &result);
  detail::Metric *find_statsd(detail::StatsdReading &reading);
  void tally(IngestResult &result, std::optional<Reject> reason, std::size_t samples = 1);
  std::optional<Reject> apply(const detail::ReadSample &sample, Now now);
  detail::Metric *find(std::string_view name);
  const detail::Metric *find(std::string_view name) const;
  void release(detail::Metric &metric);
  void give_back_budget();
  detail::SeriesCost standing_cost() const;
  std::string no_room_for(const detail::SeriesCost &wanted) const;

  std::string service_name_;
  std::vector<detail::Metric> metrics_; // sorted by name
  std::shared_ptr<MemoryBudget> budget_;     // series are taken from it, and given back
  std::unique_ptr<detail::Reading> reading_; // buffers that datagrams are read into, reused
  std::unique_ptr<detail::StatsdReading> statsd_reading_; // the same for StatsD lines
  bool statsd_ = true;
  std::size_t fixed_body_bytes_ = 0; // the families' heads and Hermes' own families, in one body at most
  bool holds_budget_ = false;        // what it took is still to be given back
  std::uint64_t accepted_ = 0;
  std::uint64_t expired_ = 0;
  std::uint64_t changes_ = 0;
  std::array<std::uint64_t, reject_reason_count> rejected_{};
  std::array<std::uint64_t, wire_count> received_{};
};

// ===== PUBLIC API: FORMATTING =============================================================

// The exposition formats /metrics speaks.
enum class Format {
  text,        // Prometheus text format 0.0.4
  openmetrics, // OpenMetrics 1.0.0: counters named *_total become a family without the
               // suffix and gain *_created; other counters are typed unknown, as
               // Prometheus' Go client does; the body ends with # EOF
  protobuf,    // Prometheus' protobuf format: io.prometheus.client.MetricFamily messages,
               // each after its varint length; the one format with native histograms
               // (and created_timestamp where OpenMetrics has *_created)
  count_
};
inline const char *content_type(Format format);

// The format an Accept header prefers by its q values, among text and those allowed;
// a tie goes to text, then OpenMetrics. Protobuf is the media type
// application/vnd.google.protobuf with proto=io.prometheus.client.MetricFamily and
// encoding=delimited.
inline Format negotiate_format(std::string_view accept, bool openmetrics = true, bool protobuf = true);

// The exposition of a registry: every configured metric and the registry's own figures
// (hermes_build_info, hermes_samples_*, hermes_series*, and per configured metric
// hermes_metric_series and hermes_metric_max_series), each family once, sorted by name.
// It only reads the registry; call Registry::expire first for up-to-date ttl and summary
// windows. A Server adds its own figures: see Server::render.
inline std::string render_metrics(const Registry &registry, Format format = Format::text);
// The same written over `out`, whose memory is reused.
inline void render_metrics(std::string &out, const Registry &registry, Format format);

// ===== PUBLIC API: SERVER =================================================================

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
  std::map<std::pair<std::string, int>, std::uint64_t> push_requests; // Pushgateway API requests by method and status, from 0
  double push_groups = 0;      // groups pushed over the Pushgateway API
  double push_group_bytes = 0; // what they hold of the memory budget
  double memory_budget_bytes = 0;             // the limit of the memory budget
  double memory_used_bytes = 0;               // what of it is taken
  double memory_committed_bytes = 0;          // taken, or kept for the /metrics bodies of the series that exist
  std::uint64_t state_writes_succeeded = 0;
  std::uint64_t state_writes_failed = 0;
  double state_last_write_seconds = 0; // wall clock of the last write that succeeded; 0: none yet
  std::uint64_t state_restored_series = 0;
  ServerStats();
};

// Owns the UDP and HTTP sockets and the registry. Single-threaded: drive it from one
// thread. Movable, not copyable.
class Server {
public:
  // Binds both sockets, reads Options::http_token_file, logs where it listens, and
  // restores Options::state_file. Throws SocketError; ConfigError when the token file is
  // missing, empty or unfit; StateError when a state file that is not state cannot be
  // set aside.
  Server(const Config &config, Options options);
  Server(Server &&) noexcept;
  Server &operator=(Server &&) noexcept;
  ~Server();

  // Waits up to timeout_ms for traffic and handles what arrived.
  void poll_once(int timeout_ms);
  // Steps until `stop` is set; sees it within HERMES_POLL_INTERVAL_MS. When `reload` is
  // given, each time it is set the server clears it and reloads. With a state file, it
  // then applies the samples still queued on the sockets and writes the state.
  void run(const std::atomic<bool> &stop, std::atomic<bool> *reload = nullptr);
  // Reads Options::config_path again and takes it (Registry::reload), and the token
  // file; one that fails to load is logged and the reload counted as failed, and what
  // is in force stays. Listen addresses and ports, allow lists, the state file and its
  // interval change only at restart.
  bool reload();

  std::uint16_t udp_port() const;
  std::uint16_t http_port() const;
  std::string udp_endpoint() const; // as bound: "0.0.0.0:7789", "[::1]:7789"
  std::string http_endpoint() const;
  const Registry &registry() const;
  ServerStats stats() const;
  // The /metrics body as of now: the registry's and the daemon's figures, and the
  // process_* metrics of the standard client libraries (those /proc can tell).
  std::string render(Format format = Format::text);

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ===== PUBLIC API: CLIENT =================================================================

using Labels = std::vector<std::pair<std::string, std::string>>;

// Samples gathered to go out in one datagram, as a JSON array. Keep a batch below
// HERMES_MAX_DATAGRAM_SIZE bytes (size_bytes()): a longer one is rejected whole. A
// value that is not finite is left out: JSON cannot carry it.
class Batch {
public:
  Batch &increment_counter(std::string_view metric, const Labels &labels, double by = 1);
  Batch &set_gauge(std::string_view metric, const Labels &labels, double value);
  Batch &increment_gauge(std::string_view metric, const Labels &labels, double by = 1);
  Batch &decrement_gauge(std::string_view metric, const Labels &labels, double by = 1);
  Batch &observe(std::string_view metric, const Labels &labels, double value); // histograms, summaries

  std::size_t size() const { return samples_; }
  std::size_t size_bytes() const { return json_.size() + 1; }
  std::string json() const { return json_ + ']'; }
  void clear() { json_ = "[", samples_ = 0; }

private:
  Batch &add(std::string_view metric, const Labels &labels, double value, const char *operation);
  std::string json_ = "[";
  std::size_t samples_ = 0;
};

// Sends samples to a Hermes over UDP. Sending never blocks and never throws: a lost
// datagram is the price of a worker that never waits. Movable, not copyable.
class Client {
public:
  // Resolves host once; where a name has IPv4 and IPv6 addresses, the IPv4 one is used,
  // since Hermes listens on 0.0.0.0 by default. Throws SocketError when it cannot.
  Client(const std::string &host, std::uint16_t port);
  Client(Client &&) noexcept;
  Client &operator=(Client &&) noexcept;
  ~Client();

  bool send(std::string_view datagram); // false when the kernel refused it
  bool send(const Batch &batch);        // false also for an empty batch
  bool increment_counter(std::string_view metric, const Labels &labels, double by = 1);
  bool set_gauge(std::string_view metric, const Labels &labels, double value);
  bool increment_gauge(std::string_view metric, const Labels &labels, double by = 1);
  bool decrement_gauge(std::string_view metric, const Labels &labels, double by = 1);
  bool observe(std::string_view metric, const Labels &labels, double value); // histograms, summaries

private:
  // false without sending when the value is not finite: JSON cannot carry it.
  bool send_sample(std::string_view metric, const Labels &labels, double value, const char *operation);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace hermes

// ===== DETAIL: QUANTILES ==================================================================

namespace hermes {
namespace detail {

// A stream of observations summarised so that any quantile can be read with a bounded
// rank error, in bounded memory: the targeted-quantile algorithm of Cormode, Korn,
// Muthukrishnan and Srivastava ("Effective computation of biased quantiles over data
// streams", ICDE 2005). It keeps a sorted list of values, each standing for `width`
// observations with an uncertainty of `delta` in rank, and merges neighbours as long
// as the allowed error at their rank permits. Observations come in sorted runs (a
// QuantileWindow's buffer), merged and compressed in place: the list holds at most
// entry_limit() entries and one run, and is never copied.
class QuantileStream {
public:
  using Objectives = std::vector<std::pair<double, double>>; // quantile, allowed rank error
  static constexpr std::size_t run_limit = 100;                // observations merged at once

  // Takes `count` values in ascending order, at most run_limit of them.
  void merge(const double *sorted, std::size_t count, const Objectives &objectives) {
    if (count == 0) return;
    make_room(entries_.size() + count, objectives);
    insert_sorted(sorted, count, objectives);
    compress(objectives, 1);
    keep_within_limit(objectives);
  }

  // The most entries a stream keeps once merged. A summary that just holds an objective's
  // error at every rank needs H(q) / (2 error) entries for it, H(q) = -q ln q - (1-q) ln(1-q)
  // (the integral of 1 / allowed error over the ranks); merging neighbours in pairs keeps
  // up to about twice that. This allows three times it plus 32: for {0.5: 0.05, 0.9: 0.01,
  // 0.99: 0.001}, 186, where shuffled, skewed or much-repeated values keep 40 to 95
  // entries. Input ordered to defeat the summary (values that only ever decrease would
  // keep one entry in 40 of them) is merged harder past it.
  static std::size_t entry_limit(const Objectives &objectives) {
    double limit = 32;
    for (const auto &[q, error] : objectives) limit += 1.5 * (-q * std::log(q) - (1 - q) * std::log(1 - q)) / error;
    // A config's quantiles and errors lie in (0, 1). A state file's may be anything, 0 or
    // negative included, and its series are refused for not matching the config: no
    // limit for them here, rather than a conversion out of range.
    constexpr double most = 1e15;
    return limit >= 0 && limit <= most ? static_cast<std::size_t>(std::ceil(limit)) : static_cast<std::size_t>(most);
  }

  // The most bytes a stream holds: its entries with room for a run merged in place.
  static std::size_t worst_case_bytes(const Objectives &objectives) {
    return sizeof(QuantileStream) + (entry_limit(objectives) + run_limit) * sizeof(Entry);
  }

  // The value at quantile q (0 < q < 1) of what was merged; NaN without observations.
  double query(double q, const Objectives &objectives) const {
    if (entries_.empty()) return std::nan("");
    // The first entry whose rank may reach past the wanted rank plus half the allowed
    // error has gone too far; the one before it answers.
    const double rank_wanted = std::ceil(q * count_);
    const double wanted = rank_wanted + allowed_error(rank_wanted, count_, objectives) / 2;
    double rank = 0;
    for (std::size_t i = 1; i < entries_.size(); ++i) {
      rank += entries_[i - 1].width;
      if (rank + entries_[i].width + entries_[i].delta > wanted) return entries_[i - 1].value;
    }
    return entries_.back().value;
  }

  void reset() {
    entries_.clear();
    count_ = 0;
  }

  std::size_t memory_entries() const { return entries_.size(); }
  // The bytes its vector holds now, used or not: at most worst_case_bytes() less its own size.
  std::size_t held_bytes() const { return entries_.capacity() * sizeof(Entry); }

private:
  friend class StateCodec;
  struct Entry {
    double value;
    double width; // observations this entry stands for
    double delta; // how far its rank may be off
  };

  // The rank error allowed at rank r of `count` observations: the tightest over all objectives.
  static double allowed_error(double rank, double count, const Objectives &objectives) {
    double allowed = std::numeric_limits<double>::max();
    for (const auto &objective : objectives) {
      const double q = objective.first, error = objective.second;
      const double here = q * count <= rank ? 2 * error * rank / q : 2 * error * (count - rank) / (1 - q);
      allowed = std::min(allowed, here);
    }
    return allowed;
  }

  // The entries grow by doubling as a vector does, but never past the limit and a run,
  // which worst_case_bytes() counts: a stream that has seen a few observations keeps a few.
  void make_room(std::size_t needed, const Objectives &objectives) {
    if (needed <= entries_.capacity()) return;
    const std::size_t most = entry_limit(objectives) + run_limit;
    entries_.reserve(std::max(needed, std::min(most, std::max<std::size_t>(8, 2 * entries_.capacity()))));
  }

  // Places the values among the entries from the back, each after the entries equal to
  // it, as if inserted in ascending order one at a time. A new value in the middle may be
  // off by what its place allows at the count so far; at either end, not at all.
  void insert_sorted(const double *sorted, std::size_t count, const Objectives &objectives) {
    const std::size_t had = entries_.size();
    const double before = count_; // the widths of all entries: observations merged so far
    entries_.resize(had + count);
    std::size_t old = had, to = had + count;
    double after = 0; // the widths of the old entries above the value at hand
    for (std::size_t i = count; i-- > 0;) {
      for (; old > 0 && entries_[old - 1].value > sorted[i]; --old) {
        after += entries_[old - 1].width;
        entries_[--to] = entries_[old - 1];
      }
      const double earlier = static_cast<double>(i); // new values below this one
      const double rank = before - after + earlier;
      const double delta = old < had ? std::max(0.0, std::floor(allowed_error(rank, before + earlier, objectives)) - 1) : 0;
      entries_[--to] = {sorted[i], 1, delta};
    }
    count_ = before + static_cast<double>(count);
  }

  // Folds each entry into its right neighbour where the error allowed there, times
  // `slack`, permits. Walks from the top down, writing what it keeps at the top end,
  // never over an entry it has still to read.
  void compress(const Objectives &objectives, double slack) {
    if (entries_.size() < 2) return;
    std::size_t kept = entries_.size(); // entries_[kept, size) are kept, in order
    Entry right = entries_.back();
    double rank = count_ - 1 - right.width;
    for (std::size_t i = entries_.size() - 1; i-- > 0;) {
      const Entry left = entries_[i];
      if (left.width + right.width + right.delta <= slack * allowed_error(rank, count_, objectives)) {
        right.width += left.width;
      } else {
        entries_[--kept] = right;
        right = left;
      }
      rank -= left.width;
    }
    entries_[--kept] = right;
    entries_.erase(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(kept));
  }

  // Past the limit, each pass allows twice the error, so that memory stays bounded
  // whatever the order of the input; the objectives then hold only as far as it allows.
  void keep_within_limit(const Objectives &objectives) {
    for (double slack = 2; entries_.size() > entry_limit(objectives) && slack < 1e300; slack *= 2) compress(objectives, slack);
  }

  std::vector<Entry> entries_;
  double count_ = 0;
};

// Quantiles over the last max_age seconds, as Prometheus' Go client keeps them: five
// streams all take every observation, each is emptied in turn every max_age / 5, and
// the oldest one answers, so an answer covers between 4/5 of max_age and max_age.
// Observations wait in one buffer for all five, as client_golang's do; it is sorted
// once and merged into every stream when full, before a turn, and on advance().
class QuantileWindow {
public:
  static constexpr std::size_t streams = 5;
  static constexpr std::size_t allocations = streams + 4; // blocks: each stream's entries, the buffer, the objectives, the streams, itself

  // A copy of the objectives, so that the window outlives any config it was made from.
  QuantileWindow(const MetricConfig &config, double now)
      : objectives_(config.objectives), step_(config.max_age_seconds / streams), head_expires_(now + step_),
        streams_(streams) {}

  void observe(double value, double now) {
    rotate(now);
    // The buffer grows by doubling as a vector does, but never past buffer_limit, which
    // worst_case_bytes() counts: a series that sees a few observations keeps a few.
    if (buffer_.size() == buffer_.capacity()) buffer_.reserve(std::min(buffer_limit, std::max<std::size_t>(8, 2 * buffer_.capacity())));
    buffer_.push_back(value);
    if (buffer_.size() >= buffer_limit) flush();
  }

  // The value at quantile q as of the last observe() or advance(); only reads. What
  // still waits in the buffer is merged into a copy of the answering stream; a Server
  // moves every window on (Registry::expire) before it renders, and never needs one.
  double query(double q) const {
    const QuantileStream &answering = streams_[head_];
    if (buffer_.empty()) return answering.query(q, objectives_);
    std::vector<double> sorted = buffer_;
    std::sort(sorted.begin(), sorted.end());
    QuantileStream merged = answering;
    merged.merge(sorted.data(), sorted.size(), objectives_);
    return merged.query(q, objectives_);
  }

  // Moves the window on to `now`, and merges buffered observations, so that queries
  // until the next change read a summary that is up to date.
  void advance(double now) {
    rotate(now);
    flush();
  }

  std::size_t memory_entries() const {
    std::size_t total = buffer_.size();
    for (const QuantileStream &stream : streams_) total += stream.memory_entries();
    return total;
  }

  // The bytes its vectors hold now, used or not: at most worst_case_bytes() less its own size.
  std::size_t held_bytes() const {
    std::size_t bytes = objectives_.capacity() * sizeof(objectives_[0]) + buffer_.capacity() * sizeof(double) +
                        streams_.capacity() * sizeof(QuantileStream);
    for (const QuantileStream &stream : streams_) bytes += stream.held_bytes();
    return bytes;
  }

  static std::size_t worst_case_bytes(const QuantileStream::Objectives &objectives) {
    return sizeof(QuantileWindow) + objectives.size() * sizeof(objectives[0]) + buffer_limit * sizeof(double) +
           streams * QuantileStream::worst_case_bytes(objectives);
  }

private:
  friend class StateCodec;
  static constexpr std::size_t buffer_limit = QuantileStream::run_limit; // a full buffer is one run for each stream

  void flush() {
    if (buffer_.empty()) return;
    std::sort(buffer_.begin(), buffer_.end());
    for (QuantileStream &stream : streams_) stream.merge(buffer_.data(), buffer_.size(), objectives_);
    buffer_.clear();
  }

  void rotate(double now) {
    if (now >= head_expires_) flush(); // the buffer's observations came before the turn: every stream takes them
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
  std::vector<double> buffer_; // observations not yet merged, in the order they came
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: NATIVE HISTOGRAMS ==========================================================

namespace hermes {
namespace detail {

// Prometheus' native histograms: at schema s, bucket i holds the values in
// (2^((i-1)/2^s), 2^(i/2^s)], negative values likewise by their magnitude, and values
// within the zero threshold of 0 one bucket of their own. Buckets are kept sparse, and
// when there are more than a metric's native_max_buckets, two neighbours merge into one
// of the next coarser schema, as client_golang does.
constexpr std::int32_t native_schema_min = -4, native_schema_max = 8;

// The coarsest schema whose buckets grow by no more than `factor` (> 1), as client_golang
// picks it: 1.1 gives 3, 1.5 gives 1.
inline std::int32_t native_schema(double factor) {
  const double floor = std::floor(std::log2(std::log2(factor)));
  if (floor <= -native_schema_max) return native_schema_max;
  if (floor >= -native_schema_min) return native_schema_min;
  return static_cast<std::int32_t>(-floor);
}

// The upper bounds of the buckets of one power of two at schema 1 to 8, as fractions
// in [0.5, 1): 2^(i/2^s) / 2. Made once, in long double, and rounded to the nearest double.
inline const std::vector<double> &native_bounds(std::int32_t schema) {
  static const std::array<std::vector<double>, native_schema_max + 1> tables = [] {
    std::array<std::vector<double>, native_schema_max + 1> made;
    for (std::size_t s = 1; s < made.size(); ++s) {
      const std::size_t n = std::size_t{1} << s;
      for (std::size_t i = 0; i < n; ++i)
        made[s].push_back(static_cast<double>(std::exp2(static_cast<long double>(i) / static_cast<long double>(n)) / 2));
    }
    return made;
  }();
  return tables[static_cast<std::size_t>(schema)];
}

// Rounds toward minus infinity, where >> on a negative number would be the compiler's choice.
inline std::int32_t floor_divide(std::int32_t value, std::int32_t divisor) {
  return value / divisor - (value % divisor != 0 && (value < 0) != (divisor < 0) ? 1 : 0);
}

// The index of the bucket that holds `magnitude` (> 0, may be infinite) at `schema`.
inline std::int32_t native_index(double magnitude, std::int32_t schema) {
  const bool infinite = std::isinf(magnitude);
  int exponent = 0;
  const double fraction = std::frexp(infinite ? std::numeric_limits<double>::max() : magnitude, &exponent);
  std::int32_t index = 0;
  if (schema > 0) {
    const std::vector<double> &bounds = native_bounds(schema);
    const auto within = std::lower_bound(bounds.begin(), bounds.end(), fraction) - bounds.begin();
    index = static_cast<std::int32_t>(within) + (exponent - 1) * static_cast<std::int32_t>(bounds.size());
  } else {
    index = exponent - (fraction == 0.5 ? 1 : 0);
    const std::int32_t width = std::int32_t{1} << -schema;
    index = floor_divide(index + width - 1, width);
  }
  return infinite ? index + 1 : index; // one past the largest finite bucket
}

// One side's buckets: (index, count) by ascending index, counts above zero.
using NativeSide = std::vector<std::pair<std::int32_t, std::uint64_t>>;

struct NativeHistogram {
  std::int32_t schema = 0;
  std::uint64_t zero_count = 0;
  NativeSide positive, negative;
  std::size_t buckets() const { return positive.size() + negative.size(); }
};

// Counts one in the bucket `index`; true when the bucket is new.
inline bool count_in(NativeSide &side, std::int32_t index) {
  const auto at = std::lower_bound(side.begin(), side.end(), index,
                                   [](const std::pair<std::int32_t, std::uint64_t> &b, std::int32_t i) { return b.first < i; });
  if (at != side.end() && at->first == index) {
    ++at->second;
    return false;
  }
  side.insert(at, {index, 1});
  return true;
}

// Merges each pair of neighbours into the bucket of the next coarser schema that covers
// both: index i goes to ceil(i / 2).
inline void merge_neighbours(NativeSide &side) {
  std::size_t kept = 0;
  for (std::size_t i = 0; i < side.size(); ++i) {
    const std::int32_t index = side[i].first;
    const std::int32_t coarse = (index > 0 ? index + 1 : index) / 2; // / truncates: ceil for both signs
    if (kept > 0 && side[kept - 1].first == coarse) {
      side[kept - 1].second += side[i].second;
    } else {
      side[kept++] = {coarse, side[i].second};
    }
  }
  side.resize(kept);
}

inline void observe_native(NativeHistogram &histogram, const MetricConfig &config, double value) {
  bool made_bucket = false;
  if (value > config.native_zero_threshold) {
    made_bucket = count_in(histogram.positive, native_index(value, histogram.schema));
  } else if (value < -config.native_zero_threshold) {
    made_bucket = count_in(histogram.negative, native_index(-value, histogram.schema));
  } else {
    ++histogram.zero_count;
  }
  if (!made_bucket || histogram.buckets() <= config.native_max_buckets || histogram.schema == native_schema_min) return;
  while (histogram.buckets() > config.native_max_buckets && histogram.schema > native_schema_min) {
    merge_neighbours(histogram.positive);
    merge_neighbours(histogram.negative);
    --histogram.schema;
  }
  histogram.positive.shrink_to_fit(); // half the buckets: give the memory back
  histogram.negative.shrink_to_fit();
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: SERIES =====================================================================

namespace hermes {
namespace detail {

// Series of one metric, keyed by label values in configured order. The comparator is
// transparent so a lookup can use views into the datagram instead of new strings. It
// compares each pair of values once, three ways (std::lexicographical_compare asks
// a < b and then b < a): a lookup among 100 series costs 30% less.
struct LabelValuesLess {
  using is_transparent = void;
  template <typename A, typename B> bool operator()(const A &a, const B &b) const {
    const std::size_t common = std::min(a.size(), b.size());
    for (std::size_t i = 0; i < common; ++i)
      if (const int order = std::string_view(a[i]).compare(std::string_view(b[i]))) return order < 0;
    return a.size() < b.size();
  }
};

// What a histogram or summary series has seen.
struct Distribution {
  double sum = 0;
  std::uint64_t count = 0;
  std::vector<std::uint64_t> bucket_counts;  // histograms: per bucket, not cumulative; the last is +Inf
  std::unique_ptr<NativeHistogram> native;   // native histograms
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

// The name of an enumerator from a table of one name per enumerator, in order; the
// enum's trailing count_ keeps the two in step.
template <typename Enum, std::size_t N> constexpr const char *name_of(Enum value, const char *const (&names)[N]) {
  static_assert(N == static_cast<std::size_t>(Enum::count_), "one name per enumerator");
  return names[static_cast<std::size_t>(value)];
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

// ASCII character classes: what the C library's would say in the "C" locale, whatever
// locale a program that embeds Hermes has set.
inline bool is_ascii_lower(char c) { return c >= 'a' && c <= 'z'; }
inline bool is_ascii_upper(char c) { return c >= 'A' && c <= 'Z'; }
inline bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }
inline bool is_ascii_alnum(char c) { return is_ascii_lower(c) || is_ascii_upper(c) || is_ascii_digit(c); }

// The whole text as a decimal number, whatever the C locale.
inline std::optional<double> parse_decimal(std::string_view text) {
  double value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

inline std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char &c : out)
    if (is_ascii_upper(c)) c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// A JSON value shortened for an error message.
inline std::string quote_json(const picojson::value &value) {
  std::string text = value.serialize();
  constexpr std::size_t max_shown = 60;
  return text.size() > max_shown ? text.substr(0, max_shown) + "..." : text;
}

// Numbers are written as client_golang writes them, with Go's strconv.FormatFloat(v,
// 'g', -1, 64): the shortest digits that read back to the same double, in exponent
// form exactly when the decimal exponent is below -4 or at least 6 (100000, 1e+06,
// 0.0001, 1e-05). Prometheus stores le and quantile label values as strings, so a
// bucket must be spelled as every other client spells it.
constexpr int exponent_form_below = -4, exponent_form_from = 6;

// A whole number below 10^6 is written as an integer by that rule; integers print in a
// tenth of the time, and counters are mostly whole.
inline bool append_whole_number(std::string &out, double value) {
  if (!(std::fabs(value) < 1e6) || value != std::trunc(value) || (value == 0 && std::signbit(value))) return false;
  char digits[16];
  out.append(digits, std::to_chars(digits, digits + sizeof digits, static_cast<long>(value)).ptr);
  return true;
}

inline void append_shortest(std::string &out, double value) {
  char buffer[40];
  char *end = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific).ptr;
  const char *e = std::find(buffer, end, 'e'); // d.ddde+XX, in the shortest digits
  int exponent = 0;
  std::from_chars(e + (e[1] == '+' ? 2 : 1), end, exponent);
  if (exponent < exponent_form_below || exponent >= exponent_form_from) {
    out.append(buffer, end);
    return;
  }
  end = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed).ptr; // the same digits
  out.append(buffer, end);
}

// NaN and infinities as Prometheus spells them.
inline void append_double(std::string &out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
  } else if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
  } else if (!append_whole_number(out, value)) {
    append_shortest(out, value);
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

// ===== DETAIL: PROTOBUF ===================================================================

namespace hermes {
namespace detail {

// The Protocol Buffers wire format, as far as io.prometheus.client's metrics.proto needs
// it: a field is a varint tag (number << 3 | wire type), then a varint, eight bytes
// little-endian, or a varint length and that many bytes (strings and messages). Each
// put_* writes at `at` into memory reserved beforehand and returns the end; each
// append_* appends to a string. A scrape writes millions of them.
enum class WireType : std::uint8_t { varint = 0, fixed64 = 1, length_delimited = 2 };

inline std::size_t varint_size(std::uint64_t value) {
  std::size_t size = 1;
  for (; value >= 0x80; value >>= 7) ++size;
  return size;
}

inline char *put_varint(char *at, std::uint64_t value) {
  for (; value >= 0x80; value >>= 7) *at++ = static_cast<char>((value & 0x7f) | 0x80);
  *at++ = static_cast<char>(value);
  return at;
}

inline char *put_tag(char *at, std::uint32_t field, WireType type) {
  return put_varint(at, std::uint64_t{field} << 3 | static_cast<std::uint8_t>(type));
}

inline char *put_double_field(char *at, std::uint32_t field, double value) {
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  at = put_tag(at, field, WireType::fixed64);
  for (int byte = 0; byte < 8; ++byte, bits >>= 8) *at++ = static_cast<char>(bits & 0xff);
  return at;
}

inline char *put_bytes_field(char *at, std::uint32_t field, std::string_view bytes) {
  at = put_varint(put_tag(at, field, WireType::length_delimited), bytes.size());
  std::memcpy(at, bytes.data(), bytes.size());
  return at + bytes.size();
}

inline void append_varint(std::string &out, std::uint64_t value) {
  char bytes[10];
  out.append(bytes, static_cast<std::size_t>(put_varint(bytes, value) - bytes));
}

inline void append_tag(std::string &out, std::uint32_t field, WireType type) {
  append_varint(out, std::uint64_t{field} << 3 | static_cast<std::uint8_t>(type));
}

// uint32, uint64 and enum fields; int64 too, whose negative values take ten bytes.
inline void append_uint_field(std::string &out, std::uint32_t field, std::uint64_t value) {
  char bytes[20];
  out.append(bytes, static_cast<std::size_t>(put_varint(put_tag(bytes, field, WireType::varint), value) - bytes));
}

// sint32 and sint64 fields: zigzag, so that small negative numbers stay short.
inline std::uint64_t zigzag(std::int64_t value) {
  return (static_cast<std::uint64_t>(value) << 1) ^ (value < 0 ? ~std::uint64_t{0} : 0);
}

inline void append_sint_field(std::string &out, std::uint32_t field, std::int64_t value) {
  append_uint_field(out, field, zigzag(value));
}

inline void append_double_field(std::string &out, std::uint32_t field, double value) {
  char bytes[18];
  out.append(bytes, static_cast<std::size_t>(put_double_field(bytes, field, value) - bytes));
}

// string, bytes and embedded message fields.
inline void append_bytes_field(std::string &out, std::uint32_t field, std::string_view bytes) {
  append_tag(out, field, WireType::length_delimited);
  append_varint(out, bytes.size());
  out += bytes;
}

// The size of a LabelPair {name = 1, value = 2}, and the pair as field `field`.
inline std::size_t label_pair_size(std::string_view name, std::string_view value) {
  return 2 + varint_size(name.size()) + name.size() + varint_size(value.size()) + value.size();
}

inline char *put_label_pair(char *at, std::uint32_t field, std::string_view name, std::string_view value) {
  at = put_varint(put_tag(at, field, WireType::length_delimited), label_pair_size(name, value));
  return put_bytes_field(put_bytes_field(at, 1, name), 2, value);
}

inline void append_label_pair(std::string &out, std::uint32_t field, std::string_view name, std::string_view value) {
  const std::size_t size = label_pair_size(name, value);
  const std::size_t start = out.size();
  out.resize(start + varint_size(std::uint64_t{field} << 3) + varint_size(size) + size);
  put_label_pair(&out[start], field, name, value);
}

// A google.protobuf.Timestamp {seconds = 1, nanos = 2} of seconds since the epoch, as
// field `field`: its size, and the field itself.
struct Timestamp {
  std::uint64_t seconds, nanos;
  explicit Timestamp(double since_epoch) {
    const double whole = std::floor(since_epoch);
    // A state file may say any time: one past what int64 seconds hold is held at its ends.
    constexpr double lowest = -9.2e18, highest = 9.2e18;
    const double held = whole >= lowest ? std::min(whole, highest) : lowest;
    seconds = static_cast<std::uint64_t>(static_cast<std::int64_t>(held));
    nanos = static_cast<std::uint64_t>(std::clamp<std::int64_t>(std::llround((since_epoch - whole) * 1e9), 0, 999999999));
  }
  std::size_t size() const { return 1 + varint_size(seconds) + (nanos > 0 ? 1 + varint_size(nanos) : 0); }
};

inline char *put_timestamp_field(char *at, std::uint32_t field, const Timestamp &timestamp) {
  at = put_varint(put_tag(at, field, WireType::length_delimited), timestamp.size());
  at = put_varint(put_tag(at, 1, WireType::varint), timestamp.seconds);
  return timestamp.nanos > 0 ? put_varint(put_tag(at, 2, WireType::varint), timestamp.nanos) : at;
}

inline void append_timestamp_field(std::string &out, std::uint32_t field, double seconds) {
  char bytes[32];
  out.append(bytes, static_cast<std::size_t>(put_timestamp_field(bytes, field, Timestamp(seconds)) - bytes));
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: BODY BOUNDS ================================================================
//
// What a series may add to a /metrics body at most, in the format that writes the most
// of it, so that the memory budget can keep that room for every series from the moment
// it is made (see MemoryBudget). Bounds, not estimates: every number as long as a number
// can be written, every label value as escaped, a native histogram at its most buckets.

namespace hermes {
namespace detail {

constexpr std::size_t longest_number = 24; // "-2.2250738585072014e-308": the most append_double writes
constexpr std::size_t longest_varint = 10;
constexpr std::size_t message_head = 1 + 5;         // a field's tag and the length of a message below 2^35 bytes
constexpr std::size_t varint_field = 1 + longest_varint;
constexpr std::size_t double_field = 1 + 8;
constexpr std::size_t timestamp_field = message_head + 2 * varint_field;
constexpr std::size_t most_native_buckets_at_coarsest = 2 * 134; // schema -4: 2^16 per bucket, both signs
constexpr std::size_t body_end_bytes = sizeof "# EOF\n" - 1;  // OpenMetrics' last line

// A label value as the text formats write it: backslash, newline and double quote take two bytes.
inline std::size_t escaped_size(std::string_view text) {
  std::size_t size = text.size();
  for (const char c : text) size += c == '\\' || c == '\n' || c == '"';
  return size;
}

// The label pairs of one line in the text formats, braces and commas included, with
// `extra` bytes for a last pair such as le="...".
template <typename Values>
std::size_t text_labels_bound(const std::vector<std::string> &names, const Values &values, std::size_t extra) {
  std::size_t size = 2 + extra; // the braces
  for (std::size_t i = 0; i < names.size(); ++i) size += names[i].size() + sizeof "=\"\"," - 1 + escaped_size(values[i]);
  return size;
}

// One series in the text formats: OpenMetrics writes the most, with its _created line.
template <typename Values> std::size_t text_series_bound(const MetricConfig &metric, const Values &values) {
  const std::size_t labels = text_labels_bound(metric.labels, values, 0), name = metric.name.size();
  const auto line = [&](std::size_t name_size, std::size_t extra) { return name_size + labels + extra + 1 + longest_number + 1; };
  std::size_t bytes = line(name + sizeof "_created" - 1, 0);
  if (metric.type == MetricType::histogram) {
    const std::size_t le = sizeof ",le=\"\"" - 1 + longest_number;
    bytes += (metric.buckets.size() + 1) * line(name + sizeof "_bucket" - 1, le);
    bytes += line(name + sizeof "_sum" - 1, 0) + line(name + sizeof "_count" - 1, 0);
  } else if (metric.type == MetricType::summary) {
    const std::size_t quantile = sizeof ",quantile=\"\"" - 1 + longest_number;
    bytes += metric.objectives.size() * line(name, quantile);
    bytes += line(name + sizeof "_sum" - 1, 0) + line(name + sizeof "_count" - 1, 0);
  } else {
    bytes += line(name, 0);
  }
  return bytes;
}

// A native histogram's part of a protobuf Histogram: schema, zero threshold and count,
// and per bucket its delta and, before it, either the deltas of up to two empty buckets
// (the first may undo a large count, the second is 0) or a new span (BucketSpan: a tag,
// a length, an sint32 offset and a uint32 length).
inline std::size_t native_protobuf_bound(const MetricConfig &metric) {
  if (!metric.native) return 0;
  const std::size_t buckets = std::max(metric.native_max_buckets, most_native_buckets_at_coarsest);
  constexpr std::size_t empty_buckets = longest_varint + 1, span = 2 + 2 * (1 + 5);
  const std::size_t per_bucket = longest_varint + std::max(empty_buckets, span);
  return varint_field + double_field + varint_field + 4 * message_head + buckets * per_bucket + message_head + 4;
}

// One series in the protobuf format: a Metric with its label pairs and its value message.
template <typename Values> std::size_t protobuf_series_bound(const MetricConfig &metric, const Values &values) {
  std::size_t labels = 0;
  for (std::size_t i = 0; i < metric.labels.size(); ++i) {
    const std::size_t pair = label_pair_size(metric.labels[i], values[i]);
    labels += 1 + varint_size(pair) + pair;
  }
  std::size_t inner = double_field + timestamp_field; // a counter or gauge
  if (metric.type == MetricType::histogram) {
    inner = varint_field + double_field + timestamp_field + native_protobuf_bound(metric) +
            metric.buckets.size() * (message_head + varint_field + double_field);
  } else if (metric.type == MetricType::summary) {
    inner = varint_field + double_field + timestamp_field + metric.objectives.size() * (message_head + 2 * double_field);
  }
  return message_head + labels + message_head + inner;
}

// A family's HELP and TYPE lines, or its protobuf MetricFamily head, whichever is longer.
inline std::size_t family_bound(std::string_view name, std::string_view help) {
  const std::size_t text = sizeof "# HELP  \n# TYPE  histogram\n" - 1 + 2 * name.size() + escaped_size(help);
  const std::size_t protobuf = 5 + message_head + name.size() + message_head + help.size() + varint_field;
  return std::max(text, protobuf);
}

// What a series takes from the memory budget: its own bytes (its node in the map with
// its label values, and the distribution of a histogram or summary at its fullest, so
// that it never needs more after it was let in), and what it may add to one body.
struct SeriesCost {
  std::size_t own = 0, body = 0;
};

template <typename Values> SeriesCost series_cost(const MetricConfig &metric, const Values &label_values) {
  constexpr std::size_t small_string = 15; // characters a std::string holds without allocating
  SeriesCost cost{worst_case_series_bytes(metric), 0};
  for (const auto &value : label_values) cost.own += value.size() > small_string ? value.size() + 1 : 0;
  cost.body = std::max(text_series_bound(metric, label_values), protobuf_series_bound(metric, label_values));
  return cost;
}

// Adds what every series of `metric` takes to `sum`.
inline void add_series_costs(SeriesCost &sum, const Metric &metric) {
  for (const auto &entry : metric.series) {
    const SeriesCost cost = series_cost(metric.config, entry.first);
    sum.own += cost.own, sum.body += cost.body;
  }
}

// What a body holds besides the series of a registry, at most: the families' heads,
// Hermes' own families, the end. Defined with the formatting, whose tables it reads.
inline std::size_t fixed_body_bound(const Registry &registry);

} // namespace detail
} // namespace hermes

// ===== DETAIL: JSON =======================================================================

namespace hermes {
namespace detail {

// How much deeper arrays and objects may still nest; each parse context holds a copy
// and hands one level less to the values inside it.
struct NestingBudget {
  std::size_t left = HERMES_MAX_JSON_DEPTH;
  bool enter() {
    if (left == 0) return false;
    --left;
    return true;
  }
};

// Builds a picojson tree like picojson's default context, with two differences that
// matter for hostile input: nesting of arrays and objects alike is bounded, and a
// number beyond the range of double does not throw. The place of the first such number
// (as "gauges[0].max_series") is noted, so that the error can say where it stands.
class BoundedJsonContext {
public:
  BoundedJsonContext(picojson::value *out, NestingBudget nesting, std::string place,
                     std::optional<std::string> *out_of_range)
      : out_(out), nesting_(nesting), place_(std::move(place)), out_of_range_(out_of_range) {}
  bool set_null() { return *out_ = picojson::value(), true; }
  bool set_bool(bool b) { return *out_ = picojson::value(b), true; }
  bool set_number(double f) {
    if (!std::isfinite(f) && !*out_of_range_) *out_of_range_ = place_;
    *out_ = picojson::value(std::isfinite(f) ? f : 0.0);
    return true;
  }
  template <typename Iter> bool parse_string(picojson::input<Iter> &in) {
    *out_ = picojson::value(picojson::string_type, false);
    return picojson::_parse_string(out_->get<std::string>(), in);
  }
  bool parse_array_start() { return enter(picojson::array_type); }
  template <typename Iter> bool parse_array_item(picojson::input<Iter> &in, std::size_t index) {
    auto &array = out_->get<picojson::array>();
    array.emplace_back();
    BoundedJsonContext item(&array.back(), nesting_, place_ + "[" + std::to_string(index) + "]", out_of_range_);
    return picojson::_parse(item, in);
  }
  bool parse_array_stop(std::size_t) { return true; }
  bool parse_object_start() { return enter(picojson::object_type); }
  template <typename Iter> bool parse_object_item(picojson::input<Iter> &in, const std::string &key) {
    BoundedJsonContext item(&out_->get<picojson::object>()[key], nesting_, place_.empty() ? key : place_ + "." + key,
                            out_of_range_);
    return picojson::_parse(item, in);
  }
  bool parse_object_stop() { return true; }

private:
  bool enter(int type) { // picojson names its types in an unnamed enum
    if (!nesting_.enter()) return false;
    *out_ = picojson::value(type, false);
    return true;
  }
  picojson::value *out_;
  NestingBudget nesting_;
  std::string place_;
  std::optional<std::string> *out_of_range_;
};

// Parses one whole JSON text into a picojson parse context; trailing bytes other than
// white space are an error. On failure `error` (when given) says where, as
// "not valid JSON: syntax error at line N near: ...".
template <typename Context> bool parse_json_into(Context &context, std::string_view text, std::string *error = nullptr) {
  picojson::input<const char *> in(text.data(), text.data() + text.size());
  if (!picojson::_parse(context, in)) {
    if (!error) return false; // ingest has no use for the words: build them only when asked
    *error = "not valid JSON: syntax error at line " + std::to_string(in.line()) + " near: "; // picojson's own words
    for (int c = in.getc(); c != -1 && c != '\n'; c = in.getc())
      if (c >= ' ') error->push_back(static_cast<char>(c));
    return false;
  }
  in.skip_ws();
  if (in.getc() != -1) {
    if (error) *error = "not valid JSON: unexpected text after the JSON value";
    return false;
  }
  return true;
}

// A whole JSON text as a tree; a number beyond the range of a double is an error that
// names its place.
inline bool parse_json(std::string_view text, picojson::value &out, std::string *error = nullptr) {
  std::optional<std::string> out_of_range;
  BoundedJsonContext context(&out, NestingBudget{}, "", &out_of_range);
  if (!parse_json_into(context, text, error)) return false;
  if (!out_of_range) return true;
  if (error) *error = (out_of_range->empty() ? "" : *out_of_range + ": ") + "a number beyond the range of a double (about 1.8e308)";
  return false;
}

// ---- Plain JSON, read in place ---------------------------------------------------------------
//
// picojson reads a character at a time through its input class, which counts lines as it
// goes, and builds each string a character at a time: that was most of the CPU a datagram
// cost. Most datagrams are plain: strings without escapes, numbers as JSON writes them.
// PlainJson reads those in place, into the same parse contexts, and gives up at anything
// else: an escape, a control character, a number in another form (01, 1., .5, 1e999), an
// error. The datagram is then read again by picojson, whose reading is the one that
// counts; so where both read a datagram they read it alike (tests/fuzz/fuzz_datagram.cpp
// checks that on every input).

// Character classes of PlainJson, looked up in a table: its loops test one bit a character.
enum PlainJsonClass : unsigned char { json_space = 1, json_string_char = 2, json_number_char = 4 };

constexpr std::array<unsigned char, 256> make_plain_json_classes() {
  std::array<unsigned char, 256> classes{};
  for (std::size_t c = 0x20; c < 256; ++c) classes[c] = json_string_char; // all but control characters, quotes
  classes['"'] = classes['\\'] = 0;                                            // and escapes
  for (const char c : {' ', '\t', '\n', '\r'}) classes[static_cast<unsigned char>(c)] |= json_space;
  for (const char c : {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '+', '-', '.', 'e', 'E'}) // as picojson takes them
    classes[static_cast<unsigned char>(c)] |= json_number_char;
  return classes;
}
inline constexpr std::array<unsigned char, 256> plain_json_classes = make_plain_json_classes();

class PlainJson {
public:
  explicit PlainJson(std::string_view text) : at_(text.data()), end_(text.data() + text.size()) {}

  // Skips white space, then takes `c` if it comes next.
  bool expect(char c) {
    skip_space();
    if (at_ == end_ || *at_ != c) return false;
    ++at_;
    return true;
  }
  int peek() const { return at_ == end_ ? -1 : static_cast<unsigned char>(*at_); }
  void skip_space() {
    while (at_ != end_ && is(*at_, json_space)) ++at_;
  }
  bool at_end() {
    skip_space();
    return at_ == end_;
  }
  // Takes `word` (null, true, false) if the text goes on with it.
  bool word(std::string_view word) {
    if (static_cast<std::size_t>(end_ - at_) < word.size() || std::string_view(at_, word.size()) != word) return false;
    at_ += word.size();
    return true;
  }

  // The rest of a string whose opening quote is taken, up to its closing quote, which is
  // taken too; false at an escape, a control character or the end of the text.
  bool string(std::string_view &out) {
    const char *end = at_; // a local the compiler keeps in a register
    while (end != end_ && is(*end, json_string_char)) ++end;
    if (end == end_ || *end != '"') return false;
    out = std::string_view(at_, static_cast<std::size_t>(end - at_));
    at_ = end + 1;
    return true;
  }

  // A number as JSON writes it, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, within
  // the range of a double. picojson takes every character of [0-9+-.eE] that follows as
  // the number and has strtod read it; std::from_chars, correctly rounded like glibc's
  // strtod, gives the same double for each text of this form.
  bool number(double &out) {
    const char *start = at_;
    while (at_ != end_ && is(*at_, json_number_char)) ++at_;
    if (!is_plain_number(std::string_view(start, static_cast<std::size_t>(at_ - start)))) return false;
    const auto result = std::from_chars(start, at_, out);
    return result.ec == std::errc() && result.ptr == at_;
  }

private:
  static bool is(char c, PlainJsonClass what) { return plain_json_classes[static_cast<unsigned char>(c)] & what; }

  static bool is_plain_number(std::string_view text) {
    std::size_t i = 0;
    const auto digits = [&] {
      const std::size_t first = i;
      while (i < text.size() && is_ascii_digit(text[i])) ++i;
      return i > first;
    };
    if (i < text.size() && text[i] == '-') ++i;
    if (i < text.size() && text[i] == '0') ++i;
    else if (!digits()) return false;
    if (i < text.size() && text[i] == '.') {
      ++i;
      if (!digits()) return false;
    }
    if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
      ++i;
      if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
      if (!digits()) return false;
    }
    return i == text.size();
  }

  const char *at_, *end_;
};

template <typename Context> bool read_plain(Context &context, PlainJson &in);

template <typename Context> bool read_plain_array(Context &context, PlainJson &in) {
  if (!context.parse_array_start()) return false;
  std::size_t index = 0;
  if (in.expect(']')) return context.parse_array_stop(index);
  do {
    if (!context.parse_array_item(in, index++)) return false;
  } while (in.expect(','));
  return in.expect(']') && context.parse_array_stop(index);
}

template <typename Context> bool read_plain_object(Context &context, PlainJson &in) {
  if (!context.parse_object_start()) return false;
  if (in.expect('}')) return context.parse_object_stop();
  do {
    std::string_view key;
    if (!in.expect('"') || !in.string(key) || !in.expect(':') || !context.parse_object_item(in, key)) return false;
  } while (in.expect(','));
  return in.expect('}') && context.parse_object_stop();
}

// The value that comes next, into a picojson parse context, as picojson's _parse() would
// hand it over.
template <typename Context> bool read_plain(Context &context, PlainJson &in) {
  in.skip_space();
  double number = 0;
  switch (in.peek()) {
  case 'n': return in.word("null") && context.set_null();
  case 't': return in.word("true") && context.set_bool(true);
  case 'f': return in.word("false") && context.set_bool(false);
  case '"': return in.expect('"') && context.parse_string(in);
  case '[': return in.expect('[') && read_plain_array(context, in);
  case '{': return in.expect('{') && read_plain_object(context, in);
  default: return in.number(number) && (context.set_number(number), true);
  }
}

// ---- Reading datagrams without a tree ------------------------------------------------------
//
// A datagram is read straight into the few fields a sample has, in buffers that are
// reused from one datagram to the next, so ingest allocates nothing once they have
// grown. The reader notes what kind of JSON value stood at each place; checking it
// against the config comes after, when the whole datagram has proved to be JSON.

enum class JsonKind { absent, null, other, number, string, array, object };

// A string of a datagram: a view of the datagram where the string stands in it as it
// is (PlainJson), else a copy with its escapes undone (picojson). Views are used while
// the datagram is applied, never after.
class ReadText {
public:
  std::string_view get() const { return copied_ ? std::string_view(copy_) : view_; }
  void refer_to(std::string_view text) { view_ = text, copied_ = false; }
  std::string &start_copy() { // kept for the next datagram's copies
    copy_.clear();
    copied_ = true;
    return copy_;
  }

private:
  std::string_view view_;
  std::string copy_;
  bool copied_ = false;
};

struct ReadValue {
  JsonKind kind = JsonKind::absent;
  double number = 0;
  ReadText text;
  bool present() const { return kind != JsonKind::absent && kind != JsonKind::null; } // null counts as absent
};

struct ReadSample {
  JsonKind shape = JsonKind::absent; // the sample itself
  ReadValue metric_name, value, observation, operation;
  JsonKind payload = JsonKind::absent, labels = JsonKind::absent;
  std::vector<std::pair<ReadText, ReadValue>> label_slots; // the first label_count are this sample's
  std::size_t label_count = 0;

  void reset_payload() {
    value.kind = observation.kind = operation.kind = JsonKind::absent;
    labels = JsonKind::absent;
    label_count = 0;
  }
  // The label's slot, the same one again for a repeated name: the last value wins, as in
  // a JSON object. A `name` that stands in the datagram is kept as a view, else copied.
  ReadValue &label(std::string_view name, bool in_datagram) {
    for (std::size_t i = 0; i < label_count; ++i)
      if (label_slots[i].first.get() == name) return label_slots[i].second;
    if (label_count == label_slots.size()) label_slots.emplace_back();
    auto &slot = label_slots[label_count++];
    if (in_datagram) slot.first.refer_to(name);
    else slot.first.start_copy().assign(name);
    slot.second.kind = JsonKind::absent;
    return slot.second;
  }
  const ReadValue *find_label(std::string_view name) const {
    for (std::size_t i = 0; i < label_count; ++i)
      if (label_slots[i].first.get() == name) return &label_slots[i].second;
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

// What a parse context's members call to read what comes next, from either reader.
template <typename Context, typename Iter> bool read_value(Context &context, picojson::input<Iter> &in) {
  return picojson::_parse(context, in);
}
template <typename Context> bool read_value(Context &context, PlainJson &in) { return read_plain(context, in); }

template <typename Iter> bool read_string(ReadText &out, picojson::input<Iter> &in) {
  return picojson::_parse_string(out.start_copy(), in);
}
inline bool read_string(ReadText &out, PlainJson &in) {
  std::string_view text;
  if (!in.string(text)) return false;
  out.refer_to(text);
  return true;
}

template <typename Iter> bool skip_string(picojson::input<Iter> &in) {
  picojson::null_parse_context::dummy_str ignored;
  return picojson::_parse_string(ignored, in);
}
inline bool skip_string(PlainJson &in) {
  std::string_view ignored;
  return in.string(ignored);
}

// A picojson parse context for one place in a datagram: the datagram itself, a sample,
// its payload, its labels, a value to keep, or anything to skip. Nesting is bounded as
// in BoundedJsonContext; a number beyond double's range is kept as kind `other`, so
// every field that wants a number rejects it.
class SampleReader {
public:
  enum class Place { datagram, sample, payload, labels, value, skip };

  SampleReader(Place place, ReadBatch &batch, NestingBudget nesting, ReadValue *value = nullptr)
      : place_(place), batch_(batch), nesting_(nesting), value_(value) {}

  bool set_null() { return note(JsonKind::null); }
  bool set_bool(bool) { return note(JsonKind::other); }
  bool set_number(double f) {
    if (!std::isfinite(f)) return note(JsonKind::other);
    if (value_) value_->number = f;
    return note(JsonKind::number);
  }
  template <typename Input> bool parse_string(Input &in) {
    note(JsonKind::string);
    return value_ ? read_string(value_->text, in) : skip_string(in);
  }
  bool parse_array_start() { return enter() && note(JsonKind::array); }
  template <typename Input> bool parse_array_item(Input &in, std::size_t) {
    SampleReader item(place_ == Place::datagram ? Place::sample : Place::skip, batch_, nesting_);
    return read_value(item, in);
  }
  bool parse_array_stop(std::size_t) { return true; }
  bool parse_object_start() { return enter() && note(JsonKind::object); }
  template <typename Input> bool parse_object_item(Input &in, std::string_view key) {
    SampleReader item = member_reader(key, std::is_same_v<Input, PlainJson>); // picojson's keys are its own
    return read_value(item, in);
  }
  bool parse_object_stop() { return true; }

private:
  bool enter() { return nesting_.enter(); }

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
  SampleReader member_reader(std::string_view key, bool key_in_datagram) {
    const bool in_sample = place_ == Place::datagram || place_ == Place::sample;
    ReadSample *sample = batch_.count ? &batch_.current() : nullptr;
    if (in_sample && key == "metric_name") return {Place::value, batch_, nesting_, &sample->metric_name};
    if (in_sample && key == "payload") return {Place::payload, batch_, nesting_};
    if (place_ == Place::payload) {
      if (key == "labels") return {Place::labels, batch_, nesting_};
      if (key == "value") return {Place::value, batch_, nesting_, &sample->value};
      if (key == "observation") return {Place::value, batch_, nesting_, &sample->observation};
      if (key == "operation") return {Place::value, batch_, nesting_, &sample->operation};
    }
    if (place_ == Place::labels) return {Place::value, batch_, nesting_, &sample->label(key, key_in_datagram)};
    return {Place::skip, batch_, nesting_};
  }

  Place place_;
  ReadBatch &batch_;
  NestingBudget nesting_;
  ReadValue *value_;
};

struct Reading {
  ReadBatch batch;
  std::vector<std::string_view> label_values;
};

// Reads a whole datagram into `batch`: in place if it is plain, else with picojson.
// False when it is not JSON, or more deeply nested than HERMES_MAX_JSON_DEPTH.
inline bool read_datagram(std::string_view datagram, ReadBatch &batch) {
  batch.clear();
  SampleReader plain_reader(SampleReader::Place::datagram, batch, NestingBudget{});
  PlainJson plain(datagram);
  if (read_plain(plain_reader, plain) && plain.at_end()) return true;
  batch.clear();
  SampleReader reader(SampleReader::Place::datagram, batch, NestingBudget{});
  return parse_json_into(reader, datagram);
}

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

// ===== DETAIL: STATSD ====================================================================

namespace hermes {
namespace detail {

inline std::size_t skip_json_space(std::string_view text, std::size_t at) {
  while (at < text.size() && (plain_json_classes[static_cast<unsigned char>(text[at])] & json_space)) ++at;
  return at;
}

// Whether a JSON word or number may end at `at`: white space, ',', ']' or the end follow.
inline bool ends_json_value(std::string_view text, std::size_t at) {
  return at == text.size() || text[at] == ',' || text[at] == ']' ||
         (plain_json_classes[static_cast<unsigned char>(text[at])] & json_space);
}

// Whether `text`, which opens with '[', goes on as a JSON array could: nothing more (a
// batch cut short), ']' and only white space after it, or a first element that opens with '{',
// '[' or '"', or is true, false, null or a number (picojson's [0-9+-.eE]) ended as JSON
// ends one. A SignalFx tag list's first tag (env=prod) is none of these. Only the first
// element is looked at: a batch broken later is still the JSON reader's to refuse.
inline bool opens_json_batch(std::string_view text) {
  std::size_t at = skip_json_space(text, 1);
  if (at == text.size()) return true;
  const char first = text[at];
  if (first == ']') return skip_json_space(text, at + 1) == text.size();
  if (first == '{' || first == '[' || first == '"') return true;
  for (const std::string_view word : {"true", "false", "null"})
    if (starts_with(text.substr(at), word)) return ends_json_value(text, at + word.size());
  if (first != '-' && !is_ascii_digit(first)) return false;
  while (at < text.size() && (plain_json_classes[static_cast<unsigned char>(text[at])] & json_number_char)) ++at;
  return ends_json_value(text, at);
}

// A datagram is StatsD lines unless it opens JSON: its first byte that is not white space
// is '{', or '[' that opens a JSON batch. A line with SignalFx tags first
// ([env=prod]jobs:1|c) opens with '[' too, so a '[' alone cannot decide. Runs on every
// datagram: reads no further than the first element, allocates nothing. A blank datagram is left to the JSON
// reader, which calls it malformed_json.
inline bool is_statsd(std::string_view datagram) {
  const std::size_t first = skip_json_space(datagram, 0);
  if (first == datagram.size() || datagram[first] == '{') return false;
  return datagram[first] != '[' || !opens_json_batch(datagram.substr(first));
}

enum class StatsdType { counter, gauge, timer, histogram, distribution, set };

struct StatsdTag {
  std::string_view key, value;
};

// One line cut into views of its datagram: name:value[:value...]|type[|field...].
struct StatsdLine {
  std::string_view name, name_rest; // the name around SignalFx tags, which may stand inside it
  std::string_view values;          // one value, or several separated by ':' (DogStatsD 1.1)
  std::size_t value_count = 1;      // the samples the line holds, known before anything else is checked
  StatsdType type = StatsdType::counter;
  double rate = 1;
  bool name_tags = false; // tags came in the name (InfluxDB, Librato, SignalFx), not as |#
  std::vector<StatsdTag> tags;

  void reset() { // keeps the tags' memory
    name = name_rest = values = {};
    value_count = 1;
    type = StatsdType::counter;
    rate = 1;
    name_tags = false;
    tags.clear();
  }
};

// Buffers for StatsD lines, reused from one datagram to the next.
struct StatsdReading {
  StatsdLine line;
  std::string name; // the escaped name, then each tag's escaped key
  std::vector<std::string_view> label_values;
};

// The next line of `datagram` from `position`, without its "\n" or "\r\n"; moves `position` past it.
inline std::string_view next_statsd_line(std::string_view datagram, std::size_t &position) {
  const std::size_t end = std::min(datagram.find('\n', position), datagram.size());
  std::string_view line = datagram.substr(position, end - position);
  position = end + 1;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// A whole number text as std::from_chars reads it, whatever the locale, with an optional
// leading '+'; only finite numbers.
inline bool parse_statsd_number(std::string_view text, double &out) {
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text.empty() || text.front() == '+') return false;
  const char *end = text.data() + text.size();
  const auto result = std::from_chars(text.data(), end, out);
  return result.ec == std::errc() && result.ptr == end && std::isfinite(out);
}

inline std::optional<StatsdType> parse_statsd_type(std::string_view text) {
  if (text == "c") return StatsdType::counter;
  if (text == "g") return StatsdType::gauge;
  if (text == "ms") return StatsdType::timer;
  if (text == "h") return StatsdType::histogram;
  if (text == "d") return StatsdType::distribution;
  if (text == "s") return StatsdType::set;
  return std::nullopt;
}

inline bool observes(StatsdType type) {
  return type == StatsdType::timer || type == StatsdType::histogram || type == StatsdType::distribution;
}

// Appends the tags of a comma-separated list of key<separator>value; the value may be
// empty, the key may not. An empty list holds no tags.
inline bool read_statsd_tags(std::string_view list, char separator, StatsdLine &line) {
  if (list.empty()) return true;
  for (std::size_t start = 0; start <= list.size();) {
    const std::size_t end = std::min(list.find(',', start), list.size());
    std::string_view tag = list.substr(start, end - start);
    start = end + 1;
    if (separator == ':' && !tag.empty() && tag.front() == '#') tag.remove_prefix(1); // |#a:b,#c:d
    const std::size_t split = tag.find(separator);
    if (split == 0 || split == std::string_view::npos) return false;
    line.tags.push_back({tag.substr(0, split), tag.substr(split + 1)});
  }
  return true;
}

// Takes the tags out of a name, in the styles statsd_exporter reads: SignalFx
// name[k=v,...] first, else InfluxDB name,k=v,... or Librato name#k=v,...
inline bool read_name_tags(std::string_view name, StatsdLine &line) {
  line.name = name;
  // Where the first of each mark stands, found in one pass: most names hold none.
  std::size_t open = std::string_view::npos, close = open, mark = open;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (c == '[' && open == std::string_view::npos) open = i;
    else if (c == ']' && close == std::string_view::npos) close = i;
    else if ((c == ',' || c == '#') && mark == std::string_view::npos) mark = i;
  }
  if (open != std::string_view::npos && close != std::string_view::npos && open < close) {
    line.name = name.substr(0, open);
    line.name_rest = name.substr(close + 1);
    if (!read_statsd_tags(name.substr(open + 1, close - open - 1), '=', line)) return false;
  } else if (open == std::string_view::npos && close == std::string_view::npos) {
    if (mark == std::string_view::npos) return true;
    line.name = name.substr(0, mark);
    if (!read_statsd_tags(name.substr(mark + 1), '=', line)) return false;
  } // one bracket alone stays in the name, where it becomes '_'
  line.name_tags = !line.tags.empty();
  return true;
}

// One field after the type: @rate, #tags, or DogStatsD's container id (c:...),
// timestamp (T...), external data (e:...) and cardinality (card:...), which are checked
// and ignored.
inline bool read_statsd_field(std::string_view field, StatsdLine &line) {
  if (field.empty()) return false;
  const std::string_view rest = field.substr(1);
  const auto holds = [field](std::string_view prefix) { return field.size() > prefix.size() && starts_with(field, prefix); };
  switch (field.front()) {
  case '@': return parse_statsd_number(rest, line.rate) && line.rate > 0 && line.rate <= 1;
  case '#': return !line.name_tags && read_statsd_tags(rest, ':', line); // one tag style to a line
  case 'T': return !rest.empty() && rest.find_first_not_of("0123456789") == std::string_view::npos;
  default: return holds("c:") || holds("e:") || holds("card:");
  }
}

// The fields after the type, each after a '|', in any order.
inline bool read_statsd_fields(std::string_view fields, StatsdLine &line) {
  while (!fields.empty()) {
    fields.remove_prefix(1); // the '|'
    const std::size_t end = std::min(fields.find('|'), fields.size());
    if (!read_statsd_field(fields.substr(0, end), line)) return false;
    fields.remove_prefix(end);
  }
  return true;
}

// Cuts one line into `line`, or says why it cannot be applied.
inline std::optional<Reject> parse_statsd_line(std::string_view text, StatsdLine &line) {
  line.reset();
  if (starts_with(text, "_e{") || starts_with(text, "_sc|")) return Reject::unsupported_type; // events, service checks
  const std::size_t colon = text.find(':');
  if (colon == 0 || colon == std::string_view::npos) return Reject::malformed_sample;
  const std::string_view rest = text.substr(colon + 1);
  const std::size_t bar = std::min(rest.find('|'), rest.size());
  line.values = rest.substr(0, bar);
  line.value_count = 1 + static_cast<std::size_t>(std::count(line.values.begin(), line.values.end(), ':'));
  const std::string_view after = rest.substr(std::min(bar + 1, rest.size()));
  const std::size_t type_end = std::min(after.find('|'), after.size());
  const auto type = parse_statsd_type(after.substr(0, type_end));
  if (bar == rest.size() || !type) return Reject::malformed_sample;
  line.type = *type;
  if (line.type == StatsdType::set) return Reject::unsupported_type;
  if (line.value_count > 1 && !observes(line.type)) return Reject::malformed_sample; // several values: ms, h, d only
  const std::string_view name = text.substr(0, colon);
  if (!is_valid_utf8(name) || !read_name_tags(name, line) || !read_statsd_fields(after.substr(type_end), line))
    return Reject::malformed_sample;
  return std::nullopt;
}

inline bool is_name_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == ':';
}

// A StatsD name as the metric name it stands for, escaped as statsd_exporter escapes
// names: a leading digit gains a '_' before it, and each character outside
// [a-zA-Z0-9_:] becomes one '_', a character of several UTF-8 bytes too.
inline void append_statsd_name(std::string &out, std::string_view name, std::string_view rest = {}) {
  const std::string_view first = name.empty() ? rest : name;
  const std::size_t start = out.size();
  out.resize(start + 1 + name.size() + rest.size()); // the most it can take: no byte becomes more than one
  char *to = out.data() + start;
  if (!first.empty() && first.front() >= '0' && first.front() <= '9') *to++ = '_';
  for (const std::string_view part : {name, rest})
    for (const char c : part) {
      const auto byte = static_cast<unsigned char>(c);
      if (is_name_char(byte)) *to++ = c;
      else if ((byte & 0xC0) != 0x80) *to++ = '_'; // a continuation byte belongs to the '_' before
    }
  out.resize(static_cast<std::size_t>(to - out.data()));
}

// Whether a metric of `type` takes StatsD lines of `statsd` type.
inline bool takes(MetricType type, StatsdType statsd) {
  switch (type) {
  case MetricType::counter: return statsd == StatsdType::counter;
  case MetricType::gauge: return statsd == StatsdType::gauge;
  default: return observes(statsd);
  }
}

// The label values of a line's tags in the order `metric` declares its labels. The tags,
// keys escaped as names are, must be exactly those labels; of a repeated tag the last
// wins, as in a JSON object. Values are checked as JSON label values are.
inline std::optional<Reject> statsd_label_values(const MetricConfig &metric, const StatsdLine &line, std::string &key,
                                                 std::vector<std::string_view> &values) {
  values.assign(metric.labels.size(), std::string_view()); // a view of nothing, not even of "": no tag yet
  for (const StatsdTag &tag : line.tags) {
    key.clear();
    append_statsd_name(key, tag.key);
    const auto label = std::find(metric.labels.begin(), metric.labels.end(), key);
    if (label == metric.labels.end() || !is_valid_utf8(tag.key)) return Reject::label_mismatch;
    values[static_cast<std::size_t>(label - metric.labels.begin())] = tag.value;
  }
  for (const std::string_view value : values) {
    if (value.data() == nullptr) return Reject::label_mismatch;
    if (!is_valid_utf8(value)) return Reject::invalid_label_value;
  }
  return std::nullopt;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: CONFIG =====================================================================

namespace hermes {
namespace detail {

// The family name of a metric in OpenMetrics: a counter drops its _total.
inline std::string_view openmetrics_family(std::string_view name, MetricType type) {
  const bool total = type == MetricType::counter && ends_with(name, "_total");
  return total ? name.substr(0, name.size() - 6) : name;
}

// Every name a metric uses in either format: its family and its series' names.
inline std::vector<std::string> names_taken(const MetricConfig &metric) {
  const std::string &name = metric.name;
  const std::string family(openmetrics_family(metric.name, metric.type));
  if (metric.type == MetricType::counter)
    return family == name ? std::vector<std::string>{name} : std::vector<std::string>{family, name, family + "_created"};
  if (metric.type == MetricType::histogram) return {name, name + "_bucket", name + "_sum", name + "_count", name + "_created"};
  if (metric.type == MetricType::summary) return {name, name + "_sum", name + "_count", name + "_created"};
  return {name};
}

// Reads a config tree; every error names the file and the JSON path of the place.
class ConfigReader {
public:
  explicit ConfigReader(std::string origin) : origin_(std::move(origin)) {}

  Config read(const picojson::value &root) {
    if (!root.is<picojson::object>()) fail("", std::string("expected an object, got ") + json_type_name(root));
    const auto &top = root.get<picojson::object>();
    reject_unknown_keys(top, "", {"service_name", "gauges", "counters", "histograms", "summaries", "listen_address",
                                  "listen_port", "max_series", "ttl_seconds", "max_memory_bytes", "state_file",
                                  "state_interval_seconds", "udp_allow", "http_allow", "max_push_groups",
                                  "push_ttl_seconds"});
    Config config;
    config.service_name = read_service_name(top);
    read_series_limits(top, "", defaults_);
    read_metrics(top, "gauges", MetricType::gauge, config.metrics);
    read_metrics(top, "counters", MetricType::counter, config.metrics);
    read_metrics(top, "histograms", MetricType::histogram, config.metrics);
    read_metrics(top, "summaries", MetricType::summary, config.metrics);
    if (const auto *address = member(top, "listen_address")) config.listen_address = string_at(*address, "listen_address");
    if (const auto *port = member(top, "listen_port")) config.listen_port = port_at(*port, "listen_port");
    if (const auto *bytes = member(top, "max_memory_bytes")) config.max_memory_bytes = bytes_at(*bytes, "max_memory_bytes");
    if (const auto *path = member(top, "state_file")) config.state_file = string_at(*path, "state_file");
    if (const auto *interval = member(top, "state_interval_seconds")) {
      if (!interval->is<double>() || !(interval->get<double>() > 0))
        fail("state_interval_seconds", quote_json(*interval) + " is not a number of seconds above 0");
      config.state_interval_seconds = interval->get<double>();
    }
    if (const auto *allow = member(top, "udp_allow")) config.udp_allow = allow_list_at(*allow, "udp_allow");
    if (const auto *allow = member(top, "http_allow")) config.http_allow = allow_list_at(*allow, "http_allow");
    read_push_limits(top, config);
    check_name_collisions(config.metrics);
    return config;
  }

private:
  [[noreturn]] void fail(const std::string &place, const std::string &problem) const {
    throw ConfigError(origin_ + ": " + (place.empty() ? "" : place + ": ") + problem);
  }

  // max_push_groups (a whole number from 1) and push_ttl_seconds (seconds, 0: never).
  void read_push_limits(const picojson::object &top, Config &config) const {
    if (const auto *groups = member(top, "max_push_groups")) {
      const double n = groups->is<double>() ? groups->get<double>() : 0;
      if (!(n >= 1 && n <= 1e9 && n == std::floor(n))) fail("max_push_groups", quote_json(*groups) + " is not a whole number from 1");
      config.max_push_groups = static_cast<std::size_t>(n);
    }
    if (const auto *ttl = member(top, "push_ttl_seconds")) {
      if (!ttl->is<double>() || !(ttl->get<double>() >= 0) || !std::isfinite(ttl->get<double>()))
        fail("push_ttl_seconds", quote_json(*ttl) + " is not a number of seconds, 0 or more");
      config.push_ttl_seconds = ttl->get<double>();
    }
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

  // A whole number of bytes, or a string with a KiB, MiB or GiB suffix.
  std::size_t bytes_at(const picojson::value &value, const std::string &place) const {
    std::optional<std::size_t> bytes;
    if (value.is<double>() && value.get<double>() >= 0 && value.get<double>() < 1e18 &&
        value.get<double>() == std::floor(value.get<double>()))
      bytes = static_cast<std::size_t>(value.get<double>());
    else if (value.is<std::string>())
      bytes = parse_bytes(value.get<std::string>());
    if (!bytes) fail(place, quote_json(value) + " is not a number of bytes (such as 67108864 or \"64MiB\")");
    return *bytes;
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

  // A list of CIDR ranges; an empty list allows everyone.
  AllowList allow_list_at(const picojson::value &value, const std::string &place) const {
    if (!value.is<picojson::array>()) fail(place, std::string("expected a list of CIDR ranges, got ") + json_type_name(value));
    AllowList list;
    const auto &items = value.get<picojson::array>();
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string item_place = place + "[" + std::to_string(i) + "]";
      const std::string text = string_at(items[i], item_place);
      AddressRange range;
      const std::string problem = parse_address_range(text, range);
      if (!problem.empty()) fail(item_place, "\"" + text + "\" is not a CIDR range: " + problem);
      list.add(range, text);
    }
    return list;
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
      reject_unknown_keys(object, place, {"metric_name", "metric_description", "labels", "max_series", "ttl_seconds", "buckets",
                                          "native", "native_bucket_factor", "native_max_buckets", "native_zero_threshold"});
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
    read_native(object, place, metric);
    const auto *buckets = member(object, "buckets");
    if (!metric.native) metric.buckets = default_buckets(); // a native histogram has classic buckets only when asked
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

  // "native": true and its three settings, which mean nothing without it.
  void read_native(const picojson::object &object, const std::string &place, MetricConfig &metric) const {
    if (const auto *native = member(object, "native")) {
      if (!native->is<bool>()) fail(join(place, "native"), quote_json(*native) + " is not true or false");
      metric.native = native->get<bool>();
    }
    for (const char *key : {"native_bucket_factor", "native_max_buckets", "native_zero_threshold"})
      if (member(object, key) && !metric.native) fail(join(place, key), "applies only to a histogram with \"native\": true");
    if (const auto *factor = member(object, "native_bucket_factor")) {
      if (!factor->is<double>() || !(factor->get<double>() > 1))
        fail(join(place, "native_bucket_factor"),
           quote_json(*factor) + " is not a number above 1 (the growth from bucket to bucket)");
      metric.native_bucket_factor = factor->get<double>();
    }
    if (const auto *max = member(object, "native_max_buckets")) {
      const bool whole = max->is<double>() && max->get<double>() == std::floor(max->get<double>());
      if (!whole || max->get<double>() < 1 || max->get<double>() > HERMES_MAX_NATIVE_BUCKETS)
        fail(join(place, "native_max_buckets"),
             quote_json(*max) + " is not a whole number from 1 to " + std::to_string(HERMES_MAX_NATIVE_BUCKETS));
      metric.native_max_buckets = static_cast<std::size_t>(max->get<double>());
    }
    if (const auto *zero = member(object, "native_zero_threshold")) {
      if (!zero->is<double>() || !(zero->get<double>() >= 0 && std::isfinite(zero->get<double>())))
        fail(join(place, "native_zero_threshold"), quote_json(*zero) + " is not a finite number of 0 or more");
      metric.native_zero_threshold = zero->get<double>();
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
      const std::optional<double> parsed = parse_decimal(entry.first);
      const double quantile = parsed.value_or(0);
      if (!(quantile > 0 && quantile < 1)) fail(item_place, "\"" + entry.first + "\" is not a quantile between 0 and 1");
      for (const auto &seen : metric.objectives)
        if (seen.first == quantile) fail(item_place, "\"" + entry.first + "\" is the quantile " + format_double(quantile) + " again");
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
    if (is_ascii_lower(name[i - 1]) && is_ascii_upper(name[i])) return true;
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
// The port of an IPv4 or IPv6 address.
inline std::uint16_t port_of(const sockaddr *address) {
  if (address->sa_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6 *>(address)->sin6_port);
  return ntohs(reinterpret_cast<const sockaddr_in *>(address)->sin_port);
}

inline std::string format_endpoint(const sockaddr *address) {
  char host[INET6_ADDRSTRLEN] = "?";
  const bool v6 = address->sa_family == AF_INET6;
  const void *bytes = v6 ? static_cast<const void *>(&reinterpret_cast<const sockaddr_in6 *>(address)->sin6_addr)
                         : static_cast<const void *>(&reinterpret_cast<const sockaddr_in *>(address)->sin_addr);
  ::inet_ntop(address->sa_family, bytes, host, sizeof host);
  const std::string port = std::to_string(port_of(address));
  return v6 ? std::string("[") + host + "]:" + port : std::string(host) + ":" + port;
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
  // A name such as localhost may stand for ::1 and 127.0.0.1: the IPv4 address is taken,
  // because Hermes listens on 0.0.0.0 by default, and UDP would lose every datagram
  // sent to an address nobody listens on without a word.
  const addrinfo *chosen = found;
  for (const addrinfo *candidate = found; candidate; candidate = candidate->ai_next)
    if (candidate->ai_family == AF_INET) {
      chosen = candidate;
      break;
    }
  SocketAddress address;
  std::memcpy(&address.storage, chosen->ai_addr, chosen->ai_addrlen);
  address.length = chosen->ai_addrlen;
  ::freeaddrinfo(found);
  return address;
}

// The address a socket is bound to; nullopt when the kernel cannot tell.
inline std::optional<SocketAddress> local_address(int fd) {
  SocketAddress address;
  address.length = sizeof address.storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr *>(&address.storage), &address.length) != 0) return std::nullopt;
  return address;
}

inline std::string local_endpoint(int fd) {
  const auto address = local_address(fd);
  return address ? format_endpoint(address->get()) : "?";
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
// gets what the cap allows elsewhere.
inline FileDescriptor open_udp_listener(const std::string &host, std::uint16_t port, int receive_buffer) {
  const SocketAddress address = resolve(host, port, SOCK_DGRAM, true);
  FileDescriptor fd = open_socket(address, SOCK_DGRAM, "udp");
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &receive_buffer, sizeof receive_buffer) != 0)
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
  bind_socket(fd, address, "udp");
  return fd;
}

// The kernel's count of datagrams it dropped on a socket, as SO_MEMINFO tells it when
// asked (Linux 4.12 and later; not under qemu-user, which does not pass it on).
inline std::optional<std::uint32_t> kernel_drop_counter(int fd) {
  std::array<std::uint32_t, SK_MEMINFO_VARS> info{};
  socklen_t length = sizeof info;
  if (::getsockopt(fd, SOL_SOCKET, SO_MEMINFO, info.data(), &length) != 0 || length <= SK_MEMINFO_DROPS * sizeof info[0])
    return std::nullopt;
  return info[SK_MEMINFO_DROPS];
}

// The datagrams the kernel dropped on the UDP socket, from its counter, which wraps at
// 2^32 (the difference between two readings does not). Where the kernel tells it when
// asked (SO_MEMINFO), it is asked when the figure is wanted, and once a second so that no
// wrap goes unseen: nothing per datagram. Older kernels attach it to every datagram
// instead (SO_RXQ_OVFL), which costs about a tenth of a datagram's CPU; only they pay it.
class KernelDrops {
public:
  explicit KernelDrops(int fd) : fd_(fd) {
    const int on = 1;
    carried_ = !kernel_drop_counter(fd) && ::setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof on) == 0;
  }
  bool carried() const { return carried_; } // then receive with ReceiveBatch's room for it
  void note_carried(std::uint32_t counter) { fold(counter); }
  void ask() {
    if (const auto counter = asked()) fold(*counter);
  }
  std::uint64_t total() const { // as of now, changing nothing
    const auto counter = asked();
    return counter ? total_ + static_cast<std::uint32_t>(*counter - last_) : total_;
  }

private:
  std::optional<std::uint32_t> asked() const { return carried_ ? std::nullopt : kernel_drop_counter(fd_); }
  void fold(std::uint32_t counter) {
    total_ += static_cast<std::uint32_t>(counter - last_);
    last_ = counter;
  }
  int fd_;
  bool carried_ = false;
  std::uint32_t last_ = 0;
  std::uint64_t total_ = 0;
};

inline int receive_buffer_size(int fd) {
  int bytes = 0;
  socklen_t length = sizeof bytes;
  ::getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, &length);
  return bytes / 2; // Linux reports twice what it grants, the other half for its bookkeeping
}

// Where recvmmsg() puts a batch of datagrams: one slot of HERMES_MAX_DATAGRAM_SIZE each,
// and room for each one's sender and, on kernels that attach it, drop counter.
class ReceiveBatch {
public:
  ReceiveBatch() : data_(new char[HERMES_RECEIVE_BATCH * std::size_t{HERMES_MAX_DATAGRAM_SIZE}]) {
    for (std::size_t i = 0; i < HERMES_RECEIVE_BATCH; ++i) {
      chunks_[i] = {data_.get() + i * HERMES_MAX_DATAGRAM_SIZE, HERMES_MAX_DATAGRAM_SIZE};
      messages_[i].msg_hdr.msg_iov = &chunks_[i];
      messages_[i].msg_hdr.msg_iovlen = 1;
    }
  }
  ReceiveBatch(const ReceiveBatch &) = delete; // the messages point into it
  ReceiveBatch &operator=(const ReceiveBatch &) = delete;

  // Receives what is waiting, up to `wanted` datagrams (at most a batch); returns how
  // many, 0 when nothing is. With `senders`, source(i) tells who sent each; with
  // `drop_counters`, drop_counter(i) what the kernel attached. Only the fields the
  // kernel writes are set again each time.
  int receive(int fd, int wanted, bool senders = false, bool drop_counters = false) {
    const unsigned count = static_cast<unsigned>(std::clamp(wanted, 0, HERMES_RECEIVE_BATCH));
    for (std::size_t i = 0; i < count; ++i) {
      messages_[i].msg_hdr.msg_name = senders ? &sources_[i] : nullptr;
      messages_[i].msg_hdr.msg_namelen = senders ? sizeof sources_[i] : 0;
      messages_[i].msg_hdr.msg_control = drop_counters ? controls_[i].data() : nullptr;
      messages_[i].msg_hdr.msg_controllen = drop_counters ? controls_[i].size() : 0;
    }
    const int got = retry_on_eintr([&] { return ::recvmmsg(fd, messages_.data(), count, MSG_DONTWAIT, nullptr); });
    return got > 0 ? got : 0;
  }

  std::string_view datagram(int i) const {
    return {data_.get() + static_cast<std::size_t>(i) * HERMES_MAX_DATAGRAM_SIZE, messages_[static_cast<std::size_t>(i)].msg_len};
  }
  bool truncated(int i) const { return messages_[static_cast<std::size_t>(i)].msg_hdr.msg_flags & MSG_TRUNC; }
  // The sender's address, as long as source_length(i) says (0: none told).
  const sockaddr *source(int i) const { return reinterpret_cast<const sockaddr *>(&sources_[static_cast<std::size_t>(i)]); }
  socklen_t source_length(int i) const { return messages_[static_cast<std::size_t>(i)].msg_hdr.msg_namelen; }

  // The kernel's drop counter, if it came with datagram i (SO_RXQ_OVFL).
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
  std::array<sockaddr_in6, HERMES_RECEIVE_BATCH> sources_{}; // UDP senders, IPv4 or IPv6; a unix one is cut short
  std::array<std::array<char, CMSG_SPACE(sizeof(std::uint32_t))>, HERMES_RECEIVE_BATCH> controls_{};
};

// Datagrams copied out of a ReceiveBatch to be applied later, in the order they came,
// within HERMES_RENDER_HOLD_BYTES. Each one's bookkeeping counts against that budget
// too, so that a flood of empty datagrams is bounded as well. Its memory is reused.
class HeldDatagrams {
  struct Entry;

public:
  enum class Source { udp, unix_socket };
  static constexpr std::size_t bookkeeping_bytes = 32; // each one's Entry, counted against the budget

  // How many datagrams surely fit the budget still, each as long as a datagram may be.
  std::size_t room() const {
    const std::size_t budget = HERMES_RENDER_HOLD_BYTES;
    return cost_ < budget ? (budget - cost_) / (HERMES_MAX_DATAGRAM_SIZE + bookkeeping_bytes) : 0;
  }
  std::size_t cost() const { return cost_; } // bytes of the budget in use

  void hold(std::string_view datagram, bool truncated, Source source) {
    entries_.push_back({bytes_.size(), datagram.size(), truncated, source});
    bytes_ += datagram;
    cost_ += datagram.size() + bookkeeping_bytes;
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
  static_assert(sizeof(Entry) <= bookkeeping_bytes, "the bookkeeping counted must cover an entry");
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
  const auto address = local_address(fd);
  return address ? port_of(address->get()) : 0;
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
  return is_ascii_alnum(c) || (c != '\0' && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
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
  const bool version_ok = version.size() == 8 && starts_with(version, "HTTP/") && is_ascii_digit(version[5]) &&
                          version[6] == '.' && is_ascii_digit(version[7]);
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

// Every status Hermes sends, with its reason phrase; hermes_http_requests_total lists
// each from the start.
struct HttpStatus {
  int code;
  const char *text;
};
constexpr HttpStatus http_statuses[] = {
    {200, "OK"},          {202, "Accepted"}, {400, "Bad Request"}, {401, "Unauthorized"}, {403, "Forbidden"},
    {404, "Not Found"},   {405, "Method Not Allowed"}, {411, "Length Required"}, {413, "Payload Too Large"},
    {415, "Unsupported Media Type"}, {431, "Request Header Fields Too Large"},   {503, "Service Unavailable"},
    {505, "HTTP Version Not Supported"}, {507, "Insufficient Storage"}};

inline const char *status_text(int status) {
  for (const HttpStatus &known : http_statuses)
    if (known.code == status) return known.text;
  return "Unknown"; // never sent: every response Hermes makes has a status of the table
}

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::shared_ptr<const std::string> shared_body; // when set, the body, which other responses may share
  bool head_only = false; // HEAD: the headers of GET, no body
  const std::string &text() const { return shared_body ? *shared_body : body; }
};

// The status line and headers, up to the blank line. A 503 asks to come back in a second.
inline std::string response_head(const HttpResponse &response) {
  std::string out = "HTTP/1.0 " + std::to_string(response.status) + " " + status_text(response.status) + "\r\n";
  out += "Content-Type: " + response.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(response.text().size()) + "\r\n";
  if (response.status == 401) out += "WWW-Authenticate: Bearer\r\n";
  if (response.status == 405) out += "Allow: GET, HEAD\r\n";
  if (response.status == 503) out += "Retry-After: 1\r\n";
  out += "Connection: close\r\n\r\n";
  return out;
}

inline std::string serialize_response(const HttpResponse &response) {
  return response_head(response) + (response.head_only ? std::string() : response.text());
}

// `head_only` for a HEAD request: the headers of the GET answer, without its body.
inline HttpResponse error_response(int status, bool head_only = false) {
  HttpResponse response;
  response.status = status;
  response.head_only = head_only;
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

// Reads a bearer token file into `token`: its bytes without the line end that ends it.
// Returns "", or what is wrong: the file cannot be read, is empty, too long, or holds
// a byte that an Authorization header cannot carry (only visible ASCII can).
inline std::string read_token_file(const std::string &path, std::string &token, const std::string &what = "http token file") {
  std::string text;
  if (const int error = read_file(path.c_str(), HERMES_MAX_TOKEN_SIZE + 3, text))
    return what + " " + path + ": cannot read: " + std::strerror(error);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (text.empty()) return what + " " + path + ": empty: it must hold the bearer token";
  if (text.size() > HERMES_MAX_TOKEN_SIZE)
    return what + " " + path + ": longer than " + std::to_string(HERMES_MAX_TOKEN_SIZE) + " bytes";
  if (!std::all_of(text.begin(), text.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
    return what + " " + path + ": holds a space, a control character or a byte past ASCII, which a bearer token cannot";
  token = std::move(text);
  return "";
}

// Whether two strings are equal, in a time that depends on the length of `secret` only:
// where the first difference lies stays hidden from a client that measures the answer.
inline bool equal_in_constant_time(std::string_view given, std::string_view secret) {
  unsigned difference = given.size() == secret.size() ? 0 : 1;
  for (std::size_t i = 0; i < secret.size(); ++i)
    difference |= static_cast<unsigned char>(secret[i]) ^ static_cast<unsigned char>(i < given.size() ? given[i] : 0);
  return difference == 0;
}

// Whether an Authorization header is "Bearer <token>" (the scheme in any case, RFC 9110).
inline bool bearer_matches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view scheme = "bearer ";
  if (authorization.size() <= scheme.size()) return false;
  for (std::size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != scheme[i]) return false;
  return equal_in_constant_time(trim(authorization.substr(scheme.size())), token);
}

// The paths a bearer token guards; the probes' paths stay open.
inline bool needs_token(const std::string &path) { return path == "/metrics" || path == "/"; }

// Answers one parsed request; `render(format)` gives the /metrics body when it is needed,
// or null when there is no memory for one (503). OpenMetrics or protobuf is served when
// the client prefers it and the flag of the same name allows it.
template <typename Render>
HttpResponse route(const HttpRequest &request, bool openmetrics, bool protobuf, Render &&render) {
  if (request.version[5] != '1') return error_response(505);
  if (request.method != "GET" && request.method != "HEAD") return error_response(405);
  HttpResponse response;
  response.head_only = request.method == "HEAD";
  if (request.path == "/metrics") {
    const Format format = negotiate_format(header(request, "accept"), openmetrics, protobuf);
    response.content_type = content_type(format);
    response.shared_body = render(format);
    if (!response.shared_body) {
      const bool head_only = response.head_only;
      response = error_response(503);
      response.head_only = head_only;
    }
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

// What the front end hands the requests of the Pushgateway API to: whether a request is
// one (seen once its head is read), and its answer once its body is read too. Empty
// `takes`: no push API.
struct PushEndpoint {
  std::function<bool(const HttpRequest &)> takes;
  std::function<HttpResponse(const HttpRequest &, std::string_view body)> answer;
  std::size_t max_body = 0;  // bytes; a longer body is answered 413
  std::string token_file;    // a bearer token pushes must carry; empty: none
};

// One HTTP client: its request head as it arrives, then its response as it leaves.
// After the response it lingers: reads and drops what the client still sends until
// the client closes, because closing a socket with unread input resets the connection
// and can destroy the response before the client has read it.
struct Connection {
  enum class Phase { reading, writing, lingering, done };
  FileDescriptor fd;
  std::uint64_t sequence = 0; // order of accept; the lowest is the oldest
  bool refused = false;       // admitted over HERMES_MAX_CONNECTIONS: answered 503 once its head is read
  bool forbidden = false;     // from outside Options::http_allow: answered 403 once its head is read
  Phase phase = Phase::reading;
  std::string input;
  std::string head; // the response's, sent before its body: the body is not copied
  std::string body;
  std::shared_ptr<const std::string> shared_body; // a /metrics body, in place of `body`
  std::size_t sent = 0; // of head and body together
  std::chrono::steady_clock::time_point deadline;
  std::optional<HttpRequest> push; // a push whose body is being read, after its head in `input`
  std::size_t body_start = 0, body_length = 0;
  MemoryBudget *budget = nullptr; // where the push body's bytes were taken from
  std::size_t body_taken = 0;
  ~Connection() {
    if (budget) budget->give_back(body_taken);
  }
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: PUSH GROUPING KEY ==========================================================
//
// The Pushgateway API's paths: /metrics/job/<JOB>{/<NAME>/<VALUE>}, where a name
// suffixed @base64 (job@base64 too) carries its value in base64url, as Pushgateway
// 1.5.1 reads them. Errors are worded as Pushgateway words them, so that a client's log
// says the same whichever gateway answered.

namespace hermes {
namespace detail {

// Label pairs sorted by name: a grouping key, or the labels of one pushed sample.
using PushLabels = std::vector<std::pair<std::string, std::string>>;

// A string as Go's %q writes it: double quotes, with \" \\ and the C escapes, other
// control bytes and bytes that are not UTF-8 as \xNN.
inline std::string go_quote(std::string_view text) {
  static constexpr char escapes[] = "\a\b\f\n\r\t\v", letters[] = "abfnrtv";
  std::string out = "\"";
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte == '"' || byte == '\\') {
      out += '\\', out += static_cast<char>(byte);
    } else if (byte != 0 && std::strchr(escapes, byte) != nullptr) {
      out += '\\', out += letters[std::strchr(escapes, byte) - escapes];
    } else if (byte >= 0x20 && byte < 0x7f) {
      out += static_cast<char>(byte);
    } else {
      std::size_t length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
      if (byte >= 0x80 && i + length <= text.size() && is_valid_utf8(text.substr(i, length))) {
        out += text.substr(i, length);
        i += length - 1;
        continue;
      }
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", byte);
      out += hex;
    }
  }
  return out + '"';
}

// A byte as Go's %q writes a byte: a quoted character, read as the code point of that value.
inline std::string go_quote_byte(unsigned char byte) {
  if (byte == '\'') return "'\\''";
  if (byte == '"') return "'\"'";
  std::string quoted = go_quote(std::string(1, static_cast<char>(byte < 0x80 ? byte : 0)));
  if (byte >= 0x80) {
    char text[12];
    if (byte < 0xA0 || byte == 0xAD) {
      std::snprintf(text, sizeof text, "\\u%04x", byte);
    } else {
      text[0] = static_cast<char>(0xC0 | (byte >> 6)), text[1] = static_cast<char>(0x80 | (byte & 0x3F)), text[2] = '\0';
    }
    quoted = std::string("\"") + text + "\"";
  }
  quoted.front() = quoted.back() = '\'';
  return quoted;
}

// The path with %XX escapes decoded, as Go's net/url does before routing; nullopt for
// a bad escape.
inline std::optional<std::string> percent_decoded(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (path[i] != '%') {
      out += path[i];
      continue;
    }
    const auto digit = [&](std::size_t at) -> int {
      if (at >= path.size()) return -1;
      const char c = path[at];
      return is_ascii_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    };
    const int high = digit(i + 1), low = digit(i + 2);
    if (high < 0 || low < 0) return std::nullopt;
    out += static_cast<char>(high * 16 + low);
    i += 2;
  }
  return out;
}

// base64url without padding (trailing '=' ignored), as Go's base64.RawURLEncoding
// decodes it: the bytes, or the offset of the first bad input byte as `bad_at`, with
// `out` then holding what came before the quantum that failed.
inline bool decode_base64url(std::string_view text, std::string &out, std::size_t &bad_at) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  out.clear();
  std::uint32_t bits = 0;
  std::size_t held = 0;
  std::string quantum;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const int value = is_ascii_upper(c) ? c - 'A' : is_ascii_lower(c) ? c - 'a' + 26 : is_ascii_digit(c) ? c - '0' + 52
                      : c == '-' ? 62 : c == '_' ? 63 : -1;
    if (value < 0) return bad_at = i, false;
    bits = bits << 6 | static_cast<std::uint32_t>(value);
    if (++held == 4) {
      out += static_cast<char>(bits >> 16), out += static_cast<char>(bits >> 8), out += static_cast<char>(bits);
      bits = 0, held = 0;
    }
  }
  if (held == 1) return bad_at = text.size() - 1, false;
  if (held == 2) out += static_cast<char>(bits >> 4);
  if (held == 3) out += static_cast<char>(bits >> 10), out += static_cast<char>(bits >> 2);
  return true;
}

// A grouping key read from a push path: the labels, sorted by name with job among them,
// or what is wrong with the path.
struct GroupingKey {
  PushLabels labels;
  std::string problem; // empty when the key is good
};

inline bool is_push_path(std::string_view path) {
  return starts_with(path, "/metrics/job/") || starts_with(path, "/metrics/job@base64/");
}

// Pushgateway's splitLabels: name/value pairs after the job, each name a label name not
// starting with __, its value base64url when the name ends in @base64.
inline std::string read_grouping_labels(std::string_view rest, std::map<std::string, std::string> &labels) {
  if (rest.size() <= 1) return "";
  const std::vector<std::string_view> parts = split(rest, '/');
  if (parts.size() % 2 == 0) return "odd number of components in label string " + go_quote(rest);
  for (std::size_t i = 1; i + 1 < parts.size(); i += 2) {
    std::string_view name = parts[i];
    const bool base64 = ends_with(name, "@base64");
    if (base64) name.remove_suffix(sizeof "@base64" - 1);
    if (!is_label_name(name) || starts_with(name, "__")) return "improper label name " + go_quote(name);
    std::string value(parts[i + 1]);
    std::size_t bad_at = 0;
    if (base64 && !decode_base64url(parts[i + 1], value, bad_at))
      return "invalid base64 encoding for label " + std::string(name) + "=" + go_quote(parts[i + 1]) +
             ": illegal base64 data at input byte " + std::to_string(bad_at);
    labels[std::string(name)] = std::move(value);
  }
  return "";
}

inline GroupingKey parse_grouping_key(std::string_view raw_path) {
  GroupingKey key;
  const auto path = percent_decoded(raw_path);
  if (!path) return key.problem = "invalid URL escape in " + go_quote(raw_path), key;
  std::string_view rest = std::string_view(*path).substr(sizeof "/metrics/" - 1);
  const bool base64 = starts_with(rest, "job@base64/");
  rest.remove_prefix(base64 ? sizeof "job@base64/" - 1 : sizeof "job/" - 1);
  const std::size_t slash = rest.find('/');
  std::string job(rest.substr(0, slash));
  rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  std::size_t bad_at = 0;
  if (base64 && !decode_base64url(std::string(job), job, bad_at))
    return key.problem = "invalid base64 encoding in job name " + go_quote(job) + ": illegal base64 data at input byte " +
                         std::to_string(bad_at), key;
  if (job.empty()) return key.problem = "job name is required", key;
  std::map<std::string, std::string> labels;
  key.problem = read_grouping_labels(rest, labels);
  labels["job"] = job;
  key.labels.assign(labels.begin(), labels.end());
  return key;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: PUSH TEXT FORMAT ===========================================================
//
// A body in the text format 0.0.4, read as Pushgateway 1.5.1 reads it (the Prometheus
// text parser of its time): the same families, samples and labels, and on a bad body
// the same "text format parsing error in line N: ..." message. A state machine over the
// body's bytes, one state per function as there; nothing is applied from a body that fails.

namespace hermes {
namespace detail {

// The families of the Pushgateway API, in the order of metrics.proto's MetricType.
enum class PushType { counter, gauge, summary, untyped, histogram, gauge_histogram, count_ };

inline const char *to_string(PushType type) {
  static constexpr const char *names[] = {"counter", "gauge", "summary", "untyped", "histogram", "gauge_histogram"};
  return name_of(type, names);
}

// One pushed sample: a counter's, gauge's or untyped value, or a summary's or
// histogram's count, sum, and quantiles (quantile, value) or buckets (upper bound,
// cumulative count).
struct PushedMetric {
  PushLabels labels; // sorted by name once the grouping labels are in
  double value = 0;
  double count = 0, sum = 0;
  std::vector<std::pair<double, double>> points;
  std::string native;          // a histogram's native fields (5 to 14 of metrics.proto's Histogram), as pushed
  PushType kind = PushType::count_; // the value it holds; count_: none
  bool has_timestamp = false;
};

struct PushedFamily {
  std::string name;
  std::optional<std::string> help; // absent: no HELP line, as Pushgateway writes it
  std::optional<PushType> type;    // absent until a TYPE line or a sample sets it
  std::vector<PushedMetric> metrics;
};

// Go's strconv.ParseFloat as the text parser calls it: decimal, Inf, Infinity or NaN in
// any case; no hexadecimal, no underscores; a finite number too large is an error.
inline std::optional<double> parse_go_float(std::string_view text) {
  if (text.find_first_of("pP_") != std::string_view::npos || text.empty()) return std::nullopt;
  const bool negative = text[0] == '-';
  std::string_view body = text[0] == '+' || text[0] == '-' ? text.substr(1) : text;
  const std::string word = lowercase(body);
  if (word == "inf" || word == "infinity") return negative ? -HUGE_VAL : HUGE_VAL;
  if (word == "nan" && body.size() == text.size()) return std::nan("");
  std::size_t i = 0, digits = 0;
  long order = 0; // digits before the point, leading zeros aside: how large the number is
  bool leading = true;
  for (; i < body.size() && is_ascii_digit(body[i]); ++i, ++digits)
    if (!(leading = leading && body[i] == '0')) ++order;
  if (i < body.size() && body[i] == '.')
    for (++i; i < body.size() && is_ascii_digit(body[i]); ++i) ++digits;
  if (digits == 0) return std::nullopt;
  long exponent = 0;
  if (i < body.size() && (body[i] == 'e' || body[i] == 'E')) {
    std::size_t k = i + 1;
    const bool minus = k < body.size() && body[k] == '-';
    if (k < body.size() && (body[k] == '+' || body[k] == '-')) ++k;
    if (k == body.size()) return std::nullopt;
    for (; k < body.size(); ++k) {
      if (!is_ascii_digit(body[k])) return std::nullopt;
      exponent = std::min(exponent * 10 + (body[k] - '0'), 100000L);
    }
    exponent = minus ? -exponent : exponent;
    i = body.size();
  }
  if (i != body.size()) return std::nullopt;
  double value = 0;
  const auto result = std::from_chars(body.data(), body.data() + body.size(), value);
  const bool out_of_range = result.ec == std::errc::result_out_of_range;
  if (out_of_range ? order + exponent > 0 : std::isinf(value)) return std::nullopt; // too large: Go says so
  if (out_of_range) value = 0; // below the smallest double: Go reads 0
  return negative ? -value : value;
}

// Go's strconv.ParseInt(text, 10, 64).
inline std::optional<std::int64_t> parse_go_int(std::string_view text) {
  if (!text.empty() && text[0] == '+') text.remove_prefix(1);
  std::int64_t value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

class PushTextParser {
public:
  // The families of `body` by name, or nullopt and error() saying why.
  std::optional<std::map<std::string, PushedFamily>> parse(std::string_view body);
  const std::string &error() const { return error_; }

private:
  enum class Next { line, comment, metric_name, labels, label_name, label_value, value, timestamp, help, type, stop };
  enum class State { ok, end, failed }; // end: the body ended inside a line

  bool read() {
    if (at_ >= body_.size()) return state_ = State::end, false;
    byte_ = static_cast<unsigned char>(body_[at_++]);
    return true;
  }
  bool stopped() const { return state_ != State::ok; }
  Next fail(const std::string &message) {
    state_ = State::failed;
    error_ = "text format parsing error in line " + std::to_string(line_) + ": " + message;
    return Next::stop;
  }
  static bool blank(unsigned char c) { return c == ' ' || c == '\t'; }
  bool skip_blank() {
    while (read() && blank(byte_)) {
    }
    return !stopped();
  }
  bool skip_blank_if_blank() { return blank(byte_) ? skip_blank() : true; }
  bool token_until_white() {
    token_.clear();
    while (!stopped() && !blank(byte_) && byte_ != '\n') {
      token_ += static_cast<char>(byte_);
      read();
    }
    return !stopped();
  }
  bool token_until_newline(bool escapes);
  bool token_as_name(bool metric);
  bool token_as_label_value();
  void set_family();
  bool summary_or_histogram() const {
    return family_->type == PushType::summary || family_->type == PushType::histogram;
  }

  Next step(Next next);
  Next start_of_line();
  Next start_comment();
  Next metric_name();
  Next label_name();
  Next label_value();
  Next value();
  Next timestamp();
  Next help();
  Next type();

  std::string_view body_;
  std::size_t at_ = 0, line_ = 0;
  State state_ = State::ok;
  unsigned char byte_ = 0;
  std::string token_, error_;
  std::map<std::string, PushedFamily> families_;
  PushedFamily *family_ = nullptr;
  PushedMetric metric_;             // the sample being read
  PushedMetric *current_ = nullptr; // where its value goes: itself, or the summary or histogram it joins
  std::map<std::pair<std::string, PushLabels>, std::size_t> joined_; // summaries and histograms by labels but quantile and le
  std::map<std::string, std::string> signature_; // the labels of the sample being read but quantile and le
  std::string label_name_;
  bool special_ = false; // the label is a summary's quantile or a histogram's le
  double quantile_ = NAN, bucket_ = NAN;
  bool is_count_ = false, is_sum_ = false;
};

inline std::optional<std::map<std::string, PushedFamily>> PushTextParser::parse(std::string_view body) {
  body_ = body, at_ = 0, line_ = 0, state_ = State::ok;
  families_.clear(), joined_.clear(), family_ = nullptr;
  for (Next next = Next::line; next != Next::stop;) next = step(next);
  if (state_ == State::end) fail("unexpected end of input stream");
  if (state_ != State::ok) return std::nullopt;
  for (auto it = families_.begin(); it != families_.end();) it = it->second.metrics.empty() ? families_.erase(it) : std::next(it);
  return std::move(families_);
}

inline PushTextParser::Next PushTextParser::step(Next next) {
  switch (next) {
  case Next::line: return start_of_line();
  case Next::comment: return start_comment();
  case Next::metric_name: return metric_name();
  case Next::labels:
    if (summary_or_histogram()) signature_.clear(), quantile_ = NAN, bucket_ = NAN;
    return byte_ == '{' ? Next::label_name : value();
  case Next::label_name: return label_name();
  case Next::label_value: return label_value();
  case Next::value: return value();
  case Next::timestamp: return timestamp();
  case Next::help: return help();
  case Next::type: return type();
  case Next::stop: break;
  }
  return Next::stop;
}

inline PushTextParser::Next PushTextParser::start_of_line() {
  ++line_;
  if (!skip_blank()) {
    if (state_ == State::end) state_ = State::ok; // the body ends between lines: done
    return Next::stop;
  }
  if (byte_ == '#') return Next::comment;
  if (byte_ == '\n') return Next::line;
  return Next::metric_name;
}

// "# HELP name text", "# TYPE name type", or any other comment, skipped.
inline PushTextParser::Next PushTextParser::start_comment() {
  if (!skip_blank()) return Next::stop;
  if (byte_ == '\n') return Next::line;
  if (!token_until_white()) return Next::stop;
  if (byte_ == '\n') return Next::line;
  const std::string keyword = token_;
  if (keyword != "HELP" && keyword != "TYPE") {
    while (byte_ != '\n')
      if (!read()) return Next::stop;
    return Next::line;
  }
  if (!skip_blank() || !token_as_name(true)) return Next::stop;
  if (byte_ == '\n') return Next::line;
  if (!blank(byte_)) return fail("invalid metric name in comment");
  set_family();
  if (!skip_blank()) return Next::stop;
  if (byte_ == '\n') return Next::line;
  return keyword == "HELP" ? Next::help : Next::type;
}

inline PushTextParser::Next PushTextParser::metric_name() {
  if (!token_as_name(true)) return Next::stop;
  if (token_.empty()) return fail("invalid metric name");
  set_family();
  if (!family_->type) family_->type = PushType::untyped;
  metric_ = PushedMetric();
  if (!skip_blank_if_blank()) return Next::stop;
  return Next::labels;
}

inline PushTextParser::Next PushTextParser::label_name() {
  if (!skip_blank()) return Next::stop;
  if (byte_ == '}') return skip_blank() ? value() : Next::stop;
  if (!token_as_name(false)) return Next::stop;
  if (token_.empty()) return fail("invalid label name for metric " + go_quote(family_->name));
  label_name_ = token_;
  if (label_name_ == "__name__") return fail("label name \"__name__\" is reserved");
  const bool special = (family_->type == PushType::summary && label_name_ == "quantile") ||
                       (family_->type == PushType::histogram && label_name_ == "le");
  special_ = special;
  if (!special) metric_.labels.emplace_back(label_name_, std::string());
  if (!skip_blank_if_blank()) return Next::stop;
  if (byte_ != '=') return fail("expected '=' after label name, found " + go_quote_byte(byte_));
  for (std::size_t i = 0; !special && i + 1 < metric_.labels.size(); ++i)
    if (metric_.labels[i].first == label_name_) return fail("duplicate label names for metric " + go_quote(family_->name));
  return Next::label_value;
}

inline PushTextParser::Next PushTextParser::label_value() {
  const bool special = special_;
  if (!skip_blank()) return Next::stop;
  if (byte_ != '"') return fail("expected '\"' at start of label value, found " + go_quote_byte(byte_));
  if (!token_as_label_value()) return Next::stop;
  if (!is_valid_utf8(token_)) return fail("invalid label value " + go_quote(token_));
  if (!special) metric_.labels.back().second = token_;
  if (summary_or_histogram()) {
    if (special) {
      const auto bound = parse_go_float(token_);
      const char *label = family_->type == PushType::summary ? "quantile" : "le";
      if (!bound) return fail(std::string("expected float as value for '") + label + "' label, got " + go_quote(token_));
      (family_->type == PushType::summary ? quantile_ : bucket_) = *bound;
    } else {
      signature_[label_name_] = token_;
    }
  }
  if (!skip_blank()) return Next::stop;
  if (byte_ == ',') return Next::label_name;
  if (byte_ == '}') return skip_blank() ? value() : Next::stop;
  return fail("unexpected end of label value " + go_quote(token_));
}

// The sample's value; a summary's or histogram's line joins the series of the same
// labels read before, as the text parser joins them.
inline PushTextParser::Next PushTextParser::value() {
  current_ = nullptr;
  if (summary_or_histogram()) {
    const auto key = std::make_pair(family_->name, PushLabels(signature_.begin(), signature_.end()));
    const auto found = joined_.find(key);
    if (found != joined_.end()) {
      current_ = &family_->metrics[found->second];
    } else {
      joined_.emplace(key, family_->metrics.size());
    }
  }
  if (!current_) family_->metrics.push_back(std::move(metric_)), current_ = &family_->metrics.back();
  current_->kind = *family_->type;
  if (!token_until_white()) return Next::stop;
  const auto number = parse_go_float(token_);
  if (!number) return fail("expected float as value, got " + go_quote(token_));
  const double value = *number;
  const auto as_count = [](double v) { return v >= 0 ? std::min(v, 0x1p64 - 2048) : 0.0; }; // Go's uint64(v), within range
  switch (*family_->type) {
  case PushType::counter:
  case PushType::gauge:
  case PushType::untyped: current_->value = value; break;
  case PushType::summary:
  case PushType::histogram: {
    const bool summary = family_->type == PushType::summary;
    const double point = summary ? quantile_ : bucket_;
    if (is_count_) {
      current_->count = std::trunc(as_count(value));
    } else if (is_sum_) {
      current_->sum = value;
    } else if (!std::isnan(point)) {
      current_->points.emplace_back(point, summary ? value : std::trunc(as_count(value)));
    }
    break;
  }
  case PushType::gauge_histogram:
  case PushType::count_: return fail("unexpected type for metric name " + go_quote(family_->name));
  }
  return byte_ == '\n' ? Next::line : Next::timestamp;
}

inline PushTextParser::Next PushTextParser::timestamp() {
  if (!skip_blank() || !token_until_white()) return Next::stop;
  if (!parse_go_int(token_)) return fail("expected integer as timestamp, got " + go_quote(token_));
  current_->has_timestamp = true;
  if (!token_until_newline(false)) return Next::stop;
  if (!token_.empty()) return fail("spurious string after timestamp: " + go_quote(token_));
  return Next::line;
}

inline PushTextParser::Next PushTextParser::help() {
  if (family_->help) return fail("second HELP line for metric name " + go_quote(family_->name));
  if (!token_until_newline(true)) return Next::stop;
  family_->help = token_;
  return Next::line;
}

inline PushTextParser::Next PushTextParser::type() {
  if (family_->type) return fail("second TYPE line for metric name " + go_quote(family_->name) + ", or TYPE reported after samples");
  if (!token_until_newline(false)) return Next::stop;
  const std::string word = lowercase(token_);
  for (std::size_t i = 0; i < static_cast<std::size_t>(PushType::count_); ++i)
    if (word == to_string(static_cast<PushType>(i))) return family_->type = static_cast<PushType>(i), Next::line;
  return fail("unknown metric type " + go_quote(token_));
}

// The rest of the line; HELP text with its escapes \\ and \n read.
inline bool PushTextParser::token_until_newline(bool escapes) {
  token_.clear();
  bool escaped = false;
  while (!stopped()) {
    if (escapes && escaped) {
      if (byte_ != '\\' && byte_ != 'n') {
        fail(std::string("invalid escape sequence '\\") + static_cast<char>(byte_) + "'");
        return false;
      }
      token_ += byte_ == 'n' ? '\n' : '\\';
      escaped = false;
    } else if (byte_ == '\n') {
      return true;
    } else if (byte_ == '\\') {
      escaped = true;
    } else {
      token_ += static_cast<char>(byte_);
    }
    read();
  }
  return false;
}

// A metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) or a label name (no colon), from the current
// byte on; empty when it does not start one.
inline bool PushTextParser::token_as_name(bool metric) {
  token_.clear();
  const auto fits = [metric](unsigned char c, bool first) {
    return is_ascii_upper(static_cast<char>(c)) || is_ascii_lower(static_cast<char>(c)) || c == '_' ||
           (metric && c == ':') || (!first && is_ascii_digit(static_cast<char>(c)));
  };
  if (!fits(byte_, true)) return true;
  do {
    token_ += static_cast<char>(byte_);
  } while (read() && fits(byte_, false));
  return !stopped();
}

inline bool PushTextParser::token_as_label_value() {
  token_.clear();
  bool escaped = false;
  while (read()) {
    if (escaped) {
      if (byte_ != '"' && byte_ != '\\' && byte_ != 'n') {
        fail(std::string("invalid escape sequence '\\") + static_cast<char>(byte_) + "'");
        return false;
      }
      token_ += byte_ == 'n' ? '\n' : static_cast<char>(byte_);
      escaped = false;
    } else if (byte_ == '"') {
      return true;
    } else if (byte_ == '\n') {
      fail("label value " + go_quote(token_) + " contains unescaped new-line");
      return false;
    } else if (byte_ == '\\') {
      escaped = true;
    } else {
      token_ += static_cast<char>(byte_);
    }
  }
  return false;
}

// The family a name belongs to: its own, or the summary or histogram whose _count, _sum
// (or _bucket) it is; else a new one.
inline void PushTextParser::set_family() {
  is_count_ = is_sum_ = false;
  if (const auto found = families_.find(token_); found != families_.end()) return void(family_ = &found->second);
  const bool count = token_.size() > 6 && ends_with(token_, "_count"), sum = token_.size() > 4 && ends_with(token_, "_sum");
  const bool bucket = token_.size() > 7 && ends_with(token_, "_bucket");
  const std::string base = token_.substr(0, token_.size() - (count ? 6 : sum ? 4 : bucket ? 7 : 0));
  if (const auto found = families_.find(base); (count || sum || bucket) && found != families_.end()) {
    const auto type = found->second.type;
    if ((type == PushType::summary && !bucket) || type == PushType::histogram) {
      is_count_ = count, is_sum_ = sum;
      return void(family_ = &found->second);
    }
  }
  family_ = &families_[token_];
  family_->name = token_;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: PUSH PROTOBUF FORMAT =======================================================
//
// A push body in the delimited protobuf format that client_golang's push package sends:
// io.prometheus.client.MetricFamily messages, each after its varint length. Every type,
// native histograms included: a histogram's native fields (schema, zero bucket, spans and
// deltas or counts) are kept as they came and written back as client_golang writes them.
// Every read is bounded: a truncated or hostile body is an error, "unexpected EOF" as
// Pushgateway words a cut one, never a read past its end.

namespace hermes {
namespace detail {

class ProtobufReader {
public:
  explicit ProtobufReader(std::string_view bytes) : bytes_(bytes) {}
  bool done() const { return at_ == bytes_.size(); }
  std::size_t position() const { return at_; }
  std::string_view bytes_between(std::size_t from, std::size_t to) const { return bytes_.substr(from, to - from); }

  bool varint(std::uint64_t &value) {
    value = 0;
    for (unsigned shift = 0; shift < 64 && at_ < bytes_.size(); shift += 7) {
      const auto byte = static_cast<unsigned char>(bytes_[at_++]);
      value |= std::uint64_t{byte & 0x7Fu} << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }
  bool fixed(std::size_t size, std::uint64_t &value) {
    if (bytes_.size() - at_ < size) return false;
    value = 0;
    for (std::size_t i = 0; i < size; ++i) value |= std::uint64_t{static_cast<unsigned char>(bytes_[at_ + i])} << (8 * i);
    at_ += size;
    return true;
  }
  bool double_value(std::uint32_t wire, double &value) {
    std::uint64_t bits = 0;
    if (wire != 1 || !fixed(8, bits)) return false;
    std::memcpy(&value, &bits, sizeof value);
    return true;
  }
  bool bytes(std::string_view &out) {
    std::uint64_t length = 0;
    if (!varint(length) || length > bytes_.size() - at_) return false;
    out = bytes_.substr(at_, static_cast<std::size_t>(length));
    at_ += static_cast<std::size_t>(length);
    return true;
  }
  bool field(std::uint32_t &number, std::uint32_t &wire) {
    std::uint64_t tag = 0;
    if (!varint(tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) return false;
    number = static_cast<std::uint32_t>(tag >> 3), wire = static_cast<std::uint32_t>(tag & 7);
    return true;
  }
  bool skip(std::uint32_t wire) {
    std::uint64_t ignored = 0;
    std::string_view also_ignored;
    switch (wire) {
    case 0: return varint(ignored);
    case 1: return fixed(8, ignored);
    case 2: return bytes(also_ignored);
    case 5: return fixed(4, ignored);
    default: return false; // groups (3, 4) are not in metrics.proto
    }
  }

private:
  std::string_view bytes_;
  std::size_t at_ = 0;
};

// A field of a message, read by `read(number, wire, reader)` (false: the bytes are bad);
// fields it does not know it skips.
template <typename Read> bool read_message(std::string_view message, Read &&read) {
  ProtobufReader reader(message);
  std::uint32_t number = 0, wire = 0;
  while (!reader.done())
    if (!reader.field(number, wire) || !read(number, wire, reader)) return false;
  return true;
}

// Quantile {quantile = 1, value = 2} or Bucket {cumulative_count = 1, upper_bound = 2,
// cumulative_count_float = 4}: (quantile, value) or (upper bound, count).
inline bool read_point(std::string_view message, bool bucket, std::pair<double, double> &point) {
  return read_message(message, [&](std::uint32_t number, std::uint32_t wire, ProtobufReader &reader) {
    std::uint64_t count = 0;
    if (bucket && number == 1 && wire == 0) return reader.varint(count) && (point.second = static_cast<double>(count), true);
    if (bucket && number == 4) return reader.double_value(wire, point.second);
    if (number == 1 || number == 2) return reader.double_value(wire, (number == 1) != bucket ? point.first : point.second);
    return reader.skip(wire);
  });
}

// A packed repeated field as one field per element, as client_golang writes the deltas
// and counts of a native histogram (metrics.proto does not declare them packed).
inline bool unpack(std::string_view packed, std::uint32_t number, std::uint32_t wire, std::string &out) {
  ProtobufReader reader(packed);
  while (!reader.done()) {
    const std::size_t start = reader.position();
    if (!reader.skip(wire)) return false;
    append_tag(out, number, static_cast<WireType>(wire));
    out.append(reader.bytes_between(start, reader.position()));
  }
  return true;
}

// Summary {sample_count = 1, sample_sum = 2, quantile = 3} or Histogram {sample_count = 1,
// sample_sum = 2, bucket = 3, sample_count_float = 4, the native fields 5 to 14}.
inline bool read_distribution(std::string_view message, bool histogram, PushedMetric &metric) {
  return read_message(message, [&](std::uint32_t number, std::uint32_t wire, ProtobufReader &reader) {
    const std::size_t start = reader.position() - varint_size(std::uint64_t{number} << 3 | wire);
    std::uint64_t count = 0;
    std::string_view point;
    if (number == 1 && wire == 0) return reader.varint(count) && (metric.count = static_cast<double>(count), true);
    if (number == 2) return reader.double_value(wire, metric.sum);
    if (number == 3 && wire == 2) {
      metric.points.emplace_back();
      return reader.bytes(point) && read_point(point, histogram, metric.points.back());
    }
    if (histogram && number == 4) return reader.double_value(wire, metric.count);
    if (!histogram || number < 5 || number > 14) return reader.skip(wire);
    const bool repeated_number = number == 10 || number == 11 || number == 13 || number == 14; // deltas, counts
    if (repeated_number && wire == 2) return reader.bytes(point) && unpack(point, number, number == 11 || number == 14 ? 1 : 0, metric.native);
    if (!reader.skip(wire)) return false;
    metric.native.append(reader.bytes_between(start, reader.position()));
    return true;
  });
}

// Metric {label = 1, gauge = 2, counter = 3, summary = 4, untyped = 5, timestamp_ms = 6,
// histogram = 7}; LabelPair {name = 1, value = 2}.
inline bool read_metric(std::string_view message, PushedMetric &metric) {
  static constexpr PushType kinds[] = {PushType::gauge, PushType::counter, PushType::summary, PushType::untyped};
  return read_message(message, [&](std::uint32_t number, std::uint32_t wire, ProtobufReader &reader) {
    std::string_view inner;
    if (number == 6) return metric.has_timestamp = true, reader.skip(wire);
    if (number == 1 && wire == 2) {
      auto &label = metric.labels.emplace_back();
      return reader.bytes(inner) && read_message(inner, [&](std::uint32_t field, std::uint32_t type, ProtobufReader &pair) {
               std::string_view text;
               if ((field == 1 || field == 2) && type == 2)
                 return pair.bytes(text) && ((field == 1 ? label.first : label.second) = std::string(text), true);
               return pair.skip(type);
             });
    }
    if ((number < 2 || number > 5) && number != 7) return reader.skip(wire);
    if (wire != 2 || !reader.bytes(inner)) return false;
    metric.kind = number == 7 ? PushType::histogram : kinds[number - 2];
    if (metric.kind == PushType::summary || metric.kind == PushType::histogram)
      return read_distribution(inner, metric.kind == PushType::histogram, metric);
    return read_message(inner, [&](std::uint32_t field, std::uint32_t type, ProtobufReader &value) {
      return field == 1 ? value.double_value(type, metric.value) : value.skip(type);
    });
  });
}

// MetricFamily {name = 1, help = 2, type = 3, metric = 4}.
inline bool read_family(std::string_view message, PushedFamily &family) {
  family.type = PushType::counter; // the type's default in metrics.proto
  return read_message(message, [&](std::uint32_t number, std::uint32_t wire, ProtobufReader &reader) {
    std::string_view text;
    std::uint64_t type = 0;
    if ((number == 1 || number == 2) && wire == 2) {
      if (!reader.bytes(text)) return false;
      (number == 1 ? family.name : family.help.emplace()) = std::string(text);
      return true;
    }
    if (number == 3 && wire == 0) {
      if (!reader.varint(type)) return false;
      if (type < static_cast<std::uint64_t>(PushType::count_)) family.type = static_cast<PushType>(type);
      return true;
    }
    if (number == 4 && wire == 2) return reader.bytes(text) && read_metric(text, family.metrics.emplace_back());
    return reader.skip(wire);
  });
}

// The families of a delimited body by name (a later family of a name replaces an
// earlier one, as Pushgateway keeps them), or nullopt and `error`.
inline std::optional<std::map<std::string, PushedFamily>> parse_push_protobuf(std::string_view body, std::string &error) {
  std::map<std::string, PushedFamily> families;
  ProtobufReader stream(body);
  while (!stream.done()) {
    std::string_view message;
    PushedFamily family;
    if (!stream.bytes(message)) return error = "unexpected EOF", std::nullopt;
    if (!read_family(message, family)) return error = "unexpected EOF", std::nullopt; // what Pushgateway says of a cut message
    if (!family.metrics.empty()) families[family.name] = std::move(family);
  }
  return families;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: PUSH GROUPS ================================================================
//
// The groups pushed over the Pushgateway API, with Pushgateway 1.5.1's semantics: PUT
// replaces a group's families, POST those of the same name, DELETE the group; every
// sample carries the grouping labels (over a pushed label of the same name) and
// instance="" when it has no instance; each group has its push_time_seconds and
// push_failure_time_seconds. A push that would make /metrics inconsistent is refused
// whole and only its failure time is kept. Each group takes its bytes and its room in
// the /metrics bodies from the memory budget, as a series does.

namespace hermes {
namespace detail {

constexpr const char *push_time_name = "push_time_seconds";
constexpr const char *push_failure_name = "push_failure_time_seconds";

struct PushGroup {
  PushLabels key;                                          // the grouping labels, job among them
  std::map<std::string, PushedFamily, std::less<>> families; // with the two push_* gauges
  double last_push = 0;                                    // monotonic seconds: when its TTL starts
  std::size_t own_bytes = 0, body_bytes = 0;               // what it took from the budget
};

// What a push or delete answers: an HTTP status and, for a refusal, why.
struct PushOutcome {
  int status = 200;
  std::string message;
};

// Each family name over the groups: its type, the HELP of its latest push, the groups
// that hold it and the label sets of its samples, so that a push is checked against the
// others without reading them.
struct PushFamilyIndex {
  PushType type = PushType::untyped;
  std::optional<std::string> help;
  std::vector<const PushGroup *> groups;
  std::map<std::string, const PushGroup *> series; // label set (series_key) -> its group
};

// What a pushed family may add to one /metrics body, in the format that writes the most
// of it; defined with the formatting, which writes it.
inline std::size_t pushed_body_bytes(const PushGroup &group);

// A label set as one string: each name and value followed by 0xFF, a byte UTF-8 never holds.
inline std::string series_key(const PushLabels &labels) {
  std::string key;
  for (const auto &[name, value] : labels) key.append(name).append(1, '\xff').append(value).append(1, '\xff');
  return key;
}

// Pushgateway's sanitizeLabels: the grouping labels over the pushed ones, instance=""
// when there is no instance, sorted by name.
inline void add_grouping_labels(PushLabels &labels, const PushLabels &key) {
  for (const auto &grouping : key) {
    const auto found = std::find_if(labels.begin(), labels.end(), [&](const auto &pair) { return pair.first == grouping.first; });
    if (found != labels.end()) {
      found->second = grouping.second;
    } else {
      labels.push_back(grouping);
    }
  }
  if (std::none_of(labels.begin(), labels.end(), [](const auto &pair) { return pair.first == "instance"; }))
    labels.emplace_back("instance", "");
  std::sort(labels.begin(), labels.end());
}

// A push_time_seconds or push_failure_time_seconds family of one group.
inline PushedFamily push_time_family(const char *name, const PushLabels &key, double seconds) {
  PushedFamily family;
  family.name = name;
  family.help = name == push_time_name ? "Last Unix time when changing this group in the Pushgateway succeeded."
                                       : "Last Unix time when changing this group in the Pushgateway failed.";
  family.type = PushType::gauge;
  family.metrics.emplace_back();
  family.metrics.back().labels = key;
  add_grouping_labels(family.metrics.back().labels, key);
  family.metrics.back().value = seconds;
  family.metrics.back().kind = PushType::gauge;
  return family;
}

// Labels as the text format writes them, for messages: {a="1",b="2"}.
inline std::string labels_text(const PushLabels &labels) {
  std::string out = "{";
  for (const auto &[name, value] : labels) {
    if (out.size() > 1) out += ',';
    out.append(name).append("=").append(go_quote(value));
  }
  return out + '}';
}

inline bool is_push_time(std::string_view name) { return name == push_time_name || name == push_failure_name; }

// The names a family's samples take in the text format.
inline std::vector<std::string> sample_names(std::string_view name, PushType type) {
  const std::string base(name);
  if (type == PushType::histogram) return {base + "_bucket", base + "_sum", base + "_count"};
  if (type == PushType::summary) return {base, base + "_sum", base + "_count"};
  return {base};
}

class PushStore {
public:
  PushStore(std::shared_ptr<MemoryBudget> budget, std::size_t max_groups, double ttl_seconds)
      : budget_(std::move(budget)), max_groups_(max_groups), ttl_seconds_(ttl_seconds) {}
  PushStore(const PushStore &) = delete;
  PushStore &operator=(const PushStore &) = delete;
  ~PushStore() { wipe(); }

  // The sample names of the configured metrics and Hermes' own: no pushed family may
  // write one of them.
  void reserve_names(std::vector<std::string> names) {
    std::sort(names.begin(), names.end());
    reserved_ = std::move(names);
  }

  // PUT (`replace`) or POST of `families` to the group of `key`.
  PushOutcome push(const PushLabels &key, std::map<std::string, PushedFamily> families, bool replace, Now now);
  // DELETE: the group goes, if there is one.
  void remove(const PushLabels &key);
  void wipe() {
    while (!groups_.empty()) drop(groups_.begin());
  }
  // Drops the groups not pushed for the TTL; returns how many.
  std::size_t expire(double monotonic_now);

  std::size_t group_count() const { return groups_.size(); }
  std::size_t bytes() const { return bytes_; }
  const std::map<std::string, PushFamilyIndex, std::less<>> &families() const { return index_; }

private:
  using Groups = std::map<PushLabels, PushGroup>;
  std::string check(const PushGroup &candidate, const PushGroup *old) const;
  std::string check_family(const PushedFamily &family, const PushGroup &candidate, const PushGroup *old) const;
  std::optional<PushType> other_type(std::string_view name, const PushGroup &candidate, const PushGroup *old) const;
  std::string commit(PushGroup &candidate, Groups::iterator old);
  void record_failure(const PushLabels &key, Now now);
  void index(const PushGroup &group);
  void unindex(const PushGroup &group);
  void drop(Groups::iterator group);
  static std::size_t own_bytes(const PushGroup &group);

  std::shared_ptr<MemoryBudget> budget_;
  std::size_t max_groups_;
  double ttl_seconds_;
  Groups groups_;
  std::map<std::string, PushFamilyIndex, std::less<>> index_;
  std::vector<std::string> reserved_; // sorted
  std::size_t bytes_ = 0;
};

inline PushOutcome PushStore::push(const PushLabels &key, std::map<std::string, PushedFamily> families, bool replace, Now now) {
  const auto old = groups_.find(key);
  PushGroup candidate;
  candidate.key = key;
  candidate.last_push = now.monotonic;
  if (old != groups_.end())
    for (const auto &[name, family] : old->second.families)
      if (!replace || is_push_time(name)) candidate.families.emplace(name, family);
  bool timestamps = false;
  for (auto &[name, family] : families) {
    if (is_push_time(name)) continue; // Pushgateway writes its own over them
    for (PushedMetric &metric : family.metrics) {
      add_grouping_labels(metric.labels, key);
      timestamps = timestamps || metric.has_timestamp;
    }
    candidate.families[name] = std::move(family);
  }
  candidate.families[push_time_name] = push_time_family(push_time_name, key, now.wall);
  if (!candidate.families.count(push_failure_name))
    candidate.families[push_failure_name] = push_time_family(push_failure_name, key, 0);
  std::string problem = timestamps ? "pushed metrics must not have timestamps"
                                   : check(candidate, old == groups_.end() ? nullptr : &old->second);
  if (!problem.empty()) {
    record_failure(key, now);
    return {400, "pushed metrics are invalid or inconsistent with existing metrics: " + problem};
  }
  problem = commit(candidate, old);
  if (!problem.empty()) return {507, problem};
  return {200, ""};
}

// Why `candidate` would make /metrics inconsistent, or "".
inline std::string PushStore::check(const PushGroup &candidate, const PushGroup *old) const {
  for (const auto &entry : candidate.families) {
    const std::string problem = check_family(entry.second, candidate, old);
    if (!problem.empty()) return problem;
  }
  return "";
}

// The type of another family named `name`: in the candidate, or in another group.
inline std::optional<PushType> PushStore::other_type(std::string_view name, const PushGroup &candidate,
                                                     const PushGroup *old) const {
  if (const auto found = candidate.families.find(name); found != candidate.families.end()) return found->second.type;
  const auto found = index_.find(name);
  if (found == index_.end()) return std::nullopt;
  const auto &groups = found->second.groups;
  if (groups.size() == 1 && groups.front() == old) return std::nullopt;
  return found->second.type;
}

// A family against Hermes' own names, the other groups' families of the same or a
// colliding name (as client_golang's gatherer checks them), and each sample's labels.
inline std::string PushStore::check_family(const PushedFamily &family, const PushGroup &candidate, const PushGroup *old) const {
  const std::string &name = family.name;
  const PushType type = *family.type;
  if (!is_metric_name(name)) return "family " + go_quote(name) + ": not a metric name";
  if (type == PushType::gauge_histogram) return "family \"" + name + "\": gauge histograms are not supported";
  for (const std::string &sample : sample_names(name, type))
    if (std::binary_search(reserved_.begin(), reserved_.end(), sample)) return "family \"" + name + "\" writes " + sample + ", a metric Hermes serves already";
  if (const auto found = index_.find(name); found != index_.end() && found->second.type != type) {
    const auto &groups = found->second.groups;
    if (!(groups.size() == 1 && groups.front() == old))
      return "family \"" + name + "\" is pushed as " + to_string(type) + " but another group has it as " +
             to_string(found->second.type);
  }
  for (const char *suffix : {"_count", "_sum", "_bucket"}) {
    if (!ends_with(name, suffix) || name.size() == std::strlen(suffix)) continue;
    const auto base = other_type(std::string_view(name).substr(0, name.size() - std::strlen(suffix)), candidate, old);
    if ((base == PushType::summary && std::strcmp(suffix, "_bucket") != 0) || base == PushType::histogram)
      return "family \"" + name + "\" collides with the " + to_string(*base) + " \"" +
             name.substr(0, name.size() - std::strlen(suffix)) + "\"";
  }
  if (type == PushType::summary || type == PushType::histogram)
    for (const char *suffix : {"_count", "_sum", "_bucket"})
      if ((type == PushType::histogram || std::strcmp(suffix, "_bucket") != 0) && other_type(name + suffix, candidate, old))
        return "the " + std::string(to_string(type)) + " \"" + name + "\" collides with the family \"" + name + suffix + "\"";
  std::vector<std::string> keys;
  const auto found = index_.find(name);
  for (const PushedMetric &metric : family.metrics) {
    if (metric.kind != type) return "family \"" + name + "\": a sample that is not a " + to_string(type);
    for (std::size_t i = 0; i + 1 < metric.labels.size(); ++i)
      if (metric.labels[i].first == metric.labels[i + 1].first)
        return "family \"" + name + "\": two labels named \"" + metric.labels[i].first + "\" on one sample";
    for (const auto &[label, value] : metric.labels) {
      if (!is_label_name(label) || starts_with(label, "__")) return "family \"" + name + "\": the label name " + go_quote(label) + " is not one";
      if ((type == PushType::summary && label == "quantile") || (type == PushType::histogram && label == "le"))
        return "family \"" + name + "\": a " + to_string(type) + " must not have an explicit \"" + label + "\" label";
      if (!is_valid_utf8(value)) return "family \"" + name + "\": the value of label \"" + label + "\" is not UTF-8";
    }
    keys.push_back(series_key(metric.labels));
    if (found == index_.end()) continue;
    const auto owner = found->second.series.find(keys.back());
    if (owner != found->second.series.end() && owner->second != old)
      return "family \"" + name + "\": the labels " + labels_text(metric.labels) + " are another group's already";
  }
  std::sort(keys.begin(), keys.end());
  if (std::adjacent_find(keys.begin(), keys.end()) != keys.end())
    return "family \"" + name + "\": two samples with the same labels";
  return "";
}

// Puts the candidate in place of the old group, within the budget and max_push_groups;
// "" or why it could not.
inline std::string PushStore::commit(PushGroup &candidate, Groups::iterator old) {
  const bool fresh = old == groups_.end();
  if (fresh && groups_.size() >= max_groups_)
    return "no room for one more group: max_push_groups (" + std::to_string(max_groups_) + ") groups are held";
  candidate.own_bytes = own_bytes(candidate);
  candidate.body_bytes = pushed_body_bytes(candidate);
  if (budget_) {
    if (!fresh) budget_->give_back_series(old->second.own_bytes, old->second.body_bytes);
    if (!budget_->take_for_series(candidate.own_bytes, candidate.body_bytes)) {
      // What it held fits again: nothing else changed since it was given back.
      if (!fresh && !budget_->take_for_series(old->second.own_bytes, old->second.body_bytes)) {
        bytes_ -= old->second.own_bytes; // a fault: the group goes rather than break the budget's rule
        old->second.own_bytes = old->second.body_bytes = 0;
        drop(old);
      }
      return "no room in the memory budget for this group: it needs " +
             std::to_string(candidate.own_bytes + candidate.body_bytes * HERMES_SCRAPE_BODIES) + " bytes";
    }
  }
  if (!fresh) {
    unindex(old->second);
    bytes_ -= old->second.own_bytes;
    old->second = std::move(candidate);
    bytes_ += old->second.own_bytes;
    index(old->second);
    return "";
  }
  const auto made = groups_.emplace(candidate.key, std::move(candidate)).first;
  bytes_ += made->second.own_bytes;
  index(made->second);
  return "";
}

// Pushgateway keeps the time of a refused push: in the group, made for it if need be
// (with push_time_seconds 0), when the limits leave room for that.
inline void PushStore::record_failure(const PushLabels &key, Now now) {
  const auto old = groups_.find(key);
  if (old != groups_.end()) {
    old->second.families[push_failure_name].metrics.front().value = now.wall; // same size: the budget holds
    return;
  }
  PushGroup group;
  group.key = key;
  group.last_push = now.monotonic;
  group.families[push_time_name] = push_time_family(push_time_name, key, 0);
  group.families[push_failure_name] = push_time_family(push_failure_name, key, now.wall);
  if (check(group, nullptr).empty()) commit(group, groups_.end());
}

inline void PushStore::remove(const PushLabels &key) {
  if (const auto found = groups_.find(key); found != groups_.end()) drop(found);
}

inline std::size_t PushStore::expire(double monotonic_now) {
  if (ttl_seconds_ <= 0) return 0;
  std::size_t dropped = 0;
  for (auto it = groups_.begin(); it != groups_.end();) {
    const auto next = std::next(it);
    if (monotonic_now - it->second.last_push >= ttl_seconds_) drop(it), ++dropped;
    it = next;
  }
  return dropped;
}

inline void PushStore::index(const PushGroup &group) {
  for (const auto &[name, family] : group.families) {
    PushFamilyIndex &entry = index_[name];
    entry.type = *family.type;
    entry.help = family.help;
    entry.groups.push_back(&group);
    for (const PushedMetric &metric : family.metrics) entry.series.emplace(series_key(metric.labels), &group);
  }
}

inline void PushStore::unindex(const PushGroup &group) {
  for (const auto &[name, family] : group.families) {
    const auto found = index_.find(name);
    PushFamilyIndex &entry = found->second;
    entry.groups.erase(std::find(entry.groups.begin(), entry.groups.end(), &group));
    if (entry.groups.empty()) {
      index_.erase(found);
      continue;
    }
    for (const PushedMetric &metric : family.metrics) entry.series.erase(series_key(metric.labels));
  }
}

inline void PushStore::drop(Groups::iterator group) {
  unindex(group->second);
  if (budget_) budget_->give_back_series(group->second.own_bytes, group->second.body_bytes);
  bytes_ -= group->second.own_bytes;
  groups_.erase(group);
}

// The heap a group holds, its copy of each label set in the index included: strings
// past the small-string buffer, vectors, and a map or hash node's overhead each.
inline std::size_t PushStore::own_bytes(const PushGroup &group) {
  constexpr std::size_t node = 64, small_string = 15;
  const auto text = [](const std::string &s) { return s.size() > small_string ? s.size() + 1 : 0; };
  std::size_t bytes = sizeof(PushGroup) + node;
  for (const auto &[label, value] : group.key) bytes += sizeof(group.key[0]) + text(label) + text(value);
  for (const auto &[name, family] : group.families) {
    bytes += node + sizeof(PushedFamily) + 2 * text(name) + (family.help ? text(*family.help) : 0);
    bytes += node + sizeof(PushFamilyIndex) + sizeof(void *); // its share of the index
    for (const PushedMetric &metric : family.metrics) {
      bytes += sizeof(PushedMetric) + metric.points.size() * sizeof(metric.points[0]) + node + small_string + 1;
      bytes += text(metric.native);
      for (const auto &[label, value] : metric.labels)
        bytes += sizeof(metric.labels[0]) + text(label) + text(value) + label.size() + value.size() + 2;
    }
  }
  return bytes;
}

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

// The process metrics of the standard Prometheus client libraries. A figure that /proc
// cannot tell is absent and left out of /metrics: a counter shown as 0 would look like
// a reset to rate().
struct ProcessStats {
  std::optional<double> cpu_seconds;
  std::optional<double> resident_memory_bytes;
  std::optional<double> virtual_memory_bytes;
  std::optional<double> start_time_seconds;
  std::optional<double> open_fds;
  std::optional<double> max_fds;
};

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
inline std::optional<double> proc_stat_field(const std::vector<std::string> &fields, std::size_t number) {
  const std::size_t index = number - 3;
  return index < fields.size() ? parse_decimal(fields[index]) : std::nullopt;
}

inline std::optional<double> boot_time_seconds() {
  const std::string text = read_small_file("/proc/stat");
  for (const std::string_view line : split(text, '\n'))
    if (starts_with(line, "btime ")) return parse_decimal(line.substr(6));
  return std::nullopt;
}

inline std::optional<double> process_start_time_seconds() {
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const auto started = proc_stat_field(proc_stat_fields(), 22);
  const auto boot = boot_time_seconds();
  if (ticks <= 0 || !started || !boot) return std::nullopt;
  return *boot + *started / ticks;
}

inline std::optional<double> count_open_fds() {
  DIR *dir = ::opendir("/proc/self/fd");
  if (!dir) return std::nullopt;
  double count = 0;
  while (const dirent *entry = ::readdir(dir))
    if (entry->d_name[0] != '.') ++count;
  ::closedir(dir);
  return count - 1; // the directory being read is itself open
}

// This process' figures now; the start time is read once, at start, by the caller.
inline ProcessStats read_process_stats(std::optional<double> start_time_seconds) {
  ProcessStats stats;
  const std::vector<std::string> fields = proc_stat_fields();
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page_size = static_cast<double>(::sysconf(_SC_PAGESIZE));
  const auto user = proc_stat_field(fields, 14), system = proc_stat_field(fields, 15);
  if (ticks > 0 && user && system) stats.cpu_seconds = (*user + *system) / ticks;
  stats.virtual_memory_bytes = proc_stat_field(fields, 23);
  if (const auto pages = proc_stat_field(fields, 24)) stats.resident_memory_bytes = *pages * page_size;
  stats.open_fds = count_open_fds();
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) stats.max_fds = static_cast<double>(limit.rlim_cur);
  stats.start_time_seconds = start_time_seconds;
  return stats;
}

} // namespace detail
} // namespace hermes

// ===== DETAIL: DATAGRAM INPUT =============================================================

namespace hermes {
namespace detail {

using Clock = std::chrono::steady_clock;

// A time of Clock as monotonic_seconds() gives it.
inline double seconds_of(Clock::time_point time) { return std::chrono::duration<double>(time.time_since_epoch()).count(); }

// Rejected samples: each at debug with its datagram, and at most one warn line per
// HERMES_REJECT_LOG_INTERVAL_S that sums them up by reason.
class RejectLog {
public:
  explicit RejectLog(const Logger &logger) : logger_(logger) {}

  void note(const IngestResult &result, std::string_view datagram, Clock::time_point now) {
    if (result.rejected_total() == 0) return;
    constexpr std::size_t shown = 200; // of the datagram, in the debug line
    for (std::size_t i = 0; i < reject_reason_count; ++i) {
      if (result.rejected[i] == 0) continue;
      pending_[i] += result.rejected[i];
      if (logger_.enabled(LogLevel::debug))
        logger_.log(LogLevel::debug, "sample rejected",
                    {{"reason", to_string(static_cast<Reject>(i))}, {"count", std::to_string(result.rejected[i])},
                     {"datagram", datagram.substr(0, shown)}});
    }
    flush(now, false);
  }

  // Datagrams dropped as forbidden_source; at debug, each with its sender when known.
  void note_forbidden(std::uint64_t count, const sockaddr *source, Clock::time_point now) {
    pending_[static_cast<std::size_t>(Reject::forbidden_source)] += count;
    if (logger_.enabled(LogLevel::debug))
      logger_.log(LogLevel::debug, "datagram from a forbidden source dropped",
                  {{"count", std::to_string(count)}, {"source", source ? format_endpoint(source) : "?"}});
    flush(now, false);
  }

  // Writes the summary when it is due, or at once when `force`d.
  void flush(Clock::time_point now, bool force) {
    if (!force && now < next_log_) return;
    std::string counts;
    for (std::size_t i = 0; i < reject_reason_count; ++i)
      if (pending_[i] > 0)
        counts += (counts.empty() ? "" : " ") + std::string(to_string(static_cast<Reject>(i))) + "=" + std::to_string(pending_[i]);
    if (counts.empty()) return;
    logger_.log(LogLevel::warn, "samples rejected", {{"counts", counts}});
    pending_.fill(0);
    next_log_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
  }

  // When a summary waits to be written.
  std::optional<Clock::time_point> due() const {
    const bool pending = std::any_of(pending_.begin(), pending_.end(), [](std::uint64_t n) { return n > 0; });
    return pending ? std::optional<Clock::time_point>(next_log_) : std::nullopt;
  }

private:
  const Logger &logger_;
  std::array<std::uint64_t, reject_reason_count> pending_{};
  Clock::time_point next_log_{};
};

// The sockets samples arrive on, UDP and optionally a unix datagram socket, with the
// batch they are read into, the datagrams held while /metrics renders, and the counts.
class DatagramInput {
public:
  using Source = HeldDatagrams::Source;

  explicit DatagramInput(const Options &options)
      : udp_(open_udp_listener(options.udp_address, options.udp_port, options.udp_receive_buffer)),
        unix_socket_(options.unix_socket_path, options.unix_socket_mode), allow_(options.udp_allow), drops_(udp_.get()),
        receive_buffer_bytes_(receive_buffer_size(udp_.get())) {}

  int fd(Source source) const { return source == Source::udp ? udp_.get() : unix_socket_.get(); }
  const std::string &unix_path() const { return unix_socket_.path(); }

  // Reads and applies what waits on one socket, up to HERMES_DATAGRAMS_PER_STEP, all
  // at the time `now`: a step is short, and reading the clocks for each batch cost more
  // than a tenth of a datagram's CPU when the batches are small.
  void receive(Source source, Registry &registry, RejectLog &rejects, Now now) {
    for (int taken = 0; taken < HERMES_DATAGRAMS_PER_STEP;) {
      const int got = batch_.receive(fd(source), HERMES_RECEIVE_BATCH, filtered(source), carries_drops(source));
      for (int i = 0; i < got; ++i) {
        count_carried_drops(source, i);
        if (!allowed(source, i)) {
          ++udp_packets_;
          registry.count_rejected(Reject::forbidden_source);
          rejects.note_forbidden(1, batch_.source(i), Clock::now());
          continue;
        }
        take(batch_.datagram(i), batch_.truncated(i), source, registry, rejects, now);
      }
      if (got < HERMES_RECEIVE_BATCH) return; // all read
      taken += got;
    }
  }

  // Takes what waits on both sockets into the hold, as far as its budget allows: the
  // step a server makes between parts of a long render, so that the kernel's buffer
  // does not overflow meanwhile. Forbidden datagrams are dropped and only counted, at
  // most as many as the hold had room for, so that a flood of them cannot stall the render.
  void hold_waiting() {
    for (const Source source : {Source::udp, Source::unix_socket}) {
      if (fd(source) < 0) continue;
      const std::uint64_t forbidden_limit = held_forbidden_ + held_.room();
      for (std::size_t room = held_.room(); room > 0 && held_forbidden_ < forbidden_limit; room = held_.room()) {
        const int wanted = static_cast<int>(std::min<std::size_t>(room, HERMES_RECEIVE_BATCH));
        const int got = batch_.receive(fd(source), wanted, filtered(source), carries_drops(source));
        for (int i = 0; i < got; ++i) {
          count_carried_drops(source, i);
          if (allowed(source, i)) held_.hold(batch_.datagram(i), batch_.truncated(i), source);
          else ++held_forbidden_;
        }
        if (got < wanted) break;
      }
    }
  }

  // Applies the held datagrams, once the registry is no longer being read.
  void apply_held(Registry &registry, RejectLog &rejects) {
    if (held_forbidden_ > 0) {
      udp_packets_ += held_forbidden_;
      for (std::uint64_t i = 0; i < held_forbidden_; ++i) registry.count_rejected(Reject::forbidden_source);
      rejects.note_forbidden(held_forbidden_, nullptr, Clock::now());
      held_forbidden_ = 0;
    }
    const Now now = Now::current();
    held_.release([&](std::string_view datagram, bool truncated, Source source) {
      take(datagram, truncated, source, registry, rejects, now);
    });
  }

  // Once a second: folds the kernel's drop counter in, so that no wrap of it goes unseen.
  void ask_kernel_drops() { drops_.ask(); }

  void add_stats(ServerStats &stats) const {
    stats.udp_packets = udp_packets_;
    stats.unix_datagrams = unix_datagrams_;
    stats.udp_receive_drops = drops_.total();
    stats.udp_receive_buffer_bytes = receive_buffer_bytes_;
  }

private:
  // Whether a socket's datagrams are held against the allow list: UDP ones, when there
  // is a list. Only then are their senders asked of the kernel.
  bool filtered(Source source) const { return source == Source::udp && !allow_.empty(); }

  // Whether datagram i of the batch may be taken.
  bool allowed(Source source, int i) const {
    return !filtered(source) || allow_.allows(batch_.source(i), batch_.source_length(i));
  }

  void take(std::string_view datagram, bool truncated, Source source, Registry &registry, RejectLog &rejects, Now now) {
    ++(source == Source::udp ? udp_packets_ : unix_datagrams_);
    IngestResult result;
    if (truncated) { // the kernel cut it to fit: never parse a cut datagram
      result.rejected[static_cast<std::size_t>(Reject::too_large)] = 1;
      registry.count_rejected(Reject::too_large);
    } else {
      result = registry.ingest(datagram, now);
    }
    if (result.rejected_total() > 0) rejects.note(result, datagram, Clock::now());
  }

  // Whether a socket's datagrams carry the kernel's drop counter: UDP ones, on old kernels.
  bool carries_drops(Source source) const { return source == Source::udp && drops_.carried(); }
  void count_carried_drops(Source source, int index_in_batch) {
    if (!carries_drops(source)) return;
    if (const auto counter = batch_.drop_counter(index_in_batch)) drops_.note_carried(*counter);
  }

  FileDescriptor udp_;
  UnixSocket unix_socket_;
  ReceiveBatch batch_;
  HeldDatagrams held_; // taken off the sockets during a render, applied after it
  std::uint64_t held_forbidden_ = 0; // forbidden datagrams dropped during a render, counted after it
  AllowList allow_; // UDP senders; empty: everyone
  KernelDrops drops_; // of the UDP socket
  std::uint64_t udp_packets_ = 0, unix_datagrams_ = 0;
  double receive_buffer_bytes_;
};

} // namespace detail
} // namespace hermes

// ===== DETAIL: HTTP FRONT END =============================================================

namespace hermes {
namespace detail {

class BudgetedBody;
// Brings the registry up to now, takes room in `body` for the most the body can be, and
// writes it there in a format, reusing the body's memory; false when the budget has no
// room for it.
using RenderBody = std::function<bool(Format, BudgetedBody &body)>;

// A /metrics body whose bytes are taken from the memory budget's room for bodies while
// it lives.
class BudgetedBody {
public:
  explicit BudgetedBody(MemoryBudget &budget) : budget_(budget) {}
  BudgetedBody(const BudgetedBody &) = delete;
  BudgetedBody &operator=(const BudgetedBody &) = delete;
  ~BudgetedBody() { budget_.resize_body(taken_, 0); }

  std::string text;

  // Takes room for a body of at most `bytes` with its terminating NUL, and makes the text
  // hold that much, so that writing it never allocates; false, with the text freed, when
  // the budget has no room. Memory of an earlier body is reused while it is not more
  // than twice what is needed.
  bool reserve(std::size_t bytes) {
    if (text.capacity() + 1 < bytes || text.capacity() / 2 > bytes) {
      free();
      if (!take(bytes)) return false;
      text.reserve(bytes - 1);
    }
    return settle();
  }
  // Matches what is taken to the memory the text holds; false, with the text freed, when
  // the budget has no room for it.
  bool settle() {
    const std::size_t holds = text.capacity() + 1;
    if (holds > taken_ && !take(holds - taken_)) return free(), false;
    if (holds < taken_) budget_.resize_body(taken_, holds), taken_ = holds;
    return true;
  }

private:
  void free() {
    std::string().swap(text); // assigning an empty string would keep the memory
    budget_.resize_body(taken_, 0);
    taken_ = 0;
  }
  bool take(std::size_t bytes) { return budget_.resize_body(taken_, taken_ + bytes) ? (taken_ += bytes, true) : false; }
  MemoryBudget &budget_;
  std::size_t taken_ = 0;
};

// The HTTP listener and its connections: accepts, reads request heads, answers, and
// lingers, each connection within its deadlines. Clients outside the allow list get
// 403, and when a token file is given, /metrics and / ask for its bearer token.
class HttpFrontEnd {
public:
  HttpFrontEnd(const Options &options, const Logger &logger, MemoryBudget &budget, RenderBody render, PushEndpoint push = {})
      : listener_(open_tcp_listener(options.http_address, options.http_port)), logger_(logger), budget_(budget),
        openmetrics_(options.openmetrics), protobuf_(options.protobuf), render_(std::move(render)),
        allow_(options.http_allow), token_file_(options.http_token_file), push_(std::move(push)) {
    if (!push_.token_file.empty()) {
      const std::string problem = read_token_file(push_.token_file, push_token_, "push token file");
      if (!problem.empty()) throw ConfigError(problem);
    }
    if (token_file_.empty()) return;
    const std::string problem = read_token_file(token_file_, token_);
    if (!problem.empty()) throw ConfigError(problem);
  }

  // The budget every connection may take at most: its request head and response head.
  static constexpr std::size_t connection_bytes = HERMES_MAX_REQUEST_HEAD + 1 + sizeof(Connection) + 512;
  static constexpr std::size_t most_connections = HERMES_MAX_CONNECTIONS + HERMES_MAX_REFUSED_CONNECTIONS;

  int listener() const { return listener_.get(); }
  const std::string &token_file() const { return token_file_; }
  // Reads the token file again: "" when it now holds the token, or the problem, and
  // then the token in force stays.
  std::string reload_token() { return read_token_file(token_file_, token_); }

  // The listener (unless accepting is paused) and each connection, for poll().
  void add_poll_fds(std::vector<pollfd> &fds, Clock::time_point now) const {
    fds.push_back({now >= accept_paused_until_ ? listener_.get() : -1, POLLIN, 0});
    for (const auto &connection : connections_)
      fds.push_back({connection->fd.get(), connection->phase == Connection::Phase::writing ? short(POLLOUT) : short(POLLIN), 0});
  }

  // Serves what poll() found, from the listener's entry on, then drops finished connections.
  void serve(const pollfd *fds, Clock::time_point now) {
    const std::size_t polled = connections_.size();
    for (std::size_t i = 0; i < polled; ++i)
      if (fds[i + 1].revents) serve(*connections_[i], now);
    if (fds[0].revents) accept_connections(now);
    remove_finished(now);
  }

  // The next deadline of a connection, or the end of a pause in accepting.
  std::optional<Clock::time_point> due(Clock::time_point now) const {
    std::optional<Clock::time_point> due;
    for (const auto &connection : connections_)
      if (!due || connection->deadline < *due) due = connection->deadline;
    if (accept_paused_until_ > now && (!due || accept_paused_until_ < *due)) due = accept_paused_until_;
    return due;
  }

  void add_stats(ServerStats &stats) const {
    stats.http_requests = requests_;
    stats.push_requests = push_requests_;
  }

private:
  void accept_connections(Clock::time_point now);
  void admit(FileDescriptor fd, bool forbidden, Clock::time_point now);
  bool close_oldest_reader(bool forbidden_only = false);
  void serve(Connection &connection, Clock::time_point now);
  void read_request(Connection &connection, Clock::time_point now);
  HttpResponse answer(const Connection &connection, std::string_view head, Clock::time_point now);
  enum class PushStart { not_push, answered, reading_body };
  PushStart begin_push(Connection &connection, std::string_view head, Clock::time_point now);
  std::optional<int> push_refusal(const HttpRequest &request, std::size_t &length, std::string &why);
  std::shared_ptr<const std::string> metrics_body(Format format, Clock::time_point now);
  std::shared_ptr<const std::string> refuse_body(std::size_t wanted);
  void respond(Connection &connection, HttpResponse response, Clock::time_point now);
  void write_response(Connection &connection, Clock::time_point now);
  void drain(Connection &connection);
  void remove_finished(Clock::time_point now);

  // The latest body of a format: shared by the scrapes that come within
  // HERMES_SHARED_BODY_MS of it while it is being sent, and its memory reused by the
  // next when nobody sends it.
  struct Latest {
    std::shared_ptr<BudgetedBody> body;
    Clock::time_point rendered{};
  };

  FileDescriptor listener_;
  const Logger &logger_;
  MemoryBudget &budget_;
  bool openmetrics_, protobuf_;
  RenderBody render_;
  std::array<Latest, static_cast<std::size_t>(Format::count_)> latest_;
  AllowList allow_;        // clients; empty: everyone
  std::string token_file_; // empty: no token asked for
  std::string token_;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::map<int, std::uint64_t> requests_ = ServerStats().http_requests; // by status, every one from 0
  PushEndpoint push_;
  std::string push_token_;
  std::map<std::pair<std::string, int>, std::uint64_t> push_requests_ = ServerStats().push_requests; // by method and status
  std::uint64_t accepted_ = 0;
  std::size_t refusing_ = 0; // connections being told 503
  Clock::time_point accept_paused_until_{};
  Clock::time_point next_fd_warning_{};
  Clock::time_point next_memory_warning_{};
};

inline void HttpFrontEnd::accept_connections(Clock::time_point now) {
  for (int i = 0; i < HERMES_MAX_CONNECTIONS; ++i) {
    SocketAddress peer;
    const int fd = retry_on_eintr([&] {
      peer.length = sizeof peer.storage;
      return ::accept4(listener_.get(), reinterpret_cast<sockaddr *>(&peer.storage), &peer.length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    });
    if (fd >= 0) {
      admit(FileDescriptor(fd), !allow_.allows(peer.get(), peer.length), now);
      continue;
    }
    if (errno == EMFILE || errno == ENFILE) {
      // Out of descriptors: an idle client gives its own up for the newcomer.
      if (close_oldest_reader()) continue;
    }
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      // The pending connection stays queued and the socket stays readable: without a
      // pause, poll() would wake at once, again and again.
      accept_paused_until_ = now + std::chrono::milliseconds(100);
      if (now >= next_fd_warning_) {
        logger_.log(LogLevel::warn, "cannot accept HTTP connections", {{"error", std::strerror(errno)}});
        next_fd_warning_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
      }
    }
    if (errno != ECONNABORTED) return;
  }
}

// A full house that no idle client can make room in still reads the newcomer's request
// and answers 503, within HERMES_MAX_REFUSED_CONNECTIONS: closing at once, with its
// request unread, would reset the connection and the client would see no answer.
inline void HttpFrontEnd::admit(FileDescriptor fd, bool forbidden, Clock::time_point now) {
  bool refuse = false;
  if (connections_.size() - refusing_ >= HERMES_MAX_CONNECTIONS && !close_oldest_reader(forbidden)) {
    if (refusing_ >= HERMES_MAX_REFUSED_CONNECTIONS) return; // closes: no room even to refuse
    refuse = true;
    ++refusing_;
  }
  auto connection = std::make_unique<Connection>();
  connection->fd = std::move(fd);
  connection->sequence = ++accepted_;
  connection->refused = refuse;
  connection->forbidden = forbidden;
  connection->deadline = now + std::chrono::milliseconds(HERMES_HTTP_READ_TIMEOUT_MS);
  connections_.push_back(std::move(connection));
}

// A full house is most often idle or slow clients: one still sending its request head
// gives its place to the newcomer, a forbidden one first, else the one waiting longest.
// A forbidden newcomer takes only a forbidden one's place: clients outside the allow
// list cannot push out those inside it.
inline bool HttpFrontEnd::close_oldest_reader(bool forbidden_only) {
  Connection *oldest = nullptr;
  for (const auto &connection : connections_) {
    if (connection->phase != Connection::Phase::reading || connection->refused || (forbidden_only && !connection->forbidden))
      continue;
    if (!oldest || std::make_pair(!connection->forbidden, connection->sequence) < std::make_pair(!oldest->forbidden, oldest->sequence))
      oldest = connection.get();
  }
  if (!oldest) return false;
  const auto position = std::find_if(connections_.begin(), connections_.end(), [&](const auto &c) { return c.get() == oldest; });
  connections_.erase(position);
  return true;
}

inline void HttpFrontEnd::serve(Connection &connection, Clock::time_point now) {
  switch (connection.phase) {
  case Connection::Phase::reading: read_request(connection, now); break;
  case Connection::Phase::writing: write_response(connection, now); break;
  case Connection::Phase::lingering: drain(connection); break;
  case Connection::Phase::done: break;
  }
}

inline void HttpFrontEnd::read_request(Connection &connection, Clock::time_point now) {
  char buffer[4096];
  for (;;) {
    const std::size_t wanted = connection.push ? connection.body_start + connection.body_length : HERMES_MAX_REQUEST_HEAD + 1;
    if (connection.push && connection.input.size() >= wanted) {
      const std::string_view body = std::string_view(connection.input).substr(connection.body_start, connection.body_length);
      return respond(connection, push_.answer(*connection.push, body), now);
    }
    const std::size_t room = std::min(sizeof buffer, wanted - connection.input.size());
    const ssize_t length = retry_on_eintr([&] { return ::recv(connection.fd.get(), buffer, room, 0); });
    if (length <= 0) {
      // End of stream before a whole head or body, or an error: nobody to answer.
      if (length == 0 || !is_not_now(errno)) connection.phase = Connection::Phase::done;
      return;
    }
    if (connection.push) {
      connection.input.append(buffer, static_cast<std::size_t>(length));
      continue;
    }
    std::size_t searched = connection.input.size() >= 2 ? connection.input.size() - 2 : 0;
    connection.input.append(buffer, static_cast<std::size_t>(length));
    // Empty lines before the request line are ignored (RFC 9112, section 2.2).
    if (const std::size_t start = connection.input.find_first_not_of("\r\n"); start != 0) {
      connection.input.erase(0, start);
      searched = 0;
    }
    if (connection.input.empty()) continue;
    const std::size_t head_end = find_head_end(std::string_view(connection.input).substr(searched));
    if (head_end == std::string::npos && connection.input.size() <= HERMES_MAX_REQUEST_HEAD) continue;
    if (head_end == std::string::npos || searched + head_end > HERMES_MAX_REQUEST_HEAD)
      return respond(connection, error_response(connection.forbidden ? 403 : 431), now);
    const std::string_view head = std::string_view(connection.input).substr(0, searched + head_end);
    const PushStart push = begin_push(connection, head, now);
    if (push == PushStart::answered) return;
    if (push == PushStart::reading_body) continue;
    return respond(connection, answer(connection, head, now), now);
  }
}

// A Content-Length: decimal digits only.
inline std::optional<std::size_t> parse_decimal_size(std::string_view text) {
  std::size_t value = 0;
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || result.ec != std::errc() || result.ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

// A request of the Pushgateway API goes on to read its body, within HERMES_HTTP_READ_TIMEOUT_MS
// more, its bytes taken from the memory budget; or is answered at once when it lacks the
// push token, a length, or an encoding Hermes reads, or when its body is too large for
// the limit or the budget. Any other request, and one from a forbidden or refused
// client, is not a push.
inline HttpFrontEnd::PushStart HttpFrontEnd::begin_push(Connection &connection, std::string_view head, Clock::time_point now) {
  if (!push_.takes || connection.forbidden || connection.refused) return PushStart::not_push;
  auto request = parse_request_head(head);
  if (!request || request->version[5] != '1' || !push_.takes(*request)) return PushStart::not_push;
  std::size_t length = 0;
  std::string why;
  const auto count = [&](int status) { ++push_requests_[{request->method, status}]; };
  if (const auto refusal = push_refusal(*request, length, why)) {
    count(*refusal);
    HttpResponse response = error_response(*refusal);
    if (!why.empty()) response.body = why + "\n";
    respond(connection, std::move(response), now);
    return PushStart::answered;
  }
  connection.budget = &budget_;
  connection.body_taken = length;
  connection.body_start = head.size();
  connection.body_length = length;
  connection.input.reserve(head.size() + length);
  connection.push = std::move(*request);
  connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_READ_TIMEOUT_MS);
  return PushStart::reading_body;
}

// Why a push is answered before its body is read, with `why` for the client; or nullopt
// with `length` its body's and the bytes taken from the budget.
inline std::optional<int> HttpFrontEnd::push_refusal(const HttpRequest &request, std::size_t &length, std::string &why) {
  if (!push_token_.empty() && !bearer_matches(header(request, "authorization"), push_token_)) return 401;
  const std::string_view encoding = header(request, "content-encoding");
  if (!encoding.empty() && lowercase(encoding) != "identity")
    return why = "Content-Encoding " + std::string(encoding) + " is not supported: send the body as it is", 415;
  const std::string_view length_text = header(request, "content-length");
  if (length_text.empty() && request.method == "DELETE" && header(request, "transfer-encoding").empty()) return std::nullopt;
  if (length_text.empty()) return why = "a push needs a Content-Length", 411;
  const auto parsed = parse_decimal_size(length_text);
  if (!parsed) return why = "Content-Length " + std::string(length_text) + " is not a number of bytes", 400;
  if (*parsed > push_.max_body)
    return why = "a body of " + std::string(length_text) + " bytes is larger than the limit of " + std::to_string(push_.max_body), 413;
  if (!budget_.take(*parsed))
    return why = "no room in the memory budget for a body of " + std::string(length_text) + " bytes", 507;
  length = *parsed;
  return std::nullopt;
}

// A forbidden client learns nothing but 403, whatever it asked; a request without the
// token for a path that needs it gets 401, whatever its method.
inline HttpResponse HttpFrontEnd::answer(const Connection &connection, std::string_view head, Clock::time_point now) {
  const auto request = parse_request_head(head);
  const bool head_only = request && request->method == "HEAD";
  if (connection.forbidden) return error_response(403, head_only);
  if (!request) return error_response(400);
  if (connection.refused) return error_response(503);
  if (!token_.empty() && needs_token(request->path) && !bearer_matches(header(*request, "authorization"), token_))
    return error_response(401, head_only);
  return route(*request, openmetrics_, protobuf_, [this, now](Format format) { return metrics_body(format, now); });
}

// A scrape the budget has no room for, which only more bodies in flight at once than
// HERMES_SCRAPE_BODIES can meet: logged at most once per interval, answered 503.
inline std::shared_ptr<const std::string> HttpFrontEnd::refuse_body(std::size_t wanted) {
  const Clock::time_point now = Clock::now();
  if (now >= next_memory_warning_) {
    logger_.log(LogLevel::warn, "no room in the memory budget for one more /metrics body; answered 503",
                {{"wanted", std::to_string(wanted)}, {"used", std::to_string(budget_.used())},
                 {"room_for_bodies", std::to_string(budget_.body_room())}, {"budget", std::to_string(budget_.limit())}});
    next_memory_warning_ = now + std::chrono::seconds(HERMES_REJECT_LOG_INTERVAL_S);
  }
  return nullptr;
}

// The body of a scrape: the latest of its format while connections still send it and it
// is recent enough (scrapers that do not read, or read slowly, all share it), else a new
// one, written over the latest's memory when nobody sends that any more. It takes the
// most a body of the series can be, which the budget keeps room for. Idle bodies of the
// other formats are freed first, so that the room holds only bodies in flight. Null when
// more bodies are in flight than the room holds and the budget has no more.
inline std::shared_ptr<const std::string> HttpFrontEnd::metrics_body(Format format, Clock::time_point now) {
  Latest &latest = latest_[static_cast<std::size_t>(format)];
  const auto shared = [](const std::shared_ptr<BudgetedBody> &body) { return std::shared_ptr<const std::string>(body, &body->text); };
  const bool in_flight = latest.body.use_count() > 1; // a connection is still sending it
  if (in_flight && now - latest.rendered < std::chrono::milliseconds(HERMES_SHARED_BODY_MS)) return shared(latest.body);
  for (Latest &other : latest_)
    if (&other != &latest && other.body.use_count() == 1) other.body.reset();
  std::shared_ptr<BudgetedBody> body = latest.body.use_count() == 1 ? latest.body : std::make_shared<BudgetedBody>(budget_);
  latest.body.reset(); // connections still sending it keep it
  if (!render_(format, *body)) return refuse_body(budget_.body_bound());
  latest.body = body;
  latest.rendered = now;
  return shared(body);
}

inline void HttpFrontEnd::respond(Connection &connection, HttpResponse response, Clock::time_point now) {
  ++requests_[response.status];
  if (connection.push) ++push_requests_[{connection.push->method, response.status}];
  connection.head = response_head(response);
  if (!response.head_only) {
    connection.body = std::move(response.body);
    connection.shared_body = std::move(response.shared_body);
  }
  connection.input.clear();
  connection.input.shrink_to_fit();
  if (connection.budget) connection.budget->give_back(connection.body_taken), connection.body_taken = 0;
  connection.phase = Connection::Phase::writing;
  connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_WRITE_TIMEOUT_MS);
  write_response(connection, now); // most responses fit the socket buffer at once
}

inline void HttpFrontEnd::write_response(Connection &connection, Clock::time_point now) {
  const std::string &head = connection.head;
  const std::string &body = connection.shared_body ? *connection.shared_body : connection.body;
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
    const ssize_t length = retry_on_eintr([&] { return ::sendmsg(connection.fd.get(), &message, MSG_NOSIGNAL); });
    if (length < 0) {
      if (!is_not_now(errno)) connection.phase = Connection::Phase::done; // the client went away
      return;
    }
    connection.sent += static_cast<std::size_t>(length);
  }
  connection.head = std::string();
  connection.body = std::string();
  connection.shared_body.reset(); // the last connection sending a body that is not the latest frees it
  ::shutdown(connection.fd.get(), SHUT_WR); // the end of the body, for an HTTP/1.0 client
  connection.phase = Connection::Phase::lingering;
  connection.deadline = now + std::chrono::milliseconds(HERMES_HTTP_LINGER_MS);
}

inline void HttpFrontEnd::drain(Connection &connection) {
  char buffer[4096];
  for (;;) {
    const ssize_t length = retry_on_eintr([&] { return ::recv(connection.fd.get(), buffer, sizeof buffer, 0); });
    if (length > 0) continue;
    if (length == 0 || !is_not_now(errno)) connection.phase = Connection::Phase::done;
    return;
  }
}

inline void HttpFrontEnd::remove_finished(Clock::time_point now) {
  for (const auto &connection : connections_)
    if (now >= connection->deadline) connection->phase = Connection::Phase::done;
  const auto finished = std::remove_if(connections_.begin(), connections_.end(), [this](const auto &c) {
    if (c->phase != Connection::Phase::done) return false;
    if (c->refused) --refusing_;
    return true;
  });
  connections_.erase(finished, connections_.end());
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
// Version 2 keeps a summary window's buffer once, for its five streams; version 1 kept
// one in each stream, and is still read.
constexpr double state_format_version = 2;
constexpr std::size_t state_v1_stream_buffer_limit = 500; // observations a version 1 stream held unmerged
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
  // Makes room in `out` for `bytes` more; false stops the write.
  using MakeRoom = std::function<bool(std::string &out, std::size_t bytes)>;
  // Writes the state over `out`; `make_room`, when given, is asked before each part is
  // written for the most that part can be. False when it refused.
  static bool save(const Registry &registry, std::string &out, Now now, const std::function<void()> &pause,
                   const MakeRoom &make_room = {});
  static std::size_t text_bound(const Registry &registry); // the most save() writes now
  static Registry::RestoreSummary restore(Registry &registry, std::string_view text, double monotonic_now);

  // The reading side: every problem names its place in the file.
  explicit StateCodec(double monotonic_now) : monotonic_now_(monotonic_now) {}
  void check_format(const picojson::object &top) const;
  MetricConfig read_shape(const picojson::object &metric, const std::string &place) const;
  RestoredSeries read_series(const MetricConfig &shape, const picojson::value &value, const std::string &place) const;
  [[noreturn]] void fail(const std::string &place, const std::string &problem) const;

private:
  static std::size_t header_bound(const Registry &registry);
  static std::size_t shape_bound(const MetricConfig &config);
  static std::size_t series_text_bound(const std::vector<std::string> &labels, const Series &series);

public:
  static std::size_t worst_series_text(const MetricConfig &config, std::size_t label_value_bytes);

private:
  static void write_shape(std::string &out, const MetricConfig &config);
  static void write_series(std::string &out, const MetricConfig &config, const std::vector<std::string> &labels,
                           const Series &series, double monotonic_now);
  static void write_window(std::string &out, const QuantileWindow &window, double monotonic_now);
  static void write_native(std::string &out, const NativeHistogram &native);
  void read_native(const MetricConfig &shape, const picojson::value &value, NativeHistogram &native,
                   const std::string &place) const;
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
  void read_stream(const picojson::value &value, QuantileStream &stream, std::size_t most, const std::string &place) const;
  void read_v1_stream(const picojson::value &value, QuantileStream &stream, const QuantileStream::Objectives &objectives,
                      const std::string &place) const;
  std::vector<double> read_values(const picojson::value &value, std::size_t fewer_than, const char *what,
                                  const std::string &place) const;

  double monotonic_now_;
};

// ---- writing ---------------------------------------------------------------------------

inline bool StateCodec::save(const Registry &registry, std::string &out, Now now, const std::function<void()> &pause,
                             const MakeRoom &make_room) {
  out.clear();
  const auto room = [&](std::size_t bytes) { return !make_room || make_room(out, bytes); };
  if (!room(header_bound(registry))) return false;
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
    if (!room(shape_bound(metric.config))) return false;
    out += m == 0 ? "\n" : ",\n";
    write_shape(out, metric.config);
    out += ", \"series\": [";
    bool first = true;
    for (const auto &[labels, series] : metric.series) {
      if (!room(series_text_bound(labels, series))) return false;
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
  return true;
}

// The bytes of a JSON string as append_json_string writes it.
inline std::size_t json_string_size(std::string_view text) {
  std::size_t size = 2 + text.size();
  for (const char c : text) size += c == '"' || c == '\\' ? 1 : static_cast<unsigned char>(c) < 0x20 ? 5 : 0;
  return size;
}

// What save() writes, at most, with every number as long as a number can be: walks the
// series, whose summary windows and native buckets vary, and nothing else.
constexpr std::size_t state_number = longest_number + 4; // with ", " or brackets around it
constexpr std::size_t state_keys = 256;                  // the keys and punctuation of one object

// The file's head and end, one metric's shape, one series: each at most.
inline std::size_t StateCodec::header_bound(const Registry &registry) {
  return state_keys + state_number + json_string_size(registry.service_name());
}

inline std::size_t StateCodec::shape_bound(const MetricConfig &config) {
  std::size_t bytes = state_keys + json_string_size(config.name) + (config.buckets.size() + 2 * config.objectives.size() + 4) * state_number;
  for (const std::string &label : config.labels) bytes += json_string_size(label) + 2;
  return bytes;
}

inline std::size_t StateCodec::series_text_bound(const std::vector<std::string> &labels, const Series &series) {
  std::size_t bytes = state_keys + 6 * state_number;
  for (const std::string &value : labels) bytes += json_string_size(value) + 2;
  if (!series.distribution) return bytes;
  const Distribution &seen = *series.distribution;
  bytes += seen.bucket_counts.size() * state_number;
  if (seen.native) bytes += state_keys + (seen.native->buckets() + 2) * 2 * state_number;
  if (seen.quantiles) bytes += state_keys * (1 + QuantileWindow::streams) + seen.quantiles->memory_entries() * 3 * state_number;
  return bytes;
}

// series_text_bound of a series at its fullest: every bucket a native histogram can
// hold, every entry a summary's streams and buffer can hold.
inline std::size_t StateCodec::worst_series_text(const MetricConfig &config, std::size_t label_value_bytes) {
  std::size_t bytes = state_keys + 6 * state_number + config.labels.size() * (label_value_bytes + 4);
  if (config.type == MetricType::histogram) bytes += (config.buckets.size() + 1) * state_number;
  if (config.native)
    bytes += state_keys + (std::max(config.native_max_buckets, most_native_buckets_at_coarsest) + 2) * 2 * state_number;
  if (!config.objectives.empty()) {
    const std::size_t entries = QuantileWindow::streams * QuantileStream::entry_limit(config.objectives) + QuantileWindow::buffer_limit;
    bytes += state_keys * (1 + QuantileWindow::streams) + entries * 3 * state_number;
  }
  return bytes;
}

inline std::size_t StateCodec::text_bound(const Registry &registry) {
  std::size_t bytes = header_bound(registry);
  for (const Metric &metric : registry.metrics_) {
    bytes += shape_bound(metric.config);
    for (const auto &[labels, series] : metric.series) bytes += series_text_bound(labels, series);
  }
  return bytes;
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
  if (config.native) {
    append_state_key(out, "native_bucket_factor");
    append_state_number(out, config.native_bucket_factor);
    append_state_key(out, "native_max_buckets");
    append_state_count(out, config.native_max_buckets);
    append_state_key(out, "native_zero_threshold");
    append_state_number(out, config.native_zero_threshold);
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
    if (seen->native) write_native(out, *seen->native);
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

// A native histogram's schema, zero bucket and sparse buckets as [index, count] pairs.
inline void StateCodec::write_native(std::string &out, const NativeHistogram &native) {
  const auto side = [&](const NativeSide &buckets) {
    append_state_list(out, buckets, [&](const std::pair<std::int32_t, std::uint64_t> &bucket) {
      append_state_number(out += '[', bucket.first);
      append_state_count(out += ", ", bucket.second);
      out += ']';
    });
  };
  append_state_key(out, "native");
  append_state_key(out += '{', "schema", true);
  append_state_number(out, native.schema);
  append_state_key(out, "zero_count");
  append_state_count(out, native.zero_count);
  append_state_key(out, "positive");
  side(native.positive);
  append_state_key(out, "negative");
  side(native.negative);
  out += '}';
}

// The five streams and the buffer as they are, the buffer unmerged (the file must not
// change the window), with the stream that answers and how long until the next turn.
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
    out += '}';
  });
  append_state_key(out, "buffer");
  append_state_list(out, window.buffer_, [&](double value) { append_state_number(out, value); });
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
  if (!version.is<double>() || !(version.get<double>() == 1 || version.get<double>() == state_format_version))
    fail("version", "format version " + quote_json(version) + ", this Hermes reads versions 1 and 2");
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
    if (member(metric, "native_bucket_factor")) { // a native histogram
      shape.native = true;
      shape.native_bucket_factor = finite_at(at(metric, "native_bucket_factor", place), place + ".native_bucket_factor", 1, HUGE_VAL);
      shape.native_max_buckets = static_cast<std::size_t>(count_at(at(metric, "native_max_buckets", place), place + ".native_max_buckets"));
      shape.native_zero_threshold =
          finite_at(at(metric, "native_zero_threshold", place), place + ".native_zero_threshold", 0, HUGE_VAL);
    }
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
  if (seen.native) read_native(shape, at(object, "native", place), *seen.native, place + ".native");
}

// Buckets as Hermes writes them: indexes that increase, counts above 0, no more than the
// metric may hold, so that a file cannot make a series larger than its budget allows.
inline void StateCodec::read_native(const MetricConfig &shape, const picojson::value &value, NativeHistogram &native,
                                    const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  native.schema = static_cast<std::int32_t>(finite_at(at(object, "schema", place), place + ".schema", native_schema_min,
                                                      native_schema_max));
  native.zero_count = count_at(at(object, "zero_count", place), place + ".zero_count");
  const std::size_t most = std::max<std::size_t>(shape.native_max_buckets, 130) + 1;
  for (const char *name : {"positive", "negative"}) {
    const std::string where = place + "." + name;
    const picojson::array &buckets = list_at(at(object, name, place), where);
    if (buckets.size() > most) fail(where, "more buckets than the metric may hold");
    NativeSide &side = std::string_view(name) == "positive" ? native.positive : native.negative;
    for (std::size_t i = 0; i < buckets.size(); ++i) {
      const std::string item = where + "[" + std::to_string(i) + "]";
      const picojson::array &pair = list_at(buckets[i], item);
      if (pair.size() != 2) fail(item, "expected [index, count]");
      const auto index = static_cast<std::int32_t>(finite_at(pair[0], item, INT32_MIN, INT32_MAX));
      if (!side.empty() && index <= side.back().first) fail(item, "indexes must increase");
      const std::uint64_t count = count_at(pair[1], item);
      if (count == 0) fail(item, "a bucket holds at least one observation");
      side.emplace_back(index, count);
    }
  }
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
  // Series are read as they come, before the file's version may have been: the window's
  // own buffer tells version 2 from version 1, whose streams each kept one.
  const auto buffer = object.find("buffer");
  for (std::size_t i = 0; i < streams.size(); ++i) {
    const std::string where = place + ".streams[" + std::to_string(i) + "]";
    if (buffer != object.end()) read_stream(streams[i], window->streams_[i], QuantileStream::entry_limit(shape.objectives), where);
    else read_v1_stream(streams[i], window->streams_[i], shape.objectives, where);
  }
  if (buffer != object.end())
    window->buffer_ = read_values(buffer->second, QuantileWindow::buffer_limit, "a window's", place + ".buffer");
  return window;
}

// A stream's entries, at most `most` of them: more would pass the worst case the budget
// counts for the series.
inline void StateCodec::read_stream(const picojson::value &value, QuantileStream &stream, std::size_t most,
                                    const std::string &place) const {
  const picojson::object &object = object_at(value, place);
  const picojson::array &entries = list_at(at(object, "entries", place), place + ".entries");
  if (entries.size() > most)
    fail(place + ".entries", std::to_string(entries.size()) + " entries, more than a stream keeps (" + std::to_string(most) + ")");
  stream.entries_.reserve(entries.size()); // no more room than they take: a grown vector could pass the worst case
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
}

// A version 1 stream: its entries (that version kept up to 32 plus 1 / (2 error) for
// each objective) and its own buffer, merged now in runs. Brought within this version's
// limit as a merge would, it then holds no more than the worst case.
inline void StateCodec::read_v1_stream(const picojson::value &value, QuantileStream &stream,
                                       const QuantileStream::Objectives &objectives, const std::string &place) const {
  // Its entries, however many: the tree of the file's text that holds them is larger still.
  read_stream(value, stream, std::numeric_limits<std::size_t>::max(), place);
  std::vector<double> buffer =
      read_values(at(object_at(value, place), "buffer", place), state_v1_stream_buffer_limit, "a stream's", place + ".buffer");
  std::sort(buffer.begin(), buffer.end());
  for (std::size_t run = 0; run < buffer.size(); run += QuantileStream::run_limit)
    stream.merge(buffer.data() + run, std::min(QuantileStream::run_limit, buffer.size() - run), objectives);
  stream.keep_within_limit(objectives);
  const std::size_t most = QuantileStream::entry_limit(objectives), kept = stream.entries_.size();
  if (kept > most)
    fail(place + ".entries", std::to_string(kept) + " entries, more than a stream keeps (" + std::to_string(most) + ")");
  if (stream.entries_.capacity() > most + QuantileStream::run_limit) // no more room than they take
    stream.entries_ = std::vector<QuantileStream::Entry>(stream.entries_.begin(), stream.entries_.end());
}

// A list of at most `fewer_than` - 1 numbers: a buffer is merged once full.
inline std::vector<double> StateCodec::read_values(const picojson::value &value, std::size_t fewer_than, const char *what,
                                                   const std::string &place) const {
  const picojson::array &list = list_at(value, place);
  if (list.size() >= fewer_than) fail(place, std::string("longer than ") + what + " buffer");
  std::vector<double> values;
  values.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) values.push_back(number_at(list[i], place + "[" + std::to_string(i) + "]"));
  return values;
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
    std::size_t skipped = problem ? restored.series.size() : 0, over_budget = 0;
    for (std::size_t i = 0; !problem && i < restored.series.size(); ++i) {
      RestoredSeries &series = restored.series[i];
      const auto existing = metric->series.find(series.labels);
      const bool is_new = existing == metric->series.end();
      if (is_new && metric->series.size() >= metric->config.max_series) {
        ++skipped;
        continue;
      }
      const SeriesCost cost = series_cost(metric->config, series.labels);
      if (is_new && !registry.budget_->take_for_series(cost.own, cost.body)) {
        ++skipped, ++over_budget;
        continue;
      }
      metric->series[std::move(series.labels)] = std::move(series.series);
      ++summary.restored;
    }
    if (skipped == 0) continue;
    summary.skipped += skipped;
    const char *why = problem ? problem : over_budget ? "no room in the memory budget" : "more series than max_series";
    summary.problems.push_back(restored.shape.name + ": " + why + ", " + std::to_string(skipped) + " series not restored");
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
    std::optional<std::string> out_of_range;
    BoundedJsonContext context(&tree, NestingBudget{state_json_depth - 4}, where, &out_of_range);
    if (!picojson::_parse(context, in)) return false;
    if (out_of_range) codec_.fail(*out_of_range, "a number beyond the range of a double");
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
    std::optional<std::string> out_of_range;
    BoundedJsonContext member(&(place_ == Place::root ? document_.top : header_)[key], NestingBudget{state_json_depth - 2},
                              where_ + "." + key, &out_of_range);
    if (!picojson::_parse(member, in)) return false;
    if (out_of_range) codec_.fail(*out_of_range, "a number beyond the range of a double");
    return true;
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
  if (!parse_json_into(reader, text, &error)) throw StateError(error);
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
// The file read at start and each text written take their bytes from the memory budget
// while they live; a text the budget has no room for is a failed write, tried again
// at the next interval.
class StateKeeper {
public:
  StateKeeper(const Options &options, const Logger &logger, MemoryBudget &budget)
      : path_(options.state_file), interval_(options.state_interval_seconds), logger_(logger), budget_(budget) {}
  StateKeeper(const StateKeeper &) = delete;
  StateKeeper &operator=(const StateKeeper &) = delete;
  ~StateKeeper() { wait(); }

  bool enabled() const { return !path_.empty(); }
  void restore(Registry &registry, double monotonic_now);
  // Takes the result of a finished write; true when a write is due: the interval has
  // passed, the registry changed since the last write and none is in flight.
  bool due(const Registry &registry, double monotonic_now);
  bool changed(const Registry &registry) const { return enabled() && registry.changes() != written_changes_; }
  // Makes the text of the next write, taking its memory from the budget as it grows;
  // false, and the write counted as failed, when the budget has no room for it.
  // `pause` runs between parts, as for Registry::save_state.
  bool make_text(const Registry &registry, Now now, const std::function<void()> &pause);
  // Hands the text to the writing thread; `changes` is registry.changes() as it was made.
  void write(std::uint64_t changes, double monotonic_now);
  // Waits for the write in flight, if any, and takes its result.
  void wait();
  void add_stats(ServerStats &stats) const {
    stats.state_writes_succeeded = stats_.state_writes_succeeded;
    stats.state_writes_failed = stats_.state_writes_failed;
    stats.state_last_write_seconds = stats_.state_last_write_seconds;
    stats.state_restored_series = stats_.state_restored_series;
  }

private:
  void take_result();
  bool grow(std::string &text, std::size_t bytes);
  void free_buffer();
  void count_failure(const std::string &error);
  void put_aside(const std::string &why, const std::string &problem);

  std::string path_;
  double interval_;
  ServerStats stats_; // only its state_* figures, which add_stats() hands on
  const Logger &logger_;
  MemoryBudget &budget_;
  std::size_t taken_ = 0;        // of the budget, for bytes_ or job_
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
  // No file at the path, a directory of it missing, or a file where a directory should
  // be (ENOTDIR): no state to read and nothing to set aside. Until the path is fixed,
  // writes fail, and each failure is counted and logged.
  const int missing = ::stat(path_.c_str(), &info) != 0 ? errno : 0;
  if (missing == ENOENT) return logger_.log(LogLevel::info, "no state file yet; starting empty", {{"path", path_}});
  if (missing == ENOTDIR)
    return logger_.log(LogLevel::warn, "no state file yet; starting empty",
                       {{"path", path_}, {"error", std::string("stat: ") + std::strerror(missing)}});
  const auto size = static_cast<std::size_t>(std::max<off_t>(info.st_size, 0));
  if (info.st_size > HERMES_MAX_STATE_SIZE) // not read at all
    return put_aside("state file is not state", "larger than " + std::to_string(HERMES_MAX_STATE_SIZE) + " bytes");
  // The text with a byte more, to see a file that grew: exactly that much, taken first.
  // A file the budget cannot hold is kept aside too: the next write would replace it.
  const std::size_t taken = size + 2;
  if (!budget_.take(taken))
    return put_aside("state file larger than the memory budget has room for", std::to_string(size) + " bytes");
  std::string text;
  text.reserve(size + 1);
  try {
    if (const int error = read_file(path_.c_str(), size + 1, text)) throw StateError(std::string("cannot read: ") + std::strerror(error));
    if (text.size() > size) throw StateError("grew while it was read");
    const Registry::RestoreSummary summary = registry.restore_state(text, monotonic_now);
    for (const std::string &problem : summary.problems) logger_.log(LogLevel::warn, "state not restored", {{"path", path_}, {"metric", problem}});
    stats_.state_restored_series = summary.restored;
    logger_.log(LogLevel::info, "state restored", {{"path", path_}, {"series", std::to_string(summary.restored)},
                                                   {"skipped", std::to_string(summary.skipped)}});
  } catch (const StateError &problem) {
    put_aside("state file is not state", problem.what());
  }
  std::string().swap(text);
  budget_.give_back(taken);
  written_changes_ = registry.changes();
}

// Renames the file aside, never deleting it, and logs why; Hermes starts empty.
inline void StateKeeper::put_aside(const std::string &why, const std::string &problem) {
  const std::string aside = set_aside(path_);
  logger_.log(LogLevel::error, why + "; set aside, starting empty",
              {{"path", path_}, {"error", printable_ascii(problem)}, {"moved_to", aside}});
}

inline bool StateKeeper::make_text(const Registry &registry, Now now, const std::function<void()> &pause) {
  wait();
  free_buffer();
  if (StateCodec::save(registry, bytes_, now, pause, [this](std::string &text, std::size_t bytes) { return grow(text, bytes); }))
    return true;
  free_buffer();
  next_write_ = now.monotonic + interval_;
  count_failure("no room in the memory budget for its text");
  return false;
}

// Room for `bytes` more in the text, taken before it is allocated: a new buffer half as
// large again (or what is asked, if more), the text moved into it, the old one given back.
inline bool StateKeeper::grow(std::string &text, std::size_t bytes) {
  if (text.capacity() - text.size() >= bytes) return true;
  const std::size_t capacity = std::max(text.size() + bytes, text.capacity() + text.capacity() / 2);
  if (!budget_.take(capacity + 1)) return false;
  std::string larger;
  larger.reserve(capacity); // from empty: exactly that, where growing the text would double it
  larger += text;
  text.swap(larger);
  std::string().swap(larger);
  budget_.give_back(taken_);
  taken_ = capacity + 1;
  return true;
}

inline void StateKeeper::count_failure(const std::string &error) {
  ++stats_.state_writes_failed;
  logger_.log(LogLevel::error, "state write failed; the previous file stays, retrying next interval",
              {{"path", path_}, {"error", error}});
}

// Between writes the text holds no memory: a registry that shrank needs less next time.
inline void StateKeeper::free_buffer() {
  std::string().swap(bytes_);
  budget_.give_back(taken_);
  taken_ = 0;
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
    std::string().swap(job_);
    free_buffer();
    count_failure(std::string("cannot start a thread: ") + problem.what());
  }
}

inline void StateKeeper::wait() {
  if (writer_.joinable()) take_result();
}

// One line per failed write, and writes come at most once per interval.
inline void StateKeeper::take_result() {
  writer_.join();
  std::string().swap(job_);
  free_buffer();
  if (error_.empty()) {
    written_changes_ = pending_changes_;
    ++stats_.state_writes_succeeded;
    stats_.state_last_write_seconds = wall_clock_seconds();
    logger_.log(LogLevel::debug, "state written", {{"path", path_}});
  } else {
    count_failure(error_);
  }
}

} // namespace detail
} // namespace hermes

// ===== CONFIG =============================================================================

namespace hermes {

inline const char *to_string(MetricType type) {
  static constexpr const char *names[] = {"counter", "gauge", "histogram", "summary"};
  return detail::name_of(type, names);
}

inline Config parse_config(std::string_view json, const std::string &origin) {
  picojson::value root;
  std::string error;
  if (!detail::parse_json(json, root, &error)) throw ConfigError(origin + ": " + error);
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

inline std::size_t worst_case_series_bytes(const MetricConfig &metric) {
  constexpr std::size_t allocation = 16;  // what malloc adds to each block
  constexpr std::size_t tree_links = 32;  // a map node's parent, children and colour
  std::size_t bytes = tree_links + sizeof(std::vector<std::string>) + sizeof(detail::Series) + allocation;
  bytes += metric.labels.size() * sizeof(std::string) + (metric.labels.empty() ? 0 : allocation);
  if (metric.type == MetricType::histogram)
    bytes += sizeof(detail::Distribution) + (metric.buckets.size() + 1) * sizeof(std::uint64_t) + 2 * allocation;
  if (metric.type == MetricType::summary) bytes += sizeof(detail::Distribution) + allocation;
  if (metric.native) { // each side's vector may hold twice the buckets it has; at schema -4 merging stops near 130
    const std::size_t buckets = std::max<std::size_t>(metric.native_max_buckets, 130) + 1;
    bytes += sizeof(detail::NativeHistogram) + allocation + 2 * (2 * buckets * sizeof(detail::NativeSide::value_type) + allocation);
  }
  if (!metric.objectives.empty())
    bytes += detail::QuantileWindow::worst_case_bytes(metric.objectives) + detail::QuantileWindow::allocations * allocation;
  return bytes;
}

inline std::size_t worst_case_body_bytes(const MetricConfig &metric, std::size_t label_value_bytes) {
  const std::vector<std::string> values(metric.labels.size(), std::string(label_value_bytes, 'x'));
  return detail::series_cost(metric, values).body;
}

inline std::size_t worst_case_state_bytes(const MetricConfig &metric, std::size_t label_value_bytes) {
  return detail::StateCodec::worst_series_text(metric, label_value_bytes);
}

inline std::vector<std::string> lint_config(const Config &config) {
  std::vector<std::string> advice;
  for (const MetricConfig &metric : config.metrics)
    for (const std::string &problem : detail::lint_names(metric)) advice.push_back(metric.name + ": " + problem);
  return advice;
}

// ===== OPTIONS ============================================================================

inline const char *to_string(LogLevel level) {
  static constexpr const char *names[] = {"debug", "info", "warn", "error"};
  return detail::name_of(level, names);
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

inline std::optional<std::size_t> parse_bytes(std::string_view text) {
  static constexpr std::pair<const char *, std::size_t> suffixes[] = {{"KiB", 1024}, {"MiB", 1024 * 1024}, {"GiB", 1024 * 1024 * 1024}};
  std::size_t unit = 1;
  for (const auto &[suffix, size] : suffixes)
    if (detail::ends_with(text, suffix)) {
      text = detail::trim(text.substr(0, text.size() - std::strlen(suffix)));
      unit = size;
    }
  const auto number = detail::parse_number<std::size_t>(text, 10, 0, SIZE_MAX / unit);
  if (!number) return std::nullopt;
  return *number * unit;
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

// Replaces `list` with the comma-separated ranges of variable `name`, when it is set.
inline void allow_list_from(AllowList &list, const Environment &env, const char *name) {
  const auto found = first_set(env, {name});
  if (!found) return;
  AllowList read;
  const std::vector<std::string_view> items = split(found->second, ',');
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string text(trim(items[i])), item = "(item " + std::to_string(i + 1) + ")";
    if (text.empty())
      throw UsageError(std::string(name) + ": \"" + found->second + "\": " + item + " is empty; separate ranges by single commas");
    AddressRange range;
    const std::string problem = parse_address_range(text, range);
    if (!problem.empty()) throw UsageError(std::string(name) + ": \"" + text + "\" " + item + " is not a CIDR range: " + problem);
    read.add(range, text);
  }
  list = std::move(read);
}

// The Pushgateway API's: HERMES_PUSH (on or off), HERMES_MAX_PUSH_BYTES,
// HERMES_MAX_PUSH_GROUPS and HERMES_PUSH_TTL (over the config's keys),
// HERMES_PUSH_TOKEN_FILE, HERMES_PUSH_ADMIN.
inline void push_options_from(Options &options, const Config &config, const Environment &env) {
  if (config.max_push_groups) options.max_push_groups = *config.max_push_groups;
  if (config.push_ttl_seconds) options.push_ttl_seconds = *config.push_ttl_seconds;
  override_from(options.push, env, {"HERMES_PUSH"}, parse_switch, "on or off");
  override_from(options.max_push_bytes, env, {"HERMES_MAX_PUSH_BYTES"}, parse_bytes, "a number of bytes (such as 4MiB)");
  override_from(
      options.max_push_groups, env, {"HERMES_MAX_PUSH_GROUPS"},
      [](std::string_view text) { return parse_number<std::size_t>(text, 10, 1, 1000000000); }, "a number of groups from 1");
  override_from(
      options.push_ttl_seconds, env, {"HERMES_PUSH_TTL"},
      [](const std::string &text) { return text == "0" ? std::optional<double>(0) : positive_seconds(text); },
      "a number of seconds (0: never)");
  override_from(options.push_token_file, env, {"HERMES_PUSH_TOKEN_FILE"}, any_text, "");
  override_from(options.push_admin, env, {"HERMES_PUSH_ADMIN"}, parse_switch, "on or off");
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
  override_from(options.protobuf, env, {"HERMES_PROTOBUF"}, parse_switch, "on or off");
  override_from(
      options.udp_receive_buffer, env, {"HERMES_UDP_RECEIVE_BUFFER"},
      [](std::string_view text) { return detail::parse_number<int>(text, 10, 4096, INT32_MAX); }, "a number of bytes (4096 or more)");
  override_from(options.unix_socket_path, env, {"HERMES_UNIX_SOCKET"}, detail::any_text, "");
  override_from(
      options.unix_socket_mode, env, {"HERMES_UNIX_SOCKET_MODE"},
      [](std::string_view text) { return detail::parse_number<unsigned>(text, 8, 0, 0777); }, "an octal file mode (such as 660)");
  override_from(options.statsd, env, {"HERMES_STATSD"}, parse_switch, "on or off");
  if (config.max_memory_bytes) options.max_memory = *config.max_memory_bytes;
  override_from(options.max_memory, env, {"HERMES_MAX_MEMORY"}, parse_bytes, "a number of bytes (such as 67108864 or 64MiB)");
  override_from(options.state_file, env, {"HERMES_STATE_FILE"}, detail::any_text, "");
  override_from(options.state_interval_seconds, env, {"HERMES_STATE_INTERVAL"}, detail::positive_seconds,
                "a number of seconds above 0");
  options.udp_allow = config.udp_allow;
  options.http_allow = config.http_allow;
  detail::allow_list_from(options.udp_allow, env, "HERMES_UDP_ALLOW");
  detail::allow_list_from(options.http_allow, env, "HERMES_HTTP_ALLOW");
  override_from(options.http_token_file, env, {"HERMES_HTTP_TOKEN_FILE"}, detail::any_text, "");
  detail::push_options_from(options, config, env);
  return options;
}

// ===== ACCESS =============================================================================

namespace detail {

// IPv4 addresses are ::ffff:a.b.c.d: the high half 0, the low half 0000ffff a.b.c.d.
constexpr std::uint64_t ipv4_mapped_low = 0xffff00000000u;

// Eight bytes, most significant first, as a number.
inline std::uint64_t load_big_endian(const unsigned char *bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | bytes[i];
  return value;
}

// The first `bits` bits of a 64-bit half set, for bits from 0 to 64.
inline std::uint64_t leading_bits(unsigned bits) { return bits == 0 ? 0 : ~std::uint64_t{0} << (64 - bits); }

// "10.0.0.0/8" or "2001:db8::/32": the network of a range with its prefix length.
inline std::string format_range(const unsigned char (&bytes)[16], bool v4, unsigned prefix) {
  char text[INET6_ADDRSTRLEN] = "?";
  ::inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? bytes + 12 : bytes, text, sizeof text);
  return std::string(text) + "/" + std::to_string(prefix);
}

} // namespace detail

inline std::string parse_address_range(std::string_view text, AddressRange &range) {
  const std::size_t slash = text.find('/');
  const std::string address(text.substr(0, slash));
  // inet_pton stops at a NUL and knows no zone (fe80::1%eth0): only address characters pass.
  const bool plain = !address.empty() && address.find_first_not_of("0123456789abcdefABCDEF:.") == std::string::npos;
  unsigned char bytes[16] = {};
  const bool v4 = plain && ::inet_pton(AF_INET, address.c_str(), bytes + 12) == 1;
  if (!v4 && !(plain && ::inet_pton(AF_INET6, address.c_str(), bytes) == 1))
    return "\"" + address + "\" is not an IPv4 or IPv6 address";
  if (v4) bytes[10] = bytes[11] = 0xff; // ::ffff:a.b.c.d
  const unsigned longest = v4 ? 32 : 128;
  unsigned prefix = longest;
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    const auto parsed = detail::parse_number<unsigned>(digits, 10, 0, longest);
    if (!parsed) return "the prefix length \"" + std::string(digits) + "\" is not a number from 0 to " + std::to_string(longest);
    prefix = *parsed;
  }
  const unsigned bits = prefix + (v4 ? 96 : 0);
  AddressRange read;
  read.high_mask = detail::leading_bits(std::min(bits, 64u));
  read.low_mask = detail::leading_bits(bits > 64 ? bits - 64 : 0);
  read.high = detail::load_big_endian(bytes);
  read.low = detail::load_big_endian(bytes + 8);
  if ((read.high & ~read.high_mask) != 0 || (read.low & ~read.low_mask) != 0) {
    for (unsigned i = 0; i < 16; ++i)
      if (8 * i + 8 > bits) bytes[i] &= static_cast<unsigned char>(8 * i >= bits ? 0 : 0xff00 >> (bits - 8 * i));
    return "bits are set past the /" + std::to_string(prefix) + " prefix (the network is " + detail::format_range(bytes, v4, prefix) + ")";
  }
  range = read;
  return "";
}

inline void AllowList::add(const AddressRange &range, std::string text) {
  ranges_.push_back(range);
  texts_.push_back(std::move(text));
  const bool holds_ipv4 = (range.high & range.high_mask) == 0 && ((detail::ipv4_mapped_low ^ range.low) & range.low_mask) >> 32 == 0;
  const bool only_ipv4 = holds_ipv4 && range.high_mask == ~std::uint64_t{0} && range.low_mask >> 32 == 0xffffffff;
  if (!only_ipv4) v6_ranges_.push_back(range);
  if (!holds_ipv4) return;
  // Fills the last block with copies of this range, which change no answer. A range
  // wider than ::ffff:0:0/96 holds every IPv4 address: its mask's low 32 bits are 0.
  const auto network = static_cast<std::uint32_t>(range.low), mask = static_cast<std::uint32_t>(range.low_mask);
  if (v4_count_ % v4_block == 0) {
    v4_networks_.resize(v4_count_ + v4_block, network);
    v4_masks_.resize(v4_count_ + v4_block, mask);
  }
  v4_networks_[v4_count_] = network;
  v4_masks_[v4_count_] = mask;
  ++v4_count_;
}

inline bool AllowList::listed_v4(std::uint32_t address) const {
  // No early exit and a number, not a bool, to gather in, over blocks of a fixed size:
  // so the compiler vectorises the inner loop.
  std::uint32_t found = 0;
  for (std::size_t block = 0; block < v4_masks_.size(); block += v4_block) {
    const std::uint32_t *networks = &v4_networks_[block], *masks = &v4_masks_[block];
    for (std::size_t i = 0; i < v4_block; ++i) found |= static_cast<std::uint32_t>(((address ^ networks[i]) & masks[i]) == 0);
  }
  return found != 0;
}

inline bool AllowList::listed(const sockaddr *address, socklen_t length) const {
  if (address->sa_family == AF_INET && length >= sizeof(sockaddr_in))
    return listed_v4(ntohl(reinterpret_cast<const sockaddr_in *>(address)->sin_addr.s_addr));
  if (address->sa_family != AF_INET6 || length < sizeof(sockaddr_in6)) return false; // no address the list can speak for
  const unsigned char *bytes = reinterpret_cast<const sockaddr_in6 *>(address)->sin6_addr.s6_addr;
  const std::uint64_t high = detail::load_big_endian(bytes), low = detail::load_big_endian(bytes + 8);
  if (high == 0 && low >> 32 == 0xffff) return listed_v4(static_cast<std::uint32_t>(low));
  bool found = false; // no early exit: no branch to mispredict
  for (const AddressRange &range : v6_ranges_) found |= range.contains(high, low);
  return found;
}

// ===== SAMPLES ============================================================================

inline const char *to_string(Reject reason) {
  static constexpr const char *names[] = {"malformed_json",      "malformed_sample", "unknown_metric",
                                          "label_mismatch",      "invalid_label_value", "invalid_value",
                                          "invalid_operation",   "series_limit",     "too_large",
                                          "unsupported_type",    "memory_limit",     "forbidden_source"};
  return detail::name_of(reason, names);
}

inline const char *to_string(Wire wire) {
  static constexpr const char *names[] = {"json", "statsd"};
  return detail::name_of(wire, names);
}

inline double wall_clock_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

inline double monotonic_seconds() { return detail::seconds_of(detail::Clock::now()); }

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
  std::uint64_t times = 1; // observations this one stands for: a StatsD sample rate's int(1 / rate)
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
    if (!is_valid_utf8(found->text.get())) return Reject::invalid_label_value;
    values.push_back(found->text.get());
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
  const std::string_view name = operation ? operation->text.get() : "set";
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

// The observations one sampled at `rate` stands for: int(1 / rate), as statsd_exporter
// counts them, held at the largest count for rates too small to count.
inline std::uint64_t statsd_multiplicity(double rate) {
  const double times = std::floor(1 / rate);
  return times >= 18446744073709551616.0 ? UINT64_MAX : static_cast<std::uint64_t>(times);
}

// How one value of a StatsD line changes its series, with statsd_exporter's meaning of
// each type. `text` is the value as sent: a gauge value with a sign moves the gauge.
inline std::optional<Reject> statsd_update(const StatsdLine &line, std::string_view text, Update &update) {
  double value = 0;
  if (!parse_statsd_number(text, value)) return Reject::invalid_value;
  if (line.type == StatsdType::counter) {
    const double amount = value / line.rate;
    if (value < 0 || !std::isfinite(amount)) return Reject::invalid_value;
    update = {Update::Kind::add, amount};
  } else if (line.type == StatsdType::gauge) {
    const bool moves = text.front() == '+' || text.front() == '-';
    update = {moves ? Update::Kind::add : Update::Kind::set, value};
  } else {
    const double seconds = line.type == StatsdType::timer ? value / 1000 : value; // timers speak milliseconds
    update = {Update::Kind::observe, seconds, statsd_multiplicity(line.rate)};
  }
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
    if (metric.native) {
      series.distribution->native = std::make_unique<NativeHistogram>();
      series.distribution->native->schema = native_schema(metric.native_bucket_factor);
    }
    if (!metric.objectives.empty()) series.distribution->quantiles = std::make_unique<QuantileWindow>(metric, now.monotonic);
  }
  return series;
}

inline std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

// An observation that stands for `times` of them counts and sums that many, at the cost
// of one. The quantile stream takes it once: a series sampled at one rate has the same
// quantiles either way, and a stream entry as wide as a large multiplicity would
// overstep the rank error the stream's query relies on.
// `now` on the monotonic clock.
inline void apply_update(const MetricConfig &metric, Series &series, const Update &update, double now) {
  series.last_push = now;
  if (update.kind == Update::Kind::set) {
    series.value = update.amount;
  } else if (update.kind == Update::Kind::add) {
    series.value += update.amount;
  } else {
    Distribution &seen = *series.distribution;
    seen.sum += update.amount * static_cast<double>(update.times);
    seen.count = saturating_add(seen.count, update.times);
    if (!seen.bucket_counts.empty()) { // the first bucket whose upper bound holds it; else +Inf
      const auto bucket = std::lower_bound(metric.buckets.begin(), metric.buckets.end(), update.amount);
      std::uint64_t &count = seen.bucket_counts[static_cast<std::size_t>(bucket - metric.buckets.begin())];
      count = saturating_add(count, update.times);
    }
    if (seen.native) observe_native(*seen.native, metric, update.amount);
    if (seen.quantiles) seen.quantiles->observe(update.amount, now);
  }
}

// Applies `update` to the series of `metric` with `label_values`, making the series when
// it is new. JSON samples and StatsD lines both end here.
inline std::optional<Reject> apply_to_series(Metric &metric, const std::vector<std::string_view> &label_values,
                                             const Update &update, Now now, MemoryBudget &budget) {
  auto series = metric.series.find(label_values);
  if (series == metric.series.end()) {
    if (metric.series.size() >= metric.config.max_series) return Reject::series_limit;
    const SeriesCost cost = series_cost(metric.config, label_values);
    if (!budget.take_for_series(cost.own, cost.body)) return Reject::memory_limit;
    series = metric.series
                 .emplace(std::vector<std::string>(label_values.begin(), label_values.end()), new_series(metric.config, now))
                 .first;
  }
  apply_update(metric.config, series->second, update, now.monotonic);
  return std::nullopt;
}

} // namespace detail

// ===== REGISTRY ===========================================================================

inline Registry::Registry(const Config &config, std::shared_ptr<MemoryBudget> budget)
    : service_name_(config.service_name), budget_(budget ? std::move(budget) : std::make_shared<MemoryBudget>()),
      reading_(std::make_unique<detail::Reading>()), statsd_reading_(std::make_unique<detail::StatsdReading>()) {
  for (const MetricConfig &metric_config : config.metrics) {
    detail::Metric metric{metric_config, {}};
    // A metric without labels has exactly one series; it shows 0 before the first push.
    if (metric_config.labels.empty()) metric.series.emplace(std::vector<std::string>{}, detail::new_series(metric_config, 0));
    metrics_.push_back(std::move(metric));
  }
  std::sort(metrics_.begin(), metrics_.end(),
            [](const detail::Metric &a, const detail::Metric &b) { return a.config.name < b.config.name; });
  fixed_body_bytes_ = detail::fixed_body_bound(*this);
  const detail::SeriesCost wanted = standing_cost();
  if (!budget_->take_for_series(wanted.own, wanted.body)) throw ConfigError(no_room_for(wanted));
  holds_budget_ = true;
}

// What the registry takes from its budget before any push: room for the families' heads
// and Hermes' own families in each body, and the series of the metrics without labels.
inline detail::SeriesCost Registry::standing_cost() const {
  detail::SeriesCost cost{0, fixed_body_bytes_};
  for (const detail::Metric &metric : metrics_) detail::add_series_costs(cost, metric);
  return cost;
}

inline std::string Registry::no_room_for(const detail::SeriesCost &wanted) const {
  return "the memory budget of " + std::to_string(budget_->limit()) + " bytes has no room for the config's metrics: " +
         std::to_string(wanted.own) + " bytes of series without labels, and " + std::to_string(budget_->bodies()) +
         " times " + std::to_string(wanted.body) + " bytes of room for /metrics bodies, beside the " +
         std::to_string(budget_->used()) + " bytes in use";
}

inline Registry::Registry(Registry &&other) noexcept
    : service_name_(std::move(other.service_name_)), metrics_(std::move(other.metrics_)), budget_(std::move(other.budget_)),
      reading_(std::move(other.reading_)), statsd_reading_(std::move(other.statsd_reading_)), statsd_(other.statsd_),
      fixed_body_bytes_(other.fixed_body_bytes_), holds_budget_(std::exchange(other.holds_budget_, false)),
      accepted_(other.accepted_), expired_(other.expired_), changes_(other.changes_), rejected_(other.rejected_),
      received_(other.received_) {}
inline Registry &Registry::operator=(Registry &&other) noexcept {
  if (this != &other) {
    give_back_budget();
    service_name_ = std::move(other.service_name_);
    metrics_ = std::move(other.metrics_);
    budget_ = std::move(other.budget_);
    fixed_body_bytes_ = other.fixed_body_bytes_;
    holds_budget_ = std::exchange(other.holds_budget_, false);
    reading_ = std::move(other.reading_);
    statsd_reading_ = std::move(other.statsd_reading_);
    statsd_ = other.statsd_;
    accepted_ = other.accepted_, expired_ = other.expired_, rejected_ = other.rejected_, received_ = other.received_;
  }
  return *this;
}
inline Registry::~Registry() { give_back_budget(); }

// Gives everything the registry took back to its budget: the series, and their room.
inline void Registry::give_back_budget() {
  if (!holds_budget_) return; // moved from
  for (detail::Metric &metric : metrics_) release(metric);
  budget_->give_back_series(0, fixed_body_bytes_);
  holds_budget_ = false;
}

// Gives the memory of every series of `metric` back to the budget.
inline void Registry::release(detail::Metric &metric) {
  for (const auto &entry : metric.series) {
    const detail::SeriesCost cost = detail::series_cost(metric.config, entry.first);
    budget_->give_back_series(cost.own, cost.body);
  }
  metric.series.clear();
}

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
  const Wire wire = statsd_ && detail::is_statsd(datagram) ? Wire::statsd : Wire::json;
  if (wire == Wire::statsd) ingest_statsd(datagram, now, result);
  else ingest_json(datagram, now, result);
  received_[static_cast<std::size_t>(wire)] += result.accepted + result.rejected_total();
  return result;
}

inline void Registry::tally(IngestResult &result, std::optional<Reject> reason, std::size_t samples) {
  if (reason) {
    result.rejected[static_cast<std::size_t>(*reason)] += samples;
    rejected_[static_cast<std::size_t>(*reason)] += samples;
  } else {
    result.accepted += samples;
    accepted_ += samples;
    changes_ += samples; // the state file is written again only after a change
  }
}

inline void Registry::ingest_json(std::string_view datagram, Now now, IngestResult &result) {
  detail::ReadBatch &batch = reading_->batch;
  if (!detail::read_datagram(datagram, batch)) {
    tally(result, Reject::malformed_json); // nothing of a datagram that is not JSON as a whole is applied
  } else if (batch.is_array && batch.count == 0) {
    tally(result, Reject::malformed_sample); // a batch of nothing is still counted
  } else {
    for (std::size_t i = 0; i < batch.count; ++i) tally(result, apply(batch.slots[i], now));
  }
}

// Each line on its own: a bad line is counted under its reason and never touches the others.
inline void Registry::ingest_statsd(std::string_view datagram, Now now, IngestResult &result) {
  detail::StatsdReading &reading = *statsd_reading_;
  for (std::size_t position = 0; position < datagram.size();) {
    const std::string_view text = detail::next_statsd_line(datagram, position);
    if (text.empty()) continue;
    if (const auto reason = detail::parse_statsd_line(text, reading.line)) tally(result, reason, reading.line.value_count);
    else apply_statsd(reading, now, result);
  }
}

// The metric a StatsD line names: its escaped name, or for a counter also that name with
// _total, of a type that takes the line's type.
inline detail::Metric *Registry::find_statsd(detail::StatsdReading &reading) {
  const detail::StatsdLine &line = reading.line;
  reading.name.clear();
  detail::append_statsd_name(reading.name, line.name, line.name_rest);
  detail::Metric *metric = find(reading.name);
  if (metric && detail::takes(metric->config.type, line.type)) return metric;
  if (line.type != detail::StatsdType::counter) return nullptr;
  reading.name += "_total";
  metric = find(reading.name);
  return metric && metric->config.type == MetricType::counter ? metric : nullptr;
}

inline void Registry::apply_statsd(detail::StatsdReading &reading, Now now, IngestResult &result) {
  const detail::StatsdLine &line = reading.line;
  detail::Metric *metric = find_statsd(reading);
  if (!metric) return tally(result, Reject::unknown_metric, line.value_count);
  if (const auto reason = detail::statsd_label_values(metric->config, line, reading.name, reading.label_values))
    return tally(result, reason, line.value_count);
  for (std::size_t start = 0; start <= line.values.size();) { // each of a multi-value line's values on its own
    const std::size_t end = std::min(line.values.find(':', start), line.values.size());
    detail::Update update;
    auto reason = detail::statsd_update(line, line.values.substr(start, end - start), update);
    if (!reason) reason = detail::apply_to_series(*metric, reading.label_values, update, now, *budget_);
    tally(result, reason);
    start = end + 1;
  }
}

inline void Registry::count_rejected(Reject reason) { ++rejected_[static_cast<std::size_t>(reason)]; }

namespace detail {
inline bool same_shape(const MetricConfig &a, const MetricConfig &b) {
  return a.type == b.type && a.labels == b.labels && a.buckets == b.buckets && a.objectives == b.objectives &&
         a.max_age_seconds == b.max_age_seconds && a.native == b.native &&
         a.native_bucket_factor == b.native_bucket_factor && a.native_max_buckets == b.native_max_buckets &&
         a.native_zero_threshold == b.native_zero_threshold;
}
} // namespace detail

// The new metrics are made on a budget of their own first, so that what the exchange
// takes and gives back can be weighed before anything changes.
inline Registry::ReloadSummary Registry::reload(const Config &config) {
  ReloadSummary summary;
  Registry next(config);
  std::vector<detail::Metric *> kept_from(next.metrics_.size(), nullptr);
  for (std::size_t i = 0; i < next.metrics_.size(); ++i) {
    detail::Metric *before = find(next.metrics_[i].config.name);
    if (before && detail::same_shape(before->config, next.metrics_[i].config)) kept_from[i] = before;
  }
  detail::SeriesCost freed{0, fixed_body_bytes_}, wanted{0, next.fixed_body_bytes_};
  for (std::size_t i = 0; i < next.metrics_.size(); ++i)
    if (!kept_from[i]) detail::add_series_costs(wanted, next.metrics_[i]);
  for (const detail::Metric &metric : metrics_)
    if (std::find(kept_from.begin(), kept_from.end(), &metric) == kept_from.end()) detail::add_series_costs(freed, metric);
  if (!budget_->can_exchange(freed.own, freed.body, wanted.own, wanted.body)) throw ConfigError(no_room_for(wanted));

  for (std::size_t i = 0; i < next.metrics_.size(); ++i) {
    if (!kept_from[i]) continue;
    next.metrics_[i].series = std::move(kept_from[i]->series); // the fresh label-less series goes with next's budget
    kept_from[i]->series.clear();
  }
  summary.kept = static_cast<std::size_t>(std::count_if(kept_from.begin(), kept_from.end(), [](const detail::Metric *m) { return m != nullptr; }));
  summary.fresh = next.metrics_.size() - summary.kept;
  summary.removed = metrics_.size() - summary.kept;
  give_back_budget(); // what was not kept, and the old room
  budget_->take_for_series(wanted.own, wanted.body); // fits: weighed above
  holds_budget_ = true;
  service_name_ = next.service_name_;
  fixed_body_bytes_ = next.fixed_body_bytes_;
  metrics_ = std::move(next.metrics_);
  return summary;
}

inline std::size_t Registry::expire(double monotonic_now) {
  std::size_t dropped = 0;
  for (detail::Metric &metric : metrics_) {
    if (!metric.config.objectives.empty())
      for (auto &entry : metric.series) entry.second.distribution->quantiles->advance(monotonic_now);
    if (metric.config.ttl_seconds <= 0 || metric.config.labels.empty()) continue;
    const double stale_before = monotonic_now - metric.config.ttl_seconds;
    for (auto series = metric.series.begin(); series != metric.series.end();) {
      if (series->second.last_push <= stale_before) {
        const detail::SeriesCost cost = detail::series_cost(metric.config, series->first);
        budget_->give_back_series(cost.own, cost.body);
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
  detail::Metric *metric = find(sample.metric_name.text.get());
  if (!metric) return Reject::unknown_metric;
  std::vector<std::string_view> &label_values = reading_->label_values;
  if (const auto reason = detail::read_label_values(metric->config, sample, label_values)) return reason;
  detail::Update update;
  if (const auto reason = detail::read_update(metric->config.type, sample, update)) return reason;
  return detail::apply_to_series(*metric, label_values, update, now, *budget_);
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

inline std::size_t Registry::metric_count() const { return metrics_.size(); }

inline Registry::MetricFill Registry::metric_fill(std::size_t index) const {
  const detail::Metric &metric = metrics_[index];
  return {metric.config.name, metric.series.size(), metric.config.max_series};
}

} // namespace hermes

// ===== STATE ==============================================================================

namespace hermes {

inline void Registry::save_state(std::string &out, Now now, const std::function<void()> &pause) const {
  detail::StateCodec::save(*this, out, now, pause);
}

inline std::size_t Registry::state_size_bound() const { return detail::StateCodec::text_bound(*this); }

inline Registry::RestoreSummary Registry::restore_state(std::string_view text, double monotonic_now) {
  return detail::StateCodec::restore(*this, text, monotonic_now);
}

} // namespace hermes

// ===== FORMATTING =========================================================================

namespace hermes {

inline const char *content_type(Format format) {
  static constexpr const char *types[] = {"text/plain; version=0.0.4; charset=utf-8",
                                          "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                          "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"};
  return detail::name_of(format, types);
}

namespace detail {

// A parameter of one media range of an Accept header ("type/sub;version=1.0.0;q=0.5").
inline std::optional<std::string_view> media_parameter(std::string_view range, std::string_view name) {
  for (std::size_t semicolon = range.find(';'); semicolon != std::string_view::npos;) {
    const std::size_t next = range.find(';', semicolon + 1);
    const std::string_view parameter = trim(range.substr(semicolon + 1, next - semicolon - 1));
    const std::size_t equals = parameter.find('=');
    if (equals != std::string_view::npos && lowercase(trim(parameter.substr(0, equals))) == name)
      return trim(parameter.substr(equals + 1));
    semicolon = next;
  }
  return std::nullopt;
}

inline double accept_quality(std::string_view range) {
  const auto quality = media_parameter(range, "q");
  return quality ? parse_decimal(*quality).value_or(0) : 1;
}

// The format a media range names, if any; the protobuf type only with the parameters
// that make it the delimited MetricFamily stream, as client_golang asks for them.
inline std::optional<Format> media_format(std::string_view range) {
  const std::string type = lowercase(trim(range.substr(0, range.find(';'))));
  if (type == "text/plain" || type == "text/*" || type == "*/*") return Format::text;
  if (type == "application/openmetrics-text") return Format::openmetrics;
  if (type == "application/vnd.google.protobuf" && media_parameter(range, "proto") == "io.prometheus.client.MetricFamily" &&
      media_parameter(range, "encoding") == "delimited")
    return Format::protobuf;
  return std::nullopt;
}

} // namespace detail

inline Format negotiate_format(std::string_view accept, bool openmetrics, bool protobuf) {
  std::array<double, static_cast<std::size_t>(Format::count_)> quality{};
  while (!accept.empty()) {
    const std::size_t comma = accept.find(',');
    const std::string_view range = detail::trim(accept.substr(0, comma));
    if (const auto format = detail::media_format(range)) {
      double &best = quality[static_cast<std::size_t>(*format)];
      best = std::max(best, detail::accept_quality(range));
    }
    accept = comma == std::string_view::npos ? std::string_view() : accept.substr(comma + 1);
  }
  Format chosen = Format::text;
  const auto consider = [&](Format format, bool allowed) {
    if (allowed && quality[static_cast<std::size_t>(format)] > quality[static_cast<std::size_t>(chosen)]) chosen = format;
  };
  consider(Format::openmetrics, openmetrics);
  consider(Format::protobuf, protobuf);
  return chosen;
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

// What the body is written through, one family after another: the text formats or
// protobuf. `series` writes one series of a configured metric (label values in
// configured order); `sample` one series of Hermes' own families.
using LabelPairs = std::initializer_list<std::pair<std::string_view, std::string_view>>;

class Writer {
public:
  virtual void family(std::string_view name, std::string_view help, MetricType type) = 0;
  virtual void series(const MetricConfig &config, const std::vector<std::string> &labels, const Series &series) = 0;
  virtual void sample(std::string_view name, LabelPairs labels, double value) = 0;
  virtual void finish() = 0;

protected:
  ~Writer() = default;
};

// Writes families in one of the text formats. In OpenMetrics a counter named *_total is
// the family without the suffix; a counter without the suffix cannot be an OpenMetrics
// counter under its name, so it is typed unknown; and counters, histograms and summaries
// add *_created to each series a push made. Either way every sample keeps its
// text-format name, so Prometheus stores the same series.
class Exposition final : public Writer {
public:
  Exposition(std::string &out, Format format) : out_(out), format_(format) {}

  Format format() const { return format_; }

  void family(std::string_view name, std::string_view help, MetricType type) override {
    const bool openmetrics = format_ == Format::openmetrics;
    family_ = openmetrics ? openmetrics_family(name, type) : name;
    const bool total = type == MetricType::counter && family_.size() != name.size();
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

  void series(const MetricConfig &config, const std::vector<std::string> &labels, const Series &series) override;

  void sample(std::string_view name, LabelPairs labels, double value) override {
    out_ += name;
    const char *separator = "{";
    for (const auto &label : labels) {
      out_ += separator;
      append_label(label.first, label.second);
      separator = ",";
    }
    if (labels.size() > 0) out_ += '}';
    out_ += ' ';
    append_double(out_, value);
    out_ += '\n';
  }

  // One line; `extra` is a last label of its own, such as a bucket's le.
  template <typename Values>
  void line(std::string_view name, const std::vector<std::string> &label_names, const Values &label_values, double value,
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
    line(name, label_names, label_values, seconds);
  }

  void finish() override {
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
  bool with_created_ = false;
  std::string_view family_;
};

// Cumulative buckets with their upper bound as le, then _sum and _count. A native
// histogram without classic buckets shows the +Inf bucket alone, as client_golang does.
// OpenMetrics 1.0 holds a histogram's sum to be a counter, never negative, and allows
// none beside a negative bucket bound; and it writes _count if and only if it writes
// _sum (gaugehistogram's _gsum and _gcount belong to another type, with other series
// names). So in OpenMetrics a histogram with a negative bound has neither, nor has a
// series while its sum is below zero (or NaN); its +Inf bucket still counts every
// observation. Text and protobuf always carry both, as client_golang writes them.
inline bool openmetrics_sum_allowed(const MetricConfig &config, const Distribution &seen) {
  const bool negative_bound = !config.buckets.empty() && config.buckets.front() < 0;
  return !negative_bound && seen.sum >= 0;
}

inline void write_histogram(Exposition &out, const MetricConfig &config, const std::vector<std::string> &labels,
                            const Distribution &seen) {
  const std::string bucket = config.name + "_bucket";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < seen.bucket_counts.size(); ++i) {
    cumulative += seen.bucket_counts[i];
    const std::string le = i < config.buckets.size() ? format_double(config.buckets[i]) : "+Inf";
    out.line(bucket, config.labels, labels, static_cast<double>(cumulative), {"le", le});
  }
  if (out.format() == Format::openmetrics && !openmetrics_sum_allowed(config, seen)) return;
  out.line(config.name + "_sum", config.labels, labels, seen.sum);
  out.line(config.name + "_count", config.labels, labels, static_cast<double>(seen.count));
}

// Each objective's quantile over the window (NaN while it is empty), then _sum and _count.
inline void write_summary(Exposition &out, const MetricConfig &config, const std::vector<std::string> &labels,
                          const Distribution &seen) {
  for (const auto &objective : config.objectives)
    out.line(config.name, config.labels, labels, seen.quantiles->query(objective.first),
             {"quantile", format_double(objective.first)});
  out.line(config.name + "_sum", config.labels, labels, seen.sum);
  out.line(config.name + "_count", config.labels, labels, static_cast<double>(seen.count));
}

inline void Exposition::series(const MetricConfig &config, const std::vector<std::string> &labels, const Series &series) {
  if (config.type == MetricType::histogram) {
    write_histogram(*this, config, labels, *series.distribution);
  } else if (config.type == MetricType::summary) {
    write_summary(*this, config, labels, *series.distribution);
  } else {
    line(config.name, config.labels, labels, series.value);
  }
  created(config.labels, labels, series.created);
}

// ---- Protobuf ------------------------------------------------------------------------------

// The MetricType enum of metrics.proto.
inline std::uint64_t protobuf_type(MetricType type) {
  static constexpr std::uint64_t numbers[] = {0 /* COUNTER */, 1 /* GAUGE */, 4 /* HISTOGRAM */, 2 /* SUMMARY */};
  static_assert(std::size(numbers) == static_cast<std::size_t>(MetricType::count_), "one number per type");
  return numbers[static_cast<std::size_t>(type)];
}

// One side of a native histogram: its spans (BucketSpan {offset = 1, length = 2}), where
// gaps of up to two empty buckets stay inside a span as client_golang keeps them, then
// the packed count deltas from bucket to bucket.
inline void append_native_side(std::string &out, std::string &deltas, const NativeSide &side, std::uint32_t span_field,
                               std::uint32_t delta_field) {
  if (side.empty()) return;
  const auto append_span = [&](std::int32_t offset, std::uint32_t length) {
    std::string span; // a few bytes, within the small-string buffer
    append_sint_field(span, 1, offset);
    append_uint_field(span, 2, length);
    append_bytes_field(out, span_field, span);
  };
  const auto append_delta = [&](std::uint64_t count, std::uint64_t &previous) {
    const std::int64_t delta = static_cast<std::int64_t>(count) - static_cast<std::int64_t>(previous);
    append_varint(deltas, zigzag(delta));
    previous = count;
  };
  deltas.clear();
  std::int32_t offset = 0, next = 0;
  std::uint32_t length = 0;
  std::uint64_t previous = 0;
  for (std::size_t i = 0; i < side.size(); ++i) {
    const std::int32_t gap = side[i].first - next;
    if (i == 0 || gap > 2) {
      if (i > 0) append_span(offset, length);
      offset = gap, length = 0;
    } else {
      for (std::int32_t empty = 0; empty < gap; ++empty, ++length) append_delta(0, previous);
    }
    append_delta(side[i].second, previous);
    ++length;
    next = side[i].first + 1;
  }
  append_span(offset, length);
  append_bytes_field(out, delta_field, deltas);
}

// Writes the delimited protobuf exposition: each family a varint length and a
// MetricFamily {name = 1, help = 2, type = 3, metric = 4}. A family is written in place
// after room for the largest length it can have; once whole, it moves up to its length.
class ProtobufExposition final : public Writer {
public:
  explicit ProtobufExposition(std::string &out) : out_(out) {}

  void family(std::string_view name, std::string_view help, MetricType type) override {
    end_family();
    family_start_ = out_.size();
    out_.append(length_room, '\0');
    append_bytes_field(out_, 1, name);
    append_bytes_field(out_, 2, help);
    append_uint_field(out_, 3, protobuf_type(type));
    type_ = type;
    open_ = true;
  }

  // A Metric {label = 1, gauge = 2, counter = 3, summary = 4, histogram = 7}.
  void series(const MetricConfig &config, const std::vector<std::string> &labels, const Series &series) override {
    if (config.type == MetricType::counter || config.type == MetricType::gauge) {
      const double created = config.type == MetricType::counter ? series.created : 0;
      return scalar([&](auto &&label) { for (std::size_t i = 0; i < labels.size(); ++i) label(config.labels[i], labels[i]); },
                    series.value, created);
    }
    metric_.clear();
    for (std::size_t i = 0; i < labels.size(); ++i) append_label_pair(metric_, 1, config.labels[i], labels[i]);
    inner_.clear();
    if (config.type == MetricType::histogram) {
      histogram(config, *series.distribution, series.created);
    } else {
      summary(config, *series.distribution, series.created);
    }
    append_bytes_field(metric_, type_ == MetricType::histogram ? 7 : 4, inner_);
    append_bytes_field(out_, 4, metric_);
  }

  void sample(std::string_view, LabelPairs labels, double value) override {
    scalar([&](auto &&label) { for (const auto &pair : labels) label(pair.first, pair.second); }, value, 0);
  }

  void finish() override { end_family(); }

private:
  static constexpr std::size_t length_room = 5; // a varint of up to 2^35 - 1 bytes

  // A counter's or gauge's Metric, sized first and then written in place: the common
  // case, a hundred thousand times in a large scrape. `each_label(f)` calls f(name, value).
  template <typename EachLabel> void scalar(EachLabel &&each_label, double value, double created_seconds) {
    const Timestamp created(created_seconds);
    std::size_t labels_size = 0;
    each_label([&](std::string_view name, std::string_view text) {
      const std::size_t pair = label_pair_size(name, text);
      labels_size += 1 + varint_size(pair) + pair;
    });
    const std::size_t inner = 9 + (created_seconds > 0 ? 2 + created.size() : 0); // value, created_timestamp
    const std::size_t metric = labels_size + 1 + varint_size(inner) + inner;
    const std::size_t start = out_.size();
    out_.resize(start + 1 + varint_size(metric) + metric);
    char *at = put_varint(put_tag(&out_[start], 4, WireType::length_delimited), metric);
    each_label([&](std::string_view name, std::string_view text) { at = put_label_pair(at, 1, name, text); });
    at = put_varint(put_tag(at, type_ == MetricType::counter ? 3 : 2, WireType::length_delimited), inner);
    at = put_double_field(at, 1, value);
    if (created_seconds > 0) put_timestamp_field(at, 3, created);
  }

  void end_family() {
    if (!open_) return;
    const std::size_t body = out_.size() - family_start_ - length_room;
    char length[length_room];
    const std::size_t length_size = static_cast<std::size_t>(put_varint(length, body) - length);
    char *family = &out_[family_start_];
    std::memmove(family + length_size, family + length_room, body);
    std::memcpy(family, length, length_size);
    out_.resize(out_.size() - (length_room - length_size));
    open_ = false;
  }

  // Summary {sample_count = 1, sample_sum = 2, quantile = 3 {quantile = 1, value = 2},
  // created_timestamp = 4}.
  void summary(const MetricConfig &config, const Distribution &seen, double created) {
    append_uint_field(inner_, 1, seen.count);
    append_double_field(inner_, 2, seen.sum);
    for (const auto &objective : config.objectives) {
      append_tag(inner_, 3, WireType::length_delimited);
      append_varint(inner_, 18);
      append_double_field(inner_, 1, objective.first);
      append_double_field(inner_, 2, seen.quantiles->query(objective.first));
    }
    if (created > 0) append_timestamp_field(inner_, 4, created);
  }

  // Histogram {sample_count = 1, sample_sum = 2, bucket = 3 {cumulative_count = 1,
  // upper_bound = 2}, schema = 5, zero_threshold = 6, zero_count = 7, negative_span = 9,
  // negative_delta = 10, positive_span = 12, positive_delta = 13, created_timestamp = 15}.
  // The +Inf bucket is left out, as client_golang leaves it: sample_count is its count.
  void histogram(const MetricConfig &config, const Distribution &seen, double created) {
    append_uint_field(inner_, 1, seen.count);
    append_double_field(inner_, 2, seen.sum);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < config.buckets.size(); ++i) {
      cumulative += seen.bucket_counts[i];
      append_tag(inner_, 3, WireType::length_delimited);
      append_varint(inner_, 1 + varint_size(cumulative) + 9);
      append_uint_field(inner_, 1, cumulative);
      append_double_field(inner_, 2, config.buckets[i]);
    }
    if (seen.native) native(config, *seen.native);
    if (created > 0) append_timestamp_field(inner_, 15, created);
  }

  void native(const MetricConfig &config, const NativeHistogram &native) {
    append_sint_field(inner_, 5, native.schema);
    append_double_field(inner_, 6, config.native_zero_threshold);
    append_uint_field(inner_, 7, native.zero_count);
    append_native_side(inner_, deltas_, native.negative, 9, 10);
    append_native_side(inner_, deltas_, native.positive, 12, 13);
    // Without a zero threshold and observations, a no-op span tells it from a classic one.
    if (config.native_zero_threshold == 0 && native.zero_count == 0 && native.buckets() == 0) {
      append_tag(inner_, 12, WireType::length_delimited);
      append_varint(inner_, 4);
      append_sint_field(inner_, 1, 0);
      append_uint_field(inner_, 2, 0);
    }
  }

  std::string &out_;
  std::string metric_, inner_, deltas_; // messages of histograms and summaries being made
  std::size_t family_start_ = 0;
  MetricType type_ = MetricType::gauge;
  bool open_ = false;
};

// ---- Hermes' own figures -------------------------------------------------------------------

// What Hermes' own families are read from: the registry always; a server's figures and
// the process' when a server renders, null for a bare registry.
struct SelfView {
  const Registry &registry;
  const ServerStats *server;
  const ProcessStats *process;
  const PushStore *pushed = nullptr; // the groups pushed over the Pushgateway API, when a server has them
};

using Figure = std::optional<double>; // absent: the family is left out

// One family of Hermes' own: either one series without labels (`value`), or labelled
// series that `write` adds after the family's HELP and TYPE lines.
struct SelfMetric {
  enum class Scope { registry, server, process };
  const char *name;
  const char *help;
  MetricType type;
  Scope scope;
  Figure (*value)(const SelfView &);
  void (*write)(Writer &, const char *name, const SelfView &);
};

inline void write_build_info(Writer &out, const char *name, const SelfView &view) {
  out.sample(name, {{"version", HERMES_VERSION_STR}, {"service", view.registry.service_name()}}, 1);
}

inline void write_rejects(Writer &out, const char *name, const SelfView &view) {
  for (std::size_t i = 0; i < reject_reason_count; ++i) {
    const auto reason = static_cast<Reject>(i);
    out.sample(name, {{"reason", to_string(reason)}}, static_cast<double>(view.registry.rejected(reason)));
  }
}

inline void write_received(Writer &out, const char *name, const SelfView &view) {
  for (std::size_t i = 0; i < wire_count; ++i) {
    const auto wire = static_cast<Wire>(i);
    out.sample(name, {{"format", to_string(wire)}}, static_cast<double>(view.registry.received(wire)));
  }
}

inline void write_reloads(Writer &out, const char *name, const SelfView &view) {
  out.sample(name, {{"result", "success"}}, static_cast<double>(view.server->reloads_succeeded));
  out.sample(name, {{"result", "failure"}}, static_cast<double>(view.server->reloads_failed));
}

inline void write_state_writes(Writer &out, const char *name, const SelfView &view) {
  out.sample(name, {{"result", "success"}}, static_cast<double>(view.server->state_writes_succeeded));
  out.sample(name, {{"result", "failure"}}, static_cast<double>(view.server->state_writes_failed));
}

inline void write_http_requests(Writer &out, const char *name, const SelfView &view) {
  for (const auto &[code, count] : view.server->http_requests) {
    const std::string code_text = std::to_string(code);
    out.sample(name, {{"code", code_text}}, static_cast<double>(count));
  }
}

inline void write_push_requests(Writer &out, const char *name, const SelfView &view) {
  for (const auto &[key, count] : view.server->push_requests) {
    const std::string code_text = std::to_string(key.second);
    out.sample(name, {{"method", key.first}, {"code", code_text}}, static_cast<double>(count));
  }
}

// One series per configured metric, labelled with its name, showing one Field of its
// fill: no allocation, and a line of bounded length each (see fixed_body_bound).
template <std::size_t Registry::MetricFill::*Field>
inline void write_per_metric(Writer &out, const char *name, const SelfView &view) {
  for (std::size_t i = 0; i < view.registry.metric_count(); ++i) {
    const Registry::MetricFill fill = view.registry.metric_fill(i);
    out.sample(name, {{"metric", fill.name}}, static_cast<double>(fill.*Field));
  }
}

inline Figure count(std::uint64_t n) { return static_cast<double>(n); }

// Hermes' own families, sorted by name as the body is.
constexpr MetricType self_counter = MetricType::counter, self_gauge = MetricType::gauge;
using Scope = SelfMetric::Scope;
inline const SelfMetric self_metrics[] = {
    {"hermes_build_info", "Hermes version and the configured service, always 1.", self_gauge, Scope::registry, nullptr,
     write_build_info},
    {"hermes_config_last_reload_success_timestamp_seconds", "When the config in force was loaded, in seconds since the epoch.",
     self_gauge, Scope::server, [](const SelfView &v) -> Figure { return v.server->last_reload_success_seconds; }, nullptr},
    {"hermes_config_reloads_total", "Config reloads, by result.", self_counter, Scope::server, nullptr, write_reloads},
    {"hermes_http_requests_total", "HTTP requests answered, by status code.", self_counter, Scope::server, nullptr,
     write_http_requests},
    {"hermes_memory_budget_bytes", "The memory budget: bytes Hermes may hold for what input can grow.", self_gauge,
     Scope::server, [](const SelfView &v) -> Figure { return v.server->memory_budget_bytes; }, nullptr},
    {"hermes_memory_committed_bytes",
     "Bytes of the memory budget in use or kept for the /metrics bodies of the series that exist; a new series that "
     "would take it past the budget is refused.",
     self_gauge, Scope::server, [](const SelfView &v) -> Figure { return v.server->memory_committed_bytes; }, nullptr},
    {"hermes_memory_used_bytes", "Bytes of the memory budget in use.", self_gauge, Scope::server,
     [](const SelfView &v) -> Figure { return v.server->memory_used_bytes; }, nullptr},
    {"hermes_metric_max_series", "The max_series of each configured metric: a push for one series more is series_limit.",
     self_gauge, Scope::registry, nullptr, write_per_metric<&Registry::MetricFill::max_series>},
    {"hermes_metric_series", "Live series of each configured metric.", self_gauge, Scope::registry, nullptr,
     write_per_metric<&Registry::MetricFill::series>},
    {"hermes_push_group_bytes", "Bytes of the memory budget that the groups pushed over the Pushgateway API hold.",
     self_gauge, Scope::server, [](const SelfView &v) -> Figure { return v.server->push_group_bytes; }, nullptr},
    {"hermes_push_groups", "Groups pushed over the Pushgateway API.", self_gauge, Scope::server,
     [](const SelfView &v) -> Figure { return v.server->push_groups; }, nullptr},
    {"hermes_push_requests_total", "Requests of the Pushgateway API answered, by method and status code.", self_counter,
     Scope::server, nullptr, write_push_requests},
    {"hermes_samples_accepted_total", "Samples applied to the registry.", self_counter, Scope::registry,
     [](const SelfView &v) { return count(v.registry.accepted()); }, nullptr},
    {"hermes_samples_received_total", "Samples received, applied or not, by wire format.", self_counter, Scope::registry,
     nullptr, write_received},
    {"hermes_samples_rejected_total",
     "Samples dropped, by reason; for malformed_json, too_large and forbidden_source, whole datagrams.", self_counter, Scope::registry,
     nullptr, write_rejects},
    {"hermes_series", "Live series of the configured metrics.", self_gauge, Scope::registry,
     [](const SelfView &v) { return count(v.registry.series_count()); }, nullptr},
    {"hermes_series_expired_total", "Series dropped after ttl_seconds without a push.", self_counter, Scope::registry,
     [](const SelfView &v) { return count(v.registry.expired()); }, nullptr},
    {"hermes_state_last_write_timestamp_seconds",
     "When the state file was last written, in seconds since the epoch; 0 before the first write.", self_gauge,
     Scope::server, [](const SelfView &v) -> Figure { return v.server->state_last_write_seconds; }, nullptr},
    {"hermes_state_restored_series", "Series restored from the state file at start.", self_gauge, Scope::server,
     [](const SelfView &v) { return count(v.server->state_restored_series); }, nullptr},
    {"hermes_state_writes_total", "Writes of the state file, by result.", self_counter, Scope::server, nullptr,
     write_state_writes},
    {"hermes_udp_packets_total", "UDP datagrams received.", self_counter, Scope::server,
     [](const SelfView &v) { return count(v.server->udp_packets); }, nullptr},
    {"hermes_udp_receive_buffer_bytes", "The UDP socket's receive buffer, as the kernel granted it.", self_gauge, Scope::server,
     [](const SelfView &v) -> Figure { return v.server->udp_receive_buffer_bytes; }, nullptr},
    {"hermes_udp_receive_drops_total", "UDP datagrams the kernel dropped because the receive buffer was full.", self_counter,
     Scope::server, [](const SelfView &v) { return count(v.server->udp_receive_drops); }, nullptr},
    {"hermes_unix_datagrams_total", "Datagrams received on the unix socket.", self_counter, Scope::server,
     [](const SelfView &v) { return count(v.server->unix_datagrams); }, nullptr},
    {"process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", self_counter, Scope::process,
     [](const SelfView &v) { return v.process->cpu_seconds; }, nullptr},
    {"process_max_fds", "Maximum number of open file descriptors.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->max_fds; }, nullptr},
    {"process_open_fds", "Number of open file descriptors.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->open_fds; }, nullptr},
    {"process_resident_memory_bytes", "Resident memory size in bytes.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->resident_memory_bytes; }, nullptr},
    {"process_start_time_seconds", "Start time of the process since unix epoch in seconds.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->start_time_seconds; }, nullptr},
    {"process_virtual_memory_bytes", "Virtual memory size in bytes.", self_gauge, Scope::process,
     [](const SelfView &v) { return v.process->virtual_memory_bytes; }, nullptr},
};

inline bool has_scope(const SelfView &view, SelfMetric::Scope scope) {
  return scope == Scope::registry || (scope == Scope::server ? view.server != nullptr : view.process != nullptr);
}

// Writes one of Hermes' own families, or nothing when the view has no figure for it.
inline void write_self_metric(Writer &out, const SelfMetric &metric, const SelfView &view) {
  if (!has_scope(view, metric.scope)) return;
  if (metric.write) {
    out.family(metric.name, metric.help, metric.type);
    metric.write(out, metric.name, view);
  } else if (const Figure figure = metric.value(view)) {
    out.family(metric.name, metric.help, metric.type);
    out.sample(metric.name, {}, *figure);
  }
}

// ---- Pushed groups -------------------------------------------------------------------------

// Pushed families are written as Pushgateway writes them with client_golang: a HELP line
// only when one was pushed, the samples of every group that holds the family together,
// sorted as client_golang sorts them (fewer labels first, then by label values in the
// order of the label names), and a histogram's +Inf bucket added when it was not pushed.

inline bool pushed_metric_less(const PushedMetric *a, const PushedMetric *b) {
  if (a->labels.size() != b->labels.size()) return a->labels.size() < b->labels.size();
  for (std::size_t i = 0; i < a->labels.size(); ++i)
    if (a->labels[i].second != b->labels[i].second) return a->labels[i].second < b->labels[i].second;
  return a->labels < b->labels; // the same values under other names: an order that does not depend on the groups'
}

inline void append_pushed_line(std::string &out, std::string_view name, std::string_view suffix, const PushLabels &labels,
                               double value, std::string_view extra_name = {}, double extra = 0) {
  out += name;
  out += suffix;
  if (!labels.empty() || !extra_name.empty()) {
    char separator = '{';
    for (const auto &[label, text] : labels) {
      out += separator;
      out.append(label).append("=\"");
      append_escaped(out, text, true);
      out += '"';
      separator = ',';
    }
    if (!extra_name.empty()) {
      out += separator;
      out.append(extra_name).append("=\"");
      append_double(out, extra == 0 ? 0.0 : extra);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  append_double(out, value == 0 ? 0.0 : value); // -0 too: client_golang's text writer spells every zero 0
  out += '\n';
}

inline void append_pushed_text(std::string &out, std::string_view name, PushType type, const PushedMetric &metric) {
  const PushLabels &labels = metric.labels;
  if (type == PushType::summary) {
    for (const auto &[quantile, value] : metric.points) append_pushed_line(out, name, "", labels, value, "quantile", quantile);
  } else if (type == PushType::histogram) {
    bool infinity = false;
    for (const auto &[bound, count] : metric.points) {
      append_pushed_line(out, name, "_bucket", labels, count, "le", bound);
      infinity = infinity || (std::isinf(bound) && bound > 0);
    }
    if (!infinity) append_pushed_line(out, name, "_bucket", labels, metric.count, "le", HUGE_VAL);
  } else {
    return append_pushed_line(out, name, "", labels, metric.value);
  }
  append_pushed_line(out, name, "_sum", labels, metric.sum);
  append_pushed_line(out, name, "_count", labels, metric.count);
}

// HELP and TYPE. In OpenMetrics a counter named *_total is the family without the
// suffix, other counters and untyped families are unknown, as for the configured metrics.
inline void append_pushed_head(std::string &out, Format format, std::string_view name, PushType type,
                               const std::optional<std::string> &help) {
  const bool openmetrics = format == Format::openmetrics;
  const bool total = type == PushType::counter && ends_with(name, "_total");
  const std::string_view family = openmetrics && total ? name.substr(0, name.size() - 6) : name;
  const char *type_name = to_string(type);
  if (openmetrics && (type == PushType::untyped || (type == PushType::counter && !total))) type_name = "unknown";
  if (help) {
    out.append("# HELP ").append(family).append(" ");
    append_escaped(out, *help, openmetrics);
    out += '\n';
  }
  out.append("# TYPE ").append(family).append(" ").append(type_name).append("\n");
}

// A Metric {label = 1, gauge = 2, counter = 3, summary = 4, untyped = 5, histogram = 7}.
inline void append_pushed_protobuf(std::string &out, PushType type, const PushedMetric &metric, std::string &inner) {
  for (const auto &[label, text] : metric.labels) append_label_pair(out, 1, label, text);
  inner.clear();
  if (type == PushType::summary || type == PushType::histogram) {
    append_uint_field(inner, 1, static_cast<std::uint64_t>(metric.count));
    append_double_field(inner, 2, metric.sum);
    for (const auto &[point, value] : metric.points) {
      std::string pair; // Quantile {quantile = 1, value = 2} or Bucket {cumulative_count = 1, upper_bound = 2}
      if (type == PushType::summary) {
        append_double_field(pair, 1, point), append_double_field(pair, 2, value);
      } else {
        append_uint_field(pair, 1, static_cast<std::uint64_t>(value)), append_double_field(pair, 2, point);
      }
      append_bytes_field(inner, 3, pair);
    }
    inner += metric.native; // fields 5 to 14, after the buckets, as client_golang orders them
  } else {
    append_double_field(inner, 1, metric.value);
  }
  static constexpr std::uint32_t fields[] = {3, 2, 4, 5, 7, 8}; // by PushType
  append_bytes_field(out, fields[static_cast<std::size_t>(type)], inner);
}

// One family with the given samples, sorted, in a format; `scratch` holds a protobuf
// family while it is made.
inline void write_pushed_family(std::string &out, Format format, std::string_view name, PushType type,
                                const std::optional<std::string> &help, std::vector<const PushedMetric *> &metrics,
                                std::string &scratch) {
  std::sort(metrics.begin(), metrics.end(), pushed_metric_less);
  if (format != Format::protobuf) {
    append_pushed_head(out, format, name, type, help);
    for (const PushedMetric *metric : metrics) append_pushed_text(out, name, type, *metric);
    return;
  }
  scratch.clear();
  append_bytes_field(scratch, 1, name);
  if (help) append_bytes_field(scratch, 2, *help);
  append_uint_field(scratch, 3, static_cast<std::uint64_t>(type));
  std::string metric_message, inner;
  for (const PushedMetric *metric : metrics) {
    metric_message.clear();
    append_pushed_protobuf(metric_message, type, *metric, inner);
    append_bytes_field(scratch, 4, metric_message);
  }
  append_varint(out, scratch.size());
  out += scratch;
}

// A family of the pushed groups, its samples from every group that holds it.
inline std::size_t write_pushed_family(std::string &out, Format format, const std::string &name, const PushFamilyIndex &index,
                                       std::string &scratch) {
  std::vector<const PushedMetric *> metrics;
  for (const PushGroup *group : index.groups)
    for (const PushedMetric &metric : group->families.find(name)->second.metrics) metrics.push_back(&metric);
  write_pushed_family(out, format, name, index.type, index.help, metrics, scratch);
  return metrics.size();
}

// Each family of a group written alone, in the format that writes the most of it: what
// the group may add to a body, where a family's head is written once for all groups.
inline std::size_t pushed_body_bytes(const PushGroup &group) {
  std::string out, scratch;
  std::size_t bytes = 0;
  for (const auto &[name, family] : group.families) {
    std::vector<const PushedMetric *> metrics;
    for (const PushedMetric &metric : family.metrics) metrics.push_back(&metric);
    std::size_t most = 0;
    for (const Format format : {Format::text, Format::openmetrics, Format::protobuf}) {
      out.clear();
      write_pushed_family(out, format, name, *family.type, family.help, metrics, scratch);
      most = std::max(most, out.size());
    }
    bytes += most + (is_push_time(name) ? longest_number : 0); // a later push may write a longer time
  }
  return bytes;
}

// ---- The body, a few series at a time ------------------------------------------------------

// Writes the /metrics body in steps of a bounded number of series, so that the caller
// can do other work between steps (a server takes waiting datagrams off its sockets).
// The registry must not change until the body is whole.
class Renderer {
public:
  Renderer(std::string &out, const Registry &registry, SelfView self, Format format)
      : metrics_(registry.metrics_), self_(self), text_(out, format), protobuf_(out),
        writer_(format == Format::protobuf ? static_cast<Writer &>(protobuf_) : text_), out_(out), format_(format) {
    out.clear(); // its memory is the caller's: a server takes it from the budget first
    if (self.pushed) pushed_ = self.pushed->families().begin(), pushed_end_ = self.pushed->families().end();
  }

  // The most a body of `registry` can take, its NUL included: the budget's count of it,
  // kept as series come and go.
  static std::size_t bound(const Registry &registry) { return registry.budget_->body_bound(); }

  // Writes up to `max_series` more series of configured metrics, and Hermes' own
  // families that fall between them; true once the body is whole.
  bool write_some(std::size_t max_series) {
    for (std::size_t written = 0; written < max_series;) {
      if (current_ && series_ != current_->series.end()) {
        writer_.series(current_->config, series_->first, series_->second);
        ++series_, ++written;
      } else if (pushed_comes_next()) {
        if (format_ == Format::protobuf) protobuf_.finish(); // closes the family before, if open
        written += write_pushed_family(out_, format_, pushed_->first, pushed_->second, scratch_) + 1;
        ++pushed_;
      } else if (next_self_ < std::size(self_metrics) && (next_metric_ == metrics_.size() || self_comes_next())) {
        write_self_metric(writer_, self_metrics[next_self_++], self_);
      } else if (next_metric_ < metrics_.size()) {
        current_ = &metrics_[next_metric_++];
        writer_.family(current_->config.name, current_->config.help, current_->config.type);
        series_ = current_->series.begin();
      } else {
        if (!done_) writer_.finish();
        return done_ = true;
      }
    }
    return false;
  }

  // What a body of `registry` holds besides its series, at most (fixed_body_bound).
  static std::size_t fixed_bound(const Registry &registry);

private:
  bool self_comes_next() const { return std::string_view(self_metrics[next_self_].name) < metrics_[next_metric_].config.name; }
  // Whether a family of the pushed groups comes before the next of the others: names
  // never clash (PushStore keeps Hermes' names out).
  bool pushed_comes_next() const {
    if (!self_.pushed || pushed_ == pushed_end_) return false;
    const std::string &name = pushed_->first;
    return (next_self_ == std::size(self_metrics) || name < self_metrics[next_self_].name) &&
           (next_metric_ == metrics_.size() || name < metrics_[next_metric_].config.name);
  }

  const std::vector<Metric> &metrics_;
  SelfView self_;
  Exposition text_;
  ProtobufExposition protobuf_;
  Writer &writer_; // one of the two
  std::size_t next_metric_ = 0, next_self_ = 0;
  const Metric *current_ = nullptr;
  std::map<std::vector<std::string>, Series, LabelValuesLess>::const_iterator series_;
  std::string &out_;
  Format format_;
  std::map<std::string, PushFamilyIndex, std::less<>>::const_iterator pushed_, pushed_end_;
  std::string scratch_; // a pushed family in protobuf while it is made
  bool done_ = false;
};

// Adds up the bounds of what it is given instead of writing it: Hermes' own families
// with each number as long as a number can be.
class BoundWriter final : public Writer {
public:
  void family(std::string_view name, std::string_view help, MetricType) override { bytes += family_bound(name, help); }
  void series(const MetricConfig &config, const std::vector<std::string> &labels, const Series &) override {
    bytes += series_cost(config, labels).body;
  }
  void sample(std::string_view name, LabelPairs labels, double) override {
    std::size_t text = name.size() + 2 + 1 + longest_number + 1, protobuf = message_head + message_head + double_field;
    for (const auto &[label, value] : labels) {
      text += label.size() + sizeof "=\"\"," - 1 + escaped_size(value);
      const std::size_t pair = label_pair_size(label, value);
      protobuf += 1 + varint_size(pair) + pair;
    }
    bytes += std::max(text, protobuf);
  }
  void finish() override { bytes += body_end_bytes + 1; } // and the string's terminating NUL
  std::size_t bytes = 0;
};

// Every family a server shows, with every figure present: the bound cannot depend on
// which figures /proc gives at the moment.
inline std::size_t Renderer::fixed_bound(const Registry &registry) {
  BoundWriter out;
  const ServerStats server;
  const ProcessStats process{0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  const SelfView view{registry, &server, &process};
  for (const SelfMetric &metric : self_metrics) write_self_metric(out, metric, view);
  for (const Metric &metric : registry.metrics_) out.family(metric.config.name, metric.config.help, metric.config.type);
  out.finish();
  return out.bytes;
}

inline std::size_t fixed_body_bound(const Registry &registry) { return Renderer::fixed_bound(registry); }

} // namespace detail

inline std::string render_metrics(const Registry &registry, Format format) {
  std::string out;
  render_metrics(out, registry, format);
  return out;
}

inline void render_metrics(std::string &out, const Registry &registry, Format format) {
  if (const std::size_t bound = detail::Renderer::bound(registry); out.capacity() + 1 < bound) {
    std::string room; // exactly the bound, with the NUL, where reserving over the old memory would double it
    room.reserve(bound - 1);
    out.swap(room);
  }
  detail::Renderer renderer(out, registry, {registry, nullptr, nullptr}, format);
  while (!renderer.write_some(SIZE_MAX)) {
  }
}

} // namespace hermes

// ===== SERVER =============================================================================

namespace hermes {

inline ServerStats::ServerStats() {
  for (const detail::HttpStatus &status : detail::http_statuses) http_requests[status.code] = 0;
  // Each answer a method can get: a push 200, a delete (or the PUT of a wipe) 202.
  for (const char *method : {"POST", "PUT"})
    for (const int code : {200, 400, 401, 411, 413, 415, 507}) push_requests[{method, code}] = 0;
  for (const char *method : {"DELETE", "PUT"})
    for (const int code : {202, 400, 401, 411, 413, 415}) push_requests[{method, code}] = 0;
}

// The server's parts, each owning its sockets and state: datagram input, the HTTP front
// end, the reject log; and what ties them together: the registry, reloads, the sweep.
namespace detail {

// Buffers of a fixed size, taken from the budget at start: the receive batch, the
// datagrams a render may hold, every connection's request head, and room for the short
// lived copies a summary makes as it merges.
constexpr std::size_t fixed_buffer_bytes = std::size_t{HERMES_RECEIVE_BATCH} * HERMES_MAX_DATAGRAM_SIZE +
                                           HERMES_RENDER_HOLD_BYTES +
                                           HttpFrontEnd::most_connections * HttpFrontEnd::connection_bytes + 256 * 1024;

inline std::shared_ptr<MemoryBudget> budget_with_fixed_buffers(std::size_t limit) {
  auto budget = std::make_shared<MemoryBudget>(limit, HERMES_SCRAPE_BODIES);
  if (!budget->take(fixed_buffer_bytes))
    throw UsageError("HERMES_MAX_MEMORY: " + std::to_string(limit) + " bytes is less than the " +
                     std::to_string(fixed_buffer_bytes) + " bytes of Hermes' fixed buffers");
  return budget;
}

} // namespace detail

namespace detail {

// The sample names of the configured metrics in every format, and Hermes' own families:
// what no pushed family may write.
inline std::vector<std::string> reserved_push_names(const Config &config) {
  std::vector<std::string> names;
  for (const MetricConfig &metric : config.metrics) {
    const std::string &name = metric.name;
    names.push_back(name);
    if (metric.type == MetricType::counter && ends_with(name, "_total"))
      names.push_back(name.substr(0, name.size() - 6)), names.push_back(name.substr(0, name.size() - 6) + "_created");
    if (metric.type == MetricType::histogram) names.push_back(name + "_bucket");
    if (metric.type == MetricType::histogram || metric.type == MetricType::summary)
      for (const char *suffix : {"_sum", "_count", "_created"}) names.push_back(name + suffix);
  }
  for (const SelfMetric &metric : self_metrics) names.emplace_back(metric.name);
  return names;
}

inline HttpResponse push_response(int status, const std::string &message) {
  HttpResponse response;
  response.status = status;
  response.body = message.empty() ? "" : message + "\n";
  return response;
}

} // namespace detail

struct Server::Impl {
  using Clock = detail::Clock;
  using Source = detail::DatagramInput::Source;

  Impl(const Config &config, Options &options)
      : budget(detail::budget_with_fixed_buffers(options.max_memory)), registry(config, budget),
        pushes(budget, options.max_push_groups, options.push_ttl_seconds),
        logger(options.log_level, std::move(options.log_sink)), config_path(options.config_path), input(options),
        http(options, logger, *budget, [this](Format format, detail::BudgetedBody &body) { return render(format, body); },
             push_endpoint(options)),
        rejects(logger), start_time_seconds(detail::process_start_time_seconds()), state(options, logger, *budget) {
    registry.accept_statsd(options.statsd);
    pushes.reserve_names(detail::reserved_push_names(config));
  }

  detail::PushEndpoint push_endpoint(const Options &options);
  detail::HttpResponse answer_push(const detail::HttpRequest &request, std::string_view body);

  void poll_once(int timeout_ms);
  bool reload_config();
  bool reload_token();
  int poll_timeout(int timeout_ms, Clock::time_point now) const;
  void sweep(Clock::time_point now);
  bool render(Format format, detail::BudgetedBody &body);
  void write_body(Format format, std::string &body);
  ServerStats stats() const;

  void save_state();
  void save_state_at_stop();

  std::shared_ptr<MemoryBudget> budget; // before all that takes from it, so that it goes last
  Registry registry;
  detail::PushStore pushes;
  detail::PushTextParser push_parser;
  detail::Logger logger;
  std::string config_path;
  detail::DatagramInput input;
  detail::HttpFrontEnd http;
  detail::RejectLog rejects;
  std::optional<double> start_time_seconds;
  std::uint64_t reloads_succeeded = 0, reloads_failed = 0;
  double last_reload_success_seconds = wall_clock_seconds();
  std::vector<pollfd> poll_fds;
  Clock::time_point next_sweep{};
  detail::StateKeeper state; // last: its writing thread ends first
};

inline Server::Server(const Config &config, Options options) : impl_(std::make_unique<Impl>(config, options)) {
  const std::string udp = udp_endpoint(), http = http_endpoint();
  detail::LogFields fields = {{"udp", udp}, {"http", http}};
  if (impl_->input.fd(Impl::Source::unix_socket) >= 0) fields.emplace_back("unix", impl_->input.unix_path());
  std::string udp_allow, http_allow;
  for (const std::string &range : options.udp_allow.texts()) udp_allow += (udp_allow.empty() ? "" : ",") + range;
  for (const std::string &range : options.http_allow.texts()) http_allow += (http_allow.empty() ? "" : ",") + range;
  if (!udp_allow.empty()) fields.emplace_back("udp_allow", udp_allow);
  if (!http_allow.empty()) fields.emplace_back("http_allow", http_allow);
  if (!options.http_token_file.empty()) fields.emplace_back("http_token_file", options.http_token_file);
  fields.insert(fields.end(), {{"service", config.service_name}, {"version", HERMES_VERSION_STR}});
  impl_->logger.log(LogLevel::info, "hermes listening", fields);
  impl_->state.restore(impl_->registry, monotonic_seconds());
}

inline Server::Server(Server &&) noexcept = default;
inline Server &Server::operator=(Server &&) noexcept = default;
inline Server::~Server() = default;

inline void Server::poll_once(int timeout_ms) { impl_->poll_once(timeout_ms); }

inline void Server::run(const std::atomic<bool> &stop, std::atomic<bool> *reload_requested) {
  while (!stop.load()) {
    impl_->poll_once(HERMES_POLL_INTERVAL_MS);
    if (reload_requested && reload_requested->exchange(false)) reload();
  }
  impl_->save_state_at_stop();
  impl_->rejects.flush(Impl::Clock::now(), true);
  impl_->logger.log(LogLevel::info, "hermes stopped");
}

// The config and the token file, each taken on its own: one that fails to load keeps
// what is in force, and makes the reload count as failed.
inline bool Server::reload() {
  Impl &impl = *impl_;
  const bool config = impl.reload_config();
  const bool token = impl.reload_token();
  ++(config && token ? impl.reloads_succeeded : impl.reloads_failed);
  if (config && token) impl.last_reload_success_seconds = wall_clock_seconds();
  return config && token;
}

inline bool Server::Impl::reload_config() {
  try {
    if (config_path.empty()) throw ConfigError("no config file to reload");
    const Config config = load_config(config_path);
    const Registry::ReloadSummary summary = registry.reload(config);
    pushes.reserve_names(detail::reserved_push_names(config));
    logger.log(LogLevel::info, "config reloaded",
               {{"path", config_path}, {"kept", std::to_string(summary.kept)},
                {"fresh", std::to_string(summary.fresh)}, {"removed", std::to_string(summary.removed)}});
    return true;
  } catch (const ConfigError &error) {
    logger.log(LogLevel::error, "config reload failed; the config in force stays", {{"error", error.what()}});
    return false;
  }
}

inline bool Server::Impl::reload_token() {
  if (http.token_file().empty()) return true;
  const std::string problem = http.reload_token();
  if (!problem.empty()) {
    logger.log(LogLevel::error, "token reload failed; the token in force stays", {{"error", problem}});
    return false;
  }
  logger.log(LogLevel::info, "token reloaded", {{"path", http.token_file()}});
  return true;
}

inline std::uint16_t Server::udp_port() const { return detail::local_port(impl_->input.fd(Impl::Source::udp)); }
inline std::uint16_t Server::http_port() const { return detail::local_port(impl_->http.listener()); }
inline std::string Server::udp_endpoint() const { return detail::local_endpoint(impl_->input.fd(Impl::Source::udp)); }
inline std::string Server::http_endpoint() const { return detail::local_endpoint(impl_->http.listener()); }
inline const Registry &Server::registry() const { return impl_->registry; }
inline ServerStats Server::stats() const { return impl_->stats(); }

inline std::string Server::render(Format format) {
  impl_->registry.expire(); // a scrape never shows a series past its ttl
  impl_->pushes.expire(monotonic_seconds());
  std::string body;
  body.reserve(impl_->budget->body_bound() - 1); // the bound counts the NUL
  impl_->write_body(format, body);
  return body;
}

inline ServerStats Server::Impl::stats() const {
  ServerStats stats;
  input.add_stats(stats);
  http.add_stats(stats);
  stats.reloads_succeeded = reloads_succeeded;
  stats.reloads_failed = reloads_failed;
  stats.last_reload_success_seconds = last_reload_success_seconds;
  state.add_stats(stats);
  stats.memory_budget_bytes = static_cast<double>(budget->limit());
  stats.memory_used_bytes = static_cast<double>(budget->used());
  stats.memory_committed_bytes = static_cast<double>(budget->committed());
  stats.push_groups = static_cast<double>(pushes.group_count());
  stats.push_group_bytes = static_cast<double>(pushes.bytes());
  return stats;
}

// The scrape: bring the registry up to now, take room for the body and the figures,
// then write the body, which only reads them. The series that expire are gone before
// the bound is read, so that the body is sized for the series it shows; a bound that
// fell short (a fault) is a body with no room.
inline bool Server::Impl::render(Format format, detail::BudgetedBody &body) {
  registry.expire(); // a scrape never shows a series past its ttl
  pushes.expire(monotonic_seconds());
  if (!body.reserve(budget->body_bound())) return false;
  write_body(format, body.text);
  return body.settle();
}

// A long body is written HERMES_RENDER_PAUSE_STRIDE series at a time; between the parts,
// datagrams waiting on the sockets are taken into the hold, and applied once the body
// is whole.
inline void Server::Impl::write_body(Format format, std::string &body) {
  const ServerStats figures = stats();
  const detail::ProcessStats process = detail::read_process_stats(start_time_seconds);
  detail::Renderer renderer(body, registry, {registry, &figures, &process, &pushes}, format);
  while (!renderer.write_some(HERMES_RENDER_PAUSE_STRIDE)) input.hold_waiting();
  input.apply_held(registry, rejects);
}

// One step: wait for any socket, then UDP first (it cannot wait), the unix socket, and
// HTTP last.
inline void Server::Impl::poll_once(int timeout_ms) {
  enum { udp_slot, unix_slot, http_slot };
  Clock::time_point now = Clock::now();
  poll_fds.clear();
  // A negative descriptor is skipped by poll(): no unix socket, or accepting paused.
  poll_fds.push_back({input.fd(Source::udp), POLLIN, 0});
  poll_fds.push_back({input.fd(Source::unix_socket), POLLIN, 0});
  http.add_poll_fds(poll_fds, now);
  const int ready = detail::wait_for_events(poll_fds, poll_timeout(timeout_ms, now));
  now = Clock::now();
  const double monotonic_now = detail::seconds_of(now); // the clock monotonic_seconds() reads
  if (ready > 0) {
    const Now received{monotonic_now, wall_clock_seconds()}; // ttl and windows on the first, _created on the second
    if (poll_fds[udp_slot].revents) input.receive(Source::udp, registry, rejects, received);
    if (poll_fds[unix_slot].revents) input.receive(Source::unix_socket, registry, rejects, received);
  }
  http.serve(&poll_fds[http_slot], now); // also ends connections past their deadline
  rejects.flush(now, false);
  sweep(now);
  if (state.due(registry, monotonic_now)) save_state();
}

// ----- Pushgateway API -----------------------------------------------------------------------

// PUT, POST and DELETE on /metrics/job/..., and PUT /api/v1/admin/wipe when allowed.
inline detail::PushEndpoint Server::Impl::push_endpoint(const Options &options) {
  if (!options.push) return {};
  const bool admin = options.push_admin;
  detail::PushEndpoint endpoint;
  endpoint.takes = [admin](const detail::HttpRequest &request) {
    const std::string &method = request.method;
    if (admin && request.path == "/api/v1/admin/wipe") return method == "PUT";
    return detail::is_push_path(request.path) && (method == "PUT" || method == "POST" || method == "DELETE");
  };
  endpoint.answer = [this](const detail::HttpRequest &request, std::string_view body) { return answer_push(request, body); };
  endpoint.max_body = options.max_push_bytes;
  endpoint.token_file = options.push_token_file;
  return endpoint;
}

// A push as Pushgateway answers it: 400 with its message for a bad path or body, 200 for
// a push, 202 for a delete or a wipe; 507 when the budget or max_push_groups has no room.
inline detail::HttpResponse Server::Impl::answer_push(const detail::HttpRequest &request, std::string_view body) {
  if (request.path == "/api/v1/admin/wipe") return pushes.wipe(), detail::push_response(202, "");
  const detail::GroupingKey key = detail::parse_grouping_key(request.path);
  if (!key.problem.empty()) return detail::push_response(400, key.problem);
  if (request.method == "DELETE") return pushes.remove(key.labels), detail::push_response(202, "");
  // Pushgateway reads the delimited MetricFamily stream when the Content-Type names it
  // with both parameters, and the text format otherwise.
  const std::string_view type = detail::header(request, "content-type");
  const bool protobuf = detail::lowercase(detail::trim(type.substr(0, type.find(';')))) == "application/vnd.google.protobuf" &&
                        detail::media_parameter(type, "proto") == "io.prometheus.client.MetricFamily" &&
                        detail::media_parameter(type, "encoding") == "delimited";
  std::string error;
  auto families = protobuf ? detail::parse_push_protobuf(body, error) : push_parser.parse(body);
  if (!families) return detail::push_response(400, protobuf ? error : push_parser.error());
  const detail::PushOutcome outcome = pushes.push(key.labels, std::move(*families), request.method == "PUT", Now::current());
  return detail::push_response(outcome.status, outcome.message);
}

// ----- State file ----------------------------------------------------------------------------

// The text is made on the loop, taking waiting datagrams off the sockets every
// HERMES_STATE_PAUSE_STRIDE series as a render does; its writing runs on the keeper's thread.
inline void Server::Impl::save_state() {
  const std::uint64_t changes = registry.changes(); // what the text holds; held datagrams come after it
  const bool made = state.make_text(registry, Now::current(), [this] { input.hold_waiting(); });
  input.apply_held(registry, rejects);
  if (made) state.write(changes, monotonic_seconds());
}

// At stop: the samples still queued on the sockets are applied, then the state is
// written, and run() returns once it is on disk.
inline void Server::Impl::save_state_at_stop() {
  if (!state.enabled()) return;
  constexpr int most_rounds = 1024; // of HERMES_DATAGRAMS_PER_STEP: more than a receive buffer holds
  for (int round = 0; round < most_rounds; ++round) {
    const ServerStats before = stats();
    input.receive(Source::udp, registry, rejects, Now::current());
    if (input.fd(Source::unix_socket) >= 0) input.receive(Source::unix_socket, registry, rejects, Now::current());
    const ServerStats after = stats();
    if (after.udp_packets + after.unix_datagrams == before.udp_packets + before.unix_datagrams) break;
  }
  state.wait();
  if (!state.changed(registry)) return;
  const std::uint64_t changes = registry.changes();
  if (!state.make_text(registry, Now::current(), {})) return;
  state.write(changes, monotonic_seconds());
  state.wait();
}

// Once a second, whether or not anyone scrapes: frees the memory of stale series and
// moves summary windows on.
inline void Server::Impl::sweep(Clock::time_point now) {
  if (now < next_sweep) return;
  registry.expire();
  pushes.expire(detail::seconds_of(now));
  input.ask_kernel_drops();
  next_sweep = now + std::chrono::seconds(1);
}

// How long poll() may sleep: the caller's timeout (negative: no limit), or less when a
// connection deadline, the end of an accept pause or the next reject summary falls due.
inline int Server::Impl::poll_timeout(int timeout_ms, Clock::time_point now) const {
  std::optional<Clock::time_point> due = http.due(now);
  if (const auto summary = rejects.due(); summary && (!due || *summary < *due)) due = summary;
  if (!due) return timeout_ms;
  const auto until_due = std::chrono::ceil<std::chrono::milliseconds>(*due - now).count();
  const int wait = static_cast<int>(std::clamp<std::int64_t>(until_due, 0, INT32_MAX));
  return timeout_ms < 0 ? wait : std::min(timeout_ms, wait);
}

} // namespace hermes

// ===== CLIENT =============================================================================

namespace hermes {

namespace detail {

// One sample as the original's clients write it: `operation` is a gauge's (set,
// increment, decrement), "observe" for an observation, or null for a counter.
inline void append_sample_json(std::string &out, std::string_view metric, const Labels &labels, double value,
                               const char *operation) {
  const bool observation = operation && std::string_view(operation) == "observe";
  out += "{\"metric_name\":";
  append_json_string(out, metric);
  out += ",\"payload\":{\"labels\":{";
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(out, labels[i].first);
    out += ':';
    append_json_string(out, labels[i].second);
  }
  out += observation ? "},\"observation\":" : "},\"value\":";
  append_double(out, value);
  if (operation && !observation) {
    out += ",\"operation\":";
    append_json_string(out, operation);
  }
  out += "}}";
}

} // namespace detail

inline Batch &Batch::add(std::string_view metric, const Labels &labels, double value, const char *operation) {
  if (!std::isfinite(value)) return *this;
  if (samples_++ > 0) json_ += ',';
  detail::append_sample_json(json_, metric, labels, value, operation);
  return *this;
}
inline Batch &Batch::increment_counter(std::string_view metric, const Labels &labels, double by) {
  return add(metric, labels, by, nullptr);
}
inline Batch &Batch::set_gauge(std::string_view metric, const Labels &labels, double value) {
  return add(metric, labels, value, "set");
}
inline Batch &Batch::increment_gauge(std::string_view metric, const Labels &labels, double by) {
  return add(metric, labels, by, "increment");
}
inline Batch &Batch::decrement_gauge(std::string_view metric, const Labels &labels, double by) {
  return add(metric, labels, by, "decrement");
}
inline Batch &Batch::observe(std::string_view metric, const Labels &labels, double value) {
  return add(metric, labels, value, "observe");
}

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

inline Client::Client(Client &&) noexcept = default;
inline Client &Client::operator=(Client &&) noexcept = default;
inline Client::~Client() = default;

inline bool Client::send(std::string_view datagram) {
  const ssize_t sent = detail::retry_on_eintr(
      [&] { return ::send(impl_->socket.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL | MSG_DONTWAIT); });
  return sent == static_cast<ssize_t>(datagram.size());
}

inline bool Client::send(const Batch &batch) { return batch.size() > 0 && send(batch.json()); }

inline bool Client::send_sample(std::string_view metric, const Labels &labels, double value, const char *operation) {
  if (!std::isfinite(value)) return false;
  std::string json;
  detail::append_sample_json(json, metric, labels, value, operation);
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
inline bool Client::observe(std::string_view metric, const Labels &labels, double value) {
  return send_sample(metric, labels, value, "observe");
}

} // namespace hermes

#endif // HERMES_HPP
