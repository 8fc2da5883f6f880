"use strict";
// What the tests run against: the real floodgate binary on free ports, an
// app server, a port nobody listens on, and a server that accepts
// connections and never answers. Kept outside test/, where `node --test`
// would run it as a test file.

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");

/** The binary under test: FLOODGATE_BIN, else the workspace's debug build. */
const FLOODGATE_BIN =
  process.env.FLOODGATE_BIN || path.resolve(__dirname, "../../../target/debug/floodgate");

/** How long floodgate may take to listen: a busy two-core machine can be slow. */
const START_DEADLINE_MS = 60_000;

/** A loopback port nobody listened on a moment ago. */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** `http://127.0.0.1:<port>` of a port that refuses connections. */
async function closedPortUrl() {
  return `http://127.0.0.1:${await freePort()}`;
}

/**
 * Starts `floodgate serve` with `[server]` and `[admin]` on free ports and
 * `config` (TOML: rules, a [store] section) after them; resolves once both
 * listeners accept. Fails with a clear message when the binary is missing.
 * Tries other ports when another process took one before floodgate bound it.
 */
async function startFloodgate(config) {
  if (!fs.existsSync(FLOODGATE_BIN)) {
    throw new Error(
      `the floodgate binary is not at ${FLOODGATE_BIN}: build it with ` +
        '"cargo build -p floodgate-server" or point FLOODGATE_BIN at it',
    );
  }
  let lastLog = "";
  for (let attempt = 0; attempt < 5; attempt++) {
    const [port, adminPort] = [await freePort(), await freePort()];
    if (port === adminPort) continue;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "floodgate-node-"));
    const file = path.join(dir, "floodgate.toml");
    fs.writeFileSync(
      file,
      `[server]\nlisten = "127.0.0.1:${port}"\n[admin]\nlisten = "127.0.0.1:${adminPort}"\n${config}`,
    );
    const logPath = path.join(dir, "stderr.log");
    const log = fs.openSync(logPath, "w");
    const env = { ...process.env, FLOODGATE_LOG: "info" };
    for (const name of [
      "FLOODGATE_CONFIG",
      "FLOODGATE_REDIS_URL",
      "FLOODGATE_ADMIN_LISTEN",
      "FLOODGATE_ADMIN_TOKEN",
      "NOTIFY_SOCKET",
    ]) {
      delete env[name];
    }
    const child = spawn(FLOODGATE_BIN, ["serve", "--config", file], {
      stdio: ["ignore", "ignore", log],
      env,
    });
    fs.closeSync(log);
    const killOnExit = () => child.kill("SIGKILL");
    process.once("exit", killOnExit);
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    const readLog = () => fs.readFileSync(logPath, "utf8");
    let ready;
    try {
      ready = await Promise.race([
        listening(port, adminPort).then(() => true),
        exited.then(() => false),
      ]);
    } catch (error) {
      child.kill("SIGKILL");
      process.removeListener("exit", killOnExit);
      throw new Error(`${error.message}\n${readLog()}`);
    }
    if (ready) {
      return {
        url: `http://127.0.0.1:${port}`,
        adminUrl: `http://127.0.0.1:${adminPort}`,
        log: readLog,
        async stop() {
          process.removeListener("exit", killOnExit);
          if (child.exitCode === null && child.signalCode === null) {
            child.kill("SIGTERM");
            const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
            await exited;
            clearTimeout(timer);
          }
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    process.removeListener("exit", killOnExit);
    lastLog = readLog();
    fs.rmSync(dir, { recursive: true, force: true });
    if (!lastLog.includes("Address already in use")) {
      throw new Error(`floodgate exited before listening:\n${lastLog}`);
    }
  }
  throw new Error(`floodgate found no free port in five tries:\n${lastLog}`);
}

/** Resolves once both ports accept a connection; rejects after START_DEADLINE_MS. */
async function listening(...ports) {
  const deadline = Date.now() + START_DEADLINE_MS;
  for (const port of ports) {
    while (!(await accepts(port))) {
      if (Date.now() > deadline) {
        throw new Error(`nothing listened on 127.0.0.1:${port} within ${START_DEADLINE_MS} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

function accepts(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * A TCP server that accepts every connection and never answers: floodgate
 * hung, or a network that swallows packets. `close()` drops its connections.
 */
async function silentServer() {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Connections accepted so far. */
    get connections() {
      return sockets.size;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Serves `handler` (an express app, or any request listener) on a free loopback port. */
async function serve(handler) {
  const server = http.createServer(handler);
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Resolves the time `fn` took, in ms, and what it resolved. */
async function timed(fn) {
  const start = performance.now();
  const value = await fn();
  return { ms: performance.now() - start, value };
}

module.exports = {
  FLOODGATE_BIN,
  closedPortUrl,
  freePort,
  serve,
  silentServer,
  startFloodgate,
  timed,
};
