// The case only the client can see (docs/protocol.md, section 4.1): a tab
// that was connected nowhere while Redis lost events, and comes back after
// new events were numbered over the offsets it saw. Its resume carries the
// print of its last event, the server finds another event at that offset,
// and the tab is told (`unknown_stream`) instead of silently taking the new
// events as ones it had seen.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, MemoryOffsetStore } from "../src/index.js";
import { AgentServer, RUN, RedisServer, record, until } from "./support.js";

test("Redis back from an older snapshot while a tab was away: its resume's print tells it", { timeout: 90_000 }, async () => {
  const redis = await RedisServer.start({ persistent: true });
  const server = await AgentServer.start({ args: ["--redis", redis.url] });
  const store = new MemoryOffsetStore();
  const options = { urls: server.wsUrl, getToken: () => server.token("alice"), backoffBaseMs: 50, backoffMaxMs: 500 };
  const tab = new Client({ ...options, store, user: "alice", thread: "alice:away" });
  const log = record(tab);
  /** @type {Client | null} */ let runner = null;
  /** @type {Client | null} */ let back = null;
  try {
    tab.connect();
    await until(() => tab.state === "open", "the first hello");
    tab.send({ type: "run", prompt: "kept" });
    await until(() => log.critical.length === RUN.length, "the first run");
    await redis.save(); // Redis will come back with the first run only
    tab.send({ type: "run", prompt: "lost" });
    await until(() => log.critical.length === 2 * RUN.length, "the second run");
    const seen = tab.offset;
    assert.ok(seen && seen.print && seen.sequence === 2 * RUN.length, JSON.stringify(seen));
    tab.close(); // the tab goes away with its offset and print stored

    await redis.restart(); // the second run is gone; the stream is the same
    // Another tab runs meanwhile: its events take the lost offsets again.
    runner = new Client({ ...options, store: new MemoryOffsetStore(), thread: "alice:runner" });
    const truth = record(runner);
    runner.connect();
    await until(() => runner?.state === "open", "the runner's hello once the node is back");
    runner.send({ type: "run", prompt: "numbered again" });
    await until(() => truth.critical.length === RUN.length, "the third run");
    assert.deepEqual(
      truth.critical.map((e) => [e.stream, e.sequence]),
      RUN.map((_, i) => [seen.stream, RUN.length + i + 1]),
      "the third run took the offsets of the lost one",
    );

    back = new Client({ ...options, store, user: "alice", thread: "alice:away" });
    const backLog = record(back);
    back.connect();
    await until(() => backLog.resyncs.length === 1, "the resync notice");
    assert.deepEqual(back.resumedFrom, seen, "the resume carried the print");
    const { notice, afterCritical } = backLog.resyncs[0];
    assert.equal(notice.reason, "unknown_stream", JSON.stringify(notice));
    assert.deepEqual(notice.requested, { stream: seen.stream, sequence: seen.sequence });
    assert.notEqual(notice.latest.stream, seen.stream, "the stream was retired");
    assert.equal(afterCritical, 0, "no event before the notice");
    // It goes on on the new stream.
    back.send({ type: "run", prompt: "after" });
    await until(() => backLog.critical.length === RUN.length, "a run on the new stream");
    assert.ok(backLog.critical.every((e) => e.stream === notice.latest.stream), JSON.stringify(backLog.critical));
    assert.equal(backLog.critical[0].sequence, 1);
  } finally {
    tab.close();
    runner?.close();
    back?.close();
    await server.kill();
    await redis.stop();
  }
});
