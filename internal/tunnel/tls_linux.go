package tunnel

import (
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

// loopTLS is the loop of a pump whose source is TLS over TCP. It waits in
// tls.Conn.Read holding a buffer, as crypto/tls has no way to wait without
// one (a small one: readTLS), but only until a read deadline that is kept
// Config.ParkAfter ahead; when a Read ends in that deadline, the pump gives
// its buffer back and parks on the TCP socket's readability.
//
// That is safe because a Read that ends in a timeout leaves no whole record
// inside the tls.Conn (Go 1.25 and 1.26, crypto/tls/conn.go):
//
//   - Conn.Read returns c.input, the plaintext of the last record, before
//     it reads anything, and calls readRecord only while c.input is empty.
//     One record's plaintext is at most 16 KiB (maxPlaintext, checked in
//     readRecordOrCCS), so a 32 KiB read always empties c.input; readTLS
//     empties it with a second read when the small one filled up.
//   - readRecordOrCCS takes each record from c.rawInput through
//     readFromUntil, which touches the socket only when c.rawInput holds
//     less than the header or the whole record. Records are in order, so a
//     socket read (the only place a deadline can strike) means no whole
//     record is buffered; the bytes of the partial one stay in c.rawInput
//     (bytes.Buffer.ReadFrom keeps what it read), and the rest of it must
//     still arrive on the socket, which makes it readable. Dropped records
//     (retryReadRecord) and the close_notify look-ahead at the end of Read
//     (which can return n > 0 with the timeout) read the same way.
//   - The timeout is not sticky: readRecordOrCCS records an error in
//     c.in.setErrorLocked only if it is not a temporary net.Error, and a
//     deadline's *net.OpError wraps poll.DeadlineExceededError, which is
//     temporary. The next Read goes on where this one stopped.
//   - TLS 1.3 post-handshake messages (handlePostHandshakeMessage: session
//     tickets, KeyUpdate) are handled from whole messages in c.hand; one
//     cut off by the timeout waits in c.hand for records still to arrive
//     on the socket. None needs an answer from the peer inside Read.
//   - Up to TLS 1.2, handleRenegotiation runs a whole handshake inside Read
//     on a client connection that allows it, and a deadline would break
//     it: such sources do not park (parksOn).
func (p *pump) loopTLS() error {
	var deadline int64
	for {
		deadline = p.armIdleDeadline(deadline)
		rerr, err := p.readTLS(deadline)
		switch {
		case err != nil:
			return err
		case rerr == nil:
		case errors.Is(rerr, os.ErrDeadlineExceeded):
			deadline = 0
			if err := p.idleDeadline(rerr); err != nil {
				return err
			}
		case rerr == io.EOF:
			return nil
		default:
			p.srcFailed = true
			return rerr
		}
	}
}

// tlsWaitSize is the buffer a TLS pump waits in: a small message fits
// whole, and while nothing comes the pump holds 1.25 KiB rather than a full
// buffer. Waiting takes up to Config.ParkAfter after every burst, so after a
// message to each of many idle tunnels (a broadcast) this is what all of
// them hold at once.
const tlsWaitSize = 1 << 10

var waitPool = sync.Pool{New: func() any {
	b := make([]byte, bufHeadroom+tlsWaitSize)
	return &b
}}

// readTLS reads src once into a small buffer and passes what came. When
// the read filled it, the rest of the record may be waiting in crypto/tls:
// it takes that without waiting (drainTLS) into a full buffer and passes
// both in one chunk, so a large record is still one write to dst.
func (p *pump) readTLS(deadline int64) (rerr, err error) {
	wp := waitPool.Get().(*[]byte)
	n, rerr := p.src().Read((*wp)[bufHeadroom:])
	if n < tlsWaitSize || rerr != nil {
		if n > 0 {
			err = p.chunk(*wp, n)
		}
		waitPool.Put(wp)
		return rerr, err
	}
	bp := bufPool.Get().(*[]byte)
	copy((*bp)[bufHeadroom:], (*wp)[bufHeadroom:])
	waitPool.Put(wp)
	m, rerr := p.drainTLS((*bp)[bufHeadroom+n:], deadline)
	err = p.chunk(*bp, n+m)
	bufPool.Put(bp)
	return rerr, err
}

// drainTLS reads into b what crypto/tls holds already, without waiting for
// the socket: with a read deadline in the past, tls.Conn.Read returns the
// plaintext left in c.input, or the next whole record in c.rawInput, and
// ends in a timeout (not sticky, see loopTLS) only where it would read the
// socket. The idle deadline is put back after.
//
// While the tunnel is open only: during the close handshake the read
// deadline may be the linger's, which must not move, so the read simply
// waits. If the handshake finished during the drain (actLinger setting its
// deadline, which the drain may have overwritten), a linger deadline is set
// anew, once, as the next read no longer drains.
func (p *pump) drainTLS(b []byte, deadline int64) (int, error) {
	src := p.src()
	if p.t.phase() != phaseOpen {
		return src.Read(b)
	}
	src.SetReadDeadline(longAgo)
	n, err := src.Read(b)
	src.SetReadDeadline(time.Unix(0, deadline))
	if p.t.phase() >= phaseLingering {
		src.SetReadDeadline(time.Now().Add(p.t.cfg.CloseTimeout))
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil
	}
	return n, err
}
