package wsproxy

import (
	"bufio"
	"compress/gzip"
	"context"
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

// serve starts a server with handler h and returns its ws:// URL.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return "ws://" + s.Listener.Addr().String()
}

func TestServeMuxPattern(t *testing.T) {
	t.Parallel()
	backend, got := headerBackend(t)
	p, err := New([]string{backend})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	mux := http.NewServeMux()
	mux.Handle("GET /ws/{room}", p)
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "page") })
	url := serve(t, mux)

	c := dial(t, url+"/ws/lobby?user=7")
	echoMessage(t, c, wsframe.OpText, []byte("hi"))
	r := <-got
	assert.Equal(t, "/ws/lobby?user=7", r.RequestURI, "the whole path goes to the backend")
}

func TestStripPrefix(t *testing.T) {
	t.Parallel()
	backend, got := headerBackend(t)
	p, err := New([]string{backend + "/socket"})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	mux := http.NewServeMux()
	mux.Handle("/chat/", http.StripPrefix("/chat", p))
	url := serve(t, mux)

	c := dial(t, url+"/chat/room/1")
	echoMessage(t, c, wsframe.OpText, []byte("hi"))
	assert.Equal(t, "/socket/room/1", (<-got).RequestURI)
}

// statusRecorder is a logging/metrics middleware's ResponseWriter with Unwrap.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// TestUnwrapMiddlewareChain: auth, logging and metrics middlewares, each
// wrapping the ResponseWriter with Unwrap, around the proxy.
func TestUnwrapMiddlewareChain(t *testing.T) {
	t.Parallel()
	p, err := New([]string{newEcho(t)})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	var logged, counted atomic.Int64
	logging := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := &statusRecorder{ResponseWriter: w}
			next.ServeHTTP(rec, r)
			logged.Add(1)
		})
	}
	metrics := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(&statusRecorder{ResponseWriter: w}, r)
			counted.Add(1)
		})
	}
	auth := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer ok" {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	url := serve(t, logging(metrics(auth(p))))

	c := dial(t, url, "Authorization: Bearer ok")
	echoMessage(t, c, wsframe.OpText, []byte("through three wrappers"))
	assert.Equal(t, int64(1), logged.Load(), "ServeHTTP returns once the tunnel runs")
	assert.Equal(t, int64(1), counted.Load())

	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

// hijackingWriter implements http.Hijacker itself, the pre-Go 1.20 way.
type hijackingWriter struct{ http.ResponseWriter }

func (h hijackingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(h.ResponseWriter).Hijack()
}

func TestHijackerMiddleware(t *testing.T) {
	t.Parallel()
	p, err := New([]string{newEcho(t)})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	url := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.ServeHTTP(hijackingWriter{w}, r)
	}))
	echoMessage(t, dial(t, url), wsframe.OpText, []byte("old style"))
}

// TestTimeoutHandler: http.TimeoutHandler's writer cannot be hijacked; the
// proxy says so with a 500 before dialling. Bound handshakes with
// WithHandshakeTimeout and ReadHeaderTimeout instead.
func TestTimeoutHandler(t *testing.T) {
	t.Parallel()
	backend, hits := countingBackend(t)
	p, err := New([]string{backend})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	var rejected atomic.Value
	p.cfg.hooks.OnReject = func(_ *http.Request, err error) { rejected.Store(err) }
	url := serve(t, http.TimeoutHandler(p, time.Second, "too slow"))
	resp, _, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
	body, _ := io.ReadAll(resp.Body)
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	assert.Contains(t, string(body), "hijack")
	err, _ = rejected.Load().(error)
	assert.ErrorIs(t, err, ErrNotHijackable)
	assert.Zero(t, hits.Load())
}

// gzipWriter is a typical compression middleware's writer, with Unwrap.
type gzipWriter struct {
	http.ResponseWriter
	gz *gzip.Writer
}

func (g *gzipWriter) Write(b []byte) (int, error) { return g.gz.Write(b) }
func (g *gzipWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }

func gzipMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		gz := gzip.NewWriter(w)
		defer gz.Close()
		next.ServeHTTP(&gzipWriter{ResponseWriter: w, gz: gz}, r)
	})
}

// TestCompressionMiddleware: a naive compression middleware that sets
// Content-Encoding before calling the proxy must not leak it into the 101
// (the proxy drops Content-* headers there), and the tunnel's bytes are not
// compressed by it: WebSocket compression is permessage-deflate, end to end.
// (Its deferred gz.Close writes to the hijacked connection, which net/http
// refuses and logs: real compression middleware skips upgrade requests.)
func TestCompressionMiddleware(t *testing.T) {
	t.Parallel()
	p, err := New([]string{newEcho(t)})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	url := serve(t, gzipMiddleware(p))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := wstest.Dial(ctx, url, nil, nil, "Accept-Encoding: gzip")
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	assert.Empty(t, resp.Header.Get("Content-Encoding"))
	echoMessage(t, c, wsframe.OpText, []byte(strings.Repeat("compressible ", 100)))
}
