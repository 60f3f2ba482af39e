// Two agent_server nodes on one redis-server; the node the client is on is
// killed mid-run: the client fails over to the other URL, resumes there, and
// gets every remaining event of the run once.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/index.js";
import { AgentServer, RUN, RedisServer, contiguous, record, until } from "./support.js";

test("two nodes on one Redis, one killed mid-run: the client fails over and gets every remaining event once", { timeout: 90_000 }, async () => {
  const redis = await RedisServer.start();
  const env = { AGENT_SERVER_JWT_SECRET: "a shared secret of the two nodes, 32+ bytes long" };
  const args = ["--redis", redis.url];
  const [a, b] = await Promise.all([AgentServer.start({ args, env }), AgentServer.start({ args, env })]);
  const options = { getToken: () => b.token("alice"), backoffBaseMs: 50, backoffMaxMs: 500 };
  // the client under test starts on node a, with b as its second URL
  const client = new Client({ ...options, urls: [a.wsUrl, b.wsUrl], thread: "alice:failover" });
  // the run is started from another tab of alice's, on node b, which lives on
  const runner = new Client({ ...options, urls: b.wsUrl });
  const log = record(client);
  const truth = record(runner);
  try {
    client.connect();
    runner.connect();
    await until(() => client.state === "open" && runner.state === "open", "both tabs open");
    assert.equal(client.url, a.wsUrl);
    runner.send({ type: "run", prompt: "failover" });
    await until(() => log.critical.length >= 2, "two events on node a");
    await a.kill();
    await until(() => truth.critical.some((e) => e.type === "final_answer"), "the run's end on node b");
    await until(() => log.critical.length >= truth.critical.length && client.state === "open", "the client catching up on b");
    assert.equal(client.url, b.wsUrl, "the client moved to the other URL");
    assert.ok(log.disconnects.length >= 1, "the client saw node a go");
    assert.deepEqual(truth.critical.map((e) => e.type), RUN);
    assert.deepEqual(log.critical, truth.critical, "every event once, in order, the same as the tab that never moved");
    assert.ok(contiguous(log.critical));
    assert.equal(log.resyncs.length, 0, JSON.stringify(log.resyncs));
  } finally {
    client.close();
    runner.close();
    await Promise.all([a.kill(), b.kill()]);
    await redis.stop();
  }
});
