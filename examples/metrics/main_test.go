package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

func TestMetrics(t *testing.T) {
	backend, stop, err := echo.Start(echo.Handler(nil))
	require.NoError(t, err)
	t.Cleanup(stop)
	handler, p, err := newServer([]string{backend})
	require.NoError(t, err)
	srv := httptest.NewServer(handler)
	t.Cleanup(func() { p.Close(); srv.Close() })

	cfg, err := websocket.NewConfig("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", srv.URL)
	require.NoError(t, err)
	c, err := websocket.DialConfig(cfg)
	require.NoError(t, err)
	for range 3 {
		require.NoError(t, websocket.Message.Send(c, "hello"))
		var reply string
		require.NoError(t, websocket.Message.Receive(c, &reply))
	}
	scrape := func() string {
		resp, err := http.Get(srv.URL + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	target := backend
	m := scrape()
	assert.Contains(t, m, `wsproxy_tunnels_open{target="`+target+`"} 1`)
	assert.Contains(t, m, `wsproxy_messages_total{direction="client_to_backend",target="`+target+`"} 3`)
	assert.Contains(t, m, `wsproxy_messages_total{direction="backend_to_client",target="`+target+`"} 3`)

	c.Close()
	require.Eventually(t, func() bool {
		return strings.Contains(scrape(), `wsproxy_tunnels_open{target="`+target+`"} 0`)
	}, 5*time.Second, 10*time.Millisecond)
	m = scrape()
	assert.Contains(t, m, `wsproxy_tunnel_duration_seconds_count{target="`+target+`"} 1`)
	assert.Contains(t, m, `wsproxy_tunnels_total{target="`+target+`"} 1`)

	// A refused origin shows up by status and reason.
	bad, _ := websocket.NewConfig("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", "http://evil.example")
	_, err = websocket.DialConfig(bad)
	require.Error(t, err)
	assert.Contains(t, scrape(), `wsproxy_rejects_total{reason="origin",status="403"} 1`)
}
