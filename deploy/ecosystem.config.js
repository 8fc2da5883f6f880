// PM2: N floodgate instances behind nginx (deploy/nginx.conf), one port each.
// Installed as /etc/floodgate/ecosystem.config.js (docs/DEPLOY.md §3):
//
//   pm2 start /etc/floodgate/ecosystem.config.js   # start (or add missing) instances
//   pm2 reload floodgate --parallel 1              # zero-downtime restart, one at a time
//   pm2 ls; pm2 logs floodgate-0 --nostream        # status and logs
//   pm2 save                                       # what `pm2 resurrect` starts at boot
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

const fs = require('fs');
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
// Secrets, as KEY=VALUE lines (the format of systemd's EnvironmentFile, so
// deploy/floodgate.service can read the same file): FLOODGATE_ADMIN_TOKEN,
// and FLOODGATE_REDIS_URL for a Redis with a password. Read each time PM2
// reads this file (`pm2 start`, `pm2 reload <this file>`), so the secrets
// stay out of the command line and the shell history. A variable set in
// the environment of the `pm2` command wins over the file.
const ENV_FILE = env('FLOODGATE_ENV_FILE', '/etc/floodgate/floodgate.env');

/** KEY=VALUE lines of `file`; blank lines and `#` comments skipped. */
function readEnvFile(file) {
  const vars = {};
  for (const [n, line] of fs.readFileSync(file, 'utf8').split('\n').entries()) {
    const text = line.trim();
    if (text === '' || text.startsWith('#')) continue;
    const eq = text.indexOf('=');
    if (eq < 1) throw new Error(`${file}:${n + 1}: expected KEY=VALUE`);
    vars[text.slice(0, eq).trim()] = text.slice(eq + 1).trim().replace(/^(["'])(.*)\1$/, '$2');
  }
  return vars;
}

const secrets = fs.existsSync(ENV_FILE) ? readEnvFile(ENV_FILE) : {};
for (const name of Object.keys(secrets)) {
  if (process.env[name]) delete secrets[name];
}
// No token would leave the admin API (blocks, counters) open to anything on
// this host: refuse to start instead.
if (!process.env.FLOODGATE_ADMIN_TOKEN && !secrets.FLOODGATE_ADMIN_TOKEN) {
  throw new Error(
    `no FLOODGATE_ADMIN_TOKEN: put FLOODGATE_ADMIN_TOKEN=<secret> in ${ENV_FILE} ` +
      '(docs/DEPLOY.md §3 generates one)',
  );
}

const hostPort = (port) => (HOST.includes(':') ? `[${HOST}]:${port}` : `${HOST}:${port}`);

module.exports = {
  apps: Array.from({ length: INSTANCES }, (_, i) => ({
    // `pm2 reload floodgate` acts on the whole namespace; `pm2 logs` and
    // `pm2 describe` want an instance's name.
    name: `floodgate-${i}`,
    namespace: 'floodgate',
    script: BIN,
    args: ['serve', '--config', CONFIG, '--listen', hostPort(BASE_PORT + i), '--log-format', 'json'],
    interpreter: 'none',
    exec_mode: 'fork',
    instances: 1,
    // PM2 would otherwise start the instances in the directory `pm2 start`
    // ran in (a checkout that may be moved or deleted) and keep it in
    // `pm2 save`'s dump. floodgate opens only absolute paths.
    cwd: '/',
    env: {
      ...secrets,
      FLOODGATE_ADMIN_LISTEN: hostPort(ADMIN_BASE_PORT + i),
    },

    // Restarts: after a crash, wait 100 ms, then 150, 225, ... up to 15 s
    // while it keeps crashing (reset once it stays up 30 s). PM2 counts a
    // run shorter than min_uptime as unstable, whether it crashed or was
    // stopped by `pm2 reload`/`restart`; after max_restarts unstable runs
    // in a row it gives up and shows the instance as errored. A reload
    // resets the count first, so reloads alone never reach the limit, but
    // with a long min_uptime two reloads a few seconds apart show up as
    // "unstable restarts: 1" in `pm2 describe`. floodgate fails within
    // milliseconds when it cannot start (bad config, port taken) and serves
    // within milliseconds when it can, so one second tells the two apart.
    autorestart: true,
    exp_backoff_restart_delay: 100,
    min_uptime: 1000,
    max_restarts: 10,

    // Stopping (pm2 stop/reload/restart): PM2 7 sends SIGINT, or the signal
    // named by PM2_KILL_SIGNAL in the PM2 daemon's environment; it has no
    // per-app kill_signal. floodgate drains on SIGINT and SIGTERM alike,
    // answering in-flight requests before it exits; after kill_timeout PM2
    // sends SIGKILL.
    kill_timeout: DRAIN_TIMEOUT_MS + 2000,
    // wait_ready is not set: PM2 waits for a `process.send('ready')` that
    // only Node apps make, so it would only add listen_timeout to every
    // start. nginx's retries cover the moment a new instance is starting.

    // Logs: floodgate writes nothing on stdout, and its JSON log lines (with
    // their own timestamps) on stderr. Rotate with `pm2 install
    // pm2-logrotate` or logrotate's copytruncate.
    out_file: '/dev/null',
    error_file: path.join(LOG_DIR, `floodgate-${i}.log`),
    // One file per app, without PM2's "-<id>" suffix.
    merge_logs: true,
    time: false,
  })),
};
