// The network goes silent without closing (a TCP proxy stops forwarding and
// keeps both sockets open): the client finds it by the protocol's heartbeat
// within heartbeat_ms + grace, reconnects and resumes; nothing is lost.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/index.js";
import { AgentServer, FaultProxy, RUN, contiguous, record, until } from "./support.js";

test("a black-holed link is found by the heartbeat within its bound, and the run arrives whole", { timeout: 60_000 }, async () => {
  const server = await AgentServer.start({ args: ["--ping-interval-ms", "1000"] });
  const proxy = await FaultProxy.start(server.addr);
  const grace = 1000;
  const client = new Client({
    urls: proxy.wsUrl,
    getToken: () => server.token("alice"),
    heartbeatGraceMs: grace,
    backoffBaseMs: 50,
    backoffMaxMs: 500,
  });
  const log = record(client);
  try {
    client.connect();
    await until(() => client.state === "open", "open");
    assert.equal(client.hello?.heartbeat_ms, 1000);
    client.send({ type: "run", prompt: "black hole" });
    await until(() => log.critical.length >= 2, "two events");
    proxy.blackhole();
    const cutAt = Date.now();
    await until(() => log.disconnects.length >= 1, "the client declaring the link dead", 15_000);
    const found = log.disconnects[0];
    assert.equal(found.code, 4000, JSON.stringify(found));
    assert.match(found.reason, /no frame from the server within 2000 ms/);
    const bound = 1000 + grace;
    // at most one heartbeat period plus the grace after the last frame, and
    // the last frame came before the cut (slack for a loaded machine)
    assert.ok(found.at - cutAt <= bound + 3000, `found after ${found.at - cutAt} ms, bound ${bound} ms`);
    await until(() => log.critical.some((e) => e.type === "final_answer"), "the final answer after the reconnect");
    assert.deepEqual(log.critical.map((e) => e.type), RUN, JSON.stringify(log.critical));
    assert.ok(contiguous(log.critical));
    assert.equal(log.resyncs.length, 0);
    assert.equal(client.stats.hellos, 2);
  } finally {
    client.close();
    await proxy.stop();
    await server.kill();
  }
});
