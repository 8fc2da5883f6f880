"use strict";
// The client: `check` and `charge` over floodgate's decision API, and the
// fallback decision `onError` makes when floodgate cannot decide.

const { FloodgateRequestError, FloodgateUnavailableError } = require("./errors");
const { middleware } = require("./middleware");
const { keepAliveAgent, parseBaseUrl, post } = require("./transport");

/** timeoutMs when none is given: a decision on the same host or network takes a few ms. */
const DEFAULT_TIMEOUT_MS = 100;

/** What a refusal under onError = "deny" tells the caller to wait, as floodgate's own 503 does. */
const DENY_RETRY_AFTER_MS = 1000;

class Floodgate {
  /** Where floodgate is (see transport.parseBaseUrl). */
  #base;
  /** Told each time onError decided. */
  #onUnavailable;
  /** Whether close() may destroy the agent: only one this client made. */
  #ownsAgent;

  /**
   * @param {object} options
   * @param {string | URL} options.url floodgate's main listener, e.g. "http://127.0.0.1:8080"
   * @param {number} [options.timeoutMs] the longest a decision may take (default 100)
   * @param {"allow" | "deny"} [options.onError] the decision when floodgate cannot give one (default "allow")
   * @param {(error: FloodgateUnavailableError) => void} [options.onUnavailable] told each time onError decided (what it throws is ignored)
   * @param {import("node:http").Agent} [options.agent] the agent to connect with (default: a keep-alive agent of this client's own)
   */
  constructor(options) {
    const { url, timeoutMs = DEFAULT_TIMEOUT_MS, onError = "allow", onUnavailable, agent } =
      options ?? {};
    this.#base = parseBaseUrl(url);
    if (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw new TypeError(`timeoutMs must be a number of milliseconds above 0, got ${timeoutMs}`);
    }
    if (onError !== "allow" && onError !== "deny") {
      throw new TypeError(`onError must be "allow" or "deny", got ${JSON.stringify(onError)}`);
    }
    if (onUnavailable !== undefined && typeof onUnavailable !== "function") {
      throw new TypeError("onUnavailable must be a function");
    }
    this.timeoutMs = timeoutMs;
    this.onError = onError;
    this.#onUnavailable = onUnavailable;
    this.#ownsAgent = agent === undefined;
    this.agent = agent ?? keepAliveAgent(this.#base);
  }

  /**
   * Decides `cost` units of `rule` for `key`: `POST /v1/check`. Resolves
   * floodgate's answer, `{ allowed, limit, remaining, reset_after_ms,
   * retry_after_ms }`, refusals included. When floodgate cannot decide,
   * resolves the onError decision instead, marked by `unavailable` (the
   * error) and with nulls where floodgate would have given numbers.
   * Rejects with a FloodgateRequestError when floodgate says the call is
   * wrong (no such rule, a cost the rule can never admit, a concurrency rule).
   */
  async check({ rule, key, cost = 1, charge } = {}) {
    const payload = request(rule, key, cost);
    if (charge !== undefined) {
      if (typeof charge !== "boolean") throw new TypeError("charge must be true or false");
      payload.charge = charge;
    }
    try {
      return await this.#call("/v1/check", payload);
    } catch (error) {
      if (!(error instanceof FloodgateUnavailableError)) throw error;
      if (this.#onUnavailable) {
        // A failing logger must not turn an outage the app chose to ride
        // out into errors of its own.
        try {
          this.#onUnavailable(error);
        } catch {
          // ignored, as documented
        }
      }
      return fallback(this.onError, error);
    }
  }

  /**
   * Records `cost` units of `rule` against `key` whatever the limit says:
   * `POST /v1/charge`, the second step after `check({ ..., charge: false })`
   * for work that counts once its outcome is known. Resolves what the key
   * has left. onError does not apply: when floodgate cannot record the
   * charge this rejects with a FloodgateUnavailableError, so the caller
   * knows it was not counted.
   */
  async charge({ rule, key, cost = 1 } = {}) {
    return this.#call("/v1/charge", request(rule, key, cost));
  }

  /**
   * An express/connect middleware that asks floodgate about every request:
   * `RateLimit-Policy` and `RateLimit` headers, a 429 problem when refused,
   * onError when floodgate cannot decide. See middleware.js.
   */
  middleware(options) {
    return middleware(this, options);
  }

  /** Closes the idle connections of this client's own agent. */
  close() {
    if (this.#ownsAgent) this.agent.destroy();
  }

  async #call(path, payload) {
    const answer = await post(this.#base, this.agent, path, payload, this.timeoutMs);
    const json = parseJson(answer.body);
    if (answer.status === 200) {
      if (!isDecision(json)) {
        throw new FloodgateUnavailableError(
          `floodgate (${this.#base.origin}) answered 200 without a decision`,
          { reason: "answer", status: 200 },
        );
      }
      return json;
    }
    const problem = json && typeof json === "object" ? json : null;
    // 408 and 429 come from something in front of floodgate that is busy:
    // the call was right, and may succeed later.
    const status = answer.status;
    if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
      throw new FloodgateRequestError(status, problem);
    }
    const detail = problem && typeof problem.detail === "string" ? `: ${problem.detail}` : "";
    throw new FloodgateUnavailableError(
      `floodgate (${this.#base.origin}) answered ${status}${detail}`,
      { reason: status >= 400 ? "status" : "answer", status, problem },
    );
  }
}

/** The request body, checked here so a wrong type is a TypeError naming the member. */
function request(rule, key, cost) {
  if (typeof rule !== "string" || rule === "") {
    throw new TypeError("rule must be the name of one of floodgate's rules");
  }
  if (typeof key !== "string" || key === "") {
    throw new TypeError("key must be a non-empty string");
  }
  if (!Number.isSafeInteger(cost) || cost < 1) {
    throw new TypeError(`cost must be a whole number of at least 1, got ${cost}`);
  }
  return { rule, key, cost };
}

/** The decision onError makes, marked with the error that called for it. */
function fallback(onError, error) {
  const allowed = onError === "allow";
  return {
    allowed,
    limit: null,
    remaining: null,
    reset_after_ms: null,
    retry_after_ms: allowed ? null : DENY_RETRY_AFTER_MS,
    unavailable: error,
  };
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function isDecision(json) {
  return (
    json !== null &&
    typeof json === "object" &&
    typeof json.allowed === "boolean" &&
    typeof json.limit === "number" &&
    typeof json.remaining === "number" &&
    typeof json.reset_after_ms === "number" &&
    (json.retry_after_ms === null || typeof json.retry_after_ms === "number")
  );
}

module.exports = { Floodgate, DEFAULT_TIMEOUT_MS };
