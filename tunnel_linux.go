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

// readRaw reads what src has into a pooled buffer, waiting for bytes if
// there are none yet without holding the buffer: RawConn.Read calls
// readFD, which reads at once when bytes are there (one system call, as
// net.Conn.Read would make) and otherwise gives the buffer back before the
// netpoller parks the goroutine. It returns the buffer (nil on error) and
// the count; 0 bytes and no error is EOF.
func (p *pump) readRaw() (*[]byte, int, error) {
	p.rn, p.rerr = 0, nil
	if p.readCB == nil {
		p.readCB = p.readFD
	}
	err := p.rawSrc.Read(p.readCB)
	bp := p.rbuf
	p.rbuf = nil
	if err == nil {
		err = p.rerr
	}
	if err != nil {
		if bp != nil {
			bufPool.Put(bp)
		}
		return nil, 0, err
	}
	return bp, p.rn, nil
}

func (p *pump) readFD(fd uintptr) bool {
	if p.rbuf == nil {
		p.rbuf = bufPool.Get().(*[]byte)
	}
	for {
		n, err := syscall.Read(int(fd), (*p.rbuf)[bufHeadroom:])
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			bufPool.Put(p.rbuf)
			p.rbuf = nil
			return false
		case nil:
			p.rn = n
		default:
			p.rerr = os.NewSyscallError("read", err)
		}
		return true
	}
}
