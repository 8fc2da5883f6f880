"use strict";
// check() and charge() against the real floodgate binary: the decision
// API's answers, costs, the errors of a wrong call, and connection reuse.

const assert = require("node:assert/strict");
const http = require("node:http");
const { after, before, test } = require("node:test");

const { Floodgate, FloodgateRequestError, FloodgateUnavailableError } = require("..");
const { serve, startFloodgate } = require("../test-support/servers");

const CONFIG = `
[store]
backend = "memory"

[[rule]]
name = "api-per-client"
algorithm = "sliding_log"
limit = 3
window = "1m"
`;

let floodgate;
let fg;

before(async () => {
  floodgate = await startFloodgate(CONFIG);
  // A generous timeout: these tests are about answers, not speed, and the
  // machine may be busy compiling.
  fg = new Floodgate({ url: floodgate.url, timeoutMs: 5000, onError: "allow" });
});

after(async () => {
  fg?.close();
  await floodgate?.stop();
});

test("admits up to the limit, then refuses with when to retry", async () => {
  const first = await fg.check({ rule: "api-per-client", key: "alice", cost: 1 });
  assert.deepEqual(Object.keys(first).sort(), [
    "allowed",
    "blocked",
    "limit",
    "remaining",
    "reset_after_ms",
    "retry_after_ms",
    "window_ms",
  ]);
  assert.equal(first.allowed, true);
  assert.equal(first.blocked, false);
  assert.equal(first.window_ms, 60_000);
  assert.equal(first.limit, 3);
  assert.equal(first.remaining, 2);
  assert.equal(first.retry_after_ms, null);
  assert.ok(first.reset_after_ms > 0 && first.reset_after_ms <= 60_000, `reset ${first.reset_after_ms}`);

  assert.equal((await fg.check({ rule: "api-per-client", key: "alice" })).remaining, 1, "cost defaults to 1");
  const last = await fg.check({ rule: "api-per-client", key: "alice", cost: 1 });
  assert.deepEqual([last.allowed, last.remaining], [true, 0]);

  const refused = await fg.check({ rule: "api-per-client", key: "alice", cost: 1 });
  assert.equal(refused.allowed, false, "a refusal is an answer, not an error");
  assert.equal(refused.remaining, 0);
  assert.equal(refused.limit, 3);
  assert.ok(
    refused.retry_after_ms > 0 && refused.retry_after_ms <= 60_000,
    `retry_after_ms ${refused.retry_after_ms}`,
  );
  assert.equal(refused.unavailable, undefined);

  const other = await fg.check({ rule: "api-per-client", key: "bob" });
  assert.deepEqual([other.allowed, other.remaining], [true, 2], "another key has its own count");
});

test("a cost above 1 takes that many units, and is refused whole when it does not fit", async () => {
  const two = await fg.check({ rule: "api-per-client", key: "carol", cost: 2 });
  assert.deepEqual([two.allowed, two.remaining], [true, 1]);
  const tooMuch = await fg.check({ rule: "api-per-client", key: "carol", cost: 2 });
  assert.equal(tooMuch.allowed, false);
  assert.equal(tooMuch.remaining, 1, "nothing taken by the refusal");
  assert.ok(tooMuch.retry_after_ms > 0);
  const one = await fg.check({ rule: "api-per-client", key: "carol", cost: 1 });
  assert.deepEqual([one.allowed, one.remaining], [true, 0]);
});

test("an unknown rule is a FloodgateRequestError with floodgate's problem, never the onError decision", async () => {
  const error = await fg.check({ rule: "no-such-rule", key: "alice" }).then(
    () => assert.fail("an unknown rule must not be decided"),
    (e) => e,
  );
  assert.ok(error instanceof FloodgateRequestError, String(error));
  assert.equal(error.name, "FloodgateRequestError");
  assert.equal(error.status, 404);
  assert.equal(error.detail, 'no rule named "no-such-rule"');
  assert.equal(error.problem.title, "Not Found");
  assert.equal(error.retryable, false);
  assert.match(error.message, /404.*no rule named "no-such-rule"/);
});

test("a cost the rule can never admit is a FloodgateRequestError (422)", async () => {
  await assert.rejects(fg.check({ rule: "api-per-client", key: "dave", cost: 4 }), (error) => {
    assert.ok(error instanceof FloodgateRequestError);
    assert.equal(error.status, 422);
    assert.match(error.detail, /cost 4 can never be admitted by rule "api-per-client": it holds at most 3/);
    return true;
  });
});

test("wrong arguments are TypeErrors, before anything is sent", async () => {
  for (const args of [
    { key: "a" },
    { rule: "api-per-client" },
    { rule: "api-per-client", key: "" },
    { rule: "api-per-client", key: 7 },
    { rule: "api-per-client", key: "a", cost: 0 },
    { rule: "api-per-client", key: "a", cost: 1.5 },
    { rule: "api-per-client", key: "a", cost: "2" },
    { rule: "api-per-client", key: "a", charge: "no" },
  ]) {
    await assert.rejects(fg.check(args), TypeError, JSON.stringify(args));
  }
  assert.throws(() => new Floodgate({}), TypeError);
  assert.throws(() => new Floodgate({ url: "ftp://127.0.0.1" }), TypeError);
  assert.throws(() => new Floodgate({ url: floodgate.url, onError: "maybe" }), TypeError);
  assert.throws(() => new Floodgate({ url: floodgate.url, timeoutMs: 0 }), TypeError);
});

test("charge: false only asks; charge() records the cost whatever the limit", async () => {
  const asked = await fg.check({ rule: "api-per-client", key: "erin", charge: false });
  assert.deepEqual([asked.allowed, asked.remaining], [true, 2]);
  const again = await fg.check({ rule: "api-per-client", key: "erin", charge: false });
  assert.equal(again.remaining, 2, "asking took nothing");

  const charged = await fg.charge({ rule: "api-per-client", key: "erin", cost: 2 });
  assert.deepEqual([charged.allowed, charged.remaining], [true, 1]);
  const over = await fg.charge({ rule: "api-per-client", key: "erin", cost: 2 });
  assert.equal(over.allowed, false, "charged past the limit: nothing fits now");
  assert.ok(over.retry_after_ms > 0);
  const after = await fg.check({ rule: "api-per-client", key: "erin" });
  assert.equal(after.allowed, false);
});

test("sequential checks reuse one keep-alive connection", async () => {
  class CountingAgent extends http.Agent {
    constructor() {
      super({ keepAlive: true });
      this.connections = 0;
    }
    createConnection(...args) {
      this.connections += 1;
      return super.createConnection(...args);
    }
  }
  const agent = new CountingAgent();
  const client = new Floodgate({ url: floodgate.url, timeoutMs: 5000, agent });
  try {
    for (let i = 0; i < 50; i++) {
      const d = await client.check({ rule: "api-per-client", key: `reuse-${i}` });
      assert.equal(d.allowed, true);
    }
    assert.equal(agent.connections, 1, "50 checks, one connection");
  } finally {
    agent.destroy();
  }

  // The client's own agent keeps its connection too.
  const own = new Floodgate({ url: floodgate.url, timeoutMs: 5000 });
  let free;
  try {
    for (let i = 0; i < 5; i++) await own.check({ rule: "api-per-client", key: `own-${i}` });
    free = Object.values(own.agent.freeSockets).flat();
    assert.equal(free.length, 1, "one idle connection, kept for the next check");
    assert.equal(Object.values(own.agent.sockets).flat().length, 0);
  } finally {
    own.close();
  }
  assert.equal(free[0].destroyed, true, "close() drops it");
});

test("a kept connection the server closed meanwhile is replaced; the check is still answered", async () => {
  // A stand-in for floodgate that answers the first request of each
  // connection and drops the connection on the second, as a server whose
  // idle timeout ran out just as the client reused the connection.
  const answer = JSON.stringify({
    allowed: true,
    limit: 3,
    remaining: 2,
    reset_after_ms: 1000,
    retry_after_ms: null,
  });
  let connections = 0;
  const server = await serve((req, res) => {
    req.resume();
    const socket = req.socket;
    socket.requests = (socket.requests ?? 0) + 1;
    if (socket.requests === 1) connections += 1;
    if (socket.requests > 1) {
      socket.destroy();
      return;
    }
    res.setHeader("content-type", "application/json");
    res.end(answer);
  });
  const client = new Floodgate({ url: server.url, timeoutMs: 5000, onError: "deny" });
  try {
    for (let i = 0; i < 3; i++) {
      const d = await client.check({ rule: "r", key: "k" });
      assert.equal(d.unavailable, undefined, `check ${i}: ${d.unavailable}`);
      assert.equal(d.allowed, true);
    }
    assert.equal(connections, 3, "each dropped connection replaced by a new one");
  } finally {
    client.close();
    await server.close();
  }
});

test("FloodgateUnavailableError is exported for instanceof checks", () => {
  const e = new FloodgateUnavailableError("x", { reason: "timeout" });
  assert.equal(e.isTimeout, true);
  assert.equal(e.retryable, true);
});
