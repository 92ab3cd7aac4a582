// Pushes one step with prom-client's Pushgateway, unmodified, for push_clients.py, and
// prints what the client reported: {"status": N, "body": "..."} or {"error": "..."}.
// usage: node prom_client.js URL STEP, STEP one of push, add, other, delete, slash, rooted.
'use strict';
const client = require('prom-client');

const [url, step] = process.argv.slice(2);
// A value with '/' goes as a name suffixed @base64 and its base64url, as the API asks.
const groupings = {instance: 'i-1', 'path@base64': Buffer.from('/var/lib').toString('base64url')};

function everyType(registry) {
  const items = new client.Counter({name: 'batch_items_total', help: 'Items the batch handled.', labelNames: ['kind'],
    registers: [registry]});
  items.inc({kind: 'mail'}, 7);
  items.inc({kind: 'sms'});
  new client.Gauge({name: 'batch_last_success_seconds', help: 'When the batch last succeeded.', registers: [registry]})
    .set(1700000000.5);
  const sizes = new client.Histogram({name: 'batch_size_bytes', help: 'Sizes.', buckets: [10, 100, 1e6], registers: [registry]});
  for (const value of [5, 50, 500, 5e6]) sizes.observe(value);
  const seconds = new client.Summary({name: 'batch_item_seconds', help: 'Seconds per item.', percentiles: [0.5, 0.9],
    registers: [registry]});
  for (const value of [0.25, 0.5, 4]) seconds.observe(value);
  new client.Gauge({name: 'batch_escaped', help: 'Help with \\ and \n.', labelNames: ['value'], registers: [registry]})
    .set({value: 'q"b\\s\nl é'}, -1.5);
}

const steps = {
  push: (gateway) => gateway.push({jobName: 'nightly', groupings}), // PUT: every type
  add(gateway, registry) { // POST: a new value of one family and a family more; the others stay
    registry.clear();
    new client.Gauge({name: 'batch_last_success_seconds', help: 'When the batch last succeeded.', registers: [registry]})
      .set(1800000000);
    new client.Counter({name: 'batch_retries_total', help: 'Retries.', registers: [registry]}).inc(2);
    return gateway.pushAdd({jobName: 'nightly', groupings});
  },
  other: (gateway) => gateway.push({jobName: 'nightly', groupings: {instance: 'i-2'}}), // a second group
  delete: (gateway) => gateway.delete({jobName: 'nightly', groupings}),
  // A plain '/' in a value: prom-client escapes it as %2F, which the path decodes to a '/'.
  slash: (gateway) => gateway.push({jobName: 'nightly', groupings: {path: 'var/lib'}}),
  rooted: (gateway) => gateway.push({jobName: 'nightly', groupings: {path: '/var/lib'}}),
};

const registry = new client.Registry();
everyType(registry);
steps[step](new client.Pushgateway(url, {timeout: 5000}, registry), registry).then(
  ({resp, body}) => console.log(JSON.stringify({status: resp.statusCode, body})),
  (error) => console.log(JSON.stringify({error: error.message})));
