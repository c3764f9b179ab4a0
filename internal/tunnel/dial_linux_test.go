package tunnel

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/evloop"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// dialledPair is tcpPair with the dialling end from Dial: a connection
// made in an event loop, as the proxy's upgrades to plain TCP backends get.
func dialledPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, netip.MustParseAddrPort(ln.Addr().String()), 0)
	require.NoError(t, err)
	s, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() {
		c.Close()
		s.Close()
	})
	return c, s
}

// A backend dialled into a loop is adopted by its tunnel there: the tunnel
// runs in that loop on the same registration.
func TestLoopAdoptsDialledBackend(t *testing.T) {
	t.Parallel()
	var dialled *evloop.Conn
	backPair := func(t *testing.T) (net.Conn, net.Conn) {
		a, b := dialledPair(t)
		dialled = a.(*evloop.Conn)
		return a, b
	}
	tn, client, backend, res := startedOn(t, loopConfig(Config{}), nil, tcpPair, backPair)
	cs, bs := socksOf(t, tn)
	assert.Same(t, dialled.Loop(), bs.reg.Loop())
	assert.Same(t, bs.reg.Loop(), cs.reg.Loop(), "the client joins the backend's loop")
	assert.Equal(t, dialled.RemoteAddr().String(), tn.back.RemoteAddr().String())
	_, err := dialled.Write([]byte("x"))
	assert.ErrorIs(t, err, net.ErrClosed, "the Conn let go of the socket")
	assert.True(t, tn.up.spliceOK && tn.down.spliceOK, "large payloads splice to and from a dialled backend")

	echoAndClose(t, client, backend, res, "one", string(make([]byte, 300<<10)))
}

// Under the goroutine driver (or with a client that cannot join a loop) a
// dialled backend is an ordinary net.Conn to the pumps.
func TestGoroutinesOverDialledBackend(t *testing.T) {
	t.Parallel()
	cfg := &Config{Driver: DriverGoroutines, CloseTimeout: time.Second}
	tn, client, backend, res := startedOn(t, cfg, nil, tcpPair, dialledPair)
	_, inLoop := tn.client.(*sock)
	require.False(t, inLoop)
	echoAndClose(t, client, backend, res, "one", string(make([]byte, 300<<10)))
}

// A backend that never answers a close frame: the goroutine driver's close
// timeout ends the tunnel through the dialled connection's deadlines.
func TestGoroutinesCloseTimeoutOverDialledBackend(t *testing.T) {
	t.Parallel()
	cfg := &Config{Driver: DriverGoroutines, CloseTimeout: 20 * time.Millisecond}
	tn, client, _, res := startedOn(t, cfg, nil, tcpPair, dialledPair)
	go func() {
		for {
			if _, _, err := client.ReadMessage(); err != nil {
				return
			}
		}
	}()
	tn.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, "test")
	r := res.wait(t)
	assert.Equal(t, "test", r.Reason)
}
