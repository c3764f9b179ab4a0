// Echo backend for the wsproxy interop tests, on Node's ws. Prints the port
// it listens on, then serves until killed. Protocol: data messages are
// echoed with their type; "close:CODE:REASON" closes with that code and
// reason; the close frame a client sends is recorded under the id in the
// request's query and returned by a "report:ID" message as "CODE REASON"
// (or "none").
import { WebSocketServer } from 'ws';

const closes = new Map();
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: true,
  maxPayload: 64 << 20,
  handleProtocols: (protocols) => (protocols.has('chat.v1') ? 'chat.v1' : false),
});
wss.on('listening', () => console.log(String(wss.address().port)));
wss.on('connection', (ws, req) => {
  const id = new URL(req.url, 'http://backend').searchParams.get('id') || '';
  let serverClosed = false;
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      const s = data.toString();
      if (s.startsWith('close:')) {
        const [, code, ...reason] = s.split(':');
        serverClosed = true;
        ws.close(Number(code), reason.join(':'));
        return;
      }
      if (s.startsWith('report:')) {
        const got = closes.get(s.slice('report:'.length));
        ws.send(got ? `${got[0]} ${got[1]}` : 'none');
        return;
      }
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => {
    if (id && !serverClosed) closes.set(id, [code, reason.toString()]);
  });
});
