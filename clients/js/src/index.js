// @ts-check
/**
 * The official client of the websocket-manager wire protocol (version 1,
 * docs/protocol.md), for browsers and Node (20+ with
 * `--experimental-websocket`, 22+ as is). An ES module with no dependency.
 *
 * ```js
 * import { Client } from "@websocket-manager/client";
 * const client = new Client({
 *   urls: ["wss://a.example/ws", "wss://b.example/ws"],
 *   getToken: async () => (await fetch("/token", { method: "POST" })).json().then((t) => t.token),
 *   user: "alice",
 * });
 * client.on("critical", (event) => render(event));            // in order, each once
 * client.on("resync", async (notice) => reloadState(notice));   // then the next events follow
 * client.connect();
 * ```
 *
 * @module
 */

/** @typedef {import("./index.js").OffsetStore} OffsetStore */

/** The protocol version this client speaks (`hello.protocol`). */
export const PROTOCOL_VERSION = 1;

/** The application subprotocol offered next to the token. */
export const SUBPROTOCOL = "websocket-manager";

/** Defaults of every tunable option of {@link Client}. */
export const DEFAULTS = Object.freeze({
  /** First backoff bound, ms (full jitter: the wait is random in [0, bound]). */
  backoffBaseMs: 500,
  /** Largest backoff bound, ms. */
  backoffMaxMs: 20_000,
  /** Added to the server's `heartbeat_ms` before a silent server counts as dead. */
  heartbeatGraceMs: 10_000,
  /** How long an attempt may take from the socket's creation to `hello`. */
  connectTimeoutMs: 15_000,
  /** Refresh the token when this fraction of its remaining lifetime has passed. */
  refreshRatio: 0.8,
  /** The upper bound of the random delay of an "at once" reconnect (1012), ms. */
  immediateJitterMs: 1_000,
});

/**
 * The close-code table of docs/protocol.md, section 7: what the client does
 * after the server closed with each code. `backoff`: reconnect after a
 * full-jitter backoff; `now`: reconnect at once (a random delay of at most
 * {@link DEFAULTS}.immediateJitterMs); `token`: get a new token, then
 * reconnect at once; `stop`: do not reconnect (the application decides).
 * @type {Readonly<Record<number, import("./index.js").CloseAction>>}
 */
export const CLOSE_CODES = Object.freeze({
  1000: "stop",
  1001: "backoff",
  1002: "stop",
  1003: "stop",
  1006: "backoff",
  1007: "stop",
  1008: "stop",
  1009: "backoff",
  1011: "backoff",
  1012: "now",
  1013: "backoff",
  4000: "backoff",
  4401: "token",
  4408: "backoff",
  4409: "backoff",
});

/**
 * What to do after a close with `code` and `reason` (docs/protocol.md,
 * section 7). The code decides; the reason only splits 1008, whose
 * slow-consumer and message-rate closes are retried with backoff (nothing
 * is lost) while the others
 * (connection limit, isolation, too many invalid messages) are not. An
 * unknown code in 1000-2999 or 4000-4999 is treated like 1011.
 * @param {number} code
 * @param {string} [reason]
 * @returns {import("./index.js").CloseAction}
 */
export function closeAction(code, reason = "") {
  if (code === 1008) {
    const retried = reason.startsWith("slow consumer") || reason === "message rate exceeded";
    return retried ? "backoff" : "stop";
  }
  const known = CLOSE_CODES[code];
  if (known) return known;
  return "backoff";
}

/**
 * The full-jitter exponential backoff: a random delay in
 * `[0, min(maxMs, baseMs * 2^attempt)]`.
 * @param {number} attempt failed attempts so far (0 for the first retry)
 * @param {{ baseMs?: number, maxMs?: number }} [bounds]
 * @param {() => number} [random] a source in [0, 1), `Math.random` by default
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, bounds = {}, random = Math.random) {
  const base = bounds.baseMs ?? DEFAULTS.backoffBaseMs;
  const max = bounds.maxMs ?? DEFAULTS.backoffMaxMs;
  const bound = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * bound);
}

/** FNV-1a (32 bits), docs/protocol.md section 4.1. */
const FNV_OFFSET_BASIS = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const utf8 = new TextEncoder();

/**
 * The print of a critical event (docs/protocol.md, section 4.1): FNV-1a,
 * 32 bits, over the UTF-8 bytes of its frame exactly as received, as 8
 * lowercase hexadecimal digits. The client sends it with the event's offset
 * when it resumes, so the server can tell whether the event it holds there
 * is the one the client saw.
 * @param {string} frameText the text message, as received
 * @returns {string}
 */
export function eventPrint(frameText) {
  const bytes = utf8.encode(frameText);
  let hash = FNV_OFFSET_BASIS;
  for (let i = 0; i < bytes.length; i += 1) {
    hash = Math.imul(hash ^ bytes[i], FNV_PRIME);
  }
  return (hash >>> 0).toString(16).padStart(8, "0");
}

/**
 * Parses `"<stream>:<sequence>"` or `"<stream>:<sequence>:<print>"`, as kept
 * in an offset store.
 * @param {string | null | undefined} text
 * @returns {import("./index.js").Offset | null} `null` for anything malformed
 */
export function parseOffset(text) {
  if (typeof text !== "string") return null;
  const match = /^(\d{1,16}):(\d{1,16})(?::([0-9a-fA-F]{8}))?$/.exec(text);
  if (!match) return null;
  const offset = { stream: Number(match[1]), sequence: Number(match[2]) };
  return match[3] ? { ...offset, print: match[3].toLowerCase() } : offset;
}

/**
 * Formats an offset as the `resume` query value: `"<stream>:<sequence>"`,
 * with `":<print>"` when the offset carries its event's print.
 * @param {import("./index.js").Offset} offset
 * @returns {string}
 */
export function formatOffset(offset) {
  const base = `${offset.stream}:${offset.sequence}`;
  return offset.print ? `${base}:${offset.print}` : base;
}

/**
 * An offset store that lives as long as the process (Node's default).
 * @implements {OffsetStore}
 */
export class MemoryOffsetStore {
  constructor() {
    /** @type {Map<string, string>} */
    this.values = new Map();
  }
  /** @param {string} key @returns {string | null} */
  get(key) {
    return this.values.get(key) ?? null;
  }
  /** @param {string} key @param {string} value */
  set(key, value) {
    this.values.set(key, value);
  }
}

/**
 * An offset store on a Web Storage object (`sessionStorage` by default): it
 * survives a reload of the tab, and each tab has its own.
 * @implements {OffsetStore}
 */
export class WebStorageOffsetStore {
  /** @param {Storage} storage */
  constructor(storage) {
    this.storage = storage;
  }
  /** @param {string} key @returns {string | null} */
  get(key) {
    try {
      return this.storage.getItem(key);
    } catch {
      return null; // storage disabled (private mode, quota): the offset lives in memory only
    }
  }
  /** @param {string} key @param {string} value */
  set(key, value) {
    try {
      this.storage.setItem(key, value);
    } catch {
      // see get(): the client still keeps the offset in memory
    }
  }
}

/**
 * The default store: `sessionStorage` in a browser, memory elsewhere.
 * @returns {import("./index.js").OffsetStore}
 */
export function defaultOffsetStore() {
  try {
    const storage = /** @type {any} */ (globalThis).sessionStorage;
    if (storage) return new WebStorageOffsetStore(storage);
  } catch {
    // a sandboxed frame throws on access
  }
  return new MemoryOffsetStore();
}

/**
 * The key an offset is kept under, per user.
 * @param {string} user
 * @returns {string}
 */
export function offsetKey(user) {
  return `websocket-manager.offset.${user}`;
}

/** A token closer than this to its deadline is replaced before a connection attempt. */
const TOKEN_MIN_VALIDITY_MS = 30_000;

/** Frame types of the protocol itself, never passed on as `message`. */
const CONTROL = new Set(["hello", "heartbeat", "token_refreshed"]);

/**
 * A connection to a websocket-manager server that stays connected: it
 * reconnects with backoff across a list of URLs, resumes from the offset of
 * the last critical event the application processed, detects a silent
 * server by the protocol's heartbeat, and refreshes its token in-band.
 *
 * Events (subscribe with {@link Client#on}): `state`, `hello`, `critical`,
 * `resync`, `message`, `busy`, `error`, `token_refreshed`, `disconnect`.
 * Listeners of `critical`, `resync`, `message` and `busy` run one frame at a
 * time, in the order the frames arrived; a listener that returns a promise
 * holds back the frames behind it until it settles (this is how "reload
 * your state on `resync`, then go on" works). A critical event counts as
 * processed, and its offset is stored, once its listeners have settled.
 */
export class Client {
  /** @param {import("./index.js").ClientOptions} options */
  constructor(options) {
    if (!options || typeof options.getToken !== "function") {
      throw new TypeError("Client: options.getToken (a function returning the token) is required");
    }
    const urls = typeof options.urls === "string" ? [options.urls] : [...(options.urls ?? [])];
    if (urls.length === 0) throw new TypeError("Client: options.urls needs at least one URL");
    for (const url of urls) {
      let protocol;
      try {
        protocol = new URL(url).protocol;
      } catch {
        throw new TypeError(`Client: ${JSON.stringify(url)} is not a URL`);
      }
      if (protocol !== "ws:" && protocol !== "wss:") {
        throw new TypeError(`Client: ${JSON.stringify(url)} is not a ws: or wss: URL`);
      }
    }
    /** @private */ this.urls = urls;
    /** @private */ this.getToken = options.getToken;
    /** @private */ this.thread = options.thread ?? null;
    /** @private */ this.store = options.store ?? defaultOffsetStore();
    /** @private */ this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocketImpl !== "function") {
      throw new TypeError("Client: no WebSocket implementation (Node 20: run with --experimental-websocket, or pass options.WebSocket)");
    }
    /** @private */ this.options = {
      backoffBaseMs: options.backoffBaseMs ?? DEFAULTS.backoffBaseMs,
      backoffMaxMs: options.backoffMaxMs ?? DEFAULTS.backoffMaxMs,
      heartbeatGraceMs: options.heartbeatGraceMs ?? DEFAULTS.heartbeatGraceMs,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
      refreshRatio: options.refreshRatio ?? DEFAULTS.refreshRatio,
      immediateJitterMs: options.immediateJitterMs ?? DEFAULTS.immediateJitterMs,
    };
    /** @private @type {Map<string, Set<Function>>} */ this.listeners = new Map();
    /** @private @type {import("./index.js").ClientState} */ this.currentState = "idle";
    /** @private */ this.urlIndex = 0;
    /** @private */ this.attempt = 0;
    /** @private */ this.failuresBeforeOpen = 0;
    /** @private @type {string | null} */ this.token = null;
    /** @private */ this.tokenStale = true;
    /** @private @type {WebSocket | null} */ this.socket = null;
    /** @private @type {any} */ this.helloFrame = null;
    /** @private @type {string | null} */ this.user = options.user ?? null;
    /** @private @type {import("./index.js").Offset | null} */ this.resumeSent = null;
    /** @private @type {import("./index.js").Offset | null} */
    this.lastOffset = this.user ? parseOffset(this.store.get(offsetKey(this.user))) : null;
    /** @private @type {ReturnType<typeof setTimeout> | undefined} */ this.reconnectTimer = undefined;
    /** @private @type {ReturnType<typeof setTimeout> | undefined} */ this.deadTimer = undefined;
    /** @private @type {ReturnType<typeof setTimeout> | undefined} */ this.refreshTimer = undefined;
    /** @private @type {{resolve: Function, reject: Function} | null} */ this.pendingRefresh = null;
    /** @private @type {number | null} the token's deadline, server clock (ms) */ this.tokenExpiresAt = null;
    /** @private @type {number | null} the same deadline on this machine's clock */ this.tokenDeadline = null;
    /** @private @type {Array<() => Promise<void> | void>} */ this.queue = [];
    /** @private */ this.draining = false;
    /** @private */ this.generation = 0;
    /** Counters, for a status display and for tests. */
    this.stats = { connects: 0, hellos: 0, critical: 0, duplicatesSkipped: 0, resyncs: 0, refreshes: 0 };
  }

  /** The connection state: `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this.currentState;
  }

  /** The offset of the last critical event processed, or `null`. */
  get offset() {
    return this.lastOffset ? { ...this.lastOffset } : null;
  }

  /** The offset the current (or last) connection resumed from, or `null` (none was sent). */
  get resumedFrom() {
    return this.resumeSent ? { ...this.resumeSent } : null;
  }

  /** The last `hello` frame of the current connection, or `null`. */
  get hello() {
    return this.helloFrame;
  }

  /** The URL of the current (or next) attempt. */
  get url() {
    return this.urls[this.urlIndex % this.urls.length];
  }

  /**
   * Subscribes to an event; returns a function that unsubscribes.
   * @param {string} name
   * @param {(payload: any) => unknown} listener
   * @returns {() => void}
   */
  on(name, listener) {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => this.off(name, listener);
  }

  /**
   * Removes a listener added with {@link Client#on}.
   * @param {string} name
   * @param {(payload: any) => unknown} listener
   */
  off(name, listener) {
    this.listeners.get(name)?.delete(listener);
  }

  /**
   * Opens the connection (and keeps it open until {@link Client#close}).
   * Calling it again while connected does nothing; after `close()` it starts
   * again.
   */
  connect() {
    if (this.currentState === "connecting" || this.currentState === "open" || this.currentState === "reconnecting") return;
    this.setState("connecting");
    void this.attemptConnect(this.generation);
  }

  /**
   * Sends an application message (JSON). Returns `false` when no connection
   * is open: application messages are at most once, not queued.
   * @param {unknown} message
   * @returns {boolean}
   */
  send(message) {
    if (!this.socket || this.currentState !== "open" || this.socket.readyState !== 1) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  /**
   * Refreshes the token in-band now (the client also does it by itself at
   * `refreshRatio` of the token's lifetime). Resolves with the server's
   * `token_refreshed` frame; rejects with the refusal (`error` frame
   * `token_refresh_refused`) or when no connection is open.
   * @returns {Promise<any>}
   */
  refreshToken() {
    if (this.pendingRefresh) return Promise.reject(new Error("a token refresh is already in flight"));
    const socket = this.socket;
    if (!socket || this.currentState !== "open") return Promise.reject(new Error("not connected"));
    const generation = this.generation;
    return new Promise((resolve, reject) => {
      this.pendingRefresh = { resolve, reject };
      Promise.resolve()
        .then(() => this.getToken())
        .then((token) => {
          if (generation !== this.generation || socket !== this.socket || socket.readyState !== 1) {
            throw new Error("the connection closed before the refresh was sent");
          }
          this.token = token;
          socket.send(JSON.stringify({ type: "refresh_token", token }));
        })
        .catch((error) => this.settleRefresh(false, error));
    });
  }

  /**
   * Closes the connection with 1000 and stops: no reconnect, no timer left.
   * Frames already received are still delivered. {@link Client#connect}
   * starts again.
   * @param {string} [reason]
   */
  close(reason = "closed by client") {
    this.generation += 1;
    this.clearTimers();
    this.settleRefresh(false, new Error("client closed"));
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      detach(socket);
      try {
        socket.close(1000, reason);
      } catch {
        // already closing
      }
    }
    this.setState("closed");
  }

  // ---- internals -------------------------------------------------------

  /** @private @param {string} name @param {unknown} payload @returns {Promise<void>} */
  async emitAndWait(name, payload) {
    const set = this.listeners.get(name);
    if (!set) return;
    const results = [];
    for (const listener of [...set]) {
      try {
        results.push(listener(payload));
      } catch (error) {
        this.reportListenerError(name, error);
      }
    }
    for (const result of results) {
      if (result && typeof (/** @type {any} */ (result).then) === "function") {
        try {
          await result;
        } catch (error) {
          this.reportListenerError(name, error);
        }
      }
    }
  }

  /** @private @param {string} name @param {unknown} payload */
  emit(name, payload) {
    void this.emitAndWait(name, payload);
  }

  /** @private @param {string} name @param {unknown} error */
  reportListenerError(name, error) {
    if (name === "error") {
      console.error("websocket-manager client: an error listener threw", error);
      return;
    }
    this.emit("error", { code: "listener_failed", detail: `a ${name} listener threw: ${String(error)}`, error });
  }

  /** @private @param {import("./index.js").ClientState} state */
  setState(state) {
    if (state === this.currentState) return;
    const previous = this.currentState;
    this.currentState = state;
    this.emit("state", { state, previous });
  }

  /** @private */
  clearTimers() {
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.deadTimer);
    clearTimeout(this.refreshTimer);
    this.reconnectTimer = this.deadTimer = this.refreshTimer = undefined;
  }

  /** @private @param {number} generation */
  async attemptConnect(generation) {
    const url = new URL(this.url);
    let token;
    try {
      // A token that expires within 30 s would be refused, or would need a
      // refresh at once (docs/protocol.md, 1.3): get a new one first.
      const expiring = this.tokenDeadline !== null && this.tokenDeadline - Date.now() < TOKEN_MIN_VALIDITY_MS;
      if (this.tokenStale || this.token === null || expiring) {
        token = await this.getToken();
        this.token = token;
        this.tokenStale = false;
        this.tokenDeadline = null; // known again from the next hello
      } else {
        token = this.token;
      }
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit("error", { code: "token_unavailable", detail: String(error), error });
      this.scheduleReconnect("backoff", { code: 0, reason: "no token", beforeHello: true });
      return;
    }
    if (generation !== this.generation) return;
    if (this.thread !== null) url.searchParams.set("thread", this.thread);
    this.resumeSent = this.lastOffset ? { ...this.lastOffset } : null;
    if (this.resumeSent) url.searchParams.set("resume", formatOffset(this.resumeSent));
    else url.searchParams.delete("resume");
    let socket;
    try {
      socket = new this.WebSocketImpl(url.toString(), [SUBPROTOCOL, `bearer.${token}`]);
    } catch (error) {
      this.emit("error", { code: "connect_failed", detail: String(error), error });
      this.scheduleReconnect("backoff", { code: 0, reason: String(error), beforeHello: true });
      return;
    }
    this.stats.connects += 1;
    this.socket = socket;
    this.helloFrame = null;
    const connection = { socket, gotHello: false, opened: false };
    this.armDeadTimer(connection, this.options.connectTimeoutMs);
    socket.onopen = () => {
      connection.opened = true;
      if (socket.protocol && socket.protocol !== SUBPROTOCOL) {
        this.abandon(connection, 1002, `the server selected subprotocol ${socket.protocol}`);
      }
    };
    socket.onmessage = (message) => this.onFrame(connection, message.data);
    socket.onerror = () => {
      // After `open`, the close event that follows says what happened.
      // Before it, some implementations (Node 20's undici) never fire
      // `close`: the attempt has failed either way.
      if (!connection.opened) this.abandon(connection, 1006, "connection failed before open");
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.onClosed(connection, event.code, event.reason ?? "");
    };
  }

  /**
   * Declares the connection dead without waiting for a close handshake that
   * a silent link would never complete.
   * @private @param {{socket: WebSocket, gotHello: boolean, opened: boolean}} connection
   * @param {number} code @param {string} reason
   */
  abandon(connection, code, reason) {
    if (this.socket !== connection.socket) return;
    detach(connection.socket);
    try {
      // a close reason is at most 123 bytes of UTF-8
      connection.socket.close(4000, reason.slice(0, 40));
    } catch {
      // already closing
    }
    this.onClosed(connection, code, reason);
  }

  /** @private @param {{socket: WebSocket, gotHello: boolean, opened: boolean}} connection @param {number} ms */
  armDeadTimer(connection, ms) {
    clearTimeout(this.deadTimer);
    this.deadTimer = setTimeout(() => {
      const reason = connection.gotHello
        ? `no frame from the server within ${ms} ms`
        : `no hello within ${ms} ms`;
      this.abandon(connection, 4000, reason);
    }, ms);
  }

  /** @private @param {{socket: WebSocket, gotHello: boolean, opened: boolean}} connection @param {unknown} data */
  onFrame(connection, data) {
    if (this.socket !== connection.socket) return;
    if (connection.gotHello) this.resetDeadTimer(connection);
    if (typeof data !== "string") return; // the protocol is text only
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this.emit("error", { code: "malformed_frame", detail: data.slice(0, 200) });
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") {
      this.emit("error", { code: "malformed_frame", detail: data.slice(0, 200) });
      return;
    }
    switch (frame.type) {
      case "hello":
        this.onHello(connection, frame);
        return;
      case "heartbeat":
        return;
      case "token_refreshed":
        this.stats.refreshes += 1;
        this.scheduleRefresh(frame.expires_at, frame.ts);
        this.settleRefresh(true, frame);
        this.emit("token_refreshed", frame);
        return;
      case "error":
        if (frame.code === "token_refresh_refused") {
          this.settleRefresh(false, Object.assign(new Error(`token refresh refused: ${frame.detail}`), { frame }));
          this.retryRefreshAfterRefusal(frame.detail);
        }
        this.emit("error", frame);
        return;
      default:
        this.enqueue(() => this.deliver(frame, data));
    }
  }

  /** @private @param {{socket: WebSocket, gotHello: boolean, opened: boolean}} connection */
  resetDeadTimer(connection) {
    const heartbeat = this.helloFrame?.heartbeat_ms;
    if (typeof heartbeat !== "number") {
      clearTimeout(this.deadTimer);
      this.deadTimer = undefined;
      return;
    }
    this.armDeadTimer(connection, heartbeat + this.options.heartbeatGraceMs);
  }

  /** @private @param {{socket: WebSocket, gotHello: boolean, opened: boolean}} connection @param {any} hello */
  onHello(connection, hello) {
    if (hello.protocol !== PROTOCOL_VERSION) {
      this.emit("error", { code: "incompatible_server", detail: `server speaks protocol ${hello.protocol}, this client ${PROTOCOL_VERSION}` });
      this.abandon(connection, 1000, "incompatible protocol");
      return;
    }
    connection.gotHello = true;
    this.helloFrame = hello;
    this.stats.hellos += 1;
    this.attempt = 0;
    this.failuresBeforeOpen = 0;
    if (typeof hello.user === "string" && hello.user !== this.user) {
      // The first hello, or a token of another user: from now on the
      // offset is this user's (none when nothing is kept for them).
      this.user = hello.user;
      this.lastOffset = parseOffset(this.store.get(offsetKey(hello.user)));
    }
    this.resetDeadTimer(connection);
    this.scheduleRefresh(hello.token_expires_at, hello.ts);
    this.setState("open");
    this.emit("hello", hello);
  }

  /** @private @param {() => Promise<void> | void} task */
  enqueue(task) {
    this.queue.push(task);
    if (!this.draining) void this.drain();
  }

  /** @private */
  async drain() {
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const task = /** @type {() => Promise<void> | void} */ (this.queue.shift());
        await task();
      }
    } finally {
      this.draining = false;
    }
  }

  /** @private @param {any} frame @param {string} text the frame as received */
  async deliver(frame, text) {
    if (frame.type === "resync") {
      this.stats.resyncs += 1;
      await this.emitAndWait("resync", frame);
      // Go on from the notice: what follows it is the retained rest, from
      // the oldest retained event of the latest stream.
      const latest = frame.latest;
      if (latest && typeof latest.stream === "number") {
        const oldest = frame.oldest_retained;
        const sequence = oldest && oldest.stream === latest.stream ? Math.max(0, oldest.sequence - 1) : latest.sequence;
        this.keepOffset({ stream: latest.stream, sequence });
      }
      return;
    }
    if (frame.critical === true && typeof frame.stream === "number" && typeof frame.sequence === "number") {
      const last = this.lastOffset;
      if (last && frame.stream === last.stream && frame.sequence <= last.sequence) {
        // Already processed: a replay of what was received but not yet
        // processed when the previous connection died.
        this.stats.duplicatesSkipped += 1;
        return;
      }
      await this.emitAndWait("critical", frame);
      this.stats.critical += 1;
      this.keepOffset({ stream: frame.stream, sequence: frame.sequence, print: eventPrint(text) });
      return;
    }
    if (frame.type === "busy") {
      await this.emitAndWait("busy", frame);
      return;
    }
    await this.emitAndWait("message", frame);
  }

  /** @private @param {import("./index.js").Offset} offset */
  keepOffset(offset) {
    this.lastOffset = offset;
    if (this.user !== null) this.store.set(offsetKey(this.user), formatOffset(offset));
  }

  /**
   * Schedules the next refresh from the connection's deadline.
   * @private @param {number | null | undefined} expiresAt the deadline, server clock
   * @param {number | undefined} serverNow the server's clock when it said so
   */
  scheduleRefresh(expiresAt, serverNow) {
    this.tokenExpiresAt = typeof expiresAt === "number" ? expiresAt : null;
    if (typeof expiresAt !== "number") {
      this.tokenDeadline = null;
      this.armRefresh(null);
      return;
    }
    const remaining = expiresAt - (typeof serverNow === "number" ? serverNow : Date.now());
    this.tokenDeadline = Date.now() + remaining;
    this.armRefresh(Math.max(0, remaining * this.options.refreshRatio));
  }

  /** @private @param {number | null} delay ms, or `null` for no refresh */
  armRefresh(delay) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (delay === null) return;
    const generation = this.generation;
    this.refreshTimer = setTimeout(() => {
      if (generation !== this.generation || this.currentState !== "open") return;
      this.refreshToken().catch((error) => {
        if (!(error && error.frame)) this.emit("error", { code: "token_refresh_failed", detail: String(error), error });
      });
    }, delay);
  }

  /** @private @param {string} detail */
  retryRefreshAfterRefusal(detail) {
    // `other user` and `not supported` are bugs a retry cannot fix; an
    // invalid or expired token may be followed by a good one. The old
    // deadline stays: if none comes, the server closes with 4401 and the
    // client reconnects with a new token.
    if (detail !== "invalid token" && detail !== "expired") return;
    if (this.tokenDeadline === null) return;
    // once more, when half of what is left has passed
    this.armRefresh(Math.max(0, (this.tokenDeadline - Date.now()) / 2));
  }

  /** @private @param {boolean} ok @param {unknown} value */
  settleRefresh(ok, value) {
    const pending = this.pendingRefresh;
    if (!pending) return;
    this.pendingRefresh = null;
    if (ok) pending.resolve(value);
    else pending.reject(value);
  }

  /** @private @param {{socket: WebSocket, gotHello: boolean, opened: boolean}} connection @param {number} code @param {string} reason */
  onClosed(connection, code, reason) {
    if (this.socket !== connection.socket) return;
    this.socket = null;
    clearTimeout(this.deadTimer);
    clearTimeout(this.refreshTimer);
    this.deadTimer = this.refreshTimer = undefined;
    this.settleRefresh(false, new Error(`connection closed (${code})`));
    const beforeHello = !connection.gotHello;
    // A failure before `open` is what a browser shows for a refused upgrade
    // (401, 503...): retry with backoff, on the next URL.
    const action = !connection.opened ? "backoff" : closeAction(code, reason);
    this.scheduleReconnect(action, { code, reason, beforeHello });
  }

  /**
   * @private
   * @param {import("./index.js").CloseAction} action
   * @param {{code: number, reason: string, beforeHello: boolean}} close
   */
  scheduleReconnect(action, close) {
    if (this.currentState === "closed") return;
    if (close.beforeHello) {
      this.failuresBeforeOpen += 1;
      // A refused upgrade may be an expired token: after two in a row, get
      // a new one (docs/protocol.md, 1.3).
      if (this.failuresBeforeOpen >= 2) this.tokenStale = true;
    }
    if (action === "stop") {
      this.emit("disconnect", { ...close, action, delayMs: null, url: this.url });
      this.setState("closed");
      return;
    }
    if (action === "token") this.tokenStale = true;
    let delayMs;
    if (action === "backoff") {
      delayMs = backoffDelay(this.attempt, { baseMs: this.options.backoffBaseMs, maxMs: this.options.backoffMaxMs });
      this.attempt += 1;
    } else {
      delayMs = Math.floor(Math.random() * (action === "now" ? this.options.immediateJitterMs : 0));
    }
    // Every reconnect tries the next URL: a dead node is left at once, and
    // a refused one (503) is not hammered.
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.emit("disconnect", { ...close, action, delayMs, url: this.url });
    this.setState("reconnecting");
    const generation = this.generation;
    this.reconnectTimer = setTimeout(() => {
      if (generation !== this.generation) return;
      void this.attemptConnect(generation);
    }, delayMs);
  }
}

/** @param {WebSocket} socket */
function detach(socket) {
  socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
}
