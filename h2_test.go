package wsproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
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

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// Go's HTTP/2 server accepts extended CONNECT only with GODEBUG=
// http2xconnect=1, which net/http reads from the environment in its own
// init, before any test code runs (//go:debug does not know the setting).
// So the test binary restarts itself once with the setting added. Only
// HTTP/2 servers are affected: they advertise SETTINGS_ENABLE_CONNECT_PROTOCOL.
func init() {
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

func (s *h2Stream) Read(b []byte) (int, error)  { return s.body.Read(b) }
func (s *h2Stream) Write(b []byte) (int, error) { return s.pw.Write(b) }

// CloseWrite ends the request body: END_STREAM on the client's side.
func (s *h2Stream) CloseWrite() error { return s.pw.Close() }

func (s *h2Stream) Close() error {
	s.pw.Close()
	s.body.Close()
	s.cancel()
	return nil
}
func (s *h2Stream) LocalAddr() net.Addr              { return stringAddr("client") }
func (s *h2Stream) RemoteAddr() net.Addr             { return stringAddr("server") }
func (s *h2Stream) SetDeadline(time.Time) error      { return nil }
func (s *h2Stream) SetReadDeadline(time.Time) error  { return nil }
func (s *h2Stream) SetWriteDeadline(time.Time) error { return nil }

// dialH2 sends an extended CONNECT for path with the given header lines
// (":protocol" and Sec-WebSocket-Version are set unless header has them)
// and returns the response. For a 200 it also returns the WebSocket; the
// request's context bounds the whole exchange.
func (f *h2Fixture) dialH2(t *testing.T, path string, header http.Header) (*wstest.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, f.url+path, pr)
	require.NoError(t, err)
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
	if resp.StatusCode != http.StatusOK {
		t.Cleanup(func() {
			resp.Body.Close()
			pw.Close()
			cancel()
		})
		return nil, resp, nil
	}
	s := &h2Stream{body: resp.Body, pw: pw, cancel: cancel}
	t.Cleanup(func() { s.Close() })
	return wstest.NewConn(s, nil, true), resp, nil
}

func (f *h2Fixture) mustDial(t *testing.T, path string, header http.Header) (*wstest.Conn, *http.Response) {
	t.Helper()
	c, resp, err := f.dialH2(t, path, header)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return c, resp
}

func (f *h2Fixture) nextUpgrade(t *testing.T) TunnelInfo {
	t.Helper()
	select {
	case ti := <-f.upgrade:
		return ti
	case <-time.After(10 * time.Second):
		require.FailNow(t, "no OnUpgrade")
	}
	return TunnelInfo{}
}

func (f *h2Fixture) nextClose(t *testing.T) CloseInfo {
	t.Helper()
	select {
	case ci := <-f.closed:
		return ci
	case <-time.After(10 * time.Second):
		require.FailNow(t, "no OnClose")
	}
	return CloseInfo{}
}

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

func TestH2Echo(t *testing.T) {
	t.Parallel()
	rec := &recordingEcho{}
	f := newH2Fixture(t, []string{newBackend(t, rec)})

	c, resp := f.mustDial(t, "/chat?room=1", http.Header{
		"Sec-Websocket-Protocol": {"v2.chat, v1.chat"},
		"Origin":                 {f.url},
		"Cookie":                 {"session=abc"},
	})
	assert.Equal(t, 2, resp.ProtoMajor, "the client spoke HTTP/2")
	assert.Equal(t, "v2.chat", resp.Header.Get("Sec-Websocket-Protocol"))
	assert.Empty(t, resp.Header.Values("Sec-Websocket-Accept"), "RFC 8441 has no accept header")

	ti := f.nextUpgrade(t)
	assert.Equal(t, "HTTP/2.0", ti.Proto)
	assert.Equal(t, "/chat", ti.Path)
	assert.Equal(t, "v2.chat", ti.Subprotocol)

	echoMessage(t, c, wsframe.OpText, []byte("hello over h2"))
	echoMessage(t, c, wsframe.OpBinary, []byte{0, 1, 2, 3, 0xff})
	// A fragmented message passes frame by frame.
	require.NoError(t, c.WriteFrame(wstest.Frame{Op: wsframe.OpText, Payload: []byte("frag")}))
	require.NoError(t, c.WriteFrame(wstest.Frame{Fin: true, Op: wsframe.OpContinuation, Payload: []byte("mented")}))
	_, got, err := c.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "fragmented", string(got))

	// The backend got an ordinary HTTP/1.1 upgrade with a key of the proxy's.
	br := rec.last()
	require.NotNil(t, br)
	assert.Equal(t, "GET", br.Method)
	assert.Equal(t, 1, br.ProtoMajor)
	assert.Equal(t, "/chat", br.URL.Path)
	assert.Equal(t, "room=1", br.URL.RawQuery)
	assert.Equal(t, "websocket", br.Header.Get("Upgrade"))
	assert.Equal(t, "13", br.Header.Get("Sec-Websocket-Version"))
	key, err := base64.StdEncoding.DecodeString(br.Header.Get("Sec-Websocket-Key"))
	require.NoError(t, err)
	assert.Len(t, key, 16)
	assert.Equal(t, "session=abc", br.Header.Get("Cookie"))
	assert.Equal(t, "https", br.Header.Get("X-Forwarded-Proto"))
	assert.Equal(t, strings.TrimPrefix(f.url, "https://"), br.Host)
	for k := range br.Header {
		assert.False(t, strings.HasPrefix(k, ":"), "pseudo-header %s reached the backend", k)
	}

	require.NoError(t, c.WriteClose(1000, "bye"))
	_, _, err = c.ReadMessage()
	var ce *wstest.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 1000, ce.Code)
	ci := f.nextClose(t)
	assert.Equal(t, "HTTP/2.0", ci.Proto)
	assert.Equal(t, 1000, ci.ClientToBackend.CloseCode)
	assert.Equal(t, 1000, ci.BackendToClient.CloseCode)
	assert.Equal(t, int64(3), ci.ClientToBackend.Messages)
	assert.NoError(t, ci.Err)
	assert.Equal(t, int32(1), f.conns.Load())
}
