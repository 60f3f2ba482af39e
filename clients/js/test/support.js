// Test helpers: the real `agent_server` binary, a real `redis-server`, and a
// TCP proxy that can cut or black-hole connections. Nothing is mocked.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The example binary: `AGENT_SERVER_BIN`, or cargo's debug build (run-tests.sh builds it). */
export function agentServerBinary() {
  const binary = process.env.AGENT_SERVER_BIN ?? resolve(repo, "target/debug/examples/agent_server");
  if (!existsSync(binary)) {
    throw new Error(`${binary} is missing: run \`cargo build --example agent_server\` (clients/js/run-tests.sh does)`);
  }
  return binary;
}

/** A free TCP port on 127.0.0.1 (bound, then released). */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  server.close();
  await once(server, "close");
  return port;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until `predicate()` is truthy; fails with `what` after `ms`.
 * @template T
 * @param {() => T} predicate
 */
export async function until(predicate, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** A running `agent_server --demo`. */
export class AgentServer {
  /**
   * @param {{port?: number, args?: string[], env?: Record<string, string>}} [options]
   * @returns {Promise<AgentServer>}
   */
  static async start(options = {}) {
    const child = spawn(
      agentServerBinary(),
      ["--demo", "--port", String(options.port ?? 0), ...(options.args ?? [])],
      {
        env: { ...process.env, RUST_LOG: "warn", ...(options.env ?? {}) },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stderr = "";
    child.stderr.on("data", (chunk) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    const lines = createInterface({ input: child.stdout });
    const addr = await new Promise((resolveAddr, reject) => {
      const timer = setTimeout(() => reject(new Error(`agent_server did not start: ${stderr}`)), 60_000);
      child.on("exit", (code) => reject(new Error(`agent_server exited (${code}): ${stderr}`)));
      lines.on("line", (line) => {
        const match = /^agent server listening on http:\/\/([^/]+)\//.exec(line);
        if (match) {
          clearTimeout(timer);
          resolveAddr(match[1]);
        }
      });
    });
    // A cluster node listens before it has joined (503 `starting` until
    // then): wait for /ready, as a load balancer would.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const status = await fetch(`http://${addr}/ready`).then((r) => r.status, () => 0);
      if (status === 200) break;
      if (Date.now() > deadline) throw new Error(`agent_server never became ready: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return new AgentServer(child, addr);
  }

  /** @param {import("node:child_process").ChildProcess} child @param {string} addr */
  constructor(child, addr) {
    this.child = child;
    this.addr = addr;
    this.port = Number(addr.split(":").pop());
  }

  /** The WebSocket endpoint. */
  get wsUrl() {
    return `ws://${this.addr}/ws`;
  }

  /** A demo token for `user`, living `ttlSeconds` (15 min by default). */
  async token(user, ttlSeconds) {
    const body = { user, ...(ttlSeconds ? { ttl_seconds: ttlSeconds } : {}) };
    const response = await fetch(`http://${this.addr}/demo-token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`demo token: ${response.status} ${await response.text()}`);
    return (await response.json()).token;
  }

  /** SIGKILL: no shutdown, no close frame, state gone. */
  async kill() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGKILL");
    await once(this.child, "exit");
  }
}

/**
 * A `redis-server` on a free port, for the cluster tests. With
 * `persistent`, it snapshots only when told (`save()`), and `restart()`
 * brings it back from that snapshot: what it acknowledged since is lost,
 * as after a failover under asynchronous replication.
 */
export class RedisServer {
  /** @param {{persistent?: boolean}} [options] */
  static async start(options = {}) {
    const port = await freePort();
    const dir = options.persistent ? mkdtempSync(resolve(tmpdir(), "wsm-js-redis-")) : null;
    const server = new RedisServer(port, dir);
    await server.spawn();
    return server;
  }

  constructor(port, dir) {
    this.port = port;
    this.dir = dir;
    this.url = `redis://127.0.0.1:${port}`;
    /** @type {import("node:child_process").ChildProcess | null} */ this.child = null;
  }

  /** @private */
  async spawn() {
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    if (this.dir) args.push("--dir", this.dir, "--dbfilename", "dump.rdb");
    const child = spawn(process.env.REDIS_SERVER ?? "redis-server", args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const lines = createInterface({ input: /** @type {import("node:stream").Readable} */ (child.stdout) });
    await new Promise((resolveReady, reject) => {
      const timer = setTimeout(() => reject(new Error("redis-server did not start")), 20_000);
      child.on("error", reject);
      lines.on("line", (line) => {
        if (line.includes("Ready to accept connections")) {
          clearTimeout(timer);
          resolveReady(undefined);
        }
      });
    });
  }

  /** Writes the snapshot a `restart()` comes back with (`SAVE`). */
  async save() {
    const socket = net.connect(this.port, "127.0.0.1");
    await once(socket, "connect");
    socket.write("*1\r\n$4\r\nSAVE\r\n");
    const [reply] = await once(socket, "data");
    socket.destroy();
    if (!String(reply).startsWith("+OK")) throw new Error(`SAVE answered ${reply}`);
  }

  /** SIGKILL, then the same port again, from the last `save()`. */
  async restart() {
    await this.kill();
    await this.spawn();
  }

  /** @private */
  async kill() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGKILL");
    await once(child, "exit");
  }

  async stop() {
    await this.kill();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy in front of `target` (host:port). `blackhole()` stops
 * forwarding on every open connection while keeping its sockets open (a
 * dropped NAT entry); `cut()` resets every open connection (RST). New
 * connections are forwarded normally.
 */
export class FaultProxy {
  /** @param {string} target */
  static async start(target) {
    const proxy = new FaultProxy(target);
    proxy.server.listen(0, "127.0.0.1");
    await once(proxy.server, "listening");
    proxy.port = /** @type {net.AddressInfo} */ (proxy.server.address()).port;
    return proxy;
  }

  constructor(target) {
    const [host, port] = target.split(":");
    /** @type {Set<{client: net.Socket, upstream: net.Socket, holed: boolean}>} */
    this.pairs = new Set();
    this.connections = 0;
    this.server = net.createServer((client) => {
      this.connections += 1;
      const upstream = net.connect(Number(port), host);
      const pair = { client, upstream, holed: false };
      this.pairs.add(pair);
      const forward = (from, to) =>
        from.on("data", (chunk) => {
          if (!pair.holed) to.write(chunk);
        });
      forward(client, upstream);
      forward(upstream, client);
      const end = () => {
        if (pair.holed) return; // a black hole says nothing, ever
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("close", end);
      upstream.on("close", end);
      client.on("error", () => {});
      upstream.on("error", () => {});
    });
    this.port = 0;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Stops forwarding on every open connection, without closing anything. */
  blackhole() {
    for (const pair of this.pairs) pair.holed = true;
  }

  /** Resets every open connection. */
  cut() {
    for (const pair of [...this.pairs]) {
      if (pair.holed) continue;
      this.pairs.delete(pair);
      pair.client.resetAndDestroy();
      pair.upstream.resetAndDestroy();
    }
  }

  async stop() {
    for (const pair of this.pairs) {
      pair.client.destroy();
      pair.upstream.destroy();
    }
    this.pairs.clear();
    await new Promise((r) => this.server.close(r));
  }
}

/**
 * Records what a client delivers: critical events as "stream:sequence:type",
 * resync notices, disconnects, hellos, refreshes, errors.
 * @param {import("../src/index.js").Client} client
 */
export function record(client, { processingMs = 0 } = {}) {
  const log = { critical: [], resyncs: [], disconnects: [], hellos: [], refreshed: [], errors: [], busy: 0, states: [] };
  client.on("critical", async (event) => {
    // An application that takes time per event: frames pile up behind it,
    // so a reconnect may replay some of what was received but not processed.
    if (processingMs) await sleep(processingMs);
    log.critical.push({ stream: event.stream, sequence: event.sequence, type: event.type, run: event.data?.run_id });
  });
  client.on("resync", (notice) => {
    log.resyncs.push({ notice, afterCritical: log.critical.length });
  });
  client.on("disconnect", (close) => log.disconnects.push({ ...close, at: Date.now() }));
  client.on("hello", (hello) => log.hellos.push(hello));
  client.on("token_refreshed", (frame) => log.refreshed.push(frame));
  client.on("error", (error) => log.errors.push(error));
  client.on("busy", () => {
    log.busy += 1;
  });
  client.on("state", ({ state }) => log.states.push(state));
  return log;
}

/** The agent's events of one run, in order. */
export const RUN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed", "final_answer"];

/**
 * Asserts that `events` (of one stream) are exactly 1..n, each once: no gap,
 * no repeat, no reordering.
 */
export function contiguous(events) {
  return events.every((event, i) => event.sequence === events[0].sequence + i);
}
