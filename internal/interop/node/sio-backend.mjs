// Socket.IO backend for the wsproxy interop tests: node sio-backend.mjs NAME
// [PORT]. Prints the port it listens on (127.0.0.1), then serves until
// killed:
//   GET /            an HTML page naming the backend (header X-Backend too),
//                    which connects with the Socket.IO client served by the
//                    server itself, default transports, and sets
//                    window.testResult once the engine is on WebSocket;
//   /socket.io/      Socket.IO, default options (polling and websocket, no
//                    cookie of its own); the event "whoami" is answered,
//                    through its acknowledgement, with
//                    {backend, transport, echo};
//   GET /_stats      what the test asks the backend directly, never through
//                    the proxy: {backend, connections, upgrades, errors},
//                    errors counting the engine's connection_error messages
//                    ("Session ID unknown", ...).
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const name = process.argv[2] || 'backend';
const port = Number(process.argv[3] || 0);

const stats = { backend: name, connections: 0, upgrades: 0, errors: {} };

const page = `<!doctype html>
<title>Socket.IO on ${name}</title>
<p>Served by <b id="backend">${name}</b>. Socket.IO: <span id="status">connecting</span></p>
<script src="/socket.io/socket.io.js"></script>
<script>
const t0 = Date.now();
const status = (s) => { document.getElementById('status').textContent = s; };
const errors = [];
const socket = io({ reconnectionDelay: 200, reconnectionDelayMax: 1000 });
socket.on('connect_error', (e) => { errors.push(String(e.message) + (e.description ? ' ' + e.description : '')); status('error ' + e.message); });
const done = () => socket.timeout(5000).emit('whoami', 'page', (err, a) => {
  if (err) { errors.push('whoami: ' + err.message); return; }
  status('websocket on ' + a.backend);
  window.testResult = { page: ${JSON.stringify(name)}, socket: a.backend, transport: a.transport, errors, ms: Date.now() - t0 };
});
socket.on('connect', () => {
  const engine = socket.io.engine;
  if (engine.transport.name === 'websocket') done();
  else engine.once('upgrade', done);
});
</script>
`;

const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://backend').pathname;
  if (path === '/_stats') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(stats));
    return;
  }
  if (path === '/') {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'X-Backend': name });
    res.end(req.method === 'HEAD' ? undefined : page);
    return;
  }
  // Everything under /socket.io/ is the Socket.IO server's; it answers
  // before this handler is called.
  if (!path.startsWith('/socket.io/')) {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
  }
});

const io = new Server(server);
io.engine.on('connection_error', (err) => {
  stats.errors[err.message] = (stats.errors[err.message] || 0) + 1;
});
io.on('connection', (socket) => {
  stats.connections++;
  socket.conn.once('upgrade', () => { stats.upgrades++; });
  socket.on('whoami', (msg, ack) => {
    if (typeof ack === 'function') ack({ backend: name, transport: socket.conn.transport.name, echo: msg });
  });
});

server.listen(port, '127.0.0.1', () => console.log(String(server.address().port)));
