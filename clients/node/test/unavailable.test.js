"use strict";
// When floodgate cannot decide: nobody listening, a server that never
// answers, and the real binary answering 503 because its own store is down
// under on_error = "deny". check() and the middleware obey onError, within
// timeoutMs; charge() says the charge was not recorded.

const assert = require("node:assert/strict");
const { after, before, test } = require("node:test");

const express = require("express");

const { Floodgate, FloodgateUnavailableError } = require("..");
const { closedPortUrl, freePort, serve, silentServer, startFloodgate, timed } = require("../test-support/servers");

/** The client's bound for a silent server: small, so the tests show it holds. */
const TIMEOUT_MS = 200;
/** Slack for a busy machine: the bound is checked loosely, not to the millisecond. */
const SLACK_MS = 1000;

let silent;
let closed;
let storeDown;

before(async () => {
  silent = await silentServer();
  closed = await closedPortUrl();
  // The real binary, its Redis store on a port nobody listens on: every
  // decision is a 503 under on_error = "deny".
  storeDown = await startFloodgate(`
[store]
backend = "redis"
url = "redis://127.0.0.1:${await freePort()}/0"
timeout = "50ms"
on_error = "deny"

[[rule]]
name = "api-per-client"
limit = 3
window = "1m"
`);
});

after(async () => {
  await silent?.close();
  await storeDown?.stop();
});

/** An express app limited by `fg` on rule "api-per-client", keyed by x-api-key. */
async function appWith(fg) {
  const app = express();
  const state = { handled: 0, errors: [] };
  app.get("/hello", fg.middleware({ rule: "api-per-client", key: (req) => req.get("x-api-key") }), (req, res) => {
    state.handled += 1;
    res.json({ ok: true });
  });
  app.use((err, req, res, _next) => {
    state.errors.push(err);
    res.status(500).end();
  });
  const server = await serve(app);
  return { ...server, state };
}

for (const [what, url, reason] of [
  ["nobody listens", () => closed, "connection"],
  ["floodgate never answers", () => silent.url, "timeout"],
  ["floodgate answers 503", () => storeDown.url, "status"],
]) {
  test(`check() when ${what}: onError "allow" admits, within timeoutMs`, async () => {
    const told = [];
    const fg = new Floodgate({ url: url(), timeoutMs: TIMEOUT_MS, onError: "allow", onUnavailable: (e) => told.push(e) });
    try {
      const { ms, value } = await timed(() => fg.check({ rule: "api-per-client", key: "alice", cost: 1 }));
      assert.ok(ms < TIMEOUT_MS + SLACK_MS, `took ${ms} ms`);
      assert.equal(value.allowed, true);
      assert.equal(value.remaining, null);
      assert.equal(value.retry_after_ms, null);
      assert.ok(value.unavailable instanceof FloodgateUnavailableError);
      assert.equal(value.unavailable.reason, reason, value.unavailable.message);
      assert.deepEqual(told, [value.unavailable], "onUnavailable is told");
    } finally {
      fg.close();
    }
  });

  test(`check() when ${what}: onError "deny" refuses, within timeoutMs`, async () => {
    const fg = new Floodgate({ url: url(), timeoutMs: TIMEOUT_MS, onError: "deny" });
    try {
      const { ms, value } = await timed(() => fg.check({ rule: "api-per-client", key: "alice" }));
      assert.ok(ms < TIMEOUT_MS + SLACK_MS, `took ${ms} ms`);
      assert.equal(value.allowed, false);
      assert.equal(value.retry_after_ms, 1000);
      assert.equal(value.unavailable.reason, reason);
      assert.equal(value.unavailable.retryable, true);
    } finally {
      fg.close();
    }
  });

  test(`middleware when ${what}: onError "allow" lets the request through, without RateLimit headers`, async () => {
    const fg = new Floodgate({ url: url(), timeoutMs: TIMEOUT_MS, onError: "allow" });
    const app = await appWith(fg);
    try {
      const { ms, value: res } = await timed(() => fetch(`${app.url}/hello`, { headers: { "x-api-key": "alice" } }));
      assert.ok(ms < TIMEOUT_MS + SLACK_MS, `took ${ms} ms`);
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { ok: true });
      assert.equal(res.headers.get("ratelimit"), null);
      assert.equal(res.headers.get("ratelimit-policy"), null);
      assert.equal(app.state.handled, 1);
      assert.deepEqual(app.state.errors, [], "an outage never reaches express as an error");
    } finally {
      await app.close();
      fg.close();
    }
  });

  test(`middleware when ${what}: onError "deny" answers 503 problem+json, within timeoutMs`, async () => {
    const fg = new Floodgate({ url: url(), timeoutMs: TIMEOUT_MS, onError: "deny" });
    const app = await appWith(fg);
    try {
      const { ms, value: res } = await timed(() => fetch(`${app.url}/hello`, { headers: { "x-api-key": "alice" } }));
      assert.ok(ms < TIMEOUT_MS + SLACK_MS, `took ${ms} ms`);
      assert.equal(res.status, 503);
      assert.equal(res.headers.get("retry-after"), "1");
      assert.equal(res.headers.get("content-type"), "application/problem+json");
      assert.equal(res.headers.get("cache-control"), "no-store");
      assert.deepEqual(await res.json(), {
        detail: "the rate limiter cannot be reached",
        status: 503,
        title: "Service Unavailable",
        type: "about:blank",
      });
      assert.equal(app.state.handled, 0);
      assert.deepEqual(app.state.errors, []);
    } finally {
      await app.close();
      fg.close();
    }
  });
}

test("the timeout bounds each check, not just the first: many at once against a silent server", async () => {
  const fg = new Floodgate({ url: silent.url, timeoutMs: TIMEOUT_MS, onError: "deny" });
  try {
    const { ms, value } = await timed(() =>
      Promise.all(Array.from({ length: 20 }, (_, i) => fg.check({ rule: "api-per-client", key: `k${i}` }))),
    );
    assert.ok(ms < TIMEOUT_MS + SLACK_MS, `took ${ms} ms`);
    assert.ok(value.every((d) => d.allowed === false && d.unavailable.isTimeout));
  } finally {
    fg.close();
  }
});

test("the 503 keeps floodgate's status and problem on the error", async () => {
  const fg = new Floodgate({ url: storeDown.url, timeoutMs: 5000, onError: "allow" });
  try {
    const d = await fg.check({ rule: "api-per-client", key: "alice" });
    assert.equal(d.unavailable.status, 503);
    assert.equal(d.unavailable.problem.status, 503);
    assert.match(d.unavailable.message, /503/);
  } finally {
    fg.close();
  }
});

test("charge() rejects when floodgate cannot record it, whatever onError says", async () => {
  for (const url of [closed, storeDown.url]) {
    const fg = new Floodgate({ url, timeoutMs: TIMEOUT_MS, onError: "allow" });
    try {
      await assert.rejects(fg.charge({ rule: "api-per-client", key: "alice" }), FloodgateUnavailableError);
    } finally {
      fg.close();
    }
  }
});

test("an onUnavailable that throws does not turn an outage into errors", async () => {
  const fg = new Floodgate({
    url: closed,
    timeoutMs: TIMEOUT_MS,
    onError: "allow",
    onUnavailable: () => {
      throw new Error("the logger is down too");
    },
  });
  const app = await appWith(fg);
  try {
    const res = await fetch(`${app.url}/hello`, { headers: { "x-api-key": "alice" } });
    assert.equal(res.status, 200);
    assert.deepEqual(app.state.errors, []);
  } finally {
    await app.close();
    fg.close();
  }
});
