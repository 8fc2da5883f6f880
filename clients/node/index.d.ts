// Type declarations of floodgate-client.

import type { Agent, IncomingMessage, ServerResponse } from "node:http";

/** floodgate's answer to `POST /v1/check` or `POST /v1/charge`. */
export interface Decision {
  /** Whether the cost was taken (always true for a shadow rule). */
  allowed: boolean;
  /** The rule's limit. */
  limit: number;
  /** Units that could still be taken now. */
  remaining: number;
  /** Milliseconds until the key's quota is entirely restored. */
  reset_after_ms: number;
  /** Refused: milliseconds until a retry of the same cost can succeed; admitted: null. */
  retry_after_ms: number | null;
  /** Whether the key is under a penalty block of the rule. */
  blocked: boolean;
  /** The window the key is counted over (its override's, else the rule's), in milliseconds. */
  window_ms: number | null;
  unavailable?: undefined;
}

/** The decision `onError` made because floodgate could not give one. */
export interface FallbackDecision {
  /** true under onError "allow", false under "deny". */
  allowed: boolean;
  limit: null;
  remaining: null;
  reset_after_ms: null;
  /** null under "allow"; 1000 under "deny", as floodgate's own 503 says Retry-After: 1. */
  retry_after_ms: number | null;
  blocked?: undefined;
  window_ms?: undefined;
  /** Why floodgate could not decide. */
  unavailable: FloodgateUnavailableError;
}

export interface FloodgateOptions {
  /** floodgate's main listener, e.g. "http://127.0.0.1:8080" (a path prefix is kept). */
  url: string | URL;
  /** The longest a decision may take, connection included. Default 100. */
  timeoutMs?: number;
  /** The decision when floodgate is down, too slow or failing. Default "allow". */
  onError?: "allow" | "deny";
  /** Told each time onError decided, e.g. to log or count it; what it throws is ignored. */
  onUnavailable?: (error: FloodgateUnavailableError) => void;
  /** The agent to connect with. Default: a keep-alive agent of the client's own. */
  agent?: Agent;
}

export interface CheckOptions {
  /** The rule's name in floodgate's config. */
  rule: string;
  /** The key to count on: any non-empty string. */
  key: string;
  /** Units to take. Default 1. */
  cost?: number;
  /** false: only ask whether cost fits (charge later with charge()). Default: floodgate's (take it). */
  charge?: boolean;
}

export interface ChargeOptions {
  rule: string;
  key: string;
  cost?: number;
}

/** A request as express and connect hand it on: Node's, with what they add (`req.ip`, `req.get`, ...). */
export type AppRequest = IncomingMessage & { [added: string]: any };

export interface MiddlewareOptions<Req extends IncomingMessage = AppRequest> {
  /** The rule's name in floodgate's config. */
  rule: string;
  /** The key to count on, or a function of the request; no key (undefined, null, "") → the rule does not apply. */
  key: string | number | ((req: Req) => string | number | undefined | null | Promise<string | number | undefined | null>);
  /** Units per request, or a function of the request. Default 1. */
  cost?: number | ((req: Req) => number | Promise<number>);
}

export type Middleware<Req extends IncomingMessage = AppRequest> = (
  req: Req,
  res: ServerResponse,
  next: (error?: unknown) => void,
) => void;

export class Floodgate {
  constructor(options: FloodgateOptions);
  readonly timeoutMs: number;
  readonly onError: "allow" | "deny";
  readonly agent: Agent;
  /**
   * Decides cost units of rule for key. Resolves floodgate's answer
   * (refusals included), or the onError decision when floodgate cannot
   * decide. Rejects with FloodgateRequestError when the call is wrong.
   */
  check(options: CheckOptions): Promise<Decision | FallbackDecision>;
  /**
   * Records cost units whatever the limit says. Rejects with
   * FloodgateUnavailableError when floodgate cannot record it (onError does not apply).
   */
  charge(options: ChargeOptions): Promise<Decision>;
  /** An express/connect middleware answering as floodgate's gateway does. */
  middleware<Req extends IncomingMessage = AppRequest>(options: MiddlewareOptions<Req>): Middleware<Req>;
  /** Closes the idle connections of the client's own agent. */
  close(): void;
}

export class FloodgateError extends Error {}

/** floodgate answered 4xx: the call is wrong; retrying cannot help. */
export class FloodgateRequestError extends FloodgateError {
  readonly status: number;
  /** floodgate's problem+json body, or null when the answer was not JSON. */
  readonly problem: { detail?: string; status?: number; title?: string; type?: string; [member: string]: unknown } | null;
  readonly detail: string;
  readonly retryable: false;
}

/** floodgate could not decide. */
export class FloodgateUnavailableError extends FloodgateError {
  readonly reason: "timeout" | "connection" | "status" | "answer";
  /** The HTTP status when floodgate (or something in front of it) answered. */
  readonly status: number | null;
  readonly problem: { [member: string]: unknown } | null;
  readonly retryable: true;
  readonly isTimeout: boolean;
}
