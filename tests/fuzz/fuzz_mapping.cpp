// libFuzzer target: statsd_exporter's YAML mapping file, read; a file that loads must
// also map names through every rule (glob index, templates, regexes) without a crash.
#include "hermes.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char *>(data), size);
  try {
    const hermes::StatsdMappingFile file = hermes::parse_statsd_mapping(text, "fuzz.yml");
    if (file.rules != file.mapping->rules.size()) std::abort();
    for (const char *name : {"a.b.c", "a", "test.dispatcher.x.y.z", "", "..", "x.y"})
      for (const auto type : {hermes::detail::StatsdType::counter, hermes::detail::StatsdType::gauge,
                              hermes::detail::StatsdType::timer})
        file.mapping->map(name, type);
  } catch (const hermes::ConfigError &) {
    // the expected answer to a bad file
  }
  return 0;
}
