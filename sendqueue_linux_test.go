package wsproxy

import (
	"net"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// waitSendQueueFull waits until c's send buffer is full: poll(2) no longer
// finds the socket writable, so the kernel takes no more of what is being
// written to it until the peer reads.
func waitSendQueueFull(t *testing.T, c *net.TCPConn, msg string) {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	full := func() bool {
		const pollOut = 0x4
		pfd := struct {
			fd              int32
			events, revents int16
		}{fd: -1, events: pollOut}
		var errno syscall.Errno
		rc.Control(func(fd uintptr) {
			pfd.fd = int32(fd)
			var zero syscall.Timespec // poll once, do not wait
			_, _, errno = syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&zero)), 0, 0, 0)
		})
		return errno == 0 && pfd.fd >= 0 && pfd.revents&pollOut == 0
	}
	require.Eventually(t, full, 5*time.Second, time.Millisecond, msg)
}
