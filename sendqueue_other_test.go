//go:build unix && !linux

package wsproxy

import (
	"net"
	"testing"
	"time"
)

// waitSendQueueFull stands in for the Linux version, which asks poll(2)
// whether c still takes bytes: the syscall package offers no poll on
// every Unix. The pause is long enough, where the test was tuned, for a
// writer that cannot finish to fill c's send buffer.
func waitSendQueueFull(t *testing.T, _ *net.TCPConn, _ string) {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
}
