package wsproxy

import (
	"net"
	"syscall"
	"unsafe"
)

// waitReadable blocks until c has bytes to read (or EOF, or an error),
// without a buffer: the netpoller wakes the goroutine and a peek without
// waiting tells whether the wake-up was real. Connections that are not plain
// sockets (TLS, pipes) return at once and are read the ordinary way.
func waitReadable(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc.Read(peekReady)
}

// peekReady is a package-level function so that waiting allocates nothing.
func peekReady(fd uintptr) bool {
	var b byte
	_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b)), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno != syscall.EAGAIN
}
