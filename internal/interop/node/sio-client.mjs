// Socket.IO clients for the wsproxy interop tests: node sio-client.mjs '<json opts>'.
// Every client is a browser of its own: a cookie jar (when opts.cookies) and
// a source address (opts.addrs[i], when given). A client loads the page
// opts.loads times, one after the other; a load is what a browser tab does:
// GET / (when opts.page; the backend answers with X-Backend), then a Socket.IO
// client with the default transports (polling first, then the upgrade to
// WebSocket) and forceNew, as a new tab gets its own connection. A load
// waits until socket.io.engine.transport.name is 'websocket' (at once on
// connect, or at the engine's "upgrade" event), round-trips "whoami" and
// closes. The first opts.stay clients load once and keep their socket open
// until every other client is done, then round-trip again.
//
// opts: {url, clients, addrs, cookies, page, loads, stay, timeout (ms per load)}.
// Prints one JSON line: {summary: {loads, websocket, errors, backends}, loads: [...]};
// summary.errors counts every error, a load's errors list each once.
import http from 'node:http';
import { io } from 'socket.io-client';

const o = JSON.parse(process.argv[2]);
const clients = o.clients ?? (o.addrs || []).length;
const timeout = o.timeout ?? 10000;

// Cookies, as a browser keeps them for one host: name -> value.
class Jar {
  constructor() { this.m = new Map(); }
  header() { return [...this.m].map(([k, v]) => `${k}=${v}`).join('; '); }
  set(lines) {
    for (const line of lines || []) {
      const [pair, ...attrs] = line.split(';');
      const i = pair.indexOf('=');
      if (i <= 0) continue;
      const name = pair.slice(0, i).trim();
      const gone = attrs.some((a) => /^\s*max-age\s*=\s*(0|-\d+)\s*$/i.test(a));
      if (gone) this.m.delete(name); else this.m.set(name, pair.slice(i + 1).trim());
    }
  }
}

function getPage(base, jar, agent) {
  return new Promise((resolve, reject) => {
    const headers = {};
    if (jar && jar.m.size) headers.cookie = jar.header();
    const req = http.get(new URL('/', base), { agent, headers, timeout }, (res) => {
      res.resume();
      res.on('end', () => {
        if (jar) jar.set(res.headers['set-cookie']);
        resolve({ status: res.statusCode, backend: res.headers['x-backend'] || null });
      });
    });
    req.on('timeout', () => req.destroy(new Error('page timed out')));
    req.on('error', reject);
  });
}

// describe turns a Socket.IO or engine error into one line, with the body
// of a failed polling request ('{"code":1,"message":"Session ID unknown"}').
function describe(e) {
  let s = String(e && e.message || e);
  if (e && e.description !== undefined && typeof e.description !== 'object') s += ` ${e.description}`;
  const body = e && e.context && e.context.responseText;
  if (typeof body === 'string' && body) s += ` ${body.trim()}`;
  return s;
}

// session opens one Socket.IO connection and resolves once it is on
// WebSocket and answered "whoami" (or at the timeout), with the socket
// still open.
// Errors, each kept once with how often it happened: a session that keeps
// failing reconnects every second.
class Errors extends Array {
  constructor() { super(); this.counts = {}; }
  push(e) {
    this.counts[e] = (this.counts[e] || 0) + 1;
    return this.counts[e] === 1 ? super.push(e) : this.length;
  }
}

function session(c, jar, agent) {
  const errors = new Errors();
  const extraHeaders = {};
  if (jar && jar.m.size) extraHeaders.cookie = jar.header();
  const socket = io(o.url, {
    forceNew: true,
    // engine.io-client 6.5+ keeps, in Node, the cookies of its own requests
    // when withCredentials is set; the jar's cookies from earlier loads go
    // in by extraHeaders.
    withCredentials: !!jar,
    extraHeaders,
    agent,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
  });
  const watch = (engine) => {
    engine.on('upgradeError', (e) => errors.push(`upgradeError: ${describe(e)}`));
  };
  watch(socket.io.engine);
  socket.io.on('open', () => watch(socket.io.engine));
  socket.on('connect_error', (e) => errors.push(`connect_error: ${describe(e)}`));
  socket.on('disconnect', (reason, d) => {
    if (reason !== 'io client disconnect') errors.push(`disconnect: ${reason}${d ? ' ' + describe(d) : ''}`);
  });
  const t0 = Date.now();
  const out = { client: c, errors, socket: null, transport: null, websocket: false };
  return new Promise((resolve) => {
    const finish = () => { clearTimeout(timer); out.ms = Date.now() - t0; resolve({ out, socket }); };
    const timer = setTimeout(() => {
      errors.push(`not on websocket after ${timeout}ms (transport ${socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.name})`);
      finish();
    }, timeout);
    const ready = async () => {
      try {
        const a = await socket.timeout(5000).emitWithAck('whoami', `client ${c}`);
        out.socket = a.backend;
        out.transport = a.transport;
        out.websocket = a.transport === 'websocket' && socket.io.engine.transport.name === 'websocket';
        finish();
      } catch (e) {
        errors.push(`whoami: ${describe(e)}`);
      }
    };
    socket.on('connect', () => {
      const engine = socket.io.engine;
      if (engine.transport.name === 'websocket') ready();
      else engine.once('upgrade', ready);
    });
  });
}

async function load(c, n, jar, agent) {
  let page = null;
  if (o.page) {
    try {
      page = await getPage(o.url, jar, agent);
    } catch (e) {
      page = { status: 0, backend: null, error: String(e) };
    }
  }
  const { out, socket } = await session(c, jar, agent);
  // engine.io-client's jar (a private field) holds what was set during
  // the session: keep it for the next load, as a browser would.
  const ej = socket.io.engine && socket.io.engine._cookieJar;
  if (jar && ej) for (const [k, v] of ej.cookies) jar.m.set(k, v.value);
  return { out: { ...out, load: n, addr: (o.addrs || [])[c] || null, page: page && page.backend, pageStatus: page && page.status }, socket };
}

function agentFor(c) {
  const addr = (o.addrs || [])[c];
  // keepAlive off: every request on a new connection, so a balancer in
  // front sees each of them.
  return new http.Agent({ keepAlive: false, ...(addr ? { localAddress: addr } : {}) });
}

const stay = Math.min(o.stay || 0, clients);
const results = [];
const held = [];
const jars = [];
for (let c = 0; c < clients; c++) jars.push(o.cookies ? new Jar() : null);

const stayers = [];
for (let c = 0; c < stay; c++) {
  stayers.push(load(c, 0, jars[c], agentFor(c)).then((r) => { held.push({ c, ...r }); }));
}
await Promise.all(stayers);

const reloaders = [];
for (let c = stay; c < clients; c++) {
  reloaders.push((async () => {
    const agent = agentFor(c);
    for (let n = 0; n < (o.loads ?? 1); n++) {
      const { out, socket } = await load(c, n, jars[c], agent);
      socket.disconnect();
      results.push(out);
    }
  })());
}
await Promise.all(reloaders);

// The clients that stayed: still connected, still on the same backend?
for (const h of held) {
  const r = { ...h.out };
  try {
    const a = await h.socket.timeout(5000).emitWithAck('whoami', `client ${h.c} again`);
    if (a.backend !== r.socket || a.transport !== 'websocket') r.errors.push(`after the reloads: on ${a.backend} by ${a.transport}`);
    r.websocket = r.websocket && a.transport === 'websocket' && a.backend === r.socket;
  } catch (e) {
    r.errors.push(`after the reloads: ${describe(e)}`);
    r.websocket = false;
  }
  r.stayed = true;
  h.socket.disconnect();
  results.push(r);
}

const summary = { loads: results.length, websocket: 0, errors: {}, backends: {} };
for (const r of results) {
  if (r.websocket) summary.websocket++;
  if (r.socket) summary.backends[r.socket] = (summary.backends[r.socket] || 0) + 1;
  for (const [e, n] of Object.entries(r.errors.counts)) summary.errors[e] = (summary.errors[e] || 0) + n;
}
results.sort((a, b) => a.client - b.client || (a.load ?? 0) - (b.load ?? 0));
const loads = results.map((r) => ({ ...r, errors: [...r.errors] }));
// Exit once the line is written: a pipe may take it in several writes.
process.stdout.write(JSON.stringify({ summary, loads }) + '\n', () => process.exit(0));
