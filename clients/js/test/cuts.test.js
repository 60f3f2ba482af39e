// A proxy cuts the client's connection at random every 200-600 ms while
// runs go on (CUT_TEST_MS, 60 s by default): every critical event arrives
// exactly once, in order, the same as a tab that was never cut. The
// application takes 25 ms per event, so a cut often lands while received
// events still wait to be processed: the resume then replays them, and the
// client must skip what it already delivered.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/index.js";
import { AgentServer, FaultProxy, contiguous, record, sleep, until } from "./support.js";

const DURATION = Number(process.env.CUT_TEST_MS ?? 60_000);

test("random cuts for the whole run: every critical event exactly once, in order", { timeout: DURATION + 90_000 }, async () => {
  const server = await AgentServer.start();
  const proxy = await FaultProxy.start(server.addr);
  const getToken = () => server.token("alice");
  const client = new Client({ urls: proxy.wsUrl, getToken, backoffBaseMs: 20, backoffMaxMs: 300 });
  const runner = new Client({ urls: server.wsUrl, getToken });
  const log = record(client, { processingMs: 25 });
  const truth = record(runner);
  try {
    client.connect();
    runner.connect();
    await until(() => client.state === "open" && runner.state === "open", "both open");
    const end = Date.now() + DURATION;
    let cuts = 0;
    const cutter = (async () => {
      while (Date.now() < end) {
        await sleep(200 + Math.random() * 400);
        proxy.cut();
        cuts += 1;
      }
    })();
    while (Date.now() < end) {
      runner.send({ type: "run", prompt: "under cuts" }); // past 4 at once: busy, fine
      await sleep(700);
    }
    await cutter;
    const started = () => truth.critical.filter((e) => e.type === "agent_started").length;
    const answered = () => truth.critical.filter((e) => e.type === "final_answer").length;
    await until(() => started() === answered(), "every run to end", 30_000);
    await until(() => log.critical.length >= truth.critical.length, "the client to catch up", 30_000);
    await sleep(500); // nothing more may come
    console.log(`cuts: ${cuts}, events: ${truth.critical.length}, connections: ${client.stats.connects}, replayed duplicates skipped: ${client.stats.duplicatesSkipped}`);
    assert.ok(truth.critical.length >= 60, `too few events to mean anything: ${truth.critical.length}`);
    assert.ok(client.stats.connects >= 20, `too few reconnects: ${client.stats.connects}`);
    assert.ok(contiguous(truth.critical) && truth.critical[0].sequence === 1);
    assert.equal(log.resyncs.length, 0, JSON.stringify(log.resyncs.slice(0, 3)));
    assert.deepEqual(log.critical, truth.critical, "exactly once, in order");
  } finally {
    client.close();
    runner.close();
    await proxy.stop();
    await server.kill();
  }
});
