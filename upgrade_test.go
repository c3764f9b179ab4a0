package wsproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func TestClientRequestChecks(t *testing.T) {
	t.Parallel()
	backend, hits := countingBackend(t)
	_, url := newProxy(t, []string{backend})
	host := hostOf(url)
	key := wstest.NewKey()
	lines := func(extra ...string) string {
		return "Host: " + host + "\r\n" + strings.Join(extra, "\r\n") + "\r\n\r\n"
	}
	valid := []string{"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"}
	without := func(drop string, add ...string) []string {
		var out []string
		for _, l := range valid {
			if !strings.HasPrefix(l, drop+":") {
				out = append(out, l)
			}
		}
		return append(out, add...)
	}
	tests := []struct {
		name       string
		give       string
		wantStatus int
		wantHeader map[string]string
	}{
		{"post", "POST / HTTP/1.1\r\n" + lines(append(valid, "Content-Length: 0")...), 400, nil},
		{"http/1.0", "GET / HTTP/1.0\r\n" + lines(valid...), 400, nil},
		{"no connection upgrade", "GET / HTTP/1.1\r\n" + lines(without("Connection", "Connection: keep-alive")...), 400, nil},
		{"no key", "GET / HTTP/1.1\r\n" + lines(without("Sec-WebSocket-Key")...), 400, nil},
		{"short key", "GET / HTTP/1.1\r\n" + lines(without("Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ=")...), 400, nil},
		{"key not base64", "GET / HTTP/1.1\r\n" + lines(without("Sec-WebSocket-Key", "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==")...), 400, nil},
		{"two keys", "GET / HTTP/1.1\r\n" + lines(append(valid, "Sec-WebSocket-Key: "+wstest.NewKey())...), 400, nil},
		{"version 8", "GET / HTTP/1.1\r\n" + lines(without("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")...), 426,
			map[string]string{"Sec-Websocket-Version": "13"}},
		{"no version", "GET / HTTP/1.1\r\n" + lines(without("Sec-WebSocket-Version")...), 426,
			map[string]string{"Sec-Websocket-Version": "13"}},
		{"body", "GET / HTTP/1.1\r\n" + lines(append(valid, "Content-Length: 5")...) + "hello", 400, nil},
		{"chunked body", "GET / HTTP/1.1\r\n" + lines(append(valid, "Transfer-Encoding: chunked")...) + "5\r\nhello\r\n0\r\n\r\n", 400, nil},
		{"not an upgrade", "GET / HTTP/1.1\r\n" + lines(), 426, map[string]string{"Upgrade": "websocket"}},
		{"h2c upgrade", "GET / HTTP/1.1\r\n" + lines("Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AAMAAABkAAQAAP__"), 426, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _, _ := rawRequest(t, url, tt.give)
			body, _ := io.ReadAll(resp.Body)
			assert.Equal(t, tt.wantStatus, resp.StatusCode, "body: %s", body)
			assert.NotEmpty(t, strings.TrimSpace(string(body)), "a reason in the body")
			for k, v := range tt.wantHeader {
				assert.Equal(t, v, resp.Header.Get(k), k)
			}
		})
	}
	assert.Zero(t, hits.Load(), "no bad request may reach the backend")
}

// TestUpgradeTokenLists: Upgrade and Connection are token lists, in any
// case, over several header lines.
func TestUpgradeTokenLists(t *testing.T) {
	t.Parallel()
	_, url := newProxy(t, []string{newEcho(t)})
	host := hostOf(url)
	req := "GET / HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: foo/1, WebSocket\r\nConnection: keep-alive\r\nconnection: UPGRADE\r\n" +
		"Sec-WebSocket-Key: " + wstest.NewKey() + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	resp, _, _ := rawRequest(t, url, req)
	assert.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
}

func TestFallback(t *testing.T) {
	t.Parallel()
	var sawUpgrade atomic.Value
	fallback := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawUpgrade.Store(r.Header.Get("Upgrade") + "|" + r.Header.Get("Connection") + "|" + r.Header.Get("Http2-Settings"))
		io.WriteString(w, "page")
	})
	_, url := newProxy(t, []string{newEcho(t)}, WithFallback(fallback))
	resp, err := http.Get("http" + strings.TrimPrefix(url, "ws"))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "page", string(body))

	// An h2c upgrade is served by the fallback as plain HTTP.
	resp2, _, _ := rawRequest(t, url, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
	assert.Equal(t, http.StatusOK, resp2.StatusCode)
	assert.Equal(t, "||", sawUpgrade.Load())

	// WebSocket upgrades still go to the backend.
	c := dial(t, url)
	require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("x")))
	_, got, err := c.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "x", string(got))
}

func TestOriginPolicy(t *testing.T) {
	t.Parallel()
	backend, hits := countingBackend(t)
	_, strict := newProxy(t, []string{backend})
	_, allowed := newProxy(t, []string{backend}, WithAllowedOrigins("app.example.com", "*.trusted.net", "https://secure.example.org"))
	_, open := newProxy(t, []string{backend}, WithInsecureSkipOriginCheck())
	tests := []struct {
		name   string
		proxy  string
		origin string // "" sends no Origin; "SAME" sends the proxy's own host
		want   int
	}{
		{"no origin", strict, "", 101},
		{"same host", strict, "SAME", 101},
		{"same host other case", strict, "UPPER", 101},
		{"other site", strict, "http://evil.example", 403},
		{"other port", strict, "http://127.0.0.1:1", 403},
		{"null", strict, "null", 403},
		{"garbage", strict, "::::", 403},
		{"listed host", allowed, "https://app.example.com", 101},
		{"listed host any port", allowed, "http://app.example.com:8080", 101},
		{"wildcard subdomain", allowed, "https://a.b.trusted.net", 101},
		{"wildcard bare domain", allowed, "https://trusted.net", 403},
		{"wildcard suffix trick", allowed, "https://eviltrusted.net", 403},
		{"scheme restricted ok", allowed, "https://secure.example.org", 101},
		{"scheme restricted wrong", allowed, "http://secure.example.org", 403},
		{"skip check", open, "http://evil.example", 101},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var extra []string
			switch tt.origin {
			case "":
			case "SAME":
				extra = append(extra, "Origin: http://"+hostOf(tt.proxy))
			case "UPPER":
				extra = append(extra, "Origin: HTTP://"+strings.ToUpper(hostOf(tt.proxy)))
			default:
				extra = append(extra, "Origin: "+tt.origin)
			}
			resp, _, _ := rawRequest(t, tt.proxy, string(wstest.Request(hostOf(tt.proxy), "/", wstest.NewKey(), extra...)))
			assert.Equal(t, tt.want, resp.StatusCode)
		})
	}
	assert.Equal(t, int64(8), hits.Load(), "only allowed origins reach the backend")
}

func TestNewValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		targets []string
		opts    []Option
		wantErr error
		wantMsg string // a part of the message naming the culprit
	}{
		{"empty", nil, nil, ErrNoTargets, ""},
		{"bad scheme", []string{"ftp://x"}, nil, ErrBadTarget, "ftp://x"},
		{"no scheme", []string{"localhost:80"}, nil, ErrBadTarget, "localhost:80"},
		{"unparsable", []string{"ws://[::1"}, nil, ErrBadTarget, "ws://[::1"},
		{"no host", []string{"ws:///path"}, nil, ErrBadTarget, "ws:///path"},
		{"bad port", []string{"ws://h:99999"}, nil, ErrBadTarget, "99999"},
		{"bad weight", []string{"ws://h weight=0"}, nil, ErrBadTarget, "weight"},
		{"unknown param", []string{"ws://h colour=red"}, nil, ErrBadTarget, "colour"},
		{"duplicate", []string{"ws://h", "ws://h"}, nil, ErrBadTarget, "twice"},
		{"only backups", []string{"ws://h backup"}, nil, ErrNoTargets, "backup"},
		{"negative dial timeout", []string{"ws://h"}, []Option{WithDialTimeout(-time.Second)}, ErrBadOption, "WithDialTimeout"},
		{"bad origin pattern", []string{"ws://h"}, []Option{WithAllowedOrigins("a.*.com")}, ErrBadOption, "a.*.com"},
		{"bad trusted proxy", []string{"ws://h"}, []Option{WithTrustedProxies("10.0.0.0/33")}, ErrBadOption, "10.0.0.0/33"},
		{"nil fallback", []string{"ws://h"}, []Option{WithFallback(nil)}, ErrBadOption, "WithFallback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.targets, tt.opts...)
			assert.Nil(t, p)
			require.ErrorIs(t, err, tt.wantErr)
			assert.Contains(t, err.Error(), tt.wantMsg)
		})
	}
	t.Run("all errors at once", func(t *testing.T) {
		_, err := New([]string{"ftp://a", "ws://ok"}, WithDialTimeout(-1), WithHandshakeTimeout(-1))
		require.ErrorIs(t, err, ErrBadTarget)
		require.ErrorIs(t, err, ErrBadOption)
		assert.Contains(t, err.Error(), "WithHandshakeTimeout")
	})
}

func TestBackendHeaders(t *testing.T) {
	t.Parallel()
	backend, got := headerBackend(t)
	_, url := newProxy(t, []string{backend + "/base?tq=1"})
	host := hostOf(url)
	raw := string(wstest.Request(host, "/chat/room?x=2", wstest.NewKey(),
		"Cookie: session=abc",
		"Authorization: Bearer t0k",
		"Sec-WebSocket-Protocol: chat.v2, chat.v1",
		"Sec-WebSocket-Extensions: permessage-deflate",
		// Hop-by-hop attack: ask the proxy to drop the headers it adds
		// and to forward the ones it must not.
		"Connection: X-Forwarded-For, X-Forwarded-Proto, Sec-WebSocket-Key, X-Drop-Me",
		"X-Drop-Me: 1",
		"Keep-Alive: timeout=5",
		"Proxy-Authorization: Basic Zm9vOmJhcg==",
		"TE: trailers",
		"X-Forwarded-For: 6.6.6.6",
		"X-Forwarded-Host: evil.example",
		"Forwarded: for=6.6.6.6",
		"X-Real-IP: 6.6.6.6",
	))
	resp, _, _ := rawRequest(t, url, raw)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	assert.Equal(t, "chat.v2", resp.Header.Get("Sec-Websocket-Protocol"))
	r := <-got
	h := r.Header
	assert.Equal(t, "/base/chat/room?tq=1&x=2", r.RequestURI)
	assert.Equal(t, host, r.Host, "Host is the client's by default")
	assert.Equal(t, "session=abc", h.Get("Cookie"))
	assert.Equal(t, "Bearer t0k", h.Get("Authorization"))
	assert.Equal(t, "chat.v2, chat.v1", h.Get("Sec-Websocket-Protocol"))
	assert.Equal(t, "permessage-deflate", h.Get("Sec-Websocket-Extensions"))
	assert.Equal(t, []string{"websocket"}, h["Upgrade"])
	assert.Equal(t, []string{"Upgrade"}, h["Connection"])
	assert.Len(t, h["Sec-Websocket-Key"], 1)
	assert.Equal(t, []string{"13"}, h["Sec-Websocket-Version"])
	assert.Equal(t, []string{"127.0.0.1"}, h["X-Forwarded-For"])
	assert.Equal(t, []string{host}, h["X-Forwarded-Host"])
	assert.Equal(t, []string{"http"}, h["X-Forwarded-Proto"])
	for _, k := range []string{"X-Drop-Me", "Keep-Alive", "Proxy-Authorization", "Te", "Forwarded", "X-Real-Ip"} {
		assert.Empty(t, h[k], k)
	}
}

// TestBackendHeaderSpelling: Sec-WebSocket-* go out with the RFC's
// spelling, not Go's canonical Sec-Websocket-*.
func TestBackendHeaderSpelling(t *testing.T) {
	t.Parallel()
	lines := make(chan string, 1)
	backend := rawBackend(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		select {
		case lines <- string(buf[:n]):
		default:
		}
	})
	_, url := newProxy(t, []string{backend}, WithHandshakeTimeout(200*time.Millisecond))
	rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey(), "Sec-WebSocket-Protocol: a")))
	req := <-lines
	for _, name := range []string{"Sec-WebSocket-Key: ", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: a"} {
		assert.Contains(t, req, "\r\n"+name)
	}
}

func TestTrustedProxies(t *testing.T) {
	t.Parallel()
	backend, got := headerBackend(t)
	_, url := newProxy(t, []string{backend}, WithTrustedProxies("127.0.0.0/8"))
	resp, _, _ := rawRequest(t, url, string(wstest.Request("app.example", "/", wstest.NewKey(),
		"X-Forwarded-For: 203.0.113.7", "X-Forwarded-Host: app.example", "X-Forwarded-Proto: https")))
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	h := (<-got).Header
	assert.Equal(t, []string{"203.0.113.7, 127.0.0.1"}, h["X-Forwarded-For"])
	assert.Equal(t, []string{"https"}, h["X-Forwarded-Proto"])
	assert.Equal(t, []string{"app.example"}, h["X-Forwarded-Host"])
}

func TestTargetHostAndStripOrigin(t *testing.T) {
	t.Parallel()
	backend, got := headerBackend(t)
	_, url := newProxy(t, []string{backend}, WithTargetHost(), WithStripOrigin())
	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey(), "Origin: http://"+hostOf(url))))
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	r := <-got
	assert.Equal(t, hostOf(backend), r.Host)
	assert.Empty(t, r.Header.Get("Origin"))
}

func TestRewrite(t *testing.T) {
	t.Parallel()
	backend, got := headerBackend(t)
	_, url := newProxy(t, []string{backend}, WithRewrite(func(pr *ProxyRequest) {
		pr.Out.Header.Set("X-User", "alice")
		pr.Out.URL.Path = "/rewritten"
		pr.Out.Header.Del("Upgrade") // the proxy's own headers come back
	}))
	c := dial(t, url)
	c.Close()
	r := <-got
	assert.Equal(t, "alice", r.Header.Get("X-User"))
	assert.Equal(t, "/rewritten", r.URL.Path)
	assert.Equal(t, "websocket", r.Header.Get("Upgrade"))
}

// scriptedBackend answers the upgrade with a fixed response built from the
// request's key, then keeps reading: it records whatever arrives after.
func scriptedBackend(t *testing.T, respond func(key string) string) (string, chan string) {
	t.Helper()
	after := make(chan string, 1)
	url := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(c, respond(req.Header.Get("Sec-Websocket-Key")))
		rest, _ := io.ReadAll(br)
		select {
		case after <- string(rest):
		default:
		}
	})
	return url, after
}

func TestBackendResponses(t *testing.T) {
	t.Parallel()
	valid := func(key string) string {
		return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + wstest.Accept(key) + "\r\n\r\n"
	}
	tests := []struct {
		name     string
		give     func(key string) string
		want     int
		wantBody string
	}{
		{"valid 101", valid, 101, ""},
		{"401 relayed", func(string) string {
			return "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 6\r\n\r\nno way"
		}, 401, "no way"},
		{"426 relayed", func(string) string {
			return "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n"
		}, 426, ""},
		{"500 relayed", func(string) string { return "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops" }, 500, "oops"},
		{"200 instead of 101", func(string) string { return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" }, 200, "hi"},
		{"101 wrong accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
		}, 502, ""},
		{"101 no accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
		}, 502, ""},
		{"101 h2c", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + wstest.Accept(key) + "\r\n\r\n"
		}, 502, ""},
		{"101 no connection", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + wstest.Accept(key) + "\r\n\r\n"
		}, 502, ""},
		{"101 unoffered subprotocol", func(key string) string {
			return strings.TrimSuffix(valid(key), "\r\n") + "Sec-WebSocket-Protocol: admin\r\n\r\n"
		}, 502, ""},
		{"101 unoffered extension", func(key string) string {
			return strings.TrimSuffix(valid(key), "\r\n") + "Sec-WebSocket-Extensions: x-custom\r\n\r\n"
		}, 502, ""},
		{"100 continue", func(string) string { return "HTTP/1.1 100 Continue\r\n\r\n" }, 502, ""},
		{"garbage", func(string) string { return "SSH-2.0-OpenSSH\r\n\r\n" }, 502, ""},
		{"huge header", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n"
		}, 502, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			backend, after := scriptedBackend(t, tt.give)
			_, url := newProxy(t, []string{backend})
			resp, conn, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
			assert.Equal(t, tt.want, resp.StatusCode)
			if tt.want == 101 {
				return
			}
			body, _ := io.ReadAll(resp.Body)
			if tt.wantBody != "" {
				assert.Equal(t, tt.wantBody, string(body))
			}
			if tt.want == 502 {
				assert.NotContains(t, string(body), hostOf(backend), "the body must not name the backend")
			}
			// Smuggling: whatever the client writes now must never reach
			// the backend, and the client connection must be closed.
			conn.Write([]byte("GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n"))
			one := make([]byte, 1)
			_, err := conn.Read(one)
			assert.Error(t, err, "the client connection is closed after a refused upgrade")
			select {
			case rest := <-after:
				assert.NotContains(t, rest, "/admin")
			case <-time.After(5 * time.Second):
				t.Error("backend connection was not closed")
			}
		})
	}
}

func TestBackendDown(t *testing.T) {
	t.Parallel()
	dead := "ws://" + refusingAddr(t)
	var rejected atomic.Value
	_, url := newProxy(t, []string{dead}, WithHooks(Hooks{OnReject: func(_ *http.Request, err error) { rejected.Store(err) }}))
	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	err, _ := rejected.Load().(error)
	require.ErrorIs(t, err, ErrDial)
	var be *BackendError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, "dial", be.Op)
	assert.Equal(t, dead, be.Target)
}

func TestBackendTimeouts(t *testing.T) {
	t.Parallel()
	// A backend that accepts and never answers.
	silent := rawBackend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	var rejected atomic.Value
	_, url := newProxy(t, []string{silent}, WithHandshakeTimeout(100*time.Millisecond),
		WithHooks(Hooks{OnReject: func(_ *http.Request, err error) { rejected.Store(err) }}))
	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	err, _ := rejected.Load().(error)
	require.ErrorIs(t, err, ErrBackendHandshake)

	// A dial that cannot finish in time (a custom dialer that waits).
	slowDial := WithDialer(func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	_, url2 := newProxy(t, []string{"ws://192.0.2.1:9"}, slowDial, WithDialTimeout(50*time.Millisecond))
	resp, _, _ = rawRequest(t, url2, string(wstest.Request(hostOf(url2), "/", wstest.NewKey())))
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
}

func TestErrorHandler(t *testing.T) {
	t.Parallel()
	var got error
	_, url := newProxy(t, []string{newEcho(t)}, WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
		got = err
		http.Error(w, "custom", StatusCode(err))
	}))
	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey(), "Origin: http://evil.example")))
	body, _ := io.ReadAll(resp.Body)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Equal(t, "custom\n", string(body))
	assert.ErrorIs(t, got, ErrOriginDenied)
}

// TestTLSBothSides: the proxy serves TLS and dials a wss backend whose
// certificate it verifies, sending the target's host name as SNI.
func TestTLSBothSides(t *testing.T) {
	t.Parallel()
	var sni atomic.Value
	backendSrv := httptest.NewUnstartedServer(wstest.EchoHandler())
	backendSrv.TLS = &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		sni.Store(hello.ServerName)
		return nil, nil
	}}
	backendSrv.StartTLS()
	t.Cleanup(backendSrv.Close)
	// httptest's certificate is valid for example.com: dial that name to
	// the backend's loopback address.
	_, port, _ := net.SplitHostPort(backendSrv.Listener.Addr().String())
	backendURL := "wss://example.com:" + port
	toLoopback := WithDialer(func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, backendSrv.Listener.Addr().String())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Without the backend's CA the handshake fails: verification is on.
	p0, err := New([]string{backendURL}, toLoopback)
	require.NoError(t, err)
	s0 := httptest.NewTLSServer(p0)
	t.Cleanup(func() { p0.Close(); s0.Close() })
	_, resp, err := wstest.Dial(ctx, "wss://"+s0.Listener.Addr().String(), s0.Client().Transport.(*http.Transport).TLSClientConfig, nil)
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)

	roots := backendSrv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	p, err := New([]string{backendURL}, toLoopback, WithTLSConfig(&tls.Config{RootCAs: roots}))
	require.NoError(t, err)
	s := httptest.NewTLSServer(p)
	t.Cleanup(func() { p.Close(); s.Close() })
	c, _, err := wstest.Dial(ctx, "wss://"+s.Listener.Addr().String(), s.Client().Transport.(*http.Transport).TLSClientConfig, nil)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	for _, size := range []int{10, 70_000} {
		msg := randomBytes(size)
		require.NoError(t, c.WriteMessage(wsframe.OpBinary, msg))
		_, got, err := c.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, msg, got)
	}
	assert.Equal(t, "example.com", sni.Load())
}

func TestShutdownClosesTunnels(t *testing.T) {
	t.Parallel()
	p, url := newProxy(t, []string{newEcho(t)})
	var conns []*wstest.Conn
	for range 5 {
		conns = append(conns, dial(t, url))
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- p.Shutdown(ctx)
	}()
	for _, c := range conns {
		_, _, err := c.ReadMessage()
		var ce *wstest.CloseError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, wsframe.CloseGoingAway, ce.Code)
	}
	require.NoError(t, <-done)
	assert.Equal(t, 0, p.Stats().Open)

	// New upgrades are refused with 503.
	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.NotEmpty(t, resp.Header.Get("Retry-After"))
}

// TestShutdownContextEnds: a client that never answers the close frame is
// cut when the context ends.
func TestShutdownContextEnds(t *testing.T) {
	t.Parallel()
	p, url := newProxy(t, []string{newEcho(t)}, WithCloseTimeout(time.Minute))
	c := dial(t, url)
	_ = c
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := p.Shutdown(ctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, 0, p.Stats().Open)
}

// TestMiddlewareWithoutUnwrap: a wrapping ResponseWriter without Unwrap
// gets a clear 500 before any backend is dialled.
func TestMiddlewareWithoutUnwrap(t *testing.T) {
	t.Parallel()
	backend, hits := countingBackend(t)
	p, err := New([]string{backend})
	require.NoError(t, err)
	var got error
	p.cfg.hooks.OnReject = func(_ *http.Request, err error) { got = err }
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.ServeHTTP(struct{ http.ResponseWriter }{w}, r)
	}))
	t.Cleanup(func() { p.Close(); s.Close() })
	url := "ws://" + s.Listener.Addr().String()
	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	assert.True(t, errors.Is(got, ErrNotHijackable))
	assert.Zero(t, hits.Load())
}
