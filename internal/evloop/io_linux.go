package evloop

import (
	"io"
	"net"
	"os"
	"syscall"
)

// Read reads from the non-blocking socket fd into p. It returns n > 0 bytes
// read; (0, io.EOF) once the peer has shut down writing and everything
// before has been read; (0, ErrWouldBlock) when there is nothing now; or
// the socket's error. A Read with n < len(p) has drained the socket (see
// the short-read rule in the package doc).
func Read(fd int, p []byte) (int, error) {
	for {
		n, err := rawRead(fd, p)
		switch {
		case err == 0 && n == 0 && len(p) > 0:
			return 0, io.EOF
		case err == 0:
			return n, nil
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, ErrWouldBlock
		}
		return 0, os.NewSyscallError("read", err)
	}
}

// Write writes p to the non-blocking socket fd and returns how much the
// kernel took. When that is less than len(p) the error is ErrWouldBlock
// (the send buffer is full) or the socket's error: keep p[n:] and write it
// on the next Writable event, and stop reading whatever fills p meanwhile.
// A short write is not retried, since the retry would find the buffer full
// too.
func Write(fd int, p []byte) (int, error) {
	for {
		n, err := rawWrite(fd, p)
		switch {
		case err == 0 && n == len(p):
			return n, nil
		case err == 0:
			return n, ErrWouldBlock
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, ErrWouldBlock
		}
		return 0, os.NewSyscallError("write", err)
	}
}

// ShutdownWrite sends the end of the stream (a FIN) on fd, keeping the
// other direction open: a half-close passed on.
func ShutdownWrite(fd int) error {
	return os.NewSyscallError("shutdown", syscall.Shutdown(fd, syscall.SHUT_WR))
}

// DupConn returns a new non-blocking, close-on-exec descriptor for c's
// socket. The caller can then Close c: the socket stays open through the
// new descriptor, which it owns, while c's net.Conn, its pollDesc and its
// registration with Go's netpoller go away.
func DupConn(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	err = rc.Control(func(fd uintptr) {
		r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			derr = os.NewSyscallError("fcntl", errno)
			return
		}
		nfd = int(r)
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return -1, err
	}
	// The flag lives on the open file that both descriptors share, and Go
	// already set it; setting it again costs one call and makes DupConn
	// safe for a socket made elsewhere.
	if err := syscall.SetNonblock(nfd, true); err != nil {
		syscall.Close(nfd)
		return -1, os.NewSyscallError("setnonblock", err)
	}
	return nfd, nil
}

// LocalAddr returns the TCP address socket fd is bound to, or nil if
// getsockname fails.
func LocalAddr(fd int) net.Addr {
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return nil
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
	case *syscall.SockaddrInet6:
		return &net.TCPAddr{IP: sa.Addr[:], Port: sa.Port}
	}
	return nil
}
