#!/bin/sh
# ensure.sh KIND:NAME:PACKAGE ... - makes sure each NAME exists (KIND is header, command,
# file: a path, python: the python3 the tests run with can import the module NAME,
# debian-python: Debian's /usr/bin/python3 can, or fuzzer: the compiler NAME can link a
# libFuzzer target),
# installing the missing PACKAGEs with one apt-get run when root on Debian or Ubuntu
# (after waiting for another apt to let go of its lock), and otherwise stopping with one
# line that says what to install.
missing=""
have() {
  case $1 in
    header) printf '#include <%s>\n' "$2" | ${CXX:-g++} -std=c++17 -x c++ -E - >/dev/null 2>&1 ;;
    command) command -v "$2" >/dev/null 2>&1 ;;
    file) test -e "$2" ;;
    python) python3 -c "import $2" >/dev/null 2>&1 ;;
    debian-python) /usr/bin/python3 -c "import $2" >/dev/null 2>&1 ;; # where Debian's modules go
    fuzzer) printf 'extern "C" int LLVMFuzzerTestOneInput(const char *, unsigned long) { return 0; }\n' |
      "$2" -x c++ -fsanitize=fuzzer -o /dev/null - >/dev/null 2>&1 ;;
  esac
}
for wanted in "$@"; do
  IFS=: read -r kind name package <<EOT
$wanted
EOT
  have "$kind" "$name" || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

# apt_get ARGUMENT...: apt-get, waiting while another apt or dpkg (unattended upgrades,
# a second terminal, a parallel make) holds its lock, up to HERMES_APT_LOCK_WAIT seconds
# (default 300), and saying once that it waits. Any other failure ends it at once.
apt_get() {
  waited=0
  limit=${HERMES_APT_LOCK_WAIT:-300}
  while :; do
    output=$(LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get "$@" 2>&1) && status=0 || status=$?
    case $status:$output in
      0:*) [ -n "$output" ] && printf '%s\n' "$output" >&2; return 0 ;;
      *"Could not get lock"* | *"Unable to acquire the dpkg frontend lock"* | *"Unable to lock"*) ;;
      *) printf '%s\n' "$output" >&2; return 1 ;;
    esac
    if [ "$waited" -ge "$limit" ]; then
      printf '%s\n' "$output" >&2
      echo "hermes: another apt or dpkg still holds its lock after ${limit} s" >&2
      return 1
    fi
    [ "$waited" -eq 0 ] && echo "hermes: another apt or dpkg holds its lock; waiting up to ${limit} s" >&2
    sleep 5
    waited=$((waited + 5))
  done
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "hermes: installing$missing" >&2
  if apt_get update -qq && apt_get install -y -qq $missing; then
    exit 0
  fi
  echo "hermes: apt-get install$missing failed" >&2
  exit 1
fi
echo "hermes: missing$missing: install with 'apt-get install$missing' (as root)" >&2
exit 1
