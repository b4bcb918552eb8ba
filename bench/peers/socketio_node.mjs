// Peer: Node socket.io 4 with @socket.io/redis-adapter, as its docs set it up.
// Usage: node socketio_node.mjs <port> <redis-url>
// Clients join a room with an acknowledged "sub" event; back ends publish with
// @socket.io/redis-emitter (bench/loadgen.mjs), which reaches every node through Redis.
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

const port = Number(process.argv[2]);
const redisUrl = process.argv[3];

const pub = createClient({ url: redisUrl });
const sub = pub.duplicate();
await Promise.all([pub.connect(), sub.connect()]);

const io = new Server({
  adapter: createAdapter(pub, sub),
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
});
io.on("connection", (socket) => {
  socket.on("sub", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack(true);
  });
});
io.listen(port);
process.stdout.write("READY\n");
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
