"use strict";
// The middleware in a real express app, asking the real floodgate binary:
// headers on admitted requests, the 429 when refused, keys counted apart,
// costs, and a wrong rule reaching express's error handler. Its answers
// are held to the gateway's own for the same rule and key.

const assert = require("node:assert/strict");
const { after, before, test } = require("node:test");

const express = require("express");

const { Floodgate, FloodgateRequestError } = require("..");
const { serve, startFloodgate } = require("../test-support/servers");

const CONFIG = `
[store]
backend = "memory"

[[rule]]
name = "api-per-client"
algorithm = "sliding_log"
limit = 3
window = "1m"

[[rule]]
name = "uploads"
match = { path_prefix = "/gateway-only/" }
algorithm = "sliding_log"
limit = 10
window = "1h"

[[rule]]
name = "compared"
key = "ip"
match = { path_prefix = "/api/" }
algorithm = "sliding_log"
limit = 2
window = "1m"
`;

let floodgate;
let fg;
let app;
/** Requests that reached the route handlers, by path. */
const handled = new Map();
/** Errors express's error handler saw. */
const errors = [];

before(async () => {
  floodgate = await startFloodgate(CONFIG);
  fg = new Floodgate({ url: floodgate.url, timeoutMs: 5000, onError: "deny" });
  const server = express();
  const ok = (req, res) => {
    handled.set(req.path, (handled.get(req.path) ?? 0) + 1);
    res.json({ ok: true });
  };
  server.get(
    "/hello",
    fg.middleware({ rule: "api-per-client", key: (req) => req.get("x-api-key") }),
    ok,
  );
  server.post(
    "/upload",
    fg.middleware({
      rule: "uploads",
      key: async (req) => req.get("x-api-key"),
      cost: (req) => Number(req.query.mb),
    }),
    ok,
  );
  server.get(
    "/both",
    fg.middleware({ rule: "api-per-client", key: (req) => req.get("x-api-key") }),
    fg.middleware({ rule: "uploads", key: (req) => req.get("x-api-key"), cost: 5 }),
    ok,
  );
  server.get("/fixed", fg.middleware({ rule: "api-per-client", key: "everyone" }), ok);
  server.get(
    "/same-as-gateway",
    fg.middleware({ rule: "compared", key: () => "ip:127.0.0.1" }),
    ok,
  );
  server.get("/typo", fg.middleware({ rule: "api-per-clinet", key: "k" }), ok);
  server.use((err, req, res, _next) => {
    errors.push(err);
    res.status(500).json({ error: err.message });
  });
  app = await serve(server);
});

after(async () => {
  await app?.close();
  fg?.close();
  await floodgate?.stop();
});

function get(path, headers = {}) {
  return fetch(app.url + path, { headers });
}

/** The parameters of `rule`'s item in a RateLimit or RateLimit-Policy value. */
function item(value, rule) {
  const found = (value ?? "")
    .split(",")
    .map((s) => s.trim())
    .find((s) => s.startsWith(`"${rule}";`));
  if (!found) return null;
  return Object.fromEntries(
    found
      .split(";")
      .slice(1)
      .map((p) => p.split("="))
      .map(([k, v]) => [k, Number(v)]),
  );
}

test("admitted requests reach the app with RateLimit-Policy and RateLimit", async () => {
  const res = await get("/hello", { "x-api-key": "alice" });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { ok: true });
  assert.equal(res.headers.get("ratelimit-policy"), '"api-per-client";q=3;w=60');
  const rl = res.headers.get("ratelimit");
  assert.match(rl, /^"api-per-client";r=2;t=\d+$/);
  const t = item(rl, "api-per-client").t;
  assert.ok(t >= 1 && t <= 60, `t=${t}`);
  assert.equal(res.headers.get("retry-after"), null);
});

test("over the limit: 429, Retry-After, RateLimit and floodgate's problem+json; the app is not called", async () => {
  for (const remaining of [2, 1, 0]) {
    const res = await get("/hello", { "x-api-key": "bob" });
    assert.equal(res.status, 200);
    assert.equal(item(res.headers.get("ratelimit"), "api-per-client").r, remaining);
  }
  const before = handled.get("/hello");
  const res = await get("/hello", { "x-api-key": "bob" });
  assert.equal(res.status, 429);
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  assert.equal(res.headers.get("cache-control"), "no-store");
  const retryAfter = Number(res.headers.get("retry-after"));
  assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`);
  assert.equal(res.headers.get("ratelimit-policy"), '"api-per-client";q=3;w=60');
  assert.deepEqual(item(res.headers.get("ratelimit"), "api-per-client"), { r: 0, t: retryAfter });
  const text = await res.text();
  assert.equal(
    text,
    JSON.stringify({
      detail: `over the limit of rule "api-per-client"; retry in ${retryAfter} s`,
      status: 429,
      title: "Quota Exceeded",
      type: "https://iana.org/assignments/http-problem-types#quota-exceeded",
      "violated-policies": ["api-per-client"],
    }),
  );
  assert.equal(handled.get("/hello"), before, "a refused request never reaches the app");
});

test("each key is counted apart", async () => {
  for (let i = 0; i < 3; i++) await get("/hello", { "x-api-key": "carol" });
  assert.equal((await get("/hello", { "x-api-key": "carol" })).status, 429);
  const dave = await get("/hello", { "x-api-key": "dave" });
  assert.equal(dave.status, 200, "carol's count is not dave's");
  assert.equal(item(dave.headers.get("ratelimit"), "api-per-client").r, 2);
});

test("a request without a key is not limited by the rule, as on the gateway", async () => {
  for (let i = 0; i < 5; i++) {
    const res = await get("/hello");
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("ratelimit"), null);
  }
});

test("key may be a fixed value: one count for every request", async () => {
  const statuses = [];
  for (let i = 0; i < 4; i++) statuses.push((await get("/fixed")).status);
  assert.deepEqual(statuses, [200, 200, 200, 429]);
});

test("cost as a function of the request (an async key too)", async () => {
  const up = (mb) => fetch(`${app.url}/upload?mb=${mb}`, { method: "POST", headers: { "x-api-key": "erin" } });
  let res = await up(4);
  assert.equal(res.status, 200);
  assert.deepEqual(item(res.headers.get("ratelimit"), "uploads").r, 6);
  res = await up(6);
  assert.equal(res.status, 200);
  assert.equal(item(res.headers.get("ratelimit"), "uploads").r, 0);
  res = await up(1);
  assert.equal(res.status, 429);
  assert.match((await res.json()).detail, /^over the limit of rule "uploads"; retry in \d+ s$/);
});

test("two middlewares on one route list both rules in the headers", async () => {
  const res = await get("/both", { "x-api-key": "frank" });
  assert.equal(res.status, 200);
  assert.deepEqual(item(res.headers.get("ratelimit"), "api-per-client").r, 2);
  assert.deepEqual(item(res.headers.get("ratelimit"), "uploads").r, 5);
  assert.equal(item(res.headers.get("ratelimit-policy"), "uploads").q, 10);
});

test("a rule floodgate does not have reaches express's error handler, not onError", async () => {
  const res = await get("/typo");
  assert.equal(res.status, 500);
  const error = errors.at(-1);
  assert.ok(error instanceof FloodgateRequestError, String(error));
  assert.equal(error.status, 404);
  assert.equal(error.detail, 'no rule named "api-per-clinet"');
  assert.equal(handled.get("/typo"), undefined);
});

test("answers as floodgate's gateway does for the same rule and key", async () => {
  // The gateway counts rule "compared" on "ip:127.0.0.1"; the middleware
  // asks for that key, so both share one count.
  const viaGateway = await fetch(`${floodgate.url}/api/hello`);
  assert.equal(viaGateway.status, 200);
  const viaApp = await get("/same-as-gateway");
  assert.equal(viaApp.status, 200);
  assert.equal(item(viaApp.headers.get("ratelimit"), "compared").r, 0, "one count for both");
  assert.equal(viaGateway.headers.get("ratelimit-policy"), viaApp.headers.get("ratelimit-policy"));

  const gw = await fetch(`${floodgate.url}/api/hello`);
  const mw = await get("/same-as-gateway");
  assert.deepEqual([gw.status, mw.status], [429, 429]);
  for (const name of ["content-type", "cache-control"]) {
    assert.equal(mw.headers.get(name), gw.headers.get(name), name);
  }
  // The seconds may differ by one: the two answers are not made at the same instant.
  const [gwWait, mwWait] = [Number(gw.headers.get("retry-after")), Number(mw.headers.get("retry-after"))];
  assert.ok(Math.abs(gwWait - mwWait) <= 1, `Retry-After ${gwWait} and ${mwWait}`);
  const rlShape = (res) => res.headers.get("ratelimit").replace(/t=\d+/, "t=N");
  assert.equal(rlShape(mw), rlShape(gw));
  const bodyShape = async (res) => (await res.text()).replace(/retry in \d+ s/, "retry in N s");
  assert.equal(await bodyShape(mw), await bodyShape(gw));
});
