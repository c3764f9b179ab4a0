package tunnel

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/wsproxy/wsproxy/internal/evloop"
)

// Dial connects to a backend from a raw socket registered with one of the
// event loops (evloop.Dial), for an upgrade whose tunnel will run there:
// the handshake uses the connection as a net.Conn, and the tunnel, Init
// with it, adopts its registration in the same loop, with no dup, no
// second registration and no netpoller in between. A tunnel that cannot
// run in a loop (its client is not plain TCP) uses it as any net.Conn.
func Dial(ctx context.Context, addr netip.AddrPort, keepAlive time.Duration) (net.Conn, error) {
	g, err := loops()
	if err != nil {
		return nil, err
	}
	return evloop.Dial(ctx, g.Pick(), addr, keepAlive)
}

// DialsInLoops reports whether tunnels under c run in event loops, so that
// their backends are best dialled with Dial.
func (c *Config) DialsInLoops() bool { return c.wantsLoops() }

// dialledInLoop reports whether c came from Dial.
func dialledInLoop(c net.Conn) bool {
	_, ok := c.(*evloop.Conn)
	return ok
}

// adopt makes s the sock of a connection from Dial, taking over its
// registration in its loop (the tunnel's).
func (s *sock) adopt(c *evloop.Conn) {
	ap := c.RemoteAddrPort()
	s.peerIP, s.peerPort = ap.Addr().Unmap(), ap.Port()
	c.Adopt(&s.reg, s)
}
