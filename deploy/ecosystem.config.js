// PM2: N floodgate instances behind nginx (deploy/nginx.conf), one port each.
//
//   pm2 start deploy/ecosystem.config.js     # start (or add missing) instances
//   pm2 reload floodgate --parallel 1        # zero-downtime restart, one at a time
//   pm2 ls; pm2 logs floodgate               # status and logs
//   pm2 save && pm2 startup                  # start them again at boot
//
// floodgate is not a Node app, so PM2 runs it in fork mode: each instance is
// its own process, and `pm2 reload` stops an instance, waits for it to drain
// and exit, then starts the new one. While one is restarting, nginx sends
// its requests to the others (refused connection -> next upstream). That is
// why each instance has its own port: with one shared SO_REUSEPORT port nginx
// sees a single upstream and has nowhere else to send a retry, and
// connections queued on a stopping instance's socket are reset.
//
// Everything below can be set from the environment of the `pm2 start`
// command; the defaults match deploy/nginx.conf and deploy/floodgate.toml.
'use strict';

const path = require('path');

const env = (name, fallback) => process.env[name] || fallback;
const int = (name, fallback) => {
  const value = Number.parseInt(env(name, String(fallback)), 10);
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`${name} must be a positive integer, got ${process.env[name]}`);
  }
  return value;
};

// How many instances; nginx's upstream block needs one line per instance.
const INSTANCES = int('FLOODGATE_INSTANCES', 4);
// Instance i listens on BASE_PORT + i, its admin API on ADMIN_BASE_PORT + i.
const BASE_PORT = int('FLOODGATE_BASE_PORT', 8081);
const ADMIN_BASE_PORT = int('FLOODGATE_ADMIN_BASE_PORT', 9091);
const HOST = env('FLOODGATE_HOST', '127.0.0.1');
const BIN = env('FLOODGATE_BIN', '/usr/local/bin/floodgate');
const CONFIG = env('FLOODGATE_CONFIG', '/etc/floodgate/floodgate.toml');
const LOG_DIR = env('FLOODGATE_LOG_DIR', '/var/log/floodgate');
// Must be at least the config's server.drain_timeout: PM2 sends SIGKILL to an
// instance still draining after kill_timeout.
const DRAIN_TIMEOUT_MS = int('FLOODGATE_DRAIN_TIMEOUT_MS', 10000);

const hostPort = (port) => (HOST.includes(':') ? `[${HOST}]:${port}` : `${HOST}:${port}`);

module.exports = {
  apps: Array.from({ length: INSTANCES }, (_, i) => ({
    // `pm2 reload floodgate` acts on the whole namespace.
    name: `floodgate-${i}`,
    namespace: 'floodgate',
    script: BIN,
    args: ['serve', '--config', CONFIG, '--listen', hostPort(BASE_PORT + i), '--log-format', 'json'],
    interpreter: 'none',
    exec_mode: 'fork',
    instances: 1,
    env: {
      FLOODGATE_ADMIN_LISTEN: hostPort(ADMIN_BASE_PORT + i),
    },

    // Restarts: after a crash, wait 100 ms, then 150, 225, ... up to 15 s
    // while it keeps crashing (reset once it stays up 30 s). A run shorter
    // than min_uptime counts as unstable; after max_restarts unstable runs
    // in a row PM2 gives up and shows the instance as errored.
    autorestart: true,
    exp_backoff_restart_delay: 100,
    min_uptime: 5000,
    max_restarts: 10,

    // Stopping (pm2 stop/reload/restart): floodgate drains on SIGINT or
    // SIGTERM, answering in-flight requests before it exits.
    kill_signal: 'SIGTERM',
    kill_timeout: DRAIN_TIMEOUT_MS + 2000,
    // wait_ready is not set: PM2 waits for a `process.send('ready')` that
    // only Node apps make, so it would only add listen_timeout to every
    // start. nginx's retries cover the moment a new instance is starting.

    // Logs: floodgate logs JSON lines with their own timestamps on stderr.
    // Rotate with `pm2 install pm2-logrotate` or logrotate's copytruncate.
    out_file: path.join(LOG_DIR, `floodgate-${i}.out.log`),
    error_file: path.join(LOG_DIR, `floodgate-${i}.log`),
    // One file per app, without PM2's "-<id>" suffix.
    merge_logs: true,
    time: false,
  })),
};
