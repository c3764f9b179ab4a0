package wsproxy

import (
	"net"
	"syscall"
	"unsafe"
)

// parkableConn returns the raw connection of a plain TCP socket, which the
// pump waits on without a buffer and parks in the reactor, or nil.
func parkableConn(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// peekReady is the callback of RawConn.Read that waits for bytes without a
// buffer: the netpoller wakes the goroutine and a peek that does not wait
// tells whether the wake-up was real (bytes, EOF or an error). It is a
// package-level function so that waiting allocates nothing.
func peekReady(fd uintptr) bool {
	var b byte
	_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b)), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno != syscall.EAGAIN
}
