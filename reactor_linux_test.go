package wsproxy

import (
	"testing"
	"time"

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
