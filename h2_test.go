package wsproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
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

func TestH2LargeMessages(t *testing.T) {
	t.Parallel()
	f := newH2Fixture(t, []string{newEcho(t)})
	c, _ := f.mustDial(t, "/", nil)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	echoMessage(t, c, wsframe.OpBinary, big)
	// The same again in 64 KiB fragments, and a small message behind it.
	for off := 0; off < len(big); off += 64 << 10 {
		op := byte(wsframe.OpContinuation)
		if off == 0 {
			op = wsframe.OpBinary
		}
		require.NoError(t, c.WriteFrame(wstest.Frame{Fin: off+64<<10 >= len(big), Op: op, Payload: big[off : off+64<<10]}))
	}
	_, got, err := c.ReadMessage()
	require.NoError(t, err)
	assert.True(t, bytes.Equal(big, got))
	echoMessage(t, c, wsframe.OpText, []byte("after"))

	require.NoError(t, c.WriteClose(1000, ""))
	ci := f.nextClose(t)
	assert.Greater(t, ci.ClientToBackend.Bytes, int64(2<<20))
	assert.Greater(t, ci.BackendToClient.Bytes, int64(2<<20))
}

func TestH2ManyStreamsOneConnection(t *testing.T) {
	t.Parallel()
	f := newH2Fixture(t, []string{newEcho(t), newEcho(t)})
	// One stream first, so that every other one finds the connection made.
	first, _ := f.mustDial(t, "/", nil)

	const n = 20
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- func() error {
				c, resp, err := f.dialH2(t, "/", nil)
				if err != nil {
					return err
				}
				if resp.StatusCode != http.StatusOK {
					return errors.New(resp.Status)
				}
				for j := range 10 {
					msg := bytes.Repeat([]byte{byte(i)}, 1000*j+1)
					if err := c.WriteMessage(wsframe.OpBinary, msg); err != nil {
						return err
					}
					_, got, err := c.ReadMessage()
					if err != nil {
						return err
					}
					if !bytes.Equal(msg, got) {
						return errors.New("echo differs")
					}
				}
				return c.WriteClose(1000, "")
			}()
		}()
	}
	for range n {
		assert.NoError(t, <-errs)
	}
	for range n {
		ci := f.nextClose(t)
		assert.Equal(t, "HTTP/2.0", ci.Proto)
		assert.Equal(t, int64(10), ci.ClientToBackend.Messages)
		assert.Equal(t, 1000, ci.BackendToClient.CloseCode)
	}
	echoMessage(t, first, wsframe.OpText, []byte("still here"))
	assert.Equal(t, int32(1), f.conns.Load(), "every stream shared one TCP connection")
	st := f.p.Stats()
	assert.Equal(t, 1, st.Open)
	assert.Equal(t, int64(n+1), st.Total)
	for _, ts := range st.Targets {
		assert.Positive(t, ts.Total, "both targets took streams")
	}
}

func TestH2CloseFromBackend(t *testing.T) {
	t.Parallel()
	backendDone := make(chan error, 1)
	backend := upgradeBackend(t, func(c *wstest.Conn) {
		if err := c.WriteClose(4001, "server bye"); err != nil {
			backendDone <- err
			return
		}
		f, err := c.ReadFrame()
		if err == nil && f.Op != wsframe.OpClose {
			err = errors.New("expected the client's close frame")
		}
		backendDone <- err
	})
	f := newH2Fixture(t, []string{backend})
	c, _ := f.mustDial(t, "/", nil)

	_, _, err := c.ReadMessage() // answers the close frame
	var ce *wstest.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 4001, ce.Code)
	assert.Equal(t, "server bye", ce.Reason)
	require.NoError(t, <-backendDone)
	// The backend hung up after the close handshake: the stream ends.
	_, err = c.ReadFrame()
	assert.ErrorIs(t, err, io.EOF)

	ci := f.nextClose(t)
	assert.Equal(t, 4001, ci.BackendToClient.CloseCode)
	assert.Equal(t, 4001, ci.ClientToBackend.CloseCode)
	assert.Empty(t, ci.Reason)
	assert.NoError(t, ci.Err)
}

func TestH2CloseFromClient(t *testing.T) {
	t.Parallel()
	f := newH2Fixture(t, []string{newEcho(t)})
	c, _ := f.mustDial(t, "/", nil)
	require.NoError(t, c.WriteClose(4002, "client bye"))
	_, _, err := c.ReadMessage()
	var ce *wstest.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 4002, ce.Code)
	_, err = c.ReadFrame()
	assert.ErrorIs(t, err, io.EOF)
	ci := f.nextClose(t)
	assert.Equal(t, 4002, ci.ClientToBackend.CloseCode)
	assert.Equal(t, 4002, ci.BackendToClient.CloseCode)
	assert.NoError(t, ci.Err)
}

// A backend that drops the connection without a close frame ends the
// client's stream at once (as a FIN would over HTTP/1.1), not after the
// half-close timeout.
func TestH2BackendHangsUp(t *testing.T) {
	t.Parallel()
	backend := upgradeBackend(t, func(c *wstest.Conn) { c.ReadFrame() })
	f := newH2Fixture(t, []string{backend})
	c, _ := f.mustDial(t, "/", nil)
	start := time.Now()
	require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("last words")))
	_, err := c.ReadFrame()
	assert.ErrorIs(t, err, io.EOF)
	assert.Less(t, time.Since(start), 5*time.Second)
	ci := f.nextClose(t)
	assert.Equal(t, int64(1), ci.ClientToBackend.Messages)
	assert.Equal(t, 0, ci.BackendToClient.CloseCode)
}

// A client that resets its stream ends the tunnel and the backend
// connection; the other streams of its connection carry on.
func TestH2ClientResetsStream(t *testing.T) {
	t.Parallel()
	backendGone := make(chan error, 4)
	var toldCode atomic.Int32 // the code of the close frame the backend got
	backend := upgradeBackend(t, func(c *wstest.Conn) {
		for {
			f, err := c.ReadFrame()
			if err != nil {
				backendGone <- err
				return
			}
			if f.Op == wsframe.OpClose {
				code, _ := wsframe.ParseClose(f.Payload)
				toldCode.Store(int32(code))
			}
			c.WriteFrame(f)
		}
	})
	f := newH2Fixture(t, []string{backend})
	other, _ := f.mustDial(t, "/", nil)
	c, _ := f.mustDial(t, "/", nil)
	echoMessage(t, c, wsframe.OpText, []byte("ping"))

	c.Conn.(*h2Stream).reset()
	select {
	case err := <-backendGone:
		assert.Equal(t, int32(1001), toldCode.Load(), "the backend was told the client is gone")
		// The proxy closes the backend connection right after that close
		// frame: a backend whose answer is back by then gets a reset.
		if !errors.Is(err, syscall.ECONNRESET) {
			assert.ErrorIs(t, err, io.EOF, "the proxy closed the backend connection")
		}
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the backend connection stayed open")
	}
	ci := f.nextClose(t)
	assert.Error(t, ci.Err, "a reset is not an orderly end")
	assert.Equal(t, 1, f.p.Stats().Open)

	echoMessage(t, other, wsframe.OpText, []byte("unaffected"))
	assert.Equal(t, int32(1), f.conns.Load())
}

func TestH2Shutdown(t *testing.T) {
	t.Parallel()
	f := newH2Fixture(t, []string{newEcho(t)})
	const n = 3
	conns := make([]*wstest.Conn, n)
	for i := range conns {
		conns[i], _ = f.mustDial(t, "/", nil)
		echoMessage(t, conns[i], wsframe.OpText, []byte("hi"))
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- f.p.Shutdown(ctx)
	}()
	for _, c := range conns {
		_, _, err := c.ReadMessage() // answers the close frame
		var ce *wstest.CloseError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, 1001, ce.Code)
	}
	require.NoError(t, <-done)
	for range n {
		ci := f.nextClose(t)
		assert.Equal(t, "shutdown", ci.Reason)
		assert.Equal(t, 1001, ci.ClientToBackend.CloseCode, "the client answered the proxy's 1001: %+v", ci)
	}
	_, resp, err := f.dialH2(t, "/", nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

// The server's ReadTimeout and WriteTimeout, which HTTP/2 applies to each
// stream, do not cut a tunnel.
func TestH2ServerTimeoutsDoNotCutTunnel(t *testing.T) {
	t.Parallel()
	// Long enough for the handshake under -race on a loaded machine; the
	// point is that the tunnel outlives them.
	const timeout = 400 * time.Millisecond
	f := newH2FixtureWith(t, func(s *http.Server) {
		s.ReadTimeout = timeout
		s.WriteTimeout = timeout
	}, []string{newEcho(t)})
	c, _ := f.mustDial(t, "/", nil)
	// The stream began before mustDial returned, so its timers are due
	// within timeout; the time passing is what is tested, and the server
	// shows no sign of a timer that fired.
	time.Sleep(timeout + timeout/2)
	echoMessage(t, c, wsframe.OpText, []byte("still open"))
}

func TestH2Rejects(t *testing.T) {
	t.Parallel()
	refuser := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Reason", "no ticket")
		http.Error(w, "go away", http.StatusForbidden)
	}))
	plain := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html>not a websocket</html>")
	}))
	down := "ws://" + refusingAddr(t)

	tests := []struct {
		name    string
		target  string
		give    http.Header
		want    int
		wantErr error
	}{
		{name: "key from client", target: newEcho(t), give: http.Header{"Sec-Websocket-Key": {wstest.NewKey()}}, want: 400, wantErr: ErrBadHandshake},
		{name: "version 12", target: newEcho(t), give: http.Header{"Sec-Websocket-Version": {"12"}}, want: 426, wantErr: ErrBadVersion},
		{name: "no version", target: newEcho(t), give: http.Header{"Sec-Websocket-Version": {}}, want: 426, wantErr: ErrBadVersion},
		{name: "foreign origin", target: newEcho(t), give: http.Header{"Origin": {"https://evil.example"}}, want: 403, wantErr: ErrOriginDenied},
		{name: "other protocol", target: newEcho(t), give: http.Header{":protocol": {"webtransport"}}, want: 426, wantErr: ErrNotWebSocket},
		{name: "backend refuses", target: refuser, want: 403, wantErr: ErrUpgradeRefused},
		{name: "backend answers 200", target: plain, want: 502, wantErr: ErrInvalidUpgrade},
		{name: "backend down", target: down, want: 502, wantErr: ErrDial},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rejected := make(chan error, 1)
			f := newH2Fixture(t, []string{tt.target}, WithHooks(Hooks{OnReject: func(_ *http.Request, err error) { rejected <- err }}))
			_, resp, err := f.dialH2(t, "/", tt.give)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			assert.Equal(t, tt.want, resp.StatusCode, "body: %s", body)
			assert.Empty(t, resp.Header.Values("Upgrade"), "no Upgrade header in HTTP/2")
			if tt.want == 426 && tt.wantErr == ErrBadVersion {
				assert.Equal(t, "13", resp.Header.Get("Sec-Websocket-Version"))
			}
			if tt.name == "backend refuses" {
				assert.Equal(t, "no ticket", resp.Header.Get("X-Reason"))
				assert.Equal(t, "go away\n", string(body))
			}
			select {
			case err := <-rejected:
				assert.ErrorIs(t, err, tt.wantErr)
				assert.Equal(t, tt.want, StatusCode(err))
			case <-time.After(5 * time.Second):
				assert.Fail(t, "no OnReject")
			}
			assert.Empty(t, f.upgrade, "no tunnel for the refused request")
			// The refusal ended only its stream: the connection serves the next.
			require.NoError(t, f.p.SetTargets([]string{newEcho(t)}))
			c, _ := f.mustDial(t, "/", nil)
			echoMessage(t, c, wsframe.OpText, []byte("next"))
			assert.Equal(t, int32(1), f.conns.Load())
		})
	}
}

func TestH2OtherConnectGoesToFallback(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	fallback := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Method + " " + r.Header.Get(":protocol"))
		w.WriteHeader(http.StatusTeapot)
	})
	f := newH2Fixture(t, []string{newEcho(t)}, WithFallback(fallback))
	_, resp, err := f.dialH2(t, "/", http.Header{":protocol": {"connect-udp"}})
	require.NoError(t, err)
	assert.Equal(t, http.StatusTeapot, resp.StatusCode)
	assert.Equal(t, "CONNECT connect-udp", got.Load())
}

// The admission limits count RFC 8441 streams like HTTP/1.1 tunnels, and a
// stream's place is given back when it ends.
func TestH2MaxTunnelsPerIP(t *testing.T) {
	t.Parallel()
	f := newH2Fixture(t, []string{newEcho(t)}, WithMaxTunnelsPerIP(1))
	c, _ := f.mustDial(t, "/", nil)
	_, resp, err := f.dialH2(t, "/", nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.NotEmpty(t, resp.Header.Get("Retry-After"))

	require.NoError(t, c.WriteClose(1000, ""))
	f.nextClose(t)
	c, _ = f.mustDial(t, "/", nil)
	echoMessage(t, c, wsframe.OpText, []byte("my turn"))
}

// Tunnel timeouts work on HTTP/2 streams: the idle timeout closes with
// 1001 at a frame boundary.
func TestH2IdleTimeout(t *testing.T) {
	t.Parallel()
	f := newH2Fixture(t, []string{newEcho(t)}, WithIdleTimeout(100*time.Millisecond))
	c, _ := f.mustDial(t, "/", nil)
	echoMessage(t, c, wsframe.OpText, []byte("hi"))
	_, _, err := c.ReadMessage() // waits for the proxy's close, then answers it
	var ce *wstest.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 1001, ce.Code)
	_, err = c.ReadFrame()
	assert.ErrorIs(t, err, io.EOF)
	ci := f.nextClose(t)
	assert.Equal(t, "idle timeout", ci.Reason)
	assert.NoError(t, ci.Err)
}

// A ResponseWriter the proxy cannot reach through (it might buffer the
// stream) is refused before a backend is dialled.
func TestH2WrappedWriterRefused(t *testing.T) {
	t.Parallel()
	backend, dialled := countingBackend(t)
	f := newH2FixtureWith(t, func(s *http.Server) {
		p := s.Handler
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.ServeHTTP(noUnwrap{w}, r)
		})
	}, []string{backend})
	_, resp, err := f.dialH2(t, "/", nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	assert.Zero(t, dialled.Load(), "no request reached the backend")
}

// Unencrypted HTTP/2 (prior knowledge, http.Server.Protocols) carries RFC
// 8441 WebSockets too; the backend is told the client used http.
func TestH2Cleartext(t *testing.T) {
	t.Parallel()
	requireXConnect(t)
	rec := &recordingEcho{}
	f := &h2Fixture{upgrade: make(chan TunnelInfo, 4), closed: make(chan CloseInfo, 4)}
	p, err := New([]string{newBackend(t, rec)}, WithHooks(Hooks{OnUpgrade: func(ti TunnelInfo) { f.upgrade <- ti }}))
	require.NoError(t, err)
	f.p = p
	f.srv = httptest.NewUnstartedServer(p)
	f.srv.Config.Protocols = new(http.Protocols)
	f.srv.Config.Protocols.SetUnencryptedHTTP2(true)
	f.srv.Start()
	f.url = f.srv.URL
	f.tr = &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(func() {
		p.Close()
		f.tr.CloseIdleConnections()
		f.srv.Close()
	})

	c, resp := f.mustDial(t, "/", nil)
	assert.Equal(t, 2, resp.ProtoMajor)
	echoMessage(t, c, wsframe.OpText, []byte("h2c"))
	assert.Equal(t, "HTTP/2.0", f.nextUpgrade(t).Proto)
	assert.Equal(t, "http", rec.last().Header.Get("X-Forwarded-Proto"))
}

// A plain HTTP/2 request to the proxy gets 426 without the Upgrade and
// Connection headers HTTP/2 forbids, and the connection stays usable.
func TestH2PlainRequestNotUpgrade(t *testing.T) {
	t.Parallel()
	f := newH2Fixture(t, []string{newEcho(t)})
	req, err := http.NewRequest(http.MethodGet, f.url+"/", nil)
	require.NoError(t, err)
	resp, err := f.tr.RoundTrip(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUpgradeRequired, resp.StatusCode)
	assert.Empty(t, resp.Header.Values("Upgrade"))
	assert.Empty(t, resp.Header.Values("Connection"))

	c, _ := f.mustDial(t, "/", nil)
	echoMessage(t, c, wsframe.OpText, []byte("same connection"))
	assert.Equal(t, int32(1), f.conns.Load())
}

// TestH2NoContentHeadersIn200: a compression middleware that sets
// Content-Encoding before calling the proxy must not leak it into the 200,
// which would tell the browser the stream itself is compressed.
func TestH2NoContentHeadersIn200(t *testing.T) {
	t.Parallel()
	f := newH2FixtureWith(t, func(s *http.Server) {
		next := s.Handler
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("X-Request-Id", "42")
			next.ServeHTTP(w, r)
		})
	}, []string{newEcho(t)})
	c, resp := f.mustDial(t, "/", nil)
	assert.Empty(t, resp.Header.Get("Content-Encoding"))
	assert.Equal(t, "42", resp.Header.Get("X-Request-Id"), "other middleware headers still reach the client")
	echoMessage(t, c, wsframe.OpText, []byte("plain"))
}
