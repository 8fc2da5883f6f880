"use strict";
// The errors of the client. Two kinds, because callers must treat them
// differently: a FloodgateRequestError is a mistake in the call (a rule
// floodgate does not have, a cost it can never admit) and retrying cannot
// help; a FloodgateUnavailableError means floodgate could not decide
// (unreachable, too slow, failing), which is what `onError` is for.

/** Base class of every error this client raises. */
class FloodgateError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * floodgate answered 4xx: the request was wrong. `status` is the HTTP
 * status, `problem` the problem+json body floodgate sent (null when the
 * answer was not JSON) and `detail` its words.
 */
class FloodgateRequestError extends FloodgateError {
  constructor(status, problem) {
    const detail =
      problem && typeof problem.detail === "string" ? problem.detail : `HTTP status ${status}`;
    super(`floodgate refused the request (${status}): ${detail}`);
    this.status = status;
    this.problem = problem;
    this.detail = detail;
    /** Retrying the same request gets the same answer. */
    this.retryable = false;
  }
}

/**
 * floodgate could not decide. `reason` says why: "timeout" (no answer
 * within timeoutMs), "connection" (refused, reset, unreachable), "status"
 * (a 5xx, e.g. 503 when floodgate's own store is down under on_error =
 * "deny"), "answer" (something answered that is not a decision). `status`
 * and `problem` are set when floodgate answered.
 */
class FloodgateUnavailableError extends FloodgateError {
  constructor(message, { reason, status = null, problem = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.reason = reason;
    this.status = status;
    this.problem = problem;
    /** The same request may succeed later. */
    this.retryable = true;
  }

  /** Whether floodgate did not answer within the client's timeoutMs. */
  get isTimeout() {
    return this.reason === "timeout";
  }
}

module.exports = { FloodgateError, FloodgateRequestError, FloodgateUnavailableError };
