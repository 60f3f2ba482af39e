/**
 * The official client of the websocket-manager wire protocol, version 1
 * (docs/protocol.md): an ES module for browsers and Node, with no dependency.
 * @module
 */

/** The protocol version this client speaks (`hello.protocol`). */
export declare const PROTOCOL_VERSION: 1;

/** The application subprotocol offered next to the token (`bearer.<token>`). */
export declare const SUBPROTOCOL: "websocket-manager";

/** Defaults of every tunable option of {@link Client}. */
export declare const DEFAULTS: Readonly<{
  /** First backoff bound, ms (500). */
  backoffBaseMs: number;
  /** Largest backoff bound, ms (20 000). */
  backoffMaxMs: number;
  /** Added to the server's `heartbeat_ms` before a silent server counts as dead, ms (10 000). */
  heartbeatGraceMs: number;
  /** How long an attempt may take from the socket's creation to `hello`, ms (15 000). */
  connectTimeoutMs: number;
  /** Refresh the token when this fraction of its remaining lifetime has passed (0.8). */
  refreshRatio: number;
  /** Upper bound of the random delay of an "at once" reconnect (1012), ms (1 000). */
  immediateJitterMs: number;
}>;

/**
 * What the client does after a close: reconnect after a full-jitter backoff,
 * reconnect at once, get a new token then reconnect at once, or stop.
 */
export type CloseAction = "backoff" | "now" | "token" | "stop";

/** The close-code table of docs/protocol.md, section 7 (1008 is split by {@link closeAction}). */
export declare const CLOSE_CODES: Readonly<Record<number, CloseAction>>;

/**
 * What to do after a close with `code` and `reason`. The code decides; the
 * reason only splits 1008 (`slow consumer...` and `message rate exceeded`
 * are retried with backoff, the other 1008s are not). Unknown codes are
 * treated like 1011 (backoff).
 */
export declare function closeAction(code: number, reason?: string): CloseAction;

/** Full-jitter exponential backoff: a random delay in `[0, min(maxMs, baseMs * 2^attempt)]`, ms. */
export declare function backoffDelay(
  attempt: number,
  bounds?: { baseMs?: number; maxMs?: number },
  random?: () => number,
): number;

/** The position of a critical event in a user's history. */
export interface Offset {
  /** The numbering the event belongs to; a new one starts when the server forgot the user or restarted. */
  stream: number;
  /** 1, 2, 3... within the stream. */
  sequence: number;
  /**
   * The print of the event at this offset ({@link eventPrint}), when the
   * client processed that event (an offset taken from a `resync` notice has none).
   */
  print?: string;
}

/**
 * The print of a critical event (docs/protocol.md, section 4.1): FNV-1a, 32
 * bits, over the UTF-8 bytes of its frame as received, 8 lowercase hex digits.
 */
export declare function eventPrint(frameText: string): string;

/** Parses `"<stream>:<sequence>"` or `"<stream>:<sequence>:<print>"`; `null` for anything malformed. */
export declare function parseOffset(text: string | null | undefined): Offset | null;

/** Formats an offset as the `resume` query value: `"<stream>:<sequence>"`, plus `":<print>"` when it has one. */
export declare function formatOffset(offset: Offset): string;

/** Where the client keeps each user's offset between connections (and page loads). */
export interface OffsetStore {
  /** The value kept under `key`, or `null`. */
  get(key: string): string | null;
  /** Keeps `value` under `key`. */
  set(key: string, value: string): void;
}

/** An offset store that lives as long as the process (the default outside a browser). */
export declare class MemoryOffsetStore implements OffsetStore {
  constructor();
  /** The stored values, by key. */
  values: Map<string, string>;
  /** The value kept under `key`, or `null`. */
  get(key: string): string | null;
  /** Keeps `value` under `key`. */
  set(key: string, value: string): void;
}

/** An offset store on a Web Storage object (`sessionStorage`: per tab, survives a reload). */
export declare class WebStorageOffsetStore implements OffsetStore {
  /** @param storage e.g. `sessionStorage` or `localStorage` */
  constructor(storage: Storage);
  /** The storage the offsets are kept in. */
  storage: Storage;
  /** The value kept under `key`, or `null` (also when the storage is disabled). */
  get(key: string): string | null;
  /** Keeps `value` under `key` (ignored when the storage is disabled). */
  set(key: string, value: string): void;
}

/** `sessionStorage` in a browser, memory elsewhere. */
export declare function defaultOffsetStore(): OffsetStore;

/** The key a user's offset is kept under: `websocket-manager.offset.<user>`. */
export declare function offsetKey(user: string): string;

/** The connection state. `idle` before the first `connect()`; `closed` after `close()` or a close that must not be retried. */
export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** Options of {@link Client}. */
export interface ClientOptions {
  /** The WebSocket URL(s) of the endpoint (`wss://host/ws`); each reconnect tries the next one. */
  urls: string | string[];
  /** Returns a token (a JWT) for the user; called before a connection when the token is stale, and for each refresh. */
  getToken: () => string | Promise<string>;
  /** The user the token is for, so that the offset kept from a previous page load is sent on the first connection. */
  user?: string;
  /** The thread to follow (`thread` query parameter). */
  thread?: string;
  /** Where offsets are kept; `sessionStorage` in a browser, memory elsewhere. */
  store?: OffsetStore;
  /** The WebSocket class; `globalThis.WebSocket` by default. */
  WebSocket?: typeof WebSocket;
  /** First backoff bound, ms (default 500). */
  backoffBaseMs?: number;
  /** Largest backoff bound, ms (default 20 000). */
  backoffMaxMs?: number;
  /** Grace added to `heartbeat_ms` before a silent server counts as dead, ms (default 10 000). */
  heartbeatGraceMs?: number;
  /** How long an attempt may take until `hello`, ms (default 15 000). */
  connectTimeoutMs?: number;
  /** Fraction of the token's remaining lifetime after which it is refreshed (default 0.8). */
  refreshRatio?: number;
  /** Upper bound of the random delay of an "at once" reconnect, ms (default 1 000). */
  immediateJitterMs?: number;
}

/** The server's first frame (docs/protocol.md, `hello`). */
export interface HelloFrame {
  type: "hello";
  /** The protocol version (1). */
  protocol: number;
  /** The user the token was verified as. */
  user: string;
  /** The connection's id on the server (for logs). */
  connection_id: string;
  /** The token's deadline, Unix ms, or `null`. */
  token_expires_at: number | null;
  /** The user's last offset when the connection was registered, or `null`. */
  latest: Offset | null;
  /** What the server can still replay, or `null`. */
  retention: { max_events: number; max_age_ms: number; oldest: Offset | null } | null;
  /** The server writes at least one frame this often, ms; `null`: no heartbeat. */
  heartbeat_ms: number | null;
  /** The server's clock, Unix ms. */
  ts?: number;
  [member: string]: unknown;
}

/** A critical event: delivered in order, each once, across reconnects. */
export interface CriticalEvent {
  /** The application's event type (`agent_started`, ...). */
  type: string;
  /** The application's data. */
  data: unknown;
  /** When it was emitted, Unix ms. */
  timestamp: number;
  critical: true;
  stream: number;
  sequence: number;
  [member: string]: unknown;
}

/** The notice that events the client was owed are gone: reload the state they describe. */
export interface ResyncNotice {
  type: "resync";
  /** `trimmed`, `unknown_stream`, `ahead`, or a later reason. */
  reason: string;
  /** The offset the client resumed from, or `null`. */
  requested: Offset | null;
  /** The oldest event the server still has, or `null`. */
  oldest_retained: Offset | null;
  /** The user's last offset on the server. */
  latest: Offset;
  /** How many events were lost, when known. */
  lost: number | null;
  timestamp: number;
  [member: string]: unknown;
}

/** An `error` frame of the server, or an error of the client itself (`token_unavailable`, `connect_failed`, `malformed_frame`, `listener_failed`, `token_refresh_failed`, `incompatible_server`). */
export interface ClientError {
  code: string;
  detail?: string;
  error?: unknown;
  [member: string]: unknown;
}

/** Why a connection ended, and what the client does next. */
export interface Disconnect {
  /** The close code (1006 for a dropped link, 4000 for a server found silent, 0 when no socket was made). */
  code: number;
  reason: string;
  /** Whether the connection ended before its `hello`. */
  beforeHello: boolean;
  action: CloseAction;
  /** The wait before the next attempt, ms; `null` when the client stops. */
  delayMs: number | null;
  /** The URL of the next attempt. */
  url: string;
}

/** Payloads of the client's events. */
export interface ClientEvents {
  /** The connection state changed. */
  state: { state: ClientState; previous: ClientState };
  /** A connection was established (its `hello`). */
  hello: HelloFrame;
  /** A critical event, in order, each once; its offset is kept once the listeners settled. */
  critical: CriticalEvent;
  /** Events were lost: reload the state; the events after the notice wait for the listeners' promises. */
  resync: ResyncNotice;
  /** An application message (at most once). */
  message: { type: string; [member: string]: unknown };
  /** The server refused a request for lack of capacity (`{"type":"busy","limit":...}`). */
  busy: { type: "busy"; limit: string; [member: string]: unknown };
  /** An error frame of the server, or a failure of the client. */
  error: ClientError;
  /** The token was refreshed in-band. */
  token_refreshed: { type: "token_refreshed"; expires_at: number | null; ts?: number };
  /** A connection ended. */
  disconnect: Disconnect;
}

/**
 * A connection that stays connected: reconnects with full-jitter backoff
 * across `urls`, resumes from the last processed offset, detects a silent
 * server, refreshes its token in-band, follows the close-code table.
 */
export declare class Client {
  constructor(options: ClientOptions);
  /** Counters, for a status display and for tests. */
  readonly stats: {
    connects: number;
    hellos: number;
    critical: number;
    duplicatesSkipped: number;
    resyncs: number;
    refreshes: number;
  };
  /** The connection state. */
  readonly state: ClientState;
  /** The offset of the last critical event processed, or `null`. */
  readonly offset: Offset | null;
  /** The offset the current (or last) connection resumed from (`resume`), or `null`. */
  readonly resumedFrom: Offset | null;
  /** The current connection's `hello`, or `null`. */
  readonly hello: HelloFrame | null;
  /** The URL of the current (or next) attempt. */
  readonly url: string;
  /** Subscribes; returns a function that unsubscribes. A listener may return a promise: the frames behind it wait. */
  on<K extends keyof ClientEvents>(name: K, listener: (payload: ClientEvents[K]) => unknown): () => void;
  /** Removes a listener. */
  off<K extends keyof ClientEvents>(name: K, listener: (payload: ClientEvents[K]) => unknown): void;
  /** Opens the connection and keeps it open until `close()`. */
  connect(): void;
  /** Sends an application message as JSON; `false` when no connection is open. */
  send(message: unknown): boolean;
  /** Refreshes the token in-band now; resolves with `token_refreshed`, rejects with the refusal. */
  refreshToken(): Promise<{ type: "token_refreshed"; expires_at: number | null; ts?: number }>;
  /** Closes with 1000 and stops every timer; `connect()` starts again. */
  close(reason?: string): void;
}
