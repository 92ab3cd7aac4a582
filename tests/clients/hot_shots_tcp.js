// Pushes StatsD lines with hot-shots over TCP (protocol: 'tcp'), unmodified, for statsd_tcp.py.
// usage: node hot_shots_tcp.js HOST PORT
'use strict';
const StatsD = require('hot-shots');

const [host, port] = process.argv.slice(2);
const client = new StatsD({host, port: Number(port), protocol: 'tcp', errorHandler: (error) => {
  console.error(`hot-shots: ${error}`);
  process.exitCode = 1;
}});

// One connection; hot-shots ends each line with a newline.
client.increment('jobs', 3, {queue: 'tcp'});
client.increment('jobs', {queue: 'tcp'});
client.gauge('depth', 11);
client.gaugeDelta('depth', -4);
client.timing('latency_seconds', 80, {route: '/tcp'});
client.histogram('latency_seconds', 2.5, {route: '/tcp'});
client.distribution('payload_bytes', 100);
client.set('users', 'bob'); // unsupported_type
client.close((error) => { // sends what is still queued first
  if (error) {
    console.error(`hot-shots: close: ${error}`);
    process.exitCode = 1;
  }
});
