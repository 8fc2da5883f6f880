"use strict";
// The express/connect middleware: asks floodgate about each request and
// answers as floodgate's gateway does. Admitted: `RateLimit-Policy` and
// `RateLimit` headers, then next(). Refused: 429 with `Retry-After`, the
// same headers and a `quota-exceeded` problem naming the rule. floodgate
// unable to decide: onError, "allow" → next() without headers, "deny" →
// 503 with `Retry-After: 1`. Only plain Node `res` methods are used
// (setHeader, statusCode, end), so any connect-style framework works.

/** The problem type of a 429 (draft-ietf-httpapi-ratelimit-headers §5.1), as floodgate sends it. */
const QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/**
 * @param {{ check: Function }} client a Floodgate
 * @param {object} options
 * @param {string} options.rule the rule's name in floodgate's config
 * @param {string | number | ((req) => string | number | undefined | Promise<...>)} options.key
 *   the key to count on; no key (undefined, null or "") → the rule does not apply
 * @param {number | ((req) => number | Promise<number>)} [options.cost] units per request (default 1)
 */
function middleware(client, options) {
  const { rule, key, cost = 1 } = options ?? {};
  if (typeof rule !== "string" || rule === "") {
    throw new TypeError("middleware: rule must be the name of one of floodgate's rules");
  }
  if (key === undefined || key === null) {
    throw new TypeError("middleware: key must be a value or a function of the request, e.g. (req) => req.ip");
  }
  const quoted = sfString(rule);

  return function floodgate(req, res, next) {
    let passed = false;
    const pass = (error) => {
      if (passed) return;
      passed = true;
      next(error);
    };
    decide(client, rule, key, cost, req)
      .then((decision) => {
        if (decision === null) return pass();
        if (decision.unavailable) {
          return decision.allowed ? pass() : unavailable(res);
        }
        rateLimitHeaders(res, quoted, decision);
        return decision.allowed ? pass() : limited(res, rule, quoted, decision);
      })
      // A wrong call (an unknown rule, a key function that throws) reaches
      // the app's error handler; an outage never gets here (check() made
      // the onError decision).
      .catch(pass);
  };
}

/** The decision about `req`, or null when the key function gave no key. */
async function decide(client, rule, key, cost, req) {
  const k = typeof key === "function" ? await key(req) : key;
  if (k === undefined || k === null || k === "") return null;
  const c = typeof cost === "function" ? await cost(req) : cost;
  return client.check({ rule, key: String(k), cost: c });
}

/** Whole seconds in `ms`, rounded up, as floodgate rounds them. */
function ceilSeconds(ms) {
  return Math.ceil(ms / 1000);
}

/** Seconds to tell a refused client to wait: rounded up, at least 1. */
function retryAfterSeconds(decision) {
  const ms = decision.retry_after_ms ?? decision.reset_after_ms;
  return Math.max(1, ceilSeconds(ms));
}

/**
 * `RateLimit-Policy: "rule";q=<limit>;w=<window s>` and
 * `RateLimit: "rule";r=<remaining>;t=<s>`, appended after any items already
 * set (by the app or another of these middlewares), as floodgate appends
 * its own after an upstream's. `t` is the seconds until the quota is whole
 * again, or the Retry-After delay when refused. `w` comes from the answer's
 * `window_ms` (left out if an older floodgate does not send it).
 */
function rateLimitHeaders(res, quoted, decision) {
  const t = decision.allowed ? ceilSeconds(decision.reset_after_ms) : retryAfterSeconds(decision);
  const w = typeof decision.window_ms === "number" ? `;w=${Math.max(1, ceilSeconds(decision.window_ms))}` : "";
  appendHeader(res, "RateLimit-Policy", `${quoted};q=${decision.limit}${w}`);
  appendHeader(res, "RateLimit", `${quoted};r=${decision.remaining};t=${t}`);
}

function appendHeader(res, name, value) {
  const existing = res.getHeader(name);
  if (existing === undefined) {
    res.setHeader(name, value);
  } else {
    res.setHeader(name, [...(Array.isArray(existing) ? existing : [String(existing)]), value]);
  }
}

/** The 429 floodgate's gateway answers: Retry-After and a quota-exceeded problem. */
function limited(res, rule, quoted, decision) {
  const wait = retryAfterSeconds(decision);
  res.setHeader("Retry-After", String(wait));
  problem(res, 429, {
    detail: decision.blocked
      ? `blocked by rule ${quoted} for going over its limit; retry in ${wait} s`
      : `over the limit of rule ${quoted}; retry in ${wait} s`,
    status: 429,
    title: "Quota Exceeded",
    type: QUOTA_EXCEEDED,
    "violated-policies": [rule],
  });
}

/** The 503 of onError = "deny". */
function unavailable(res) {
  res.setHeader("Retry-After", "1");
  problem(res, 503, {
    detail: "the rate limiter cannot be reached",
    status: 503,
    title: "Service Unavailable",
    type: "about:blank",
  });
}

/** Sends `body` as application/problem+json (RFC 9457), never cached. */
function problem(res, status, body) {
  const json = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader("Content-Type", "application/problem+json");
  res.setHeader("Cache-Control", "no-store");
  res.setHeader("Content-Length", Buffer.byteLength(json));
  res.end(json);
}

/** `s` as a Structured Field String (RFC 9651): quoted, `"` and `\` escaped, only printable ASCII kept. */
function sfString(s) {
  return `"${s.replace(/[^\x20-\x7e]/g, "").replace(/["\\]/g, "\\$&")}"`;
}

module.exports = { middleware };
