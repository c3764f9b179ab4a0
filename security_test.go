package wsproxy

// Security regression suite: each test is one attack on a WebSocket
// proxy, described in its comment, and what the proxy must do about it.

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// TestSecurityRefusedUpgradeIsNoTunnel: WebSocket smuggling. The client
// asks for an upgrade the backend refuses (403, 426, 200, or a 101 without
// a valid accept). A proxy that looks only at the client's request, or at
// the status, would now tunnel raw bytes to a backend that still speaks
// HTTP on a keep-alive connection, and the client's next bytes, an ordinary
// request for /admin, would reach the backend without passing the proxy's
// checks. The refusal must be relayed (or become 502) and the client
// connection closed, and the backend must never see /admin.
func TestSecurityRefusedUpgradeIsNoTunnel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give http.Handler // the backend
		want int
	}{
		{name: "403", give: statusHandler(http.StatusForbidden), want: http.StatusForbidden},
		{name: "426", give: statusHandler(http.StatusUpgradeRequired), want: http.StatusUpgradeRequired},
		{name: "200", give: statusHandler(http.StatusOK), want: http.StatusOK},
		{name: "101 without a valid accept", give: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Upgrade", "websocket")
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Sec-WebSocket-Accept", wstest.Accept("not the key"))
			w.WriteHeader(http.StatusSwitchingProtocols)
		}), want: http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			backend, rec := newRecorder(t, tt.give)
			_, url := newProxy(t, []string{backend})
			resp, conn, br := rawRequest(t, url, string(wstest.Request(hostOf(url), "/ws", wstest.NewKey())))
			assert.Equal(t, tt.want, resp.StatusCode)
			io.Copy(io.Discard, resp.Body)

			conn.Write([]byte("GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n"))
			_, err := br.ReadByte()
			assert.Error(t, err, "the client connection is closed, nothing answers /admin")
			assert.Equal(t, []string{"/ws"}, rec.paths())
		})
	}
}

// TestSecurityPipelinedRequestBehindUpgrade: the client sends its upgrade
// and, in the same write, a second HTTP request. If the backend refuses,
// the second request must not be served as the next request of the client
// connection; if it accepts, the bytes are tunnel data, which the proxy
// checks as frames ("GET " is no valid frame: close 1002) and never hands
// to an HTTP parser.
func TestSecurityPipelinedRequestBehindUpgrade(t *testing.T) {
	t.Parallel()
	smuggled := "GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n"
	t.Run("backend refuses", func(t *testing.T) {
		t.Parallel()
		backend, rec := newRecorder(t, statusHandler(http.StatusForbidden))
		_, url := newProxy(t, []string{backend})
		resp, _, br := rawRequest(t, url, string(wstest.Request(hostOf(url), "/ws", wstest.NewKey()))+smuggled)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode)
		io.Copy(io.Discard, resp.Body)
		_, err := http.ReadResponse(br, nil)
		assert.Error(t, err, "no second response: the pipelined request was not served")
		assert.Equal(t, []string{"/ws"}, rec.paths())
	})
	t.Run("backend accepts", func(t *testing.T) {
		t.Parallel()
		backend, rec := newRecorder(t, wstest.EchoHandler())
		_, url := newProxy(t, []string{backend})
		resp, conn, br := rawRequest(t, url, string(wstest.Request(hostOf(url), "/ws", wstest.NewKey()))+smuggled)
		require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
		c := wstest.NewConn(conn, br, true)
		f, err := c.ReadFrame()
		require.NoError(t, err)
		require.Equal(t, byte(wsframe.OpClose), f.Op)
		code, _ := wsframe.ParseClose(f.Payload)
		assert.Equal(t, uint16(wsframe.CloseProtocolError), code)
		assert.Equal(t, []string{"/ws"}, rec.paths())
	})
}

// TestSecurityH2CUpgrade: h2c smuggling. "Upgrade: h2c" through a proxy
// that passes any upgrade on gives the client an HTTP/2 connection to the
// backend, on which it can send any request, past every rule of the proxy.
// An h2c upgrade never reaches a backend as an upgrade: refused without a
// fallback, served as plain HTTP by one, and when a request lists both h2c
// and websocket the backend gets only the proxy's own WebSocket upgrade.
func TestSecurityH2CUpgrade(t *testing.T) {
	t.Parallel()
	h2c := []string{"Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AAMAAABkAAQAAP__"}
	plain := func(host string) string {
		return "GET / HTTP/1.1\r\nHost: " + host + "\r\n" + strings.Join(h2c, "\r\n") + "\r\n\r\n"
	}

	t.Run("no fallback", func(t *testing.T) {
		t.Parallel()
		backend, rec := newRecorder(t, wstest.EchoHandler())
		_, url := newProxy(t, []string{backend})
		resp, _, _ := rawRequest(t, url, plain(hostOf(url)))
		assert.Equal(t, http.StatusUpgradeRequired, resp.StatusCode)
		assert.Empty(t, rec.paths())
	})
	t.Run("fallback", func(t *testing.T) {
		t.Parallel()
		backend, rec := newRecorder(t, wstest.EchoHandler())
		seen := make(chan http.Header, 1)
		fallback := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen <- r.Header.Clone()
			io.WriteString(w, "page")
		})
		_, url := newProxy(t, []string{backend}, WithFallback(fallback))
		resp, _, _ := rawRequest(t, url, plain(hostOf(url)))
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		h := <-seen
		for _, k := range []string{"Upgrade", "Http2-Settings", "Connection"} {
			assert.Empty(t, h[k], k)
		}
		assert.Empty(t, rec.paths())
	})
	t.Run("h2c listed with websocket", func(t *testing.T) {
		t.Parallel()
		backend, rec := newRecorder(t, wstest.EchoHandler())
		_, url := newProxy(t, []string{backend})
		req := wstest.Request(hostOf(url), "/ws", wstest.NewKey(), "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__")
		resp, _, _ := rawRequest(t, url, string(req))
		require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
		got := rec.seen()
		require.Len(t, got, 1)
		assert.Equal(t, []string{"websocket"}, got[0].Header["Upgrade"])
		assert.Empty(t, got[0].Header["Http2-Settings"])
	})
}

// TestSecurityConnectionCannotDropProxyHeaders: a header named in
// Connection is hop-by-hop and must be dropped (RFC 9110 §7.6.1). A proxy
// that applies that rule after adding its own headers lets the client
// delete them, "Connection: X-Forwarded-For" hiding its address from a
// backend that trusts the header, or deleting the upgrade itself.
func TestSecurityConnectionCannotDropProxyHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give string // the header the client names in Connection
	}{
		{name: "X-Forwarded-For", give: "X-Forwarded-For"},
		{name: "X-Forwarded-Host", give: "X-Forwarded-Host"},
		{name: "X-Forwarded-Proto", give: "X-Forwarded-Proto"},
		{name: "Sec-WebSocket-Key", give: "Sec-WebSocket-Key"},
		{name: "Sec-WebSocket-Version", give: "Sec-WebSocket-Version"},
		{name: "Upgrade", give: "Upgrade"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			backend, rec := newRecorder(t, wstest.EchoHandler())
			_, url := newProxy(t, []string{backend})
			req := wstest.Request(hostOf(url), "/", wstest.NewKey(), "Connection: "+tt.give)
			resp, _, _ := rawRequest(t, url, string(req))
			require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
			got := rec.seen()
			require.Len(t, got, 1)
			h := got[0].Header
			assert.Equal(t, []string{"127.0.0.1"}, h["X-Forwarded-For"])
			assert.Equal(t, []string{hostOf(url)}, h["X-Forwarded-Host"])
			assert.Equal(t, []string{"http"}, h["X-Forwarded-Proto"])
			assert.Len(t, h["Sec-Websocket-Key"], 1)
			assert.Equal(t, []string{"13"}, h["Sec-Websocket-Version"])
			assert.Equal(t, []string{"websocket"}, h["Upgrade"])
			assert.Equal(t, []string{"Upgrade"}, h["Connection"])
		})
	}
}

// TestSecurityMalformedHeaders: request smuggling and desync through
// headers. A body on an upgrade (Content-Length or chunked) would be read
// by the backend as the first bytes of the tunnel, or the reverse; an
// oversized header block exhausts memory; two Sec-WebSocket-Key, -Version,
// Origin or Host headers let the proxy and the backend each believe a
// different one; control bytes in a value split it into two headers
// downstream. Each is refused before any backend is dialled.
func TestSecurityMalformedHeaders(t *testing.T) {
	t.Parallel()
	backend, rec := newRecorder(t, wstest.EchoHandler())
	_, url := newProxy(t, []string{backend})
	host := hostOf(url)
	upgrade := func(extra ...string) string { return string(wstest.Request(host, "/", wstest.NewKey(), extra...)) }
	tests := []struct {
		name string
		give string
		want int
	}{
		{name: "Content-Length body", give: upgrade("Content-Length: 40") + "GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n", want: http.StatusBadRequest},
		{name: "chunked body", give: upgrade("Transfer-Encoding: chunked") + "28\r\nGET /admin HTTP/1.1\r\nHost: internal\r\n\r\n\r\n0\r\n\r\n", want: http.StatusBadRequest},
		{name: "oversized header block", give: upgrade("X-Big: " + strings.Repeat("a", 2<<20)), want: http.StatusRequestHeaderFieldsTooLarge},
		{name: "two keys", give: upgrade("Sec-WebSocket-Key: " + wstest.NewKey()), want: http.StatusBadRequest},
		{name: "two versions", give: upgrade("Sec-WebSocket-Version: 8"), want: http.StatusUpgradeRequired},
		{name: "two origins", give: upgrade("Origin: http://"+host, "Origin: http://evil.example"), want: http.StatusForbidden},
		{name: "two hosts", give: upgrade("Host: evil.example"), want: http.StatusBadRequest},
		{name: "NUL in a value", give: upgrade("X-A: a\x00b"), want: http.StatusBadRequest},
		{name: "bare CR in a value", give: upgrade("X-A: a\rX-Evil: 1"), want: http.StatusBadRequest},
		{name: "control byte in a value", give: upgrade("X-A: a\x01b"), want: http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _, _ := rawRequest(t, url, tt.give)
			assert.Equal(t, tt.want, resp.StatusCode)
		})
	}
	assert.Empty(t, rec.paths(), "no malformed request reaches the backend")
}

// TestSecurityObsTextPassesUnchanged: bytes 0x80-0xFF (obs-text, invalid
// UTF-8 included) are legal in header values; the proxy passes them as
// they came, neither "fixing" them nor letting them end a line.
func TestSecurityObsTextPassesUnchanged(t *testing.T) {
	t.Parallel()
	backend, rec := newRecorder(t, wstest.EchoHandler())
	_, url := newProxy(t, []string{backend})
	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey(), "X-Name: caf\xe9 \xff\xfe")))
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	got := rec.seen()
	require.Len(t, got, 1)
	assert.Equal(t, []string{"caf\xe9 \xff\xfe"}, got[0].Header["X-Name"])
}

// TestSecurityRewriteInjection: a rewrite hook copies client-controlled
// text into the backend request (a user name from a token, a path from a
// query). A line break in it would add headers of the attacker's choosing,
// or a second request; a Host or Content-Length header would give the
// backend a second Host line or a body made of tunnel bytes. Invalid values
// are refused with 500 before anything is written to a backend; Host and
// Content-Length in the header map are ignored, as net/http ignores them.
func TestSecurityRewriteInjection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give func(*ProxyRequest)
		want int
	}{
		{name: "CRLF in a value", give: func(pr *ProxyRequest) { pr.Out.Header.Set("X-User", "alice\r\nX-Evil: 1") }, want: http.StatusInternalServerError},
		{name: "LF in a value", give: func(pr *ProxyRequest) { pr.Out.Header.Set("X-User", "alice\nX-Evil: 1") }, want: http.StatusInternalServerError},
		{name: "CRLF in a name", give: func(pr *ProxyRequest) { pr.Out.Header["X-Evil: 1\r\nX-User"] = []string{"a"} }, want: http.StatusInternalServerError},
		{name: "CRLF in Host", give: func(pr *ProxyRequest) { pr.Out.Host = "a\r\nX-Evil: 1" }, want: http.StatusInternalServerError},
		{name: "CRLF in the query", give: func(pr *ProxyRequest) { pr.Out.URL.RawQuery = "a HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /b" }, want: http.StatusInternalServerError},
		{name: "CRLF in the path is escaped", give: func(pr *ProxyRequest) { pr.Out.URL.Path = "/a\r\nX-Evil: 1" }, want: http.StatusSwitchingProtocols},
		{name: "Host in the header map", give: func(pr *ProxyRequest) { pr.Out.Header.Set("Host", "evil.example") }, want: http.StatusSwitchingProtocols},
		{name: "lower-case host in the map", give: func(pr *ProxyRequest) { pr.Out.Header["host"] = []string{"evil.example"} }, want: http.StatusSwitchingProtocols},
		{name: "Content-Length in the map", give: func(pr *ProxyRequest) { pr.Out.Header.Set("Content-Length", "5") }, want: http.StatusSwitchingProtocols},
		{name: "Transfer-Encoding in the map", give: func(pr *ProxyRequest) { pr.Out.Header["transfer-encoding"] = []string{"chunked"} }, want: http.StatusSwitchingProtocols},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			backend, rec := newRecorder(t, wstest.EchoHandler())
			_, url := newProxy(t, []string{backend}, WithRewrite(tt.give))
			resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
			assert.Equal(t, tt.want, resp.StatusCode)
			for _, r := range rec.seen() {
				assert.Empty(t, r.Header["X-Evil"])
				assert.Equal(t, hostOf(url), r.Host, "the client's Host, once")
				assert.Zero(t, r.ContentLength)
				assert.Empty(t, r.TransferEncoding)
			}
			if tt.want != http.StatusSwitchingProtocols {
				assert.Empty(t, rec.paths())
			}
		})
	}
}

// TestSecurityFrameMasking: RFC 6455 §5.1 requires clients to mask and
// servers not to. Masking keeps a browser's data from being read by a
// cache on the path as an HTTP request it could poison, so an unmasked
// frame from the client, or a masked one from the backend, ends the tunnel
// with close 1002 to both sides and is not forwarded.
func TestSecurityFrameMasking(t *testing.T) {
	t.Parallel()
	poison := []byte("GET /poison HTTP/1.1\r\nHost: cache\r\n\r\n")
	t.Run("unmasked from the client", func(t *testing.T) {
		t.Parallel()
		got := make(chan []byte, 1)
		backend := upgradeBackend(t, func(c *wstest.Conn) {
			b, _ := io.ReadAll(c)
			got <- b
		})
		_, url := newProxy(t, []string{backend})
		c := dial(t, url)
		_, err := c.Conn.Write(wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: poison}, false))
		require.NoError(t, err)
		assert.Equal(t, wsframe.CloseProtocolError, c.ReadClose())
		assert.NotContains(t, string(<-got), "/poison")
	})
	t.Run("masked from the backend", func(t *testing.T) {
		t.Parallel()
		backend := upgradeBackend(t, func(c *wstest.Conn) {
			c.Conn.Write(wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: poison}, true))
			io.Copy(io.Discard, c)
		})
		_, url := newProxy(t, []string{backend})
		c := dial(t, url)
		f, err := c.ReadFrame()
		require.NoError(t, err)
		require.Equal(t, byte(wsframe.OpClose), f.Op, "the masked frame is not forwarded")
		code, _ := wsframe.ParseClose(f.Payload)
		assert.Equal(t, uint16(wsframe.CloseProtocolError), code)
	})
}

// TestSecurityNonMinimalControlFrame: a control frame whose length is
// written in the 8-byte form is 139 bytes long, more than a minimally
// encoded one. When it arrived split across reads, the proxy used to keep
// only 131 bytes of it, so the frames it forwarded no longer matched the
// frames it tracked: the client could then hide frames from the proxy's
// checks (size limit, close handling) or make it inject a frame in the
// middle of one. The backend must receive exactly the bytes sent.
func TestSecurityNonMinimalControlFrame(t *testing.T) {
	t.Parallel()
	payload := []byte(strings.Repeat("p", wsframe.MaxControlPayload))
	mask := [4]byte{9, 8, 7, 6}
	ping := append([]byte{0x89, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, byte(len(payload))}, mask[:]...)
	start := len(ping)
	ping = append(ping, payload...)
	wsframe.Mask(mask, 0, ping[start:])
	next := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("after")}, true)
	want := append(append([]byte(nil), ping...), next...)

	got := make(chan []byte, 1)
	backend := upgradeBackend(t, func(c *wstest.Conn) {
		b := make([]byte, len(want))
		n, _ := io.ReadFull(c, b)
		got <- b[:n]
	})
	_, url, accepted := newProxyServer(t, []string{backend})
	c := dial(t, url)

	// All but the last byte of the ping, then the rest: the proxy reads
	// them apart and has to carry 138 bytes over.
	_, err := c.Conn.Write(ping[:len(ping)-1])
	require.NoError(t, err)
	watched := <-accepted
	waitReadByPeer(t, c.Conn.(*net.TCPConn), watched)
	watched.Close()
	_, err = c.Conn.Write(want[len(ping)-1:])
	require.NoError(t, err)
	assert.Equal(t, want, <-got)
}
