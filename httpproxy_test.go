package wsproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// siteBackend is a backend serving a small site and its WebSocket: every
// answer, the 101 included, names the backend in X-Backend.
type siteBackend struct {
	name string
	url  string // ws:// URL
	srv  *httptest.Server

	mu   sync.Mutex
	seen []*http.Request // the HTTP requests it got
}

func newSiteBackend(t *testing.T, name string) *siteBackend {
	t.Helper()
	b := &siteBackend{name: name}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "page from "+name)
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("/download", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(16<<20))
		if r.Method == http.MethodHead {
			return
		}
		w.Write(bytes.Repeat([]byte("0123456789abcdef"), 1<<20)) // 16 MiB
	})
	mux.HandleFunc("/etag", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		io.WriteString(w, "fresh")
	})
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
	})
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select { // the second event only once the client is gone or 10s passed
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
			fmt.Fprintf(w, "data: late\n\n")
		}
	})
	headers := func(w http.ResponseWriter, r *http.Request) {
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Cookie", "X-Hop", "X-Rewritten"} {
			fmt.Fprintf(w, "%s=%s\n", k, strings.Join(r.Header[k], ","))
		}
		fmt.Fprintf(w, "Host=%s\nUpgrade=%s\nPath=%s\n", r.Host, r.Header.Get("Upgrade"), r.URL.RequestURI())
	}
	mux.HandleFunc("/headers", headers)
	mux.HandleFunc("/base/headers", headers)
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			c, err := wstest.Upgrade(w, r, http.Header{"X-Backend": {name}})
			if err == nil {
				wstest.Echo(c)
			}
			return
		}
		b.mu.Lock()
		b.seen = append(b.seen, r)
		b.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(b.srv.Close)
	b.url = "ws://" + b.srv.Listener.Addr().String()
	return b
}

func (b *siteBackend) requests() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.seen)
}

// httpURL turns a proxy's ws:// URL into its http:// one.
func httpURL(wsURL string) string { return "http://" + hostOf(wsURL) }

func newJarClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	require.NoError(t, err)
	return do(t, c, req)
}

// do sends req with c and reads the whole answer.
func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

func TestHTTPThroughTargets(t *testing.T) {
	t.Parallel()
	b := newSiteBackend(t, "a")
	_, u := newProxy(t, []string{b.url}, WithHTTP())
	base := httpURL(u)
	c := &http.Client{Timeout: 10 * time.Second}

	t.Run("page", func(t *testing.T) {
		resp, body := get(t, c, base+"/")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "page from a", body)
	})
	t.Run("large upload", func(t *testing.T) {
		data := bytes.Repeat([]byte("upload!"), 3<<20) // 21 MiB
		sum := sha256.Sum256(data)
		resp, err := c.Post(base+"/upload", "application/octet-stream", bytes.NewReader(data))
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		assert.Equal(t, fmt.Sprintf("%d %s", len(data), hex.EncodeToString(sum[:])), string(body))
	})
	t.Run("chunked upload", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for range 100 {
				pw.Write(bytes.Repeat([]byte("x"), 1000))
			}
			pw.Close()
		}()
		resp, err := c.Post(base+"/upload", "application/octet-stream", pr)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		assert.True(t, strings.HasPrefix(string(body), "100000 "), string(body))
	})
	t.Run("large download", func(t *testing.T) {
		resp, err := c.Get(base + "/download")
		require.NoError(t, err)
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		require.NoError(t, err)
		assert.Equal(t, int64(16<<20), n)
	})
	t.Run("HEAD", func(t *testing.T) {
		resp, err := c.Head(base + "/download")
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, int64(16<<20), resp.ContentLength)
	})
	t.Run("304", func(t *testing.T) {
		req, _ := http.NewRequest("GET", base+"/etag", nil)
		req.Header.Set("If-None-Match", `"v1"`)
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotModified, resp.StatusCode)
		assert.Equal(t, `"v1"`, resp.Header.Get("ETag"))
	})
	t.Run("trailers", func(t *testing.T) {
		resp, err := c.Get(base + "/trailer")
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		assert.Equal(t, "body", string(body))
		assert.Equal(t, "abc", resp.Trailer.Get("X-Checksum"))
	})
	t.Run("server-sent events stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/events", nil)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		got := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(resp.Body).ReadString('\n')
			got <- line
		}()
		select {
		case line := <-got:
			assert.Equal(t, "data: first\n", line)
		case <-time.After(time.Second):
			t.Fatal("the first event did not arrive within a second: the response is buffered")
		}
	})
	t.Run("the WebSocket on the same route", func(t *testing.T) {
		c := dial(t, u+"/ws")
		require.NoError(t, c.WriteMessage(1, []byte("hi")))
		_, msg, err := c.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, "hi", string(msg))
	})
}

func TestHTTPHeaderRules(t *testing.T) {
	t.Parallel()
	b := newSiteBackend(t, "a")
	_, u := newProxy(t, []string{b.url + "/base?k=v"}, WithHTTP(),
		WithStickyCookie(http.Cookie{Name: "lb"}),
		WithRewrite(func(pr *ProxyRequest) {
			pr.Out.Header.Set("X-Rewritten", pr.Target.URL.Host)
			pr.Out.Header.Set("Upgrade", "h2c") // a hook cannot make it an upgrade
		}))
	req, _ := http.NewRequest("GET", httpURL(u)+"/headers?q=1", nil)
	req.Host = "site.example"
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Forwarded-Host", "evil.example")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "dropped")
	req.Header.Set("Cookie", "lb=whatever; app=1")
	_, got := do(t, http.DefaultClient, req)
	assert.Contains(t, got, "X-Forwarded-For=127.0.0.1\n")
	assert.Contains(t, got, "X-Forwarded-Host=site.example\n")
	assert.Contains(t, got, "X-Forwarded-Proto=http\n")
	assert.Contains(t, got, "Cookie=app=1\n", "the proxy's cookie is its own")
	assert.Contains(t, got, "X-Hop=\n")
	assert.Contains(t, got, "X-Rewritten="+hostOf(b.url)+"\n")
	assert.Contains(t, got, "Host=site.example\n")
	assert.Contains(t, got, "Upgrade=\n")
	assert.Contains(t, got, "Path=/base/headers?k=v&q=1\n")
}

func TestHTTPTrustedProxyAndTargetHost(t *testing.T) {
	t.Parallel()
	b := newSiteBackend(t, "a")
	_, u := newProxy(t, []string{b.url}, WithHTTP(), WithTrustedProxies("127.0.0.1"), WithTargetHost())
	req, _ := http.NewRequest("GET", httpURL(u)+"/headers", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.5")
	req.Header.Set("X-Forwarded-Host", "www.example")
	req.Header.Set("X-Forwarded-Proto", "https")
	_, got := do(t, http.DefaultClient, req)
	assert.Contains(t, got, "X-Forwarded-For=203.0.113.5, 127.0.0.1\n")
	assert.Contains(t, got, "X-Forwarded-Host=www.example\n")
	assert.Contains(t, got, "X-Forwarded-Proto=https\n")
	assert.Contains(t, got, "Host="+hostOf(b.url)+"\n")
}

func TestHTTPWithFallbackIsAnError(t *testing.T) {
	t.Parallel()
	_, err := New([]string{"ws://127.0.0.1:1"}, WithHTTP(), WithFallback(http.NotFoundHandler()))
	require.ErrorIs(t, err, ErrBadOption)
	assert.Contains(t, err.Error(), "WithFallback")
}

func TestHTTPRefusesOtherUpgrades(t *testing.T) {
	t.Parallel()
	b := newSiteBackend(t, "a")
	_, u := newProxy(t, []string{b.url}, WithHTTP())
	resp, _, _ := rawRequest(t, u, "GET /headers HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
	body, _ := io.ReadAll(resp.Body)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "served as plain HTTP")
	assert.Contains(t, string(body), "Upgrade=\n")

	resp, _, _ = rawRequest(t, u, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	assert.Equal(t, 1, b.requests(), "CONNECT never reaches a backend")
}

// A backend that answers 101 to a plain request must not become a tunnel.
func TestHTTPBackendSwitchingProtocolsUnasked(t *testing.T) {
	t.Parallel()
	backend := rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW")
		io.Copy(io.Discard, c) // the connection stays open until the proxy drops it
	})
	p, u := newProxy(t, []string{backend}, WithHTTP())
	resp, err := http.Get(httpURL(u) + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	require.Eventually(t, func() bool { return p.Stats().Targets[0].HTTPActive == 0 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 0, p.Stats().Targets[0].Open, "the slot was given back")
}

func TestHTTPErrors(t *testing.T) {
	t.Parallel()
	var rejected atomic.Pointer[error]
	var info atomic.Pointer[RequestInfo]
	hooks := Hooks{
		OnReject:  func(_ *http.Request, err error) { rejected.Store(&err) },
		OnRequest: func(ri RequestInfo) { info.Store(&ri) },
	}
	t.Run("dial failure is 502", func(t *testing.T) {
		p, u := newProxy(t, []string{"ws://" + refusingAddr(t)}, WithHTTP(), WithHooks(hooks))
		resp, err := http.Get(httpURL(u) + "/")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
		assert.Equal(t, "backend unavailable\n", string(body), "the body never names a backend")
		require.NotNil(t, rejected.Load())
		assert.ErrorIs(t, *rejected.Load(), ErrDial)
		require.Eventually(t, func() bool { return info.Load() != nil }, time.Second, time.Millisecond)
		assert.Equal(t, http.StatusBadGateway, info.Load().Status)
		s := p.Stats()
		assert.Equal(t, int64(1), s.HTTPRequests)
		assert.Equal(t, int64(1), s.HTTPFailures)
		assert.Equal(t, int64(1), s.Targets[0].HTTPFailures)
	})
	t.Run("slow backend is 504", func(t *testing.T) {
		slow := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}))
		_, u := newProxy(t, []string{slow}, WithHTTP(), WithResponseHeaderTimeout(50*time.Millisecond))
		resp, err := http.Get(httpURL(u) + "/")
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	})
	t.Run("error handler", func(t *testing.T) {
		_, u := newProxy(t, []string{"ws://" + refusingAddr(t)}, WithHTTP(),
			WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
				http.Error(w, "custom", StatusCode(err))
			}))
		_, body := get(t, http.DefaultClient, httpURL(u)+"/")
		assert.Equal(t, "custom\n", body)
	})
	t.Run("body cut by the backend aborts the client's response", func(t *testing.T) {
		cut := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			io.WriteString(w, "only part")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}))
		_, u := newProxy(t, []string{cut}, WithHTTP())
		// The headers may still sit in the proxy's buffer when it aborts:
		// either way the client sees a broken response, never a whole one.
		assert.Error(t, readAll(httpURL(u)+"/"))
	})
}

func TestHTTPFailover(t *testing.T) {
	t.Parallel()
	live := newSiteBackend(t, "live")
	dead := "ws://" + refusingAddr(t)

	t.Run("connection refused: any request goes to the next target", func(t *testing.T) {
		p, u := newProxy(t, []string{dead, live.url}, WithHTTP(), WithBalancer(RoundRobin()))
		for range 4 {
			resp, err := http.Post(httpURL(u)+"/upload", "text/plain", strings.NewReader("abc"))
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.True(t, strings.HasPrefix(string(body), "3 "), string(body))
		}
		s := p.Stats()
		assert.False(t, s.Targets[0].Healthy, "the dead target is out after its failure")
		assert.Equal(t, int64(1), s.Targets[0].HTTPFailures, "one failed try, then the cool-down")
	})

	// resetter reads the request and resets the connection: the request
	// was sent, and no response came.
	resetter := func(t *testing.T) (string, *atomic.Int64) {
		t.Helper()
		var got atomic.Int64
		url := rawBackend(t, func(c net.Conn) {
			if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
				got.Add(1)
			}
			c.(*net.TCPConn).SetLinger(0) // rawBackend's Close sends a reset
		})
		return url, &got
	}
	t.Run("sent idempotent request without body is retried", func(t *testing.T) {
		bad, got := resetter(t)
		_, u := newProxy(t, []string{bad, live.url}, WithHTTP(), WithPassiveHealth(0, 0, 0))
		for range 2 { // round robin: one of the two starts on the resetter
			resp, err := http.Get(httpURL(u) + "/")
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
		}
		assert.Equal(t, int64(1), got.Load())
	})
	t.Run("sent POST is not retried", func(t *testing.T) {
		bad, got := resetter(t)
		_, u := newProxy(t, []string{bad, live.url}, WithHTTP(), WithPassiveHealth(0, 0, 0))
		statuses := map[int]int{}
		for range 2 {
			resp, err := http.Post(httpURL(u)+"/upload", "text/plain", strings.NewReader("abc"))
			require.NoError(t, err)
			resp.Body.Close()
			statuses[resp.StatusCode]++
		}
		assert.Equal(t, map[int]int{200: 1, 502: 1}, statuses)
		assert.Equal(t, int64(1), got.Load(), "the POST reached the resetter once and went nowhere else")
	})
	t.Run("never once the client got response headers", func(t *testing.T) {
		var calls atomic.Int64
		breaks := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "part")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}))
		_, u := newProxy(t, []string{breaks, live.url}, WithHTTP(), WithBalancer(firstTarget{}))
		before := live.requests()
		assert.Error(t, readAll(httpURL(u)+"/"))
		assert.Equal(t, int64(1), calls.Load())
		assert.Equal(t, before, live.requests(), "not retried elsewhere")
	})
}

// readAll gets u and reads the whole body, returning the first error.
func readAll(u string) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	return err
}

// One health for both kinds of traffic: an upgrade that failed takes the
// target out for HTTP requests too, and the other way round.
func TestHTTPSharesHealthWithUpgrades(t *testing.T) {
	t.Parallel()
	live := newSiteBackend(t, "live")
	dead := "ws://" + refusingAddr(t)
	p, u := newProxy(t, []string{dead, live.url}, WithHTTP(), WithBalancer(firstTarget{}))
	c := dial(t, u+"/ws") // tries dead first, fails over
	c.Close()
	require.False(t, p.Stats().Targets[0].Healthy)
	resp, body := get(t, http.DefaultClient, httpURL(u)+"/")
	assert.Equal(t, "live", resp.Header.Get("X-Backend"))
	assert.Equal(t, "page from live", body)
	assert.Zero(t, p.Stats().Targets[0].HTTPFailures, "no HTTP request was sent to the target known down")
}

func TestHTTPMaxConnsAndDraining(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	holdURL := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		started <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	other := newSiteBackend(t, "other")
	p, u := newProxy(t, []string{holdURL + " max_conns=1", other.url}, WithHTTP(), WithBalancer(firstTarget{}),
		WithDrainTimeout(100*time.Millisecond))
	resp, err := http.Get(httpURL(u) + "/stream")
	require.NoError(t, err)
	defer resp.Body.Close()
	<-started
	s := p.Stats()
	assert.Equal(t, 1, s.Targets[0].HTTPActive)
	assert.Equal(t, 0, s.Targets[0].Open, "an HTTP request is not a tunnel")

	// The held target is full: the next request goes to the other.
	r2, _ := get(t, http.DefaultClient, httpURL(u)+"/")
	assert.Equal(t, "other", r2.Header.Get("X-Backend"))

	// Removed, the target drains; at the drain timeout its stream ends.
	require.NoError(t, p.SetTargets([]string{other.url}))
	assert.True(t, p.Stats().Targets[1].Draining)
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream to a removed target outlived its drain timeout")
	}
	close(release)
	require.Eventually(t, func() bool { return len(p.Stats().Targets) == 1 }, 5*time.Second, 5*time.Millisecond)
}

func TestStickyCookie(t *testing.T) {
	t.Parallel()
	a, b := newSiteBackend(t, "a"), newSiteBackend(t, "b")
	cookie := http.Cookie{Name: "wsproxy_lb", Path: "/", HttpOnly: true}
	targets := []string{a.url, b.url}
	// Two replicas, as behind an L4 balancer: independent, no shared state.
	p1, u1 := newProxy(t, targets, WithHTTP(), WithStickyCookie(cookie))
	p2, u2 := newProxy(t, targets, WithHTTP(), WithStickyCookie(cookie))
	replicas := []string{httpURL(u1), httpURL(u2)}

	for i := range 6 {
		c := newJarClient(t)
		first, _ := get(t, c, replicas[i%2]+"/")
		home := first.Header.Get("X-Backend")
		setCookie := first.Header.Values("Set-Cookie")
		require.Len(t, setCookie, 1)
		assert.Contains(t, setCookie[0], "wsproxy_lb=")
		assert.Contains(t, setCookie[0], "HttpOnly")
		assert.NotContains(t, setCookie[0], "127.0.0.1", "the value does not reveal the address")
		for j := range 6 {
			resp, _ := get(t, c, replicas[j%2]+"/page")
			assert.Equal(t, home, resp.Header.Get("X-Backend"), "client %d request %d", i, j)
			assert.Empty(t, resp.Header.Values("Set-Cookie"), "a kept cookie is not set again")
		}
		// The upgrade follows the cookie too.
		jarCookies := c.Jar.Cookies(mustParse(t, replicas[1]))
		require.Len(t, jarCookies, 1)
		ws := dial(t, u2+"/ws", "Cookie: "+jarCookies[0].String())
		assert.Equal(t, home, ws.Resp.Header.Get("X-Backend"))
		ws.Close()
	}
	s1, s2 := p1.Stats().Affinity, p2.Stats().Affinity
	assert.Equal(t, int64(6), s1.Assigned+s2.Assigned)
	assert.Equal(t, int64(6*6+6), s1.Kept+s2.Kept)
	assert.Zero(t, s1.Unknown+s2.Unknown+s1.Down+s2.Down+s1.Failed+s2.Failed)
}

func mustParse(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

func TestStickyCookieOnUpgradeAnswers(t *testing.T) {
	t.Parallel()
	a := newSiteBackend(t, "a")
	_, u := newProxy(t, []string{a.url}, WithStickyCookie(http.Cookie{Name: "lb", SameSite: http.SameSiteLaxMode, MaxAge: 3600}))
	c := dial(t, u+"/ws")
	got := c.Resp.Header.Values("Set-Cookie")
	require.Len(t, got, 1)
	assert.Regexp(t, `^lb=[A-Za-z0-9_-]{22}; Path=/; Max-Age=3600; SameSite=Lax$`, got[0])
}

func TestStickyCookieForgedAndRemoved(t *testing.T) {
	t.Parallel()
	a, b := newSiteBackend(t, "a"), newSiteBackend(t, "b")
	p, u := newProxy(t, []string{a.url, b.url}, WithHTTP(), WithStickyCookie(http.Cookie{Name: "lb"}))
	base := httpURL(u)

	for _, forged := range []string{"x", "../../etc", strings.Repeat("A", 4000), "127.0.0.1:1", `"`} {
		req, _ := http.NewRequest("GET", base+"/", nil)
		req.Header.Set("Cookie", "lb="+forged)
		resp, _ := do(t, http.DefaultClient, req)
		assert.Equal(t, http.StatusOK, resp.StatusCode, "forged %q", forged)
		assert.Contains(t, []string{"a", "b"}, resp.Header.Get("X-Backend"))
		assert.Len(t, resp.Header.Values("Set-Cookie"), 1, "a forged value is replaced")
	}
	assert.Equal(t, int64(5), p.Stats().Affinity.Unknown)

	// A client on a, then a is removed: it moves to b and gets a new cookie.
	c := newJarClient(t)
	var home string
	for home != "a" {
		c = newJarClient(t)
		resp, _ := get(t, c, base+"/")
		home = resp.Header.Get("X-Backend")
	}
	require.NoError(t, p.SetTargets([]string{b.url}))
	resp, _ := get(t, c, base+"/")
	assert.Equal(t, "b", resp.Header.Get("X-Backend"))
	assert.Len(t, resp.Header.Values("Set-Cookie"), 1)
	resp, _ = get(t, c, base+"/")
	assert.Empty(t, resp.Header.Values("Set-Cookie"))

	// b keeps its value across the change: a client of b never moves.
	require.NoError(t, p.SetTargets([]string{a.url, b.url}))
	for range 4 {
		resp, _ = get(t, c, base+"/")
		assert.Equal(t, "b", resp.Header.Get("X-Backend"))
	}
}

func TestStickyCookieFollowsHealth(t *testing.T) {
	t.Parallel()
	a := newSiteBackend(t, "a")
	down := refusingAddr(t)
	p, u := newProxy(t, []string{"ws://" + down, a.url}, WithHTTP(), WithStickyCookie(http.Cookie{Name: "lb"}))
	// A cookie naming the dead target: the request fails over, and moves.
	id := (&sticky{secret: defaultStickySecret}).id(p.set.Load().all[0])
	req, _ := http.NewRequest("GET", httpURL(u)+"/", nil)
	req.Header.Set("Cookie", "lb="+id)
	resp, _ := do(t, http.DefaultClient, req)
	assert.Equal(t, "a", resp.Header.Get("X-Backend"))
	assert.Len(t, resp.Header.Values("Set-Cookie"), 1)
	// Now down: the next such request is counted as Down, not Failed.
	do(t, http.DefaultClient, req)
	s := p.Stats().Affinity
	assert.Equal(t, int64(1), s.Failed)
	assert.Equal(t, int64(1), s.Down)
}

func TestStickyOptionsValidated(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give []Option
	}{
		{name: "no name", give: []Option{WithStickyCookie(http.Cookie{})}},
		{name: "bad name", give: []Option{WithStickyCookie(http.Cookie{Name: "a b"})}},
		{name: "value given", give: []Option{WithStickyCookie(http.Cookie{Name: "a", Value: "x"})}},
		{name: "short secret", give: []Option{WithStickyCookie(http.Cookie{Name: "a"}), WithStickySecret([]byte("short"))}},
		{name: "secret without cookie", give: []Option{WithStickySecret(bytes.Repeat([]byte("k"), 32))}},
		{name: "negative timeout", give: []Option{WithResponseHeaderTimeout(-1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New([]string{"ws://127.0.0.1:1"}, tt.give...)
			assert.ErrorIs(t, err, ErrBadOption)
		})
	}
}

// The secret changes the values; replicas with the same secret agree.
func TestStickySecret(t *testing.T) {
	t.Parallel()
	a := newSiteBackend(t, "a")
	value := func(secret []byte) string {
		opts := []Option{WithHTTP(), WithStickyCookie(http.Cookie{Name: "lb"})}
		if secret != nil {
			opts = append(opts, WithStickySecret(secret))
		}
		_, u := newProxy(t, []string{a.url}, opts...)
		resp, _ := get(t, http.DefaultClient, httpURL(u)+"/")
		return resp.Header.Get("Set-Cookie")
	}
	k1, k2 := bytes.Repeat([]byte("1"), 16), bytes.Repeat([]byte("2"), 16)
	assert.Equal(t, value(k1), value(k1))
	assert.NotEqual(t, value(k1), value(k2))
	assert.NotEqual(t, value(nil), value(k1))
}

// Session affinity by hash holds by default: an old tunnel still counted
// does not move keys (the load bound is off unless asked for).
func TestConsistentHashKeepsAffinityByDefault(t *testing.T) {
	t.Parallel()
	a, b := newSiteBackend(t, "a"), newSiteBackend(t, "b")
	p, u := newProxy(t, []string{a.url, b.url}, WithHTTP(), WithBalancer(ConsistentHash(CookieKey("sid"))))
	homes := map[string]string{}
	var conns []*wstest.Conn
	for i := range 20 {
		sid := fmt.Sprintf("sid=%d", i)
		c := dial(t, u+"/ws", "Cookie: "+sid)
		homes[sid] = c.Resp.Header.Get("X-Backend")
		conns = append(conns, c) // stay open: loads become uneven
	}
	for range 3 {
		for sid, home := range homes {
			req, _ := http.NewRequest("GET", httpURL(u)+"/", nil)
			req.Header.Set("Cookie", sid)
			resp, _ := do(t, http.DefaultClient, req)
			assert.Equal(t, home, resp.Header.Get("X-Backend"), sid)
		}
	}
	s := p.Stats().Affinity
	assert.Equal(t, int64(20+60), s.Kept)
	assert.Zero(t, s.Spilled)
	for _, c := range conns {
		c.Close()
	}
}

func TestClientIPKeyBehindTrustedProxy(t *testing.T) {
	t.Parallel()
	a, b := newSiteBackend(t, "a"), newSiteBackend(t, "b")
	_, u := newProxy(t, []string{a.url, b.url}, WithHTTP(), WithTrustedProxies("127.0.0.0/8"),
		WithBalancer(ConsistentHash(ClientIPKey())))
	seen := map[string]bool{}
	for i := range 40 {
		client := fmt.Sprintf("198.51.100.%d", i)
		var home string
		for range 3 {
			req, _ := http.NewRequest("GET", httpURL(u)+"/", nil)
			req.Header.Set("X-Forwarded-For", client)
			resp, _ := do(t, http.DefaultClient, req)
			got := resp.Header.Get("X-Backend")
			if home == "" {
				home = got
			}
			assert.Equal(t, home, got, client)
		}
		seen[home] = true
	}
	assert.Len(t, seen, 2, "clients behind one load balancer spread over both targets")
}

// Two targets both down, then both back: the first request after they are
// back succeeds, an upgrade or an HTTP request, without waiting out the
// passive cool-down.
func TestRecoveryWhenEveryTargetFailed(t *testing.T) {
	t.Parallel()
	// flaky is a backend that resets every connection until up is set.
	flaky := func(t *testing.T, up *atomic.Bool) string {
		return newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case !up.Load():
				c, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
				}
			case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
				wstest.EchoHandler().ServeHTTP(w, r)
			default:
				io.WriteString(w, "back")
			}
		}))
	}
	for _, kind := range []string{"upgrade", "http"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			var up atomic.Bool
			p, u := newProxy(t, []string{flaky(t, &up), flaky(t, &up)}, WithHTTP(),
				WithPassiveHealth(1, time.Minute, time.Minute))
			resp, err := http.Get(httpURL(u) + "/")
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusBadGateway, resp.StatusCode)
			for _, ts := range p.Stats().Targets {
				require.False(t, ts.Healthy, "both targets are out for a minute")
			}
			up.Store(true)
			if kind == "upgrade" {
				c := dial(t, u+"/ws")
				echoMessage(t, c, wsframe.OpText, []byte("back"))
				return
			}
			resp, body := get(t, http.DefaultClient, httpURL(u)+"/")
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "back", body)
		})
	}
}

// With active health checks on, a target they hold down stays out even
// when everything else failed.
func TestRecoveryRespectsActiveChecks(t *testing.T) {
	t.Parallel()
	p, u := newProxy(t, []string{"ws://" + refusingAddr(t), "ws://" + refusingAddr(t)}, WithHTTP(),
		WithHealthCheck(HealthCheck{Interval: 10 * time.Millisecond, Fall: 1, TCPOnly: true}))
	require.Eventually(t, func() bool {
		s := p.Stats()
		return !s.Targets[0].Healthy && !s.Targets[1].Healthy
	}, 5*time.Second, 5*time.Millisecond)
	resp, err := http.Get(httpURL(u) + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	s := p.Stats()
	assert.Equal(t, int64(1), s.HTTPRequests)
	assert.Zero(t, s.Targets[0].HTTPFailures+s.Targets[1].HTTPFailures, "nothing was dialled")
}

func TestOriginBehindTrustedProxy(t *testing.T) {
	t.Parallel()
	echo := newEcho(t)
	_, u := newProxy(t, []string{echo}, WithTrustedProxies("127.0.0.1"))
	// The proxy in front rewrote Host; the browser saw www.example.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := wstest.Dial(ctx, u+"/", nil, nil, "Origin: https://www.example", "X-Forwarded-Host: www.example")
	require.NoError(t, err)
	c.Close()
	_, resp, err := wstest.Dial(ctx, u+"/", nil, nil, "Origin: https://evil.example", "X-Forwarded-Host: www.example")
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)

	// From a peer that is not trusted the header means nothing.
	_, u2 := newProxy(t, []string{echo})
	_, resp, err = wstest.Dial(ctx, u2+"/", nil, nil, "Origin: https://www.example", "X-Forwarded-Host: www.example")
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
}

// Over HTTP/2 the pages and the RFC 8441 WebSocket share the cookie: the
// 200 that opens a WebSocket sets it as a 101 does.
func TestStickyCookieOverHTTP2(t *testing.T) {
	t.Parallel()
	a, b := newSiteBackend(t, "a"), newSiteBackend(t, "b")
	f := newH2Fixture(t, []string{a.url, b.url}, WithHTTP(), WithStickyCookie(http.Cookie{Name: "lb"}))
	req, _ := http.NewRequest("GET", f.url+"/", nil)
	resp, err := f.tr.RoundTrip(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 2, resp.ProtoMajor)
	home := resp.Header.Get("X-Backend")
	set := resp.Header.Get("Set-Cookie")
	require.NotEmpty(t, set)
	cookie, _, _ := strings.Cut(set, ";")

	for range 3 {
		c, resp := f.mustDial(t, "/ws", http.Header{"Cookie": {cookie}})
		assert.Equal(t, home, resp.Header.Get("X-Backend"))
		assert.Empty(t, resp.Header.Values("Set-Cookie"))
		c.Close()
	}
	c, resp := f.mustDial(t, "/ws", nil)
	assert.Len(t, resp.Header.Values("Set-Cookie"), 1, "a WebSocket without the cookie gets one")
	c.Close()
}

// Shutdown refuses upgrades but goes on serving HTTP, which the
// http.Server drains; Close aborts the requests still in flight.
func TestHTTPAndShutdown(t *testing.T) {
	t.Parallel()
	b := newSiteBackend(t, "a")
	p, u := newProxy(t, []string{b.url}, WithHTTP())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", httpURL(u)+"/events", nil)
	stream, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer stream.Body.Close()
	br := bufio.NewReader(stream.Body)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "data: first\n", line)

	require.NoError(t, p.Shutdown(context.Background()), "no tunnel to wait for")
	require.Eventually(t, func() bool {
		_, _, err := wstest.Dial(context.Background(), u+"/ws", nil, nil)
		return err != nil
	}, 5*time.Second, 5*time.Millisecond, "upgrades are refused")
	resp, body := get(t, http.DefaultClient, httpURL(u)+"/")
	assert.Equal(t, "page from a", body)
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	p.Close()
	_, err = io.Copy(io.Discard, br)
	assert.Error(t, err, "Close aborted the stream")
}
