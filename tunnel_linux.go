package wsproxy

import (
	"net"
	"os"
	"syscall"
)

// canPark says that plain TCP sources wait without a buffer and park in the
// reactor here.
const canPark = true

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

// A rawReader runs a pump's reads inside RawConn.Read, so that the pump
// holds no buffer while it waits and makes no needless system call:
//
//   - readFD takes a pooled buffer only when it reads, and gives it back
//     before the netpoller parks the goroutine;
//   - it passes what it read on to dst (pump.chunk) right there, and after
//     a read that did not fill the buffer it waits for the next readiness
//     at once, without the read that would only find EAGAIN. The socket
//     was empty during that read, and the netpoller is edge-triggered:
//     bytes that come later make it ready again. (The first call of each
//     RawConn.Read always reads, as RawConn.Read forgets readiness from
//     before it started.) This is nginx's rule too: a short read clears
//     the ready flag.
//
// Writing to dst while holding src's read lock is safe because of the order
// of teardown: closing the client wakes whatever waits on it, and the
// backend socket gets a past deadline first, so a write blocked inside
// readFD returns and Close does not wait on it.
// A running pump has one rawReader; a parked pump has none.
type rawReader struct {
	p        *pump
	rc       syscall.RawConn
	cb       func(fd uintptr) bool // readFD, made once
	buf      *[]byte               // the buffer readFD reads into, while it reads
	deadline int64                 // unix nanoseconds of the idle read deadline set on src
	eof      bool                  // src ended (read returned 0)
	err      error                 // a read error, or the error passing bytes on
}

func newRawReader(p *pump, rc syscall.RawConn) *rawReader {
	r := &rawReader{p: p, rc: rc}
	r.cb = r.readFD
	return r
}

// run reads and passes bytes until src ends, fails, runs out its
// deadline, or the pump has something to do outside (splice). A nil error
// without eof means the latter.
func (r *rawReader) run() error {
	r.err = nil
	err := r.rc.Read(r.cb)
	if r.buf != nil {
		bufPool.Put(r.buf)
		r.buf = nil
	}
	if r.err != nil {
		return r.err
	}
	return err
}

func (r *rawReader) readFD(fd uintptr) bool {
	p := r.p
	for {
		if r.buf == nil {
			r.buf = bufPool.Get().(*[]byte)
		}
		b := (*r.buf)[bufHeadroom:]
		n, err := syscall.Read(int(fd), b)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			bufPool.Put(r.buf)
			r.buf = nil
			return false
		case nil:
		default:
			p.srcFailed = true
			r.err = os.NewSyscallError("read", err)
			return true
		}
		if n == 0 {
			r.eof = true
			return true
		}
		if r.err = p.chunk(*r.buf, n); r.err != nil || p.canSplice() {
			return true
		}
		r.deadline = p.armIdleDeadline(r.deadline)
		if n < len(b) {
			bufPool.Put(r.buf)
			r.buf = nil
			return false
		}
	}
}
