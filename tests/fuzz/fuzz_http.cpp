// libFuzzer target: the HTTP request head parser, the router and Accept negotiation,
// the Authorization check and the CIDR range parser.
#include "hermes.hpp"

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char *>(data), size);
  const std::size_t end = hermes::detail::find_head_end(input);
  if (end != std::string_view::npos && end > input.size()) std::abort();
  const auto request = hermes::detail::parse_request_head(end == std::string_view::npos ? input : input.substr(0, end));
  if (request) {
    const auto response = hermes::detail::route(*request, true, true, [](hermes::Format) { return std::make_shared<const std::string>("body\n"); });
    const std::string bytes = hermes::detail::serialize_response(response);
    if (bytes.compare(0, 9, "HTTP/1.0 ") != 0) std::abort();
  }
  hermes::negotiate_format(input);
  if (hermes::detail::bearer_matches(input, "s3cret") && input.find("s3cret") == std::string_view::npos) std::abort();
  hermes::AddressRange range;
  if (hermes::parse_address_range(input, range).empty()) {
    hermes::AllowList list;
    list.add(range, std::string(input));
    sockaddr_in6 any{};
    any.sin6_family = AF_INET6;
    if (list.empty()) std::abort();
    list.allows(reinterpret_cast<const sockaddr *>(&any), sizeof any);
  }
  return 0;
}
