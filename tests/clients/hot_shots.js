// Pushes one phase of StatsD lines with hot-shots, unmodified, for statsd_clients.py.
// usage: node hot_shots.js HOST PORT PHASE
'use strict';
const StatsD = require('hot-shots');

const [host, port, phase] = process.argv.slice(2);
const options = {host, port: Number(port), protocol: 'udp', errorHandler: (error) => {
  console.error(`hot-shots: ${error}`);
  process.exitCode = 1;
}};

const phases = {
  dogstatsd(client) { // DogStatsD tags; one datagram each
    client.increment('jobs', {queue: 'mail'});
    client.increment('jobs', 2, ['queue:mail']);
    client.increment('jobs', 1, {tags: {queue: 'mail'}, timestamp: 1700000000}); // |T before |#
    client.decrement('jobs', 1, {queue: 'mail'}); // a negative counter increment
    client.gauge('depth', 7);
    client.gaugeDelta('depth', 3);
    client.gaugeDelta('depth', -2);
    client.timing('latency_seconds', 250, {route: '/'});
    client.histogram('latency_seconds', 0.5, {route: '/'});
    client.distribution('payload_bytes', 512);
    client.distribution('payload_bytes', 1536);
    client.set('users', 'alice');
    client.event('deploy', 'version 2');
    client.check('shop.up', client.CHECKS.OK);
  },
  sampled(client) { // each sent or not by chance; statsd_clients.py counts what arrived
    for (let i = 0; i < 200; ++i) client.increment('jobs', 1, 0.5, {queue: 'sampled'});
  },
  sampled_timer(client) {
    for (let i = 0; i < 200; ++i) client.timing('latency_seconds', 100, 0.25, {route: '/sampled'});
  },
  telegraf(client) { // InfluxDB-style tags in the name
    client.increment('jobs', 5, {queue: 'telegraf'});
    client.timing('latency_seconds', 2000, {route: '/telegraf'});
  },
};

const client = new StatsD(phase === 'telegraf' ? {...options, telegraf: true} : options);
phases[phase](client);
client.close((error) => {
  if (error) {
    console.error(`hot-shots: close: ${error}`);
    process.exitCode = 1;
  }
});
