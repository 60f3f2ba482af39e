// Tokens: refreshed in-band before they expire (no reconnect, no event
// lost); a refresh with another user's token refused; a token left to
// expire ends the connection with 4401 and the client comes back with a new
// one and its offset.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/index.js";
import { AgentServer, RUN, contiguous, record, sleep, until } from "./support.js";

const runs = (n) => Array.from({ length: n }, () => RUN).flat();

test("a token that expires mid-run is refreshed in-band: no reconnect, no event lost", { timeout: 60_000 }, async () => {
  const server = await AgentServer.start();
  const client = new Client({ urls: server.wsUrl, getToken: () => server.token("alice", 4) });
  const log = record(client);
  try {
    client.connect();
    await until(() => client.state === "open", "open");
    const firstDeadline = client.hello?.token_expires_at;
    assert.ok(typeof firstDeadline === "number", JSON.stringify(client.hello));
    for (let run = 1; run <= 2; run++) {
      client.send({ type: "run", prompt: `run ${run}` });
      await until(() => log.critical.filter((e) => e.type === "final_answer").length === run, `run ${run}'s answer`);
    }
    assert.ok(Date.now() > firstDeadline + 1000, "the connection outlived its first token");
    assert.ok(log.refreshed.length >= 2, JSON.stringify(log.refreshed));
    assert.equal(log.hellos.length, 1, "one connection all along");
    assert.deepEqual(log.disconnects, []);
    assert.deepEqual(log.critical.map((e) => e.type), runs(2));
    assert.ok(contiguous(log.critical));
  } finally {
    client.close();
    await server.kill();
  }
});

test("a refresh with another user's token is refused and the connection keeps working", { timeout: 30_000 }, async () => {
  const server = await AgentServer.start();
  let user = "alice";
  const client = new Client({ urls: server.wsUrl, getToken: () => server.token(user) });
  const log = record(client);
  try {
    client.connect();
    await until(() => client.state === "open", "open");
    user = "bob";
    await assert.rejects(client.refreshToken(), (error) => {
      assert.equal(error.frame?.code, "token_refresh_refused");
      assert.equal(error.frame?.detail, "other user");
      return true;
    });
    assert.ok(log.errors.some((e) => e.code === "token_refresh_refused"), JSON.stringify(log.errors));
    assert.equal(log.refreshed.length, 0);
    // still alice's connection, still open
    client.send({ type: "run", prompt: "still alice" });
    await until(() => log.critical.some((e) => e.type === "final_answer"), "the run's answer");
    assert.deepEqual(log.critical.map((e) => e.type), RUN);
    assert.deepEqual(log.disconnects, []);
    assert.equal(client.hello?.user, "alice");
  } finally {
    client.close();
    await server.kill();
  }
});

test("a token left to expire: closed with 4401, back with a new token and the offset, nothing lost", { timeout: 60_000 }, async () => {
  const server = await AgentServer.start();
  let tokens = 0;
  const client = new Client({
    urls: server.wsUrl,
    getToken: () => {
      tokens += 1;
      return server.token("alice", 2);
    },
    refreshRatio: 10, // refresh long after the deadline: the server's 4401 comes first
    backoffBaseMs: 50,
  });
  const log = record(client);
  try {
    client.connect();
    await until(() => client.state === "open", "open");
    client.send({ type: "run", prompt: "expiring" });
    await until(() => log.critical.some((e) => e.type === "final_answer"), "the run's answer");
    const expired = log.disconnects.filter((d) => d.code === 4401);
    assert.ok(expired.length >= 1, JSON.stringify(log.disconnects));
    assert.ok(expired.every((d) => d.action === "token"));
    assert.ok(tokens >= 2, "a new token for each reconnect after 4401");
    assert.deepEqual(log.critical.map((e) => e.type), RUN);
    assert.ok(contiguous(log.critical));
    assert.equal(log.resyncs.length, 0);
  } finally {
    client.close();
    await server.kill();
  }
});

test("a token close to its deadline is replaced before a connection attempt, not sent to be refused", { timeout: 30_000 }, async () => {
  const server = await AgentServer.start();
  let tokens = 0;
  const client = new Client({
    urls: server.wsUrl,
    getToken: () => {
      tokens += 1;
      return server.token("alice", 2);
    },
    refreshRatio: 10, // no in-band refresh: the connection is closed first
  });
  const log = record(client);
  try {
    client.connect();
    await until(() => client.state === "open", "open");
    client.close();
    await sleep(2500); // the token has expired
    client.connect();
    await until(() => client.state === "open", "open again");
    assert.equal(tokens, 2);
    assert.equal(client.stats.connects, 2, "no attempt with the expired token");
    assert.deepEqual(log.disconnects, []);
  } finally {
    client.close();
    await server.kill();
  }
});
