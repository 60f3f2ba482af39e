// The client's pure parts: backoff bounds, the close-code table, offsets,
// stores. The behaviour over sockets is in the other test files, against
// the real agent_server.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Client,
  CLOSE_CODES,
  DEFAULTS,
  MemoryOffsetStore,
  WebStorageOffsetStore,
  backoffDelay,
  closeAction,
  defaultOffsetStore,
  eventPrint,
  formatOffset,
  offsetKey,
  parseOffset,
} from "../src/index.js";

test("full-jitter backoff stays within [0, min(max, base * 2^attempt)]", () => {
  const bounds = { baseMs: 500, maxMs: 20_000 };
  // the top of the range: a source that returns just under 1
  const top = () => 0.999999;
  assert.equal(backoffDelay(0, bounds, top), 499);
  assert.equal(backoffDelay(1, bounds, top), 999);
  assert.equal(backoffDelay(5, bounds, top), 15_999);
  assert.equal(backoffDelay(6, bounds, top), 19_999);
  assert.equal(backoffDelay(1000, bounds, top), 19_999);
  assert.equal(backoffDelay(3, bounds, () => 0), 0);
  // the defaults are centrifuge-js's 500 ms to 20 s
  assert.equal(DEFAULTS.backoffBaseMs, 500);
  assert.equal(DEFAULTS.backoffMaxMs, 20_000);
  for (let i = 0; i < 1000; i++) {
    const delay = backoffDelay(i % 8, { baseMs: 10, maxMs: 300 });
    assert.ok(delay >= 0 && delay < Math.min(300, 10 * 2 ** (i % 8)), String(delay));
  }
});

test("the close-code table of docs/protocol.md, section 7", () => {
  const expected = {
    1000: "stop",
    1001: "backoff",
    1002: "stop",
    1003: "stop",
    1006: "backoff",
    1007: "stop",
    1009: "backoff",
    1011: "backoff",
    1012: "now",
    1013: "backoff",
    4000: "backoff",
    4401: "token",
    4408: "backoff",
    4409: "backoff",
  };
  for (const [code, action] of Object.entries(expected)) {
    assert.equal(closeAction(Number(code)), action, `close ${code}`);
    assert.equal(CLOSE_CODES[code], action);
  }
  // 1008: only the slow-consumer close is retried (nothing is lost)
  assert.equal(closeAction(1008, "slow consumer: outbound queue full"), "backoff");
  assert.equal(closeAction(1008, "message rate exceeded"), "backoff");
  assert.equal(closeAction(1008, "per-user connection limit reached"), "stop");
  assert.equal(closeAction(1008, "connection refused: isolation violation"), "stop");
  assert.equal(closeAction(1008, "too many invalid messages"), "stop");
  // unknown codes: like 1011
  assert.equal(closeAction(4999), "backoff");
  assert.equal(closeAction(2999), "backoff");
});

test("offsets round-trip as stream:sequence, and anything else is refused", () => {
  assert.deepEqual(parseOffset("1767225000000042:7"), { stream: 1767225000000042, sequence: 7 });
  assert.equal(formatOffset({ stream: 1767225000000042, sequence: 7 }), "1767225000000042:7");
  for (const bad of [null, undefined, "", "7", "a:b", "1:2:3", "-1:2", "1:2 ", "12345678901234567:1", "1:2:abcdef0", "1:2:abcdef012", "1:2:"]) {
    assert.equal(parseOffset(bad), null, String(bad));
  }
  assert.equal(offsetKey("alice"), "websocket-manager.offset.alice");
  // with the print of the event (docs/protocol.md, section 4.1)
  assert.deepEqual(parseOffset("9:7:0A221249"), { stream: 9, sequence: 7, print: "0a221249" });
  assert.equal(formatOffset({ stream: 9, sequence: 7, print: "0a221249" }), "9:7:0a221249");
});

test("the print of an event is FNV-1a 32 over the UTF-8 bytes of the frame as received", () => {
  // the published FNV-1a test vectors
  assert.equal(eventPrint(""), "811c9dc5");
  assert.equal(eventPrint("a"), "e40c292c");
  assert.equal(eventPrint("foobar"), "bf9cf968");
  // bytes, not UTF-16 code units (the server's test has the same value)
  assert.equal(eventPrint("é"), "1e9de8c1");
  // the example of docs/protocol.md, sections 1.1 and 3
  const frame = '{"type":"tool_executing","data":{"tool":"search"},"timestamp":1767225600000,"critical":true,"stream":1767225000000042,"sequence":7}';
  assert.equal(eventPrint(frame), "0a221249");
});

test("offset stores: memory by default in Node, Web Storage when given, and a broken storage does not throw", () => {
  const store = defaultOffsetStore();
  assert.ok(store instanceof MemoryOffsetStore);
  store.set("k", "1:2");
  assert.equal(store.get("k"), "1:2");
  assert.equal(store.get("missing"), null);

  const items = new Map();
  const storage = {
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => items.set(key, value),
  };
  const web = new WebStorageOffsetStore(/** @type {any} */ (storage));
  web.set("k", "3:4");
  assert.equal(items.get("k"), "3:4");
  assert.equal(web.get("k"), "3:4");

  const broken = new WebStorageOffsetStore(/** @type {any} */ ({
    getItem: () => {
      throw new Error("SecurityError");
    },
    setItem: () => {
      throw new Error("QuotaExceededError");
    },
  }));
  assert.equal(broken.get("k"), null);
  broken.set("k", "1:1");
});

test("the client refuses what it could never connect to, at construction", () => {
  const getToken = () => "token";
  assert.throws(() => new Client({ urls: [], getToken }), /at least one URL/);
  assert.throws(() => new Client({ urls: "not a url", getToken }), /is not a URL/);
  assert.throws(() => new Client({ urls: "http://127.0.0.1/ws", getToken }), /not a ws: or wss: URL/);
  assert.throws(() => new Client(/** @type {any} */ ({ urls: "ws://127.0.0.1/ws" })), /getToken/);
  const client = new Client({ urls: ["ws://127.0.0.1:1/ws", "wss://example.test/ws"], getToken });
  assert.equal(client.state, "idle");
  assert.equal(client.offset, null);
  assert.equal(client.send({ type: "run" }), false, "nothing is sent, or queued, before a connection");
  client.close();
  assert.equal(client.state, "closed");
});
