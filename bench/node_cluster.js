// The Node anchor for bench/idle_memory.sh: Node's cluster module, the primary forking
// WORKERS workers that share one listening socket (Node's default round-robin scheduling),
// each answering GET /healthz with plain `http`. No framework, no session store: the least a
// Node cluster costs, so the comparison is kind to Node.
//
//   node bench/node_cluster.js 127.0.0.1 PORT WORKERS
//
// The primary prints "workers ready" on stderr once every worker listens.
const cluster = require("node:cluster");
const http = require("node:http");

const [host, port, workers] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4] || 2)];
if (!host.startsWith("127.")) throw new Error("loopback only");

if (cluster.isPrimary) {
  let listening = 0;
  cluster.on("listening", () => {
    if (++listening === workers) console.error("workers ready");
  });
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on("SIGTERM", () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  http
    .createServer((req, res) => {
      res.setHeader("content-type", "text/plain");
      res.end("ok\n");
    })
    .listen(port, host);
}
