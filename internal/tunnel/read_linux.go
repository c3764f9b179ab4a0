package tunnel

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"syscall"
	"time"
)

// canPark says that plain TCP sources wait without a buffer and park in the
// reactor here.
const canPark = true

// parkableConn returns the raw connection of a TCP socket, plain or under
// TLS, which the reactor watches for a parked pump, or nil.
func parkableConn(c net.Conn) syscall.RawConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
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

// loopSrc passes what src sends: a plain TCP source waits without a buffer
// and parks (loopRaw), a TLS one parks between reads (loopTLS), others wait
// in Read.
func (p *pump) loopSrc() error {
	switch {
	case !p.parkable:
		return p.loopRead()
	case p.srcTLS():
		return p.loopTLS()
	}
	return p.loopRaw(newRawReader(p, parkableConn(p.src())))
}

// loopRaw is the loop of a pump that can park: the rawReader reads and
// passes bytes without holding a buffer while it waits, and the pump parks
// after Config.ParkAfter without bytes.
func (p *pump) loopRaw(rr *rawReader) error {
	for {
		rr.deadline = p.armIdleDeadline(rr.deadline)
		err := rr.run()
		switch {
		case rr.err == nil && errors.Is(err, os.ErrDeadlineExceeded):
			// The read deadline (rr.err holds the errors of reading and of
			// passing bytes on: a write deadline that ran out, say, which
			// ends the pump).
			rr.deadline = 0
			if err := p.idleDeadline(err); err != nil {
				return err
			}
			continue
		case err != nil:
			return err
		case rr.eof:
			return nil
		}
		if p.canSplice() {
			if err := p.splice(); err != nil {
				return err
			}
		}
	}
}

// idleDeadline handles src's read deadline running out: it returns
// errParked when the pump parked, err when the deadline is the linger's
// and ends the pump, and nil when the pump reads on. Only the linger
// deadline of a finished close handshake ends the pump; during a polite
// close the close timeout bounds the wait, so the idle deadline just moves
// on.
func (p *pump) idleDeadline(err error) error {
	if p.tryPark() {
		return errParked
	}
	if p.t.phase() >= phaseLingering {
		return err
	}
	return nil
}

var errParked = errors.New("pump parked")

// armIdleDeadline keeps a read deadline Config.ParkAfter ahead, moving it only
// when half of it is used up, so a busy pump rarely touches its timer. It
// returns the deadline now set. During the close handshake the linger
// deadline rules instead.
func (p *pump) armIdleDeadline(deadline int64) int64 {
	if p.t.phase() >= phaseLingering {
		return deadline
	}
	now := time.Now().UnixNano()
	if deadline-now < int64(p.t.cfg.parkAfter()/2) {
		deadline = now + int64(p.t.cfg.parkAfter())
		p.src().SetReadDeadline(time.Unix(0, deadline))
	}
	return deadline
}

// tryPark hands the pump to the reactor unless the tunnel is ending.
func (p *pump) tryPark() bool {
	tn := p.t
	tn.mu.Lock()
	if tn.phase() != phaseOpen {
		tn.mu.Unlock()
		return false
	}
	// A parked socket must not keep a deadline: nothing would read it.
	p.src().SetReadDeadline(time.Time{})
	tn.mu.Unlock()
	return theReactor.park(p)
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
