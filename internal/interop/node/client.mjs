// Node ws client for the wsproxy interop tests: node client.mjs '<json opts>'
// runs the checks of checks.mjs and prints the results as one JSON line.
import WebSocket from 'ws';
import { runChecks } from './checks.mjs';

const o = JSON.parse(process.argv[2]);
const newWS = (url, protocols) => new WebSocket(url, protocols, { perMessageDeflate: true, maxPayload: 64 << 20 });

const withTimeout = (p, ms, what) => Promise.race([
  p, new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} timed out`)), ms)),
]);

const extra = {
  async fragments(ws, data, parts) {
    const binary = typeof data !== 'string';
    const bytes = binary ? data : Buffer.from(data);
    let off = 0;
    for (let i = 0; i < parts.length; i++) {
      const end = i === parts.length - 1 ? bytes.length : off + parts[i];
      ws.send(bytes.subarray(off, end), { binary, fin: end === bytes.length });
      off = end;
    }
  },
  ping(ws, data) {
    return withTimeout(new Promise((resolve) => {
      ws.once('pong', (d) => resolve(d.toString()));
      ws.ping(data);
    }), 10000, 'pong');
  },
};

const results = await runChecks(newWS, o, extra);
console.log(JSON.stringify(results));
process.exit(0);
