package wsproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"

	"github.com/wsproxy/wsproxy/internal/leakcheck"
	engine "github.com/wsproxy/wsproxy/internal/tunnel"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func TestMain(m *testing.M) {
	reexecWithXConnect() // for the HTTP/2 tests
	// WSPROXY_TEST_PARK_AFTER=5ms makes every pump park in the reactor
	// almost at once, to run the whole suite through the parking paths.
	if d, err := time.ParseDuration(os.Getenv("WSPROXY_TEST_PARK_AFTER")); err == nil {
		parkAfter = d
	}
	// WSPROXY_TEST_DRIVER=goroutine (or loop) runs every tunnel with that
	// engine driver, so that both stay tested.
	switch os.Getenv("WSPROXY_TEST_DRIVER") {
	case "goroutine":
		engineDriver = engine.DriverGoroutines
	case "loop":
		engineDriver = engine.DriverLoops
	}
	leakcheck.Main(m)
}

// effectiveParkAfter is how long the proxies of the tests wait before their
// pumps park.
func effectiveParkAfter() time.Duration {
	if parkAfter > 0 {
		return parkAfter
	}
	return engine.DefaultParkAfter
}

// Go's HTTP/2 server accepts extended CONNECT only with GODEBUG=
// http2xconnect=1, which net/http reads from the environment in its own
// init, before any test code runs (//go:debug does not know the setting).
// So TestMain restarts the test binary once with the setting added. Only
// HTTP/2 servers are affected: they advertise SETTINGS_ENABLE_CONNECT_PROTOCOL.
func reexecWithXConnect() {
	const setting = "http2xconnect=1"
	old := os.Getenv("GODEBUG")
	if strings.Contains(old, setting) {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return // the h2 tests will say what is missing
	}
	env := []string{"GODEBUG=" + strings.TrimPrefix(old+","+setting, ",")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	syscall.Exec(exe, os.Args, env) // returns only on failure
}

// Servers, proxies and clients: the parts of most tests.

// newBackend starts an HTTP server with handler h and returns its ws:// URL.
func newBackend(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return "ws://" + s.Listener.Addr().String()
}

// newEcho starts an echo backend and returns its ws:// URL.
func newEcho(t *testing.T) string {
	t.Helper()
	return newBackend(t, wstest.EchoHandler())
}

// refusingAddr returns a loopback host:port where connections are refused
// and that no listener can take while the test runs: the local end of a
// connection the test keeps open. A closed listener's port is not enough:
// the next Listen, maybe the test's own proxy, can get the same port, and
// once did, making a proxy its own backend.
func refusingAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	peer, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() {
		c.Close()
		peer.Close()
	})
	return c.LocalAddr().String()
}

// newProxy starts a server with a Proxy for targets and returns the proxy
// and the server's ws:// URL. Cleanup closes both.
func newProxy(t *testing.T, targets []string, opts ...Option) (*Proxy, string) {
	t.Helper()
	p, url, _ := startProxy(t, targets, false, opts...)
	return p, url
}

// newProxyServer is newProxy that also hands over the server's side of the
// first connections it accepts (as many as the channel holds), for tests
// that watch the proxy's sockets: each is the test's own descriptor of the
// socket (watchCopy), which the test closes once it has watched.
func newProxyServer(t *testing.T, targets []string, opts ...Option) (*Proxy, string, <-chan *net.TCPConn) {
	t.Helper()
	return startProxy(t, targets, true, opts...)
}

func startProxy(t *testing.T, targets []string, watch bool, opts ...Option) (*Proxy, string, <-chan *net.TCPConn) {
	t.Helper()
	p, err := New(targets, opts...)
	require.NoError(t, err)
	s := httptest.NewUnstartedServer(p)
	accepted := make(chan *net.TCPConn, 16)
	s.Config.ConnState = func(c net.Conn, state http.ConnState) {
		if tc, ok := c.(*net.TCPConn); ok && watch && state == http.StateNew && len(accepted) < cap(accepted) {
			if w := watchCopy(tc); w != nil {
				accepted <- w
			}
		}
	}
	s.Start()
	t.Cleanup(func() {
		p.Close()
		s.Close()
	})
	return p, "ws://" + s.Listener.Addr().String(), accepted
}

// dial opens a WebSocket through url, failing the test on error.
func dial(t *testing.T, url string, extra ...string) *wstest.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := wstest.Dial(ctx, url, nil, nil, extra...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// rawRequest sends raw bytes to addr (host:port of a ws:// URL) and returns
// the response read back.
func rawRequest(t *testing.T, url string, req string) (*http.Response, net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "ws://"), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Write([]byte(req))
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	return resp, conn, br
}

func hostOf(url string) string { return strings.TrimPrefix(strings.TrimPrefix(url, "ws://"), "wss://") }

// upgradeRequest is a valid upgrade request for "/" on the server at url.
func upgradeRequest(url string) string {
	return string(wstest.Request(hostOf(url), "/", wstest.NewKey()))
}

// hungUpTunnels counts p's tunnels one of whose sides sent its close frame
// and then hung up (an EOF the proxy read).
func hungUpTunnels(p *Proxy) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for tn := range p.tunnels.all() {
		if s := tn.State(); s.EOFs > 0 && (s.Up.CloseRead || s.Down.CloseRead) {
			n++
		}
	}
	return n
}

// closesQueued reports whether Shutdown began and every tunnel still open
// has the proxy's close frames, both ways, written or waiting for the end
// of the frame under way.
func closesQueued(p *Proxy) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	queued := func(s engine.PumpState) bool { return s.Queued || s.CloseSent }
	for tn := range p.tunnels.all() {
		if s := tn.State(); !queued(s.Up) || !queued(s.Down) {
			return false
		}
	}
	return p.state != running
}

// WebSocket backends. Each completes the handshake; upgradedBackend is the
// one the others are made of.

// upgradedBackend is a backend that completes the handshake, runs script
// (if any), then hands the connection to rest.
func upgradedBackend(t *testing.T, script, rest func(c *wstest.Conn)) string {
	t.Helper()
	return newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := wstest.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		if script != nil {
			script(c)
		}
		rest(c)
	}))
}

// upgradeBackend starts a backend that accepts the upgrade and hands the
// connection, with a 5s deadline, to script.
func upgradeBackend(t *testing.T, script func(c *wstest.Conn)) string {
	t.Helper()
	return upgradedBackend(t, func(c *wstest.Conn) { c.SetDeadline(time.Now().Add(5 * time.Second)) }, script)
}

// closeRecorder is a backend that runs script on each connection and then
// reports how the connection ended: the close code it received, or -1.
func closeRecorder(t *testing.T, script func(c *wstest.Conn)) (string, chan int) {
	t.Helper()
	codes := make(chan int, 512)
	url := upgradedBackend(t, script, func(c *wstest.Conn) { codes <- c.ReadClose() })
	return url, codes
}

// scriptedSilentBackend is a backend that completes the handshake, runs
// script, then only reads (and discards) until the connection ends: it
// never answers a ping or a close frame.
func scriptedSilentBackend(t *testing.T, script func(c *wstest.Conn)) string {
	t.Helper()
	return upgradedBackend(t, script, func(c *wstest.Conn) { io.Copy(io.Discard, c.Conn) })
}

// neverHalfCloses is a backend that reads until the client's FIN and
// keeps its own half open until the test ends.
func neverHalfCloses(t *testing.T) string {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	return upgradedBackend(t, nil, func(c *wstest.Conn) {
		io.Copy(io.Discard, c.Conn)
		<-done
	})
}

// echoSeeing is an echo backend that shows each request to see first.
func echoSeeing(t *testing.T, see func(r *http.Request)) string {
	t.Helper()
	return newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		see(r)
		wstest.EchoHandler().ServeHTTP(w, r)
	}))
}

// countingBackend is an echo backend that counts the requests it sees.
func countingBackend(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	return echoSeeing(t, func(*http.Request) { n.Add(1) }), &n
}

// headerBackend records the request headers and request URI it got.
func headerBackend(t *testing.T) (string, chan *http.Request) {
	t.Helper()
	got := make(chan *http.Request, 4)
	return echoSeeing(t, func(r *http.Request) { got <- r }), got
}

// recordingEcho is an echo backend that keeps the upgrade requests it saw.
type recordingEcho struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (b *recordingEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.reqs = append(b.reqs, r.Clone(context.Background()))
	b.mu.Unlock()
	wstest.EchoHandler().ServeHTTP(w, r)
}

func (b *recordingEcho) last() *http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.reqs) == 0 {
		return nil
	}
	return b.reqs[len(b.reqs)-1]
}

// Raw TCP and plain HTTP backends.

// rawBackend accepts TCP connections on loopback and hands each to handle,
// which has 5 seconds; it returns the ws:// URL.
func rawBackend(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				handle(c)
			}()
		}
	}()
	return "ws://" + ln.Addr().String()
}

// recorder is a keep-alive HTTP backend that records every request it
// reads, so a test can prove a request never reached it.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (rec *recorder) seen() []*http.Request {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]*http.Request(nil), rec.reqs...)
}

// paths returns the request paths the backend saw.
func (rec *recorder) paths() []string {
	var out []string
	for _, r := range rec.seen() {
		out = append(out, r.URL.Path)
	}
	return out
}

// newRecorder starts a backend that records each request, then serves it
// with h.
func newRecorder(t *testing.T, h http.Handler) (string, *recorder) {
	t.Helper()
	rec := &recorder{}
	url := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, r)
		rec.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	return url, rec
}

// statusHandler answers every request with status and a short body.
func statusHandler(status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "backend says no", status)
	})
}

// Clients: dialling as someone, and messages through a tunnel.

// dialAs opens a WebSocket through url as client ip: the test's proxy
// trusts loopback, so X-Forwarded-For names the client. It returns the
// connection, which owner's cleanup closes, or the refusal's response.
func dialAs(t, owner *testing.T, url, ip string) (*wstest.Conn, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := wstest.Dial(ctx, url, nil, nil, "X-Forwarded-For: "+ip)
	if err != nil {
		require.NotNil(t, resp, "dial: %v", err)
		return nil, resp
	}
	owner.Cleanup(func() { c.Close() })
	return c, nil
}

// echoOnce checks that a tunnel still carries a message both ways.
func echoOnce(t *testing.T, url string, extra ...string) {
	t.Helper()
	c := dial(t, url, extra...)
	echoMessage(t, c, wsframe.OpText, []byte("hi"))
}

// echoMessage sends one message through c and checks that the echo came
// back unchanged.
func echoMessage(t *testing.T, c *wstest.Conn, op byte, payload []byte) {
	t.Helper()
	require.NoError(t, c.WriteMessage(op, payload))
	gotOp, got, err := c.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, op, gotOp)
	assert.True(t, bytes.Equal(payload, got), "echoed payload differs (%d bytes sent, %d back)", len(payload), len(got))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// Hooks, Stats and balancers.

// closeInfoHook returns an option that sends every CloseInfo to the channel.
func closeInfoHook() (Option, chan CloseInfo) {
	ch := make(chan CloseInfo, 512)
	return WithHooks(Hooks{OnClose: func(ci CloseInfo) { ch <- ci }}), ch
}

// rejects returns an option that records every refusal's error, and the
// channel they arrive on.
func rejects() (Option, chan error) {
	ch := make(chan error, 16)
	return WithHooks(Hooks{OnReject: func(_ *http.Request, err error) {
		select {
		case ch <- err:
		default:
		}
	}}), ch
}

// within receives from ch, failing the test with msg after 10 seconds.
func within[T any](t *testing.T, ch <-chan T, msg string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		require.FailNow(t, msg)
	}
	var zero T
	return zero
}

// targetStats returns the Stats of target, zero if p has no such target.
func targetStats(p *Proxy, target string) TargetStats {
	for _, ts := range p.Stats().Targets {
		if ts.Target == target {
			return ts
		}
	}
	return TargetStats{}
}

// openByTarget returns the open tunnels per target string.
func openByTarget(p *Proxy) map[string]int {
	m := make(map[string]int)
	for _, ts := range p.Stats().Targets {
		m[ts.Target] = ts.Open
	}
	return m
}

// firstTarget is a Balancer that always takes the first candidate.
type firstTarget struct{}

func (firstTarget) Pick(_ *http.Request, ts []*Target) *Target { return ts[0] }

// RFC 8441: a TLS HTTP/2 server in front of a Proxy, and its client.

func requireXConnect(t *testing.T) {
	t.Helper()
	require.Contains(t, os.Getenv("GODEBUG"), "http2xconnect=1",
		"the test binary could not restart itself with GODEBUG=http2xconnect=1; set it in the environment")
}

// h2Fixture is a TLS HTTP/2 server with a Proxy and an HTTP/2 client
// transport that keeps every stream on one connection.
type h2Fixture struct {
	p       *Proxy
	srv     *httptest.Server
	url     string // https:// URL of the server
	tr      *http2.Transport
	conns   atomic.Int32 // TCP connections the server accepted
	upgrade chan TunnelInfo
	closed  chan CloseInfo
}

func newH2Fixture(t *testing.T, targets []string, opts ...Option) *h2Fixture {
	t.Helper()
	return newH2FixtureWith(t, nil, targets, opts...)
}

// newH2FixtureWith is newH2Fixture with setup applied to the server first.
func newH2FixtureWith(t *testing.T, setup func(*http.Server), targets []string, opts ...Option) *h2Fixture {
	t.Helper()
	requireXConnect(t)
	f := &h2Fixture{upgrade: make(chan TunnelInfo, 64), closed: make(chan CloseInfo, 64)}
	opts = append([]Option{WithHooks(Hooks{
		OnUpgrade: func(ti TunnelInfo) { f.upgrade <- ti },
		OnClose:   func(ci CloseInfo) { f.closed <- ci },
	})}, opts...)
	p, err := New(targets, opts...)
	require.NoError(t, err)
	f.p = p
	f.srv = httptest.NewUnstartedServer(p)
	f.srv.EnableHTTP2 = true
	f.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	if setup != nil {
		setup(f.srv.Config)
	}
	f.srv.StartTLS()
	f.url = f.srv.URL
	roots := x509.NewCertPool()
	roots.AddCert(f.srv.Certificate())
	f.tr = &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	t.Cleanup(func() {
		p.Close()
		f.tr.CloseIdleConnections()
		f.srv.Close()
	})
	return f
}

// h2Stream is the client's side of an RFC 8441 WebSocket: the request body
// is written, the response body read. It is a net.Conn for wstest.Conn.
type h2Stream struct {
	body   io.ReadCloser
	pw     *io.PipeWriter
	cancel context.CancelFunc
}

func (s *h2Stream) Read(b []byte) (int, error) { return s.body.Read(b) }

func (s *h2Stream) Write(b []byte) (int, error) { return s.pw.Write(b) }

// CloseWrite ends the request body: END_STREAM on the client's side.
func (s *h2Stream) CloseWrite() error { return s.pw.Close() }

// reset abandons the stream: closing the response body early makes the
// transport send RST_STREAM(CANCEL).
func (s *h2Stream) reset() {
	s.body.Close()
	s.cancel()
}

func (s *h2Stream) Close() error {
	s.pw.Close()
	s.body.Close()
	s.cancel()
	return nil
}

func (s *h2Stream) LocalAddr() net.Addr { return stringAddr("client") }

func (s *h2Stream) RemoteAddr() net.Addr { return stringAddr("server") }

func (s *h2Stream) SetDeadline(time.Time) error { return nil }

func (s *h2Stream) SetReadDeadline(time.Time) error { return nil }

func (s *h2Stream) SetWriteDeadline(time.Time) error { return nil }

// dialH2 sends an extended CONNECT for path with the given header lines
// (":protocol" and Sec-WebSocket-Version are set unless header has them; an
// empty value leaves one out) and returns the response, and for a 200 the
// WebSocket too. A deadline bounds the whole exchange. It may be called from
// any goroutine.
func (f *h2Fixture) dialH2(t *testing.T, path string, header http.Header) (*wstest.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, f.url+path, pr)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if _, ok := req.Header[":protocol"]; !ok {
		req.Header[":protocol"] = []string{"websocket"}
	}
	if _, ok := req.Header["Sec-Websocket-Version"]; !ok {
		req.Header.Set("Sec-WebSocket-Version", "13")
	}
	resp, err := f.tr.RoundTrip(req)
	if err != nil {
		cancel()
		pw.Close()
		return nil, nil, err
	}
	s := &h2Stream{body: resp.Body, pw: pw, cancel: cancel}
	t.Cleanup(func() { s.Close() })
	if resp.StatusCode != http.StatusOK {
		return nil, resp, nil
	}
	return wstest.NewConn(s, nil, true), resp, nil
}

func (f *h2Fixture) mustDial(t *testing.T, path string, header http.Header) (*wstest.Conn, *http.Response) {
	t.Helper()
	c, resp, err := f.dialH2(t, path, header)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return c, resp
}

// nextUpgrade returns the next tunnel's OnUpgrade report.
func (f *h2Fixture) nextUpgrade(t *testing.T) TunnelInfo {
	t.Helper()
	return within(t, f.upgrade, "no OnUpgrade")
}

// nextClose returns the next tunnel's OnClose report.
func (f *h2Fixture) nextClose(t *testing.T) CloseInfo {
	t.Helper()
	return within(t, f.closed, "no OnClose")
}

// noUnwrap is a middleware's ResponseWriter that hides the real one.
type noUnwrap struct{ http.ResponseWriter }
