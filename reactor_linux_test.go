package wsproxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// TestBusyTunnelsParkWhenIdle: tunnels busy for longer than parkAfter (so
// the idle deadline keeps moving with the bytes) park once they go quiet,
// and still echo afterwards.
func TestBusyTunnelsParkWhenIdle(t *testing.T) {
	t.Parallel()
	p, url := newProxy(t, []string{newEcho(t)})
	const n = 10
	var conns []*wstest.Conn
	for range n {
		conns = append(conns, dial(t, url))
	}
	echoAll := func() {
		for _, c := range conns {
			require.NoError(t, c.WriteMessage(wsframe.OpBinary, []byte("ping")))
			_, got, err := c.ReadMessage()
			require.NoError(t, err)
			require.Equal(t, "ping", string(got))
		}
	}
	for end := time.Now().Add(3 * effectiveParkAfter()); time.Now().Before(end); {
		echoAll()
	}
	require.Eventually(t, func() bool { return parkedTunnels(p) == n }, 2*time.Second+4*effectiveParkAfter(), 5*time.Millisecond,
		"every pump parks within 2*parkAfter of its last bytes")
	echoAll()
}

// parkedTunnels counts p's tunnels whose two pumps are both parked.
func parkedTunnels(p *Proxy) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for tn := range p.tunnels.all() {
		if s := tn.State(); s.Up.Parked && s.Down.Parked {
			n++
		}
	}
	return n
}

// TestTLSTunnelsPark: with TLS in front (the client's conn is a tls.Conn
// after the hijack) and a wss:// target, idle tunnels park both pumps and
// still echo afterwards.
func TestTLSTunnelsPark(t *testing.T) {
	t.Parallel()
	backend := httptest.NewTLSServer(wstest.EchoHandler())
	t.Cleanup(backend.Close)
	roots := backend.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	p, err := New([]string{"wss://" + backend.Listener.Addr().String()}, WithTLSConfig(&tls.Config{RootCAs: roots}))
	require.NoError(t, err)
	front := httptest.NewTLSServer(p)
	t.Cleanup(func() { p.Close(); front.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	const n = 5
	var conns []*wstest.Conn
	for range n {
		c, _, err := wstest.Dial(ctx, "wss://"+front.Listener.Addr().String(), front.Client().Transport.(*http.Transport).TLSClientConfig, nil)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		conns = append(conns, c)
	}
	for round := range 2 {
		require.Eventually(t, func() bool { return parkedTunnels(p) == n }, 2*time.Second+4*effectiveParkAfter(), 5*time.Millisecond,
			"every pump parks, TLS on both legs")
		for i, c := range conns {
			msg := fmt.Sprintf("tunnel %d round %d", i, round)
			require.NoError(t, c.WriteMessage(wsframe.OpBinary, []byte(msg)))
			_, got, err := c.ReadMessage()
			require.NoError(t, err)
			assert.Equal(t, msg, string(got))
		}
	}
}
