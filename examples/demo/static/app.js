// The demo page: which backend served the page, the polls and the socket,
// the chat, and what each backend saw.
const log = document.getElementById('log');
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
function tag(backend) { return '<span class="tag ' + esc(backend) + '">' + esc(backend) + '</span>'; }
function add(html, cls) {
  const d = document.createElement('div');
  if (cls) d.className = cls;
  d.innerHTML = html;
  log.appendChild(d);
  log.scrollTop = log.scrollHeight;
}

// The page's own backend: the X-Backend header of a HEAD of this page.
fetch(location.pathname, {method: 'HEAD', cache: 'no-store'}).then(r => {
  document.getElementById('page').innerHTML = tag(r.headers.get('X-Backend'));
});

const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
ws.onopen = () => { document.getElementById('status').textContent = 'connected'; };
ws.onclose = e => { document.getElementById('status').textContent = 'closed (code ' + e.code + ')'; };
ws.onmessage = e => {
  const m = JSON.parse(e.data);
  if (m.system) { document.getElementById('socket').innerHTML = tag(m.backend); add(tag(m.backend) + esc(m.text), 'sys'); }
  else add(tag(m.backend) + esc(m.text));
};
document.getElementById('form').onsubmit = e => {
  e.preventDefault();
  const t = document.getElementById('text');
  if (t.value && ws.readyState === 1) ws.send(t.value);
  t.value = '';
};

// Every poll says which backend answered it; with the sticky cookie it is
// always the same one.
const servedBy = {};
async function stats() {
  try {
    const s = await (await fetch('api/stats', {cache: 'no-store'})).json();
    servedBy[s.served_by] = (servedBy[s.served_by] || 0) + 1;
    const seen = Object.keys(servedBy);
    document.getElementById('polls').innerHTML = seen.map(b => tag(b) + servedBy[b]).join(' ') +
      (seen.length > 1 ? ' <span class="mismatch">moved between backends</span>' : '');
    document.getElementById('stats').innerHTML = Object.keys(s.sockets).sort().map(b =>
      '<tr><td>' + tag(b) + '</td><td>' + s.sockets[b] + '</td><td>' + s.requests[b] + '</td></tr>').join('');
  } catch (e) {}
}
stats(); setInterval(stats, 1000);
