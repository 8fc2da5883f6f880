"use strict";
// One JSON POST to floodgate over a keep-alive connection, bounded by a
// deadline. `http.request` with an `http.Agent` rather than `fetch`: the
// deadline covers the whole exchange (connect, answer, body) with one timer
// that destroys the request, the agent's sockets can be counted and closed,
// and nothing outside Node's core is needed.

const http = require("node:http");
const https = require("node:https");

const { FloodgateUnavailableError } = require("./errors");

/** The most of an answer read: a decision or a problem is a few hundred bytes. */
const MAX_ANSWER_BYTES = 64 * 1024;

/**
 * How long an idle connection is kept for the next call. Below floodgate's
 * default `idle_timeout` (75 s), so the client usually closes first; when
 * the server closed first, the call is sent again once on a new connection
 * (see `post`).
 */
const IDLE_SOCKET_MS = 30_000;

/** Errors of a reused connection that the server had already closed. */
const STALE_SOCKET_CODES = new Set(["ECONNRESET", "EPIPE", "ECONNABORTED"]);

/**
 * Where floodgate is: the base URL's scheme, host, port and path prefix.
 * Throws a TypeError for anything but an http(s) URL without query or
 * fragment.
 */
function parseBaseUrl(url) {
  if (typeof url !== "string" && !(url instanceof URL)) {
    throw new TypeError('url must be floodgate\'s address, e.g. "http://127.0.0.1:8080"');
  }
  let parsed;
  try {
    parsed = new URL(String(url));
  } catch {
    throw new TypeError(`url is not a URL: ${JSON.stringify(String(url))}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TypeError(`url must be http:// or https://, got ${parsed.protocol}`);
  }
  if (parsed.search || parsed.hash) {
    throw new TypeError("url must not have a query or a fragment");
  }
  return {
    secure: parsed.protocol === "https:",
    hostname: parsed.hostname.replace(/^\[|\]$/g, ""),
    port: parsed.port || (parsed.protocol === "https:" ? 443 : 80),
    prefix: parsed.pathname.replace(/\/+$/, ""),
    origin: parsed.origin,
  };
}

/** A keep-alive agent for `base`. */
function keepAliveAgent(base) {
  const Agent = base.secure ? https.Agent : http.Agent;
  return new Agent({ keepAlive: true, timeout: IDLE_SOCKET_MS });
}

/**
 * POSTs `payload` as JSON to `path` under `base` through `agent`.
 * Resolves `{ status, headers, body }` (body a string) for any HTTP
 * answer; rejects with a FloodgateUnavailableError when there is none
 * within `timeoutMs` or the connection fails.
 *
 * A request that fails on a reused connection before any answer is sent
 * once more on a fresh one, within the same deadline: the server closed
 * that idle connection, so it never read the request (Node's documented
 * remedy for the keep-alive race).
 */
function post(base, agent, path, payload, timeoutMs) {
  const body = JSON.stringify(payload);
  const request = base.secure ? https.request : http.request;
  const options = {
    agent,
    method: "POST",
    hostname: base.hostname,
    port: base.port,
    path: base.prefix + path,
    headers: {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      accept: "application/json, application/problem+json",
    },
  };
  return new Promise((resolve, reject) => {
    let current = null;
    let settled = false;
    const settle = (fn, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      fn(value);
    };
    const fail = (error) => {
      settle(reject, error);
      if (current) current.destroy();
    };
    const timer = setTimeout(() => {
      fail(
        new FloodgateUnavailableError(
          `floodgate (${base.origin}) did not answer within ${timeoutMs} ms`,
          { reason: "timeout" },
        ),
      );
    }, timeoutMs);

    const attempt = (retries) => {
      const req = request(options);
      current = req;
      let answered = false;
      req.on("response", (res) => {
        answered = true;
        const chunks = [];
        let size = 0;
        res.on("data", (chunk) => {
          size += chunk.length;
          if (size > MAX_ANSWER_BYTES) {
            fail(
              new FloodgateUnavailableError(
                `floodgate (${base.origin}) answered more than ${MAX_ANSWER_BYTES} bytes`,
                { reason: "answer", status: res.statusCode },
              ),
            );
            return;
          }
          chunks.push(chunk);
        });
        res.on("end", () => {
          settle(resolve, {
            status: res.statusCode,
            headers: res.headers,
            body: Buffer.concat(chunks).toString("utf8"),
          });
        });
        res.on("error", (error) => fail(connectionError(base, error)));
        res.on("close", () => {
          if (!res.complete) fail(connectionError(base, new Error("the answer was cut short")));
        });
      });
      req.on("error", (error) => {
        if (settled) return;
        if (retries > 0 && !answered && req.reusedSocket && STALE_SOCKET_CODES.has(error.code)) {
          attempt(retries - 1);
          return;
        }
        fail(connectionError(base, error));
      });
      req.end(body);
    };
    attempt(1);
  });
}

function connectionError(base, cause) {
  return new FloodgateUnavailableError(
    `floodgate (${base.origin}) could not be reached: ${cause.message}`,
    { reason: "connection", cause },
  );
}

module.exports = { parseBaseUrl, keepAliveAgent, post, IDLE_SOCKET_MS };
