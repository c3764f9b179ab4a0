package wsproxy

import (
	"net"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// What the kernel knows about a test's sockets, for tests that must wait
// until a peer has done something that no hook or Stats shows: read what
// was sent, or stopped reading.

// waitSendQueueFull waits until c's send buffer is full: poll(2) no longer
// finds the socket writable, so the kernel takes no more of what is being
// written to it until the peer reads.
func waitSendQueueFull(t *testing.T, c *net.TCPConn, msg string) {
	t.Helper()
	rc := rawConn(t, c)
	full := func() bool {
		const pollOut = 0x4
		pfd := struct {
			fd              int32
			events, revents int16
		}{events: pollOut}
		ok := control(rc, func(fd uintptr) syscall.Errno {
			pfd.fd = int32(fd)
			var zero syscall.Timespec // poll once, do not wait
			_, _, errno := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&zero)), 0, 0, 0)
			return errno
		})
		return ok && pfd.revents&pollOut == 0
	}
	require.Eventually(t, full, 5*time.Second, time.Millisecond, msg)
}

// waitReadByPeer waits until everything written on w has reached its peer
// r (w's send queue is empty: all of it acknowledged) and r's reader has
// taken it (r's receive queue is empty).
func waitReadByPeer(t *testing.T, w, r *net.TCPConn) {
	t.Helper()
	wc, rc := rawConn(t, w), rawConn(t, r)
	queue := func(c syscall.RawConn, req uintptr) int32 {
		n := int32(-1)
		control(c, func(fd uintptr) syscall.Errno {
			_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(&n)))
			return errno
		})
		return n
	}
	taken := func() bool { return queue(wc, syscall.TIOCOUTQ) == 0 && queue(rc, syscall.TIOCINQ) == 0 }
	require.Eventually(t, taken, 5*time.Second, time.Millisecond, "the peer did not read what was sent")
}

// watchCopy returns a connection of the test's own on c's socket (a
// duplicate descriptor), or nil: the tunnel engine's loop driver takes
// the socket out of c and closes c, so a test watches its copy, and closes
// it once it has watched (while it is open the socket is not closed).
func watchCopy(c *net.TCPConn) *net.TCPConn {
	f, err := c.File()
	if err != nil {
		return nil
	}
	defer f.Close()
	fc, err := net.FileConn(f)
	if err != nil {
		return nil
	}
	return fc.(*net.TCPConn)
}

func rawConn(t *testing.T, c *net.TCPConn) syscall.RawConn {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	return rc
}

// control runs f on c's file descriptor and reports whether it succeeded.
func control(c syscall.RawConn, f func(fd uintptr) syscall.Errno) bool {
	var errno syscall.Errno
	err := c.Control(func(fd uintptr) { errno = f(fd) })
	return err == nil && errno == 0
}
