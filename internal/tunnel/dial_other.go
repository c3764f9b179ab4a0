//go:build !linux

package tunnel

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/wsproxy/wsproxy/internal/evloop"
)

// Dial fails: there are no event loops here.
func Dial(context.Context, netip.AddrPort, time.Duration) (net.Conn, error) {
	return nil, evloop.ErrUnsupported
}

// DialsInLoops reports false: tunnels have goroutines here.
func (c *Config) DialsInLoops() bool { return false }

func dialledInLoop(net.Conn) bool { return false }
