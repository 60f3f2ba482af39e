// A server killed with SIGKILL mid-run and restarted on the same port: the
// client reconnects by itself, resumes with its offset, and (the in-memory
// manager forgot everything) shows the `unknown_stream` resync before any
// event of the new stream; never a silent fresh start.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/index.js";
import { AgentServer, RUN, contiguous, freePort, record, sleep, until } from "./support.js";

test("SIGKILL mid-run and a restart on the same port: the client resumes and announces the unknown_stream resync", { timeout: 90_000 }, async () => {
  const port = await freePort();
  let server = await AgentServer.start({ port });
  const client = new Client({
    urls: server.wsUrl,
    getToken: () => server.token("alice"), // the restarted server has a new demo secret
    thread: "alice:restart",
    backoffBaseMs: 50,
    backoffMaxMs: 500,
  });
  const log = record(client);
  // The application reloads its state on the notice, and the events that
  // follow wait for it ("reload your state, then go on").
  let reloading = false;
  const deliveredDuringReload = [];
  client.on("resync", async () => {
    reloading = true;
    await sleep(800);
    reloading = false;
  });
  client.on("critical", (event) => {
    if (reloading) deliveredDuringReload.push(event);
  });
  try {
    client.connect();
    await until(() => client.state === "open", "the first hello");
    client.send({ type: "run", prompt: "before the crash" });
    await until(() => log.critical.length >= 2, "two events of the first run");
    await server.kill();
    const before = log.critical.length;
    const oldStream = log.critical[0].stream;
    assert.ok(contiguous(log.critical) && log.critical[0].sequence === 1, JSON.stringify(log.critical));

    // start the next run as soon as the client is back: its events arrive
    // while the application still reloads
    const off = client.on("hello", () => {
      off();
      client.send({ type: "run", prompt: "after the restart" });
    });
    server = await AgentServer.start({ port });
    await until(() => log.resyncs.length === 1, "the resync notice after the restart");
    const { notice, afterCritical } = log.resyncs[0];
    assert.equal(notice.reason, "unknown_stream", JSON.stringify(notice));
    assert.deepEqual(notice.requested, { stream: oldStream, sequence: log.critical[afterCritical - 1].sequence });
    assert.notEqual(notice.latest.stream, oldStream);
    assert.equal(afterCritical, before, "the notice comes before any event of the new stream");
    assert.ok(log.disconnects.length >= 1 && log.disconnects.every((d) => d.action === "backoff"), JSON.stringify(log.disconnects));

    // The client goes on: the new run arrives whole, on the new stream,
    // after the reload.
    await until(() => log.critical.some((e) => e.stream !== oldStream && e.type === "final_answer"), "the new run's answer");
    const after = log.critical.slice(before);
    assert.deepEqual(after.map((e) => e.type), RUN, JSON.stringify(after));
    assert.ok(contiguous(after) && after[0].sequence === 1, JSON.stringify(after));
    assert.ok(after.every((e) => e.stream === notice.latest.stream));
    assert.equal(client.offset?.stream, notice.latest.stream, "the client went on on the new stream");
    assert.deepEqual(deliveredDuringReload, [], "nothing delivered while the application reloaded");
    assert.equal(client.stats.hellos, 2);
  } finally {
    client.close();
    await server.kill();
  }
});

test("a server shut down cleanly closes with 1001: the client backs off, reconnects when it is back, and skips a dead URL", { timeout: 60_000 }, async () => {
  const port = await freePort();
  const nobody = await freePort(); // nothing listens there
  let server = await AgentServer.start({ port });
  const client = new Client({
    urls: [`ws://127.0.0.1:${nobody}/ws`, server.wsUrl],
    getToken: () => server.token("alice"),
    backoffBaseMs: 50,
    backoffMaxMs: 500,
  });
  const log = record(client);
  try {
    client.connect();
    await until(() => client.state === "open", "open through the second URL");
    assert.equal(client.url, server.wsUrl);
    assert.equal(log.disconnects[0]?.beforeHello, true, JSON.stringify(log.disconnects));
    const before = log.disconnects.length;
    server.child.kill("SIGINT"); // the example's graceful shutdown: 1001 to every socket
    await until(() => log.disconnects.length > before, "the shutdown's close");
    const shutdown = log.disconnects[before];
    assert.equal(shutdown.code, 1001, JSON.stringify(shutdown));
    assert.equal(shutdown.action, "backoff");
    await until(() => server.child.exitCode !== null, "the server to exit");
    server = await AgentServer.start({ port });
    await until(() => client.state === "open" && client.stats.hellos === 2, "open again", 30_000);
  } finally {
    client.close();
    await server.kill();
  }
});
