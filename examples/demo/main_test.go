package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/websocket"
)

// browser is what a browser does with the demo page: load it and its
// assets, poll the API and open the socket, with one cookie jar.
type browser struct {
	t      *testing.T
	base   string
	client *http.Client
}

func newBrowser(t *testing.T, base string) *browser {
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &browser{t: t, base: base, client: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
}

// get fetches path and returns the backend that served it and the body.
func (b *browser) get(path string) (string, []byte) {
	b.t.Helper()
	resp, err := b.client.Get(b.base + path)
	require.NoError(b.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(b.t, err)
	require.Equal(b.t, http.StatusOK, resp.StatusCode, path)
	return resp.Header.Get("X-Backend"), body
}

// socket opens the page's WebSocket with the jar's cookies and returns the
// backend its first message names.
func (b *browser) socket() (*websocket.Conn, string) {
	b.t.Helper()
	cfg, err := websocket.NewConfig("ws"+strings.TrimPrefix(b.base, "http")+"/ws", b.base)
	require.NoError(b.t, err)
	u, err := url.Parse(b.base)
	require.NoError(b.t, err)
	cfg.Header = http.Header{}
	for _, c := range b.client.Jar.Cookies(u) {
		cfg.Header.Add("Cookie", c.String())
	}
	c, err := websocket.DialConfig(cfg)
	require.NoError(b.t, err)
	b.t.Cleanup(func() { c.Close() })
	var m chatMessage
	require.NoError(b.t, websocket.JSON.Receive(c, &m))
	require.True(b.t, m.System)
	return c, m.Backend
}

// TestDemo loads the page in two browsers: each gets the page, its assets,
// its API polls and its socket from one backend, and the second browser,
// arriving while the first one's socket is open, gets the other backend.
func TestDemo(t *testing.T) {
	p, err := newProxy()
	require.NoError(t, err)
	srv := httptest.NewServer(p)
	defer func() { p.Close(); srv.Close() }()

	seen := map[string]bool{}
	for range 2 {
		b := newBrowser(t, srv.URL)
		home, page := b.get("/")
		assert.Contains(t, string(page), `<script src="app.js"></script>`)
		for _, asset := range []string{"/style.css", "/app.js", "/api/stats", "/api/stats"} {
			backend, _ := b.get(asset)
			assert.Equal(t, home, backend, "%s came from the page's backend", asset)
		}
		_, body := b.get("/api/stats")
		var st backendStats
		require.NoError(t, json.Unmarshal(body, &st))
		assert.Equal(t, home, st.ServedBy)

		_, socketBackend := b.socket()
		assert.Equal(t, home, socketBackend, "the socket went to the page's backend")
		seen[home] = true
	}
	assert.Len(t, seen, 2, "the second browser went to the other backend")

	ps := p.Stats()
	assert.Equal(t, int64(2), ps.Affinity.Assigned, "one cookie per browser")
	assert.Zero(t, ps.Affinity.Down+ps.Affinity.Full+ps.Affinity.Unknown+ps.Affinity.Spilled+ps.Affinity.Failed)
	for _, ts := range ps.Targets {
		assert.Equal(t, int64(6), ts.HTTPRequests, "%s: page, 2 assets, 3 polls", ts.Target)
	}
}
