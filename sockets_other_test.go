//go:build !linux

package wsproxy

import (
	"net"
	"testing"
	"time"
)

// Elsewhere than Linux the syscall package offers no poll(2) and no
// queue-size ioctls on every system, so these stand in for the Linux
// versions with pauses long enough, where the tests were tuned, for what
// they wait for to happen.

// waitSendQueueFull: a writer that cannot finish fills c's send buffer.
func waitSendQueueFull(t *testing.T, _ *net.TCPConn, _ string) {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
}

// waitReadByPeer: r's reader takes what was written on w.
func waitReadByPeer(t *testing.T, _, _ *net.TCPConn) {
	t.Helper()
	time.Sleep(20 * time.Millisecond)
}

// watchCopy returns c: only Linux has the loop driver, which takes the
// socket out of c.
func watchCopy(c *net.TCPConn) *net.TCPConn { return c }
