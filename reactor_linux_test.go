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
	for end := time.Now().Add(3 * parkAfter); time.Now().Before(end); {
		echoAll()
	}
	require.Eventually(t, func() bool { return parkedTunnels(p) == n }, 2*time.Second+4*parkAfter, 5*time.Millisecond,
		"every pump parks within 2*parkAfter of its last bytes")
	echoAll()
}

// parkedTunnels counts p's tunnels whose two pumps are both parked.
func parkedTunnels(p *Proxy) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := &theReactor
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for tn := range p.tunnels.all() {
		if r.at(tn.up.token) == &tn.up && r.at(tn.down.token) == &tn.down {
			n++
		}
	}
	return n
}
