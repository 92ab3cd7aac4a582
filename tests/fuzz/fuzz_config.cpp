// libFuzzer target: config parsing and validation; a config that loads must also make
// a registry, lint and render.
#include "hermes.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char *>(data), size);
  try {
    const hermes::Config config = hermes::parse_config(text, "fuzz.json");
    hermes::lint_config(config);
    const hermes::Registry registry(config);
    hermes::render_metrics(registry);
    hermes::render_metrics(registry, hermes::Format::openmetrics);
  } catch (const hermes::ConfigError &) {
    // the expected answer to a bad config
  }
  return 0;
}
