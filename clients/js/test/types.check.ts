// Type-checked by `tsc --noEmit -p .` (never run): the declarations describe
// the API as an application uses it.
import {
  Client,
  MemoryOffsetStore,
  backoffDelay,
  closeAction,
  eventPrint,
  formatOffset,
  parseOffset,
  type CloseAction,
  type CriticalEvent,
  type Offset,
  type OffsetStore,
  type ResyncNotice,
} from "../src/index.js";

const store: OffsetStore = new MemoryOffsetStore();
const client = new Client({
  urls: ["ws://127.0.0.1:3000/ws", "ws://127.0.0.1:3001/ws"],
  getToken: async () => "token",
  user: "alice",
  thread: "alice:thread-1",
  store,
  backoffBaseMs: 100,
  backoffMaxMs: 5_000,
});
const unsubscribe: () => void = client.on("critical", (event: CriticalEvent) => {
  const offset: Offset = { stream: event.stream, sequence: event.sequence };
  return formatOffset(offset);
});
unsubscribe();
client.on("resync", async (notice: ResyncNotice) => {
  const lost: number | null = notice.lost;
  return lost;
});
client.on("state", ({ state, previous }) => `${previous} -> ${state}`);
client.on("disconnect", (close) => close.delayMs ?? close.code);
client.on("hello", (hello) => hello.heartbeat_ms ?? hello.token_expires_at);
const action: CloseAction = closeAction(1012, "");
const delay: number = backoffDelay(3, { baseMs: 500, maxMs: 20_000 });
const parsed: Offset | null = parseOffset("9:7");
const checked: Offset = { stream: 9, sequence: 7, print: eventPrint("{}") };
const sent: boolean = client.send({ type: "run", prompt: "hi" });
client.refreshToken().then((frame) => frame.expires_at);
client.connect();
client.close();
void [checked, action, delay, parsed, sent];
// @ts-expect-error: an unknown event name is a type error
client.on("no-such-event", () => undefined);
