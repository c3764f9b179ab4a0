package wsproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/leakcheck"
	engine "github.com/wsproxy/wsproxy/internal/tunnel"
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
	p, err := New(targets, opts...)
	require.NoError(t, err)
	s := httptest.NewServer(p)
	t.Cleanup(func() {
		p.Close()
		s.Close()
	})
	return p, "ws://" + s.Listener.Addr().String()
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

// closeRecorder is a backend that runs script on each connection and then
// reports how the connection ended: the close code it received, or -1.
func closeRecorder(t *testing.T, script func(c *wstest.Conn)) (string, chan int) {
	t.Helper()
	codes := make(chan int, 512)
	url := upgradedBackend(t, script, func(c *wstest.Conn) {
		for {
			_, _, err := c.ReadMessage()
			var ce *wstest.CloseError
			if errors.As(err, &ce) {
				codes <- ce.Code
				return
			}
			if err != nil {
				codes <- -1
				return
			}
		}
	})
	return url, codes
}

// scriptedSilentBackend is a backend that completes the handshake, runs
// script, then only reads (and discards) until the connection ends: it
// never answers a ping or a close frame.
func scriptedSilentBackend(t *testing.T, script func(c *wstest.Conn)) string {
	t.Helper()
	return upgradedBackend(t, script, func(c *wstest.Conn) { io.Copy(io.Discard, c.Conn) })
}

// readClose reads until a close frame or an error; it returns the close
// code, or -1 when the connection ended without one.
func readClose(c *wstest.Conn) int {
	for {
		_, _, err := c.ReadMessage()
		var ce *wstest.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil {
			return -1
		}
	}
}

// closeInfoHook returns an option that sends every CloseInfo to the channel.
func closeInfoHook() (Option, chan CloseInfo) {
	ch := make(chan CloseInfo, 512)
	return WithHooks(Hooks{OnClose: func(ci CloseInfo) { ch <- ci }}), ch
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

// upgradeBackend starts a backend that accepts the upgrade and hands the
// connection, with a 5s deadline, to script.
func upgradeBackend(t *testing.T, script func(c *wstest.Conn)) string {
	t.Helper()
	return upgradedBackend(t, func(c *wstest.Conn) { c.SetDeadline(time.Now().Add(5 * time.Second)) }, script)
}

// statusHandler answers every request with status and a short body.
func statusHandler(status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "backend says no", status)
	})
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
