/* statsd_send.c - sends one StatsD line to Hermes over UDP, for boards without C++.
 *
 *   cc -std=c99 -O2 -o statsd_send example/statsd_send.c
 *   ./statsd_send 127.0.0.1 7789 jobs 1 c queue:mail      sends "jobs:1|c|#queue:mail"
 *
 * Copy statsd_send() into a firmware or a program; main() below only shows a call.
 * Numbers are written by snprintf in the C locale, the one a C program starts in. */
#define _POSIX_C_SOURCE 200112L
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define STATSD_LINE_MAX 512 /* bytes of one line; a longer one is not sent */

/* Formats "name:value|type", and "|#tags" when tags is neither NULL nor empty (DogStatsD
 * tags, "key:value,key2:value2"), and sends it to ipv4:port in one datagram. The value
 * takes as few digits as read back exactly. Returns 0, or -1 with errno set. */
int statsd_send(const char *ipv4, unsigned short port, const char *name, double value, const char *type,
                const char *tags) {
  char number[32], line[STATSD_LINE_MAX];
  struct sockaddr_in address;
  int length, fd, precision;
  ssize_t sent;
  for (precision = 15; precision <= 17; ++precision) { /* 15 digits usually, 17 always read back */
    snprintf(number, sizeof number, "%.*g", precision, value);
    if (strtod(number, NULL) == value) break;
  }
  if (tags && *tags) length = snprintf(line, sizeof line, "%s:%s|%s|#%s", name, number, type, tags);
  else length = snprintf(line, sizeof line, "%s:%s|%s", name, number, type);
  if (length < 0 || (size_t)length >= sizeof line) {
    errno = EMSGSIZE;
    return -1;
  }
  memset(&address, 0, sizeof address);
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  if (inet_pton(AF_INET, ipv4, &address.sin_addr) != 1) {
    errno = EINVAL;
    return -1;
  }
  fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) return -1;
  sent = sendto(fd, line, (size_t)length, 0, (const struct sockaddr *)&address, sizeof address);
  close(fd);
  return sent == length ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc < 6 || argc > 7) {
    fprintf(stderr, "usage: %s IPV4 PORT NAME VALUE TYPE [TAGS]\n", argv[0]);
    return 2;
  }
  if (statsd_send(argv[1], (unsigned short)atoi(argv[2]), argv[3], strtod(argv[4], NULL), argv[5], argc == 7 ? argv[6] : NULL) != 0) {
    perror("statsd_send");
    return 1;
  }
  return 0;
}
