// A TCP proxy on loopback between the client and the server, to break the
// network the way mobile networks do: `cut()` makes every current connection
// silent (no FIN, no close frame: bytes just stop), `dropNextResponse()` lets a
// request through and kills the connection before its answer arrives.
import { createConnection, createServer } from "node:net";

export function startProxy(targetPort) {
  const live = new Set(); // {client, upstream, dead, dropping} of each connection
  let dropResponses = 0; // answers still to drop
  const proxy = {
    port: 0, // where clients connect
    dropped: 0, // answers dropped by dropNextResponse
    get url() {
      return `http://127.0.0.1:${this.port}`;
    },
    /** Every connection now open goes silent: nothing passes, nothing is closed. */
    cut() {
      for (const pair of live) pair.dead = true;
    },
    dropNextResponse() {
      dropResponses++;
    },
    close() {
      for (const pair of live) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
      return new Promise((done) => server.close(done));
    },
  };
  const server = createServer((client) => {
    const upstream = createConnection(targetPort, "127.0.0.1");
    const pair = { client, upstream, dead: false, dropping: false };
    live.add(pair);
    client.on("data", (chunk) => !pair.dead && upstream.write(chunk));
    upstream.on("data", (chunk) => {
      if (pair.dead) return;
      if (!pair.dropping && dropResponses > 0 && chunk.toString("latin1", 0, 9) === "HTTP/1.1 ") {
        dropResponses--;
        proxy.dropped++;
        pair.dropping = true;
      }
      if (pair.dropping) {
        client.destroy(); // the request reached the server; its answer never arrives
        upstream.destroy();
        return;
      }
      client.write(chunk);
    });
    const end = () => {
      live.delete(pair);
      if (!pair.dead) {
        client.destroy();
        upstream.destroy();
      }
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", () => {});
    upstream.on("error", () => {});
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      proxy.port = server.address().port;
      resolve(proxy);
    });
  });
}
