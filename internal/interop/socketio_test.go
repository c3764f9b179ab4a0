package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy"
)

// Socket.IO, as deployed: its client starts every session on HTTP
// long-polling and then upgrades to WebSocket, so every polling request and
// the upgrade of one session must reach the backend that holds the session;
// any other backend answers 400 "Session ID unknown". The Node scripts are
// node/sio-backend.mjs and node/sio-client.mjs.

func sioDeps() []func() error {
	return append(nodeDeps(),
		haveFile(filepath.Join(nodeDir, "node_modules", "socket.io", "package.json")),
		haveFile(filepath.Join(nodeDir, "node_modules", "socket.io-client", "package.json")))
}

// sioBackend is a running sio-backend.mjs.
type sioBackend struct {
	name string
	url  string // ws://127.0.0.1:port, the proxy's target
}

// startSIOBackends starts one Socket.IO backend per name.
func startSIOBackends(t *testing.T, names ...string) ([]*sioBackend, error) {
	t.Helper()
	var bs []*sioBackend
	for _, name := range names {
		b, err := startProcess(t, "node", filepath.Join(nodeDir, "sio-backend.mjs"), name)
		if err != nil {
			return nil, err
		}
		bs = append(bs, &sioBackend{name: name, url: b.url})
	}
	return bs, nil
}

func sioTargets(bs []*sioBackend) []string {
	var ts []string
	for _, b := range bs {
		ts = append(ts, b.url)
	}
	return ts
}

// sioStats is what a backend counted, asked directly (not through the proxy).
type sioStats struct {
	Backend     string         `json:"backend"`
	Connections int            `json:"connections"`
	Upgrades    int            `json:"upgrades"`
	Errors      map[string]int `json:"errors"` // the engine's connection_error messages
}

func (b *sioBackend) stats(ctx context.Context) (sioStats, error) {
	var s sioStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http"+strings.TrimPrefix(b.url, "ws")+"/_stats", nil)
	if err != nil {
		return s, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// sessionUnknown sums the backends' "Session ID unknown" answers.
func sessionUnknown(ctx context.Context, bs []*sioBackend) (int, error) {
	n := 0
	for _, b := range bs {
		s, err := b.stats(ctx)
		if err != nil {
			return 0, err
		}
		n += s.Errors["Session ID unknown"]
	}
	return n, nil
}

// sioOpts are the options of sio-client.mjs.
type sioOpts struct {
	URL     string   `json:"url"`
	Clients int      `json:"clients"`
	Addrs   []string `json:"addrs,omitempty"` // a source address per client
	Cookies bool     `json:"cookies"`         // keep cookies as a browser does
	Page    bool     `json:"page"`            // GET / before each Socket.IO connection
	Loads   int      `json:"loads"`           // loads per client, one after the other
	Stay    int      `json:"stay"`            // the first Stay clients load once and stay connected
	Timeout int      `json:"timeout"`         // ms for one load to reach WebSocket
}

// sioLoad is one page load of one client.
type sioLoad struct {
	Client     int      `json:"client"`
	Load       int      `json:"load"`
	Addr       string   `json:"addr"`
	Page       string   `json:"page"` // backend that served GET /
	PageStatus int      `json:"pageStatus"`
	Socket     string   `json:"socket"` // backend that answered "whoami"
	Transport  string   `json:"transport"`
	WebSocket  bool     `json:"websocket"`
	Errors     []string `json:"errors"`
	Stayed     bool     `json:"stayed"`
	MS         int      `json:"ms"`
}

type sioRun struct {
	Summary struct {
		Loads     int            `json:"loads"`
		WebSocket int            `json:"websocket"`
		Errors    map[string]int `json:"errors"`
		Backends  map[string]int `json:"backends"`
	} `json:"summary"`
	Loads []sioLoad `json:"loads"`
}

func runSIOClients(ctx context.Context, o sioOpts) (*sioRun, error) {
	var r sioRun
	return &r, runNodeScript(ctx, "sio-client.mjs", o, &r)
}

// loopbackAddrs gives n distinct client addresses on loopback, so that a
// key on the client's IP has n values.
func loopbackAddrs(n int) []string {
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("127.0.0.%d", 10+i)
	}
	return addrs
}

// sessionErrors lists the client-side errors that name a lost session.
func sessionErrors(r *sioRun) []string {
	var out []string
	for e, n := range r.Summary.Errors {
		if strings.Contains(e, "Session ID unknown") {
			out = append(out, fmt.Sprintf("%dx %s", n, e))
		}
	}
	sort.Strings(out)
	return out
}

// l4Balancer stands for a TCP load balancer in front of proxy replicas: each
// connection goes to a replica chosen by pick, from the client's own address
// (as a transparent balancer or the PROXY protocol would give it), so a
// replica sees the client's IP.
type l4Balancer struct {
	ln       net.Listener
	replicas []string
	pick     func(n int, i int64) int // replica for the i-th connection
	next     atomic.Int64
	counts   []atomic.Int64 // connections per replica
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// randomPick and turnPick are what an L4 balancer does: a random replica,
// or each in turn.
func randomPick(n int, _ int64) int { return rand.IntN(n) }
func turnPick(n int, i int64) int   { return int(i % int64(n)) }

func newL4Balancer(t *testing.T, pick func(n int, i int64) int, replicas ...string) *l4Balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &l4Balancer{ln: ln, replicas: replicas, pick: pick, counts: make([]atomic.Int64, len(replicas)), conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.serve()
	t.Cleanup(l.close)
	return l
}

func (l *l4Balancer) url() string { return "http://" + l.ln.Addr().String() }

func (l *l4Balancer) serve() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.wg.Add(1)
		go func() { defer l.wg.Done(); l.relay(c) }()
	}
}

// track registers c so that close can end it; false once closing.
func (l *l4Balancer) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *l4Balancer) untrack(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

func (l *l4Balancer) relay(client net.Conn) {
	defer client.Close()
	if !l.track(client) {
		return
	}
	defer l.untrack(client)
	i := l.pick(len(l.replicas), l.next.Add(1)-1)
	l.counts[i].Add(1)
	from := client.RemoteAddr().(*net.TCPAddr)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.IP}, Timeout: 5 * time.Second}
	up, err := d.Dial("tcp", l.replicas[i])
	if err != nil {
		return
	}
	defer up.Close()
	if !l.track(up) {
		return
	}
	defer l.untrack(up)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, client)
		_ = up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(client, up)
	_ = client.(*net.TCPConn).CloseWrite()
	<-done
}

func (l *l4Balancer) close() {
	l.ln.Close()
	l.mu.Lock()
	for c := range l.conns {
		c.Close()
	}
	l.conns = nil
	l.mu.Unlock()
	l.wg.Wait()
}

func (l *l4Balancer) perReplica() string {
	var parts []string
	for i := range l.counts {
		parts = append(parts, fmt.Sprint(l.counts[i].Load()))
	}
	return strings.Join(parts, "/")
}

// The Socket.IO table, filled by TestSocketIOReloads and printed by
// TestMain after the matrix.
var (
	sioMu   sync.Mutex
	sioRows [][]string
)

var sioHeader = []string{"stickiness", "reloads that changed backend", "Socket.IO contexts on WebSocket", "clients per backend", "connections per replica", "Session ID unknown", "affinity kept/assigned/not kept"}

func recordSIO(name string, cells ...string) {
	sioMu.Lock()
	defer sioMu.Unlock()
	sioRows = append(sioRows, append([]string{name}, cells...))
}

func printSIO(w io.Writer) {
	sioMu.Lock()
	defer sioMu.Unlock()
	if len(sioRows) == 0 {
		return
	}
	fmt.Fprintln(w, "\nSocket.IO reloads (TestSocketIOReloads: 2 Node socket.io backends, 2 wsproxy replicas behind a random TCP balancer,")
	fmt.Fprintln(w, "clients with cookie jars and their own loopback address; some stay connected while the others reload)")
	widths := make([]int, len(sioHeader))
	for _, row := range append([][]string{sioHeader}, sioRows...) {
		for i, cell := range row {
			widths[i] = max(widths[i], len(cell))
		}
	}
	line := func(row []string) {
		for i, cell := range row {
			fmt.Fprintf(w, "| %-*s ", widths[i], cell)
		}
		fmt.Fprintln(w, "|")
	}
	fmt.Fprintln(w, "(affinity: Stats.Affinity of both replicas, requests and upgrades: Kept / Assigned a cookie / not kept, by any cause)")
	line(sioHeader)
	sep := make([]string, len(widths))
	for i, n := range widths {
		sep[i] = strings.Repeat("-", n)
	}
	line(sep)
	for _, row := range sioRows {
		line(row)
	}
}

// reloadChanges counts the reloads (every load of a client after its first)
// that met another backend than the load before: for the page, the
// Socket.IO session or both. A load that reached no backend counts as
// changed.
func reloadChanges(r *sioRun) (changed, reloads int, detail []string) {
	prev := map[int]string{}
	for _, l := range r.Loads {
		if l.Stayed {
			continue
		}
		last, seen := prev[l.Client]
		prev[l.Client] = l.Socket
		if !seen {
			continue
		}
		reloads++
		if l.Page != last || l.Socket != last {
			changed++
			detail = append(detail, fmt.Sprintf("client %d load %d: before %q, page %q, socket %q", l.Client, l.Load, last, l.Page, l.Socket))
		}
	}
	return changed, reloads, detail
}

// clientsPerBackend counts where each client's first load went.
func clientsPerBackend(r *sioRun, bs []*sioBackend) string {
	n := map[string]int{}
	for _, l := range r.Loads {
		if l.Load == 0 {
			n[l.Socket]++
		}
	}
	var parts []string
	for _, b := range bs {
		parts = append(parts, fmt.Sprintf("%s: %d", b.name, n[b.name]))
	}
	if n[""] > 0 {
		parts = append(parts, fmt.Sprintf("none: %d", n[""]))
	}
	return strings.Join(parts, ", ")
}

func percent(n, of int) string {
	if of == 0 {
		return "0/0"
	}
	return fmt.Sprintf("%d/%d (%.1f %%)", n, of, 100*float64(n)/float64(of))
}

// sioProxy serves one wsproxy, built with opts, for the targets, and
// returns it with its base URL.
func sioProxy(t *testing.T, targets []string, opts ...wsproxy.Option) (*wsproxy.Proxy, string) {
	t.Helper()
	p, err := wsproxy.New(targets, opts...)
	require.NoError(t, err)
	srv := httptest.NewServer(p)
	t.Cleanup(func() { srv.Close(); p.Close() })
	return p, srv.URL
}

// affinity sums the replicas' Stats.Affinity.
func affinity(ps []*wsproxy.Proxy) wsproxy.AffinityStats {
	var a wsproxy.AffinityStats
	for _, p := range ps {
		s := p.Stats().Affinity
		a.Kept += s.Kept
		a.Assigned += s.Assigned
		a.Unknown += s.Unknown
		a.Down += s.Down
		a.Full += s.Full
		a.Failed += s.Failed
		a.Spilled += s.Spilled
	}
	return a
}

// notKept counts the sticky choices the proxies could not honour.
func notKept(a wsproxy.AffinityStats) int64 {
	return a.Unknown + a.Down + a.Full + a.Failed + a.Spilled
}

var sioCookie = http.Cookie{Name: "wsproxy_lb", Path: "/", HttpOnly: true}

// TestSocketIOBehindProxy runs Socket.IO clients with the default transports
// through one proxy in front of two Socket.IO backends: with a sticky cookie
// and with a hash of the client's IP, every client ends on WebSocket and no
// backend answers "Session ID unknown"; without stickiness (round robin)
// the sessions break, which shows the test can tell.
func TestSocketIOBehindProxy(t *testing.T) {
	if err := need(sioDeps()...); err != nil {
		skipOrFail(t, err)
	}
	const clients = 8
	for _, tt := range []struct {
		name   string
		opts   []wsproxy.Option
		sticky bool
	}{
		{"cookie", []wsproxy.Option{wsproxy.WithHTTP(), wsproxy.WithStickyCookie(sioCookie)}, true},
		{"client-ip", []wsproxy.Option{wsproxy.WithHTTP(), wsproxy.WithBalancer(wsproxy.ConsistentHash(wsproxy.ClientIPKey()))}, true},
		{"round-robin", []wsproxy.Option{wsproxy.WithHTTP(), wsproxy.WithBalancer(wsproxy.RoundRobin())}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			bs, err := startSIOBackends(t, "sio-1", "sio-2")
			require.NoError(t, err)
			_, base := sioProxy(t, sioTargets(bs), tt.opts...)
			timeout := 20000
			if !tt.sticky {
				// Long enough for a few reconnections; they keep failing.
				timeout = 4000
			}
			// No page first: the cookie comes with the first polling
			// response, as for a page served from elsewhere.
			r, err := runSIOClients(ctx, sioOpts{URL: base, Clients: clients, Addrs: loopbackAddrs(clients), Cookies: true, Loads: 1, Timeout: timeout})
			require.NoError(t, err)
			unknown, err := sessionUnknown(ctx, bs)
			require.NoError(t, err)
			t.Logf("%d/%d on WebSocket, backends %v, backends answered Session ID unknown %d times, client errors %v",
				r.Summary.WebSocket, r.Summary.Loads, r.Summary.Backends, unknown, r.Summary.Errors)
			require.Equal(t, clients, r.Summary.Loads)
			if !tt.sticky {
				assert.Positive(t, unknown, "round robin without stickiness: some polling request or upgrade should have met the other backend")
				return
			}
			assert.Equal(t, clients, r.Summary.WebSocket, "clients on WebSocket")
			assert.Zero(t, unknown, "Session ID unknown answers of the backends")
			assert.Empty(t, sessionErrors(r), "client errors naming a lost session")
			for _, l := range r.Loads {
				assert.Equal(t, "websocket", l.Transport, "client %d: transport the backend saw", l.Client)
			}
			if tt.name == "cookie" {
				// The first choice is the default round robin, so 8 new
				// clients spread over both backends.
				assert.Len(t, r.Summary.Backends, 2, "backends that got clients")
			}
		})
	}
}

// TestSocketIOReloads is the measurement of the closing note: two
// proxy replicas (independent wsproxy.New with the same targets and
// options) behind a TCP balancer that sends each connection to a random
// replica, two Socket.IO backends; 4 clients stay connected while 8 others
// reload 10 times each: GET / and a new Socket.IO session, with the cookies
// of the earlier loads, from the client's own address. No reload may change
// backend, and every context must reach WebSocket. The table goes into the
// interop report.
func TestSocketIOReloads(t *testing.T) {
	if err := need(sioDeps()...); err != nil {
		skipOrFail(t, err)
	}
	for _, tt := range []struct {
		name, row string
		opts      []wsproxy.Option
	}{
		{"cookie", "WithStickyCookie(" + sioCookie.Name + ")", []wsproxy.Option{wsproxy.WithHTTP(), wsproxy.WithStickyCookie(sioCookie)}},
		{"client-ip", "ConsistentHash(ClientIPKey())", []wsproxy.Option{wsproxy.WithHTTP(), wsproxy.WithBalancer(wsproxy.ConsistentHash(wsproxy.ClientIPKey()))}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := measureReloads(t, 20000, tt.opts...)
			recordSIO(tt.row, m.cells()...)
			assert.Equal(t, reloadClients*(reloadLoads-1), m.reloads)
			assert.Zero(t, m.changed, "reloads that changed backend: %v", m.detail)
			assert.Equal(t, m.run.Summary.Loads, m.run.Summary.WebSocket, "contexts on WebSocket")
			assert.Zero(t, m.unknown, "Session ID unknown answers of the backends")
			assert.Zero(t, notKept(m.affinity), "sticky choices not kept: %+v", m.affinity)
			assert.Positive(t, m.affinity.Kept, "sticky choices kept")
			for i := range m.lb.counts {
				assert.Positive(t, m.lb.counts[i].Load(), "connections to replica %d: the balancer must use both", i)
			}
		})
	}
}

// TestSocketIOReloadsBaseline measures, for comparison with
// TestSocketIOReloads, what the same clients get without stickiness and
// with ConsistentHash's opt-in load bound. It runs only when
// WSPROXY_SIO_BASELINE=1, as it spends a minute on sessions that fail.
func TestSocketIOReloadsBaseline(t *testing.T) {
	if os.Getenv("WSPROXY_SIO_BASELINE") != "1" {
		t.Skip("set WSPROXY_SIO_BASELINE=1 to measure the baseline rows")
	}
	if err := need(sioDeps()...); err != nil {
		skipOrFail(t, err)
	}
	t.Run("round-robin", func(t *testing.T) {
		m := measureReloads(t, 2500, wsproxy.WithHTTP(), wsproxy.WithBalancer(wsproxy.RoundRobin()))
		recordSIO("RoundRobin(), no stickiness", m.cells()...)
		assert.Positive(t, m.changed, "reloads that changed backend")
		assert.Positive(t, m.unknown, "Session ID unknown answers")
	})
	t.Run("load-factor", func(t *testing.T) {
		// Not asserted: whether the bound moves a key depends on how the
		// hash spread the clients.
		m := measureReloads(t, 2500, wsproxy.WithHTTP(),
			wsproxy.WithBalancer(wsproxy.ConsistentHash(wsproxy.ClientIPKey(), wsproxy.WithLoadFactor(1.25))))
		recordSIO("ConsistentHash(ClientIPKey(), WithLoadFactor(1.25))", m.cells()...)
	})
}

// The shape of TestSocketIOReloads.
const stayClients, reloadClients, reloadLoads = 4, 8, 10

// reloads is one measurement of TestSocketIOReloads.
type reloads struct {
	run              *sioRun
	bs               []*sioBackend
	lb               *l4Balancer
	changed, reloads int
	detail           []string
	unknown          int
	affinity         wsproxy.AffinityStats // both replicas'
}

// measureReloads runs the clients of TestSocketIOReloads through two
// replicas built with opts; timeout (ms) bounds each load's wait for
// WebSocket.
func measureReloads(t *testing.T, timeout int, opts ...wsproxy.Option) *reloads {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	bs, err := startSIOBackends(t, "sio-1", "sio-2")
	require.NoError(t, err)
	var proxies []*wsproxy.Proxy
	var replicas []string
	for range 2 {
		p, base := sioProxy(t, sioTargets(bs), opts...)
		proxies = append(proxies, p)
		replicas = append(replicas, strings.TrimPrefix(base, "http://"))
	}
	lb := newL4Balancer(t, randomPick, replicas...)
	clients := stayClients + reloadClients
	r, err := runSIOClients(ctx, sioOpts{
		URL: lb.url(), Clients: clients, Addrs: loopbackAddrs(clients),
		Cookies: true, Page: true, Loads: reloadLoads, Stay: stayClients, Timeout: timeout,
	})
	require.NoError(t, err)
	require.Equal(t, stayClients+reloadClients*reloadLoads, r.Summary.Loads)
	m := &reloads{run: r, bs: bs, lb: lb, affinity: affinity(proxies)}
	m.unknown, err = sessionUnknown(ctx, bs)
	require.NoError(t, err)
	m.changed, m.reloads, m.detail = reloadChanges(r)
	t.Logf("changed %s, on WebSocket %d/%d, clients %s, connections per replica %s, affinity %+v, client errors %v",
		percent(m.changed, m.reloads), r.Summary.WebSocket, r.Summary.Loads, clientsPerBackend(r, bs), lb.perReplica(), m.affinity, r.Summary.Errors)
	return m
}

// cells are the table's columns after the first.
func (m *reloads) cells() []string {
	return []string{percent(m.changed, m.reloads), fmt.Sprintf("%d/%d", m.run.Summary.WebSocket, m.run.Summary.Loads),
		clientsPerBackend(m.run, m.bs), m.lb.perReplica(), fmt.Sprint(m.unknown),
		fmt.Sprintf("%d/%d/%d", m.affinity.Kept, m.affinity.Assigned, notKept(m.affinity))}
}

// TestSocketIOBrowser loads a Socket.IO page in headless Chromium three
// times, through two replicas with a sticky cookie behind a TCP balancer
// that hands connections to each in turn: the browser's own cookie jar (the
// cookie is HttpOnly) keeps the page, the polling and the WebSocket of
// every load on one backend.
func TestSocketIOBrowser(t *testing.T) {
	if err := need(sioDeps()...); err != nil {
		skipOrFail(t, err)
	}
	b, err := getBrowser(t)
	if err != nil {
		skipOrFail(t, err)
	}
	bs, err := startSIOBackends(t, "sio-1", "sio-2")
	require.NoError(t, err)
	var replicas []string
	for range 2 {
		_, base := sioProxy(t, sioTargets(bs), wsproxy.WithHTTP(), wsproxy.WithStickyCookie(sioCookie))
		replicas = append(replicas, strings.TrimPrefix(base, "http://"))
	}
	lb := newL4Balancer(t, turnPick, replicas...)
	var first string
	for i := range 3 {
		var ans struct {
			Result struct {
				Page      string   `json:"page"`
				Socket    string   `json:"socket"`
				Transport string   `json:"transport"`
				Errors    []string `json:"errors"`
			} `json:"result"`
			Error string `json:"error"`
		}
		require.NoError(t, b.do(map[string]any{"op": "run", "page": lb.url() + "/", "timeout": 20000}, 40*time.Second, &ans))
		require.Empty(t, ans.Error)
		r := ans.Result
		t.Logf("load %d: page %s, socket %s by %s, errors %v", i, r.Page, r.Socket, r.Transport, r.Errors)
		assert.Equal(t, "websocket", r.Transport)
		assert.Equal(t, r.Page, r.Socket, "the page and the socket on one backend")
		assert.Empty(t, r.Errors)
		if i == 0 {
			first = r.Page
		}
		assert.Equal(t, first, r.Page, "load %d on the backend of the first", i)
	}
	for i := range lb.counts {
		assert.Positive(t, lb.counts[i].Load(), "connections to replica %d (all %s)", i, lb.perReplica())
	}
}
