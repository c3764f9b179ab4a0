// The interop checks for WebSocket clients with the browser's API, shared by
// the Node ws client (client.mjs) and the Chromium page (browser.mjs). Each
// check yields {name, status: 'pass'|'fail'|'unsupported'|'pending', detail};
// 'pending' means the Go test finishes the check (client-close: it asks the
// backend what close frame arrived).

export const sizes = [0, 1, 125, 126, 65535, 65536, 1 << 20];

// payload returns the test message of n bytes: lowercase letters for text,
// pseudo-random bytes for binary (the Go clients use the same generator).
export function payload(n, binary) {
  const b = new Uint8Array(n);
  let x = 2463534242;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = binary ? x & 0xff : 97 + (x % 26);
  }
  return binary ? b : new TextDecoder().decode(b);
}

function sameData(want, got) {
  if (typeof want === 'string') {
    if (typeof got !== 'string') return 'got a binary message, want text';
    if (got.length !== want.length) return `got ${got.length} chars, want ${want.length}`;
    return got === want ? '' : 'content differs';
  }
  if (typeof got === 'string') return 'got a text message, want binary';
  const g = new Uint8Array(got);
  if (g.length !== want.length) return `got ${g.length} bytes, want ${want.length}`;
  for (let i = 0; i < g.length; i++) if (g[i] !== want[i]) return `byte ${i} differs`;
  return '';
}

// A connection with a message queue, so checks can await the next message.
class Conn {
  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.waiters = [];
    this.closed = null;
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (e) => this.push({ data: e.data });
    ws.onclose = (e) => {
      this.closed = { code: e.code, reason: e.reason };
      this.push({ close: this.closed });
    };
  }
  push(item) {
    const w = this.waiters.shift();
    if (w) w(item); else this.queue.push(item);
  }
  next(ms = 10000) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no message within ${ms}ms`)), ms);
      this.waiters.push((item) => { clearTimeout(timer); resolve(item); });
    });
  }
  async recvData() {
    const item = await this.next();
    if (item.close) throw new Error(`connection closed: ${item.close.code} ${item.close.reason}`);
    return item.data;
  }
  async waitClose(ms = 10000) {
    for (;;) {
      const item = await this.next(ms);
      if (item.close) return item.close;
    }
  }
}

function open(newWS, url, protocols) {
  return new Promise((resolve, reject) => {
    const ws = newWS(url, protocols);
    const timer = setTimeout(() => reject(new Error('handshake timed out')), 10000);
    ws.onopen = () => { clearTimeout(timer); resolve(new Conn(ws)); };
    ws.onerror = () => { clearTimeout(timer); reject(new Error('handshake failed')); };
  });
}

// runChecks runs every check against o.url. newWS(url, protocols) makes a
// WebSocket. extra.fragments(ws, data, parts) and extra.ping(ws) exist only
// where the client can do them. o: {url, id1, id2, wantDeflate, closeReason}.
export async function runChecks(newWS, o, extra = {}) {
  const out = [];
  const add = (name, status, detail = '') => out.push({ name, status, detail });
  let c;
  try {
    c = await open(newWS, `${o.url}?id=${o.id1}`, ['chat.v2', 'chat.v1']);
    add('handshake', 'pass');
  } catch (e) {
    add('handshake', 'fail', String(e));
    return out;
  }
  add('subprotocol', c.ws.protocol === 'chat.v1' ? 'pass' : 'fail', `negotiated "${c.ws.protocol}"`);
  const ext = String(c.ws.extensions || '');
  const deflate = ext.includes('permessage-deflate');
  if (deflate !== o.wantDeflate) add('permessage-deflate', 'fail', `extensions "${ext}", want deflate=${o.wantDeflate}`);
  else add('permessage-deflate', o.wantDeflate ? 'pass' : 'unsupported', o.wantDeflate ? ext : o.noDeflate);

  for (const binary of [false, true]) {
    for (const n of sizes) {
      const name = `${binary ? 'binary' : 'text'}-${n}`;
      if (o.noFragments && o.fragmentsAbove && n > o.fragmentsAbove) {
        add(name, 'unsupported', `the client sends messages over ${o.fragmentsAbove} bytes as several frames: ${o.noFragments}`);
        continue;
      }
      try {
        const want = payload(n, binary);
        c.ws.send(want);
        const diff = sameData(want, await c.recvData());
        add(name, diff ? 'fail' : 'pass', diff);
      } catch (e) {
        add(name, 'fail', String(e));
      }
    }
  }

  if (!extra.fragments) add('fragmented', 'unsupported', o.noClientFragments || 'client cannot send fragments');
  else if (o.noFragments) add('fragmented', 'unsupported', o.noFragments);
  else {
    try {
      let diff = '';
      for (const binary of [false, true]) {
        const want = payload(30000, binary);
        await extra.fragments(c.ws, want, [7000, 11000, 12000]);
        diff = diff || sameData(want, await c.recvData());
      }
      add('fragmented', diff ? 'fail' : 'pass', diff || 'text and binary in 3 frames each');
    } catch (e) {
      add('fragmented', 'fail', String(e));
    }
  }

  if (!extra.ping) add('ping', 'unsupported', o.noClientPing || 'client cannot send pings');
  else {
    try {
      const got = await extra.ping(c.ws, 'ping-42');
      add('ping', got === 'ping-42' ? 'pass' : 'fail', `pong payload "${got}"`);
    } catch (e) {
      add('ping', 'fail', String(e));
    }
  }

  try {
    c.ws.close(4001, 'client bye');
    const got = await c.waitClose();
    add('client-close', 'pending', `client saw ${got.code} "${got.reason}"`);
  } catch (e) {
    add('client-close', 'fail', String(e));
  }

  try {
    const c2 = await open(newWS, `${o.url}?id=${o.id2}`, ['chat.v2', 'chat.v1']);
    c2.ws.send('close:4002:server bye');
    const got = await c2.waitClose();
    const ok = got.code === 4002 && got.reason === o.closeReason;
    add('server-close', ok ? 'pass' : 'fail', `got ${got.code} "${got.reason}", want 4002 "${o.closeReason}"`);
  } catch (e) {
    add('server-close', 'fail', String(e));
  }
  return out;
}
