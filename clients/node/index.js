"use strict";
// floodgate-client: ask a floodgate server whether work may go ahead, from
// Node.js, through its decision API (POST /v1/check).
//
// - lib/floodgate.js   the Floodgate client: check(), charge(), the onError decision
// - lib/middleware.js  the express/connect middleware: RateLimit headers, 429, 503
// - lib/transport.js   one JSON POST over a keep-alive connection, under a deadline
// - lib/errors.js      FloodgateRequestError (the call is wrong), FloodgateUnavailableError (no decision)

const { Floodgate } = require("./lib/floodgate");
const {
  FloodgateError,
  FloodgateRequestError,
  FloodgateUnavailableError,
} = require("./lib/errors");

module.exports = { Floodgate, FloodgateError, FloodgateRequestError, FloodgateUnavailableError };
