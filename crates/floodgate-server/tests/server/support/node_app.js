// The application behind nginx in auth_request_pm2.rs: what the seed runs,
// a Node.js HTTP server under PM2 in cluster mode, with nothing of
// floodgate in it. No dependencies: node's own `http` module.
//
// Every request it answers is appended to SEEN_LOG as one line
//
//   <pid> <x-api-key or -> <method> <url>
//
// before the answer goes out, so the test reads what the app saw (across
// every PM2 instance: one O_APPEND write per line) rather than what the
// client got. Every answer is 200 with `x-app-pid`, so the client knows
// which instance answered.
//
// Environment: PORT (listened on at 127.0.0.1), SEEN_LOG (a file path).
'use strict';

const fs = require('fs');
const http = require('http');

const port = Number.parseInt(process.env.PORT, 10);
const seenLog = process.env.SEEN_LOG;
if (!Number.isInteger(port) || !seenLog) {
  throw new Error(`PORT and SEEN_LOG must be set, got ${process.env.PORT} and ${seenLog}`);
}

http
  .createServer((req, res) => {
    const client = req.headers['x-api-key'] || '-';
    fs.appendFileSync(seenLog, `${process.pid} ${client} ${req.method} ${req.url}\n`);
    res.setHeader('x-app-pid', String(process.pid));
    res.setHeader('content-type', 'application/json');
    res.end(`${JSON.stringify({ pid: process.pid, client, url: req.url })}\n`);
  })
  .listen(port, '127.0.0.1');
