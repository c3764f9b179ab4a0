package wsproxy

import (
	"net"
	"os"
	"syscall"
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

// A rawReader reads a socket into a pooled buffer, waiting for bytes
// without holding the buffer: RawConn.Read calls readFD, which reads at
// once when bytes are there (one system call, as net.Conn.Read would make)
// and otherwise gives the buffer back before the netpoller parks the
// goroutine. A running pump has one; a parked pump has none.
type rawReader struct {
	rc  syscall.RawConn
	cb  func(fd uintptr) bool // readFD, made once
	buf *[]byte               // the buffer readFD reads into
	n   int
	err error
}

func newRawReader(rc syscall.RawConn) *rawReader {
	r := &rawReader{rc: rc}
	r.cb = r.readFD
	return r
}

// read returns a buffer holding the bytes read at [bufHeadroom:] (nil on
// error) and their count; 0 bytes and no error is EOF.
func (r *rawReader) read() (*[]byte, int, error) {
	r.n, r.err = 0, nil
	err := r.rc.Read(r.cb)
	bp := r.buf
	r.buf = nil
	if err == nil {
		err = r.err
	}
	if err != nil {
		if bp != nil {
			bufPool.Put(bp)
		}
		return nil, 0, err
	}
	return bp, r.n, nil
}

func (r *rawReader) readFD(fd uintptr) bool {
	if r.buf == nil {
		r.buf = bufPool.Get().(*[]byte)
	}
	for {
		n, err := syscall.Read(int(fd), (*r.buf)[bufHeadroom:])
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			bufPool.Put(r.buf)
			r.buf = nil
			return false
		case nil:
			r.n = n
		default:
			r.err = os.NewSyscallError("read", err)
		}
		return true
	}
}
