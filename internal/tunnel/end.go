package tunnel

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// How a tunnel ends is one state machine. Its phase is written only by
// advance, under tn.mu, and read anywhere without a lock (a pump looks at it
// on every read). advance takes an event, decides, and returns the actions
// for its caller to run once tn.mu is released (end runs them):
//
//	phase       event                                   next       actions
//	----------  --------------------------------------  ---------  ----------------------------------------------
//	open        evClose (Close)                         closing    arm the close timer (evTear); a close frame to
//	                                                               each side, then evCloseFrames
//	open,       evCloseFrames, and each side both sent  lingering  FIN both ways and read deadlines at the
//	closing       and was sent a close frame                       linger's end; if a side hung up already,
//	                                                               tear down from a new goroutine, else wake
//	                                                               parked pumps so they see the deadline
//	any         evEOF (a pump's src ended)              same       FIN to its dst; the first arms the half-close
//	                                                               timer (before torn); both close frames written
//	                                                               each way: tear down; both read: the close
//	                                                               timeout bounds the write to the side that hung up
//	any         evPeerGone (a pump's src broke)         same       record the reason; before torn, a close frame
//	                                                               to the side still standing, bounded likewise
//	< torn      evTear (close timer, half-close timer,  torn       record the reason and error; close both
//	              errors, Abort)                                    sockets, wake parked pumps
//	any         evPumpEnd, the second one               done       tear down if not torn; finish
//
// Any other pair does nothing (evClose after open, evCloseFrames before the
// handshake is done or after closing, evTear once torn). The facts the
// handshake is judged by are the pumps' flags (fSrcClosed, fCloseOut),
// set as close frames are read and written; advance reads them under
// tn.mu, so of a hang-up (evEOF) and the last close frame out
// (evCloseFrames), whichever comes last sees both and tears down.
//
// Lock order: a pump's mu, then tn.mu (writePending reports a close frame
// it wrote, holding its mu); nothing takes a pump's mu while holding tn.mu.
// A loop driver's socket's mu (sock.mu) comes last: nothing is taken
// while it is held.
// The actions run with tn.mu released; the only ones that may run under a
// pump's mu are those of evCloseFrames, which never close a socket
// synchronously. The owner's and the reactor's locks are taken with no
// tunnel lock held: the owner hears of the end (finish) unlocked.
type phase uint32

const (
	phaseOpen      phase = iota // passing frames
	phaseClosing                // the tunnel sent close frames; the close timeout runs
	phaseLingering              // the close handshake is done; read deadlines run out the linger
	phaseTorn                   // both sockets closed; the pumps are ending
	phaseDone                   // both pumps ended and finish ran
)

// An event is what may move a tunnel's end.
type event uint8

const (
	evClose       event = iota // the tunnel closes politely: a timer, a protocol error, Close
	evCloseFrames              // a close frame was written or read
	evEOF                      // a pump's src ended cleanly
	evPeerGone                 // a pump's src broke (a reset, not an orderly end)
	evTear                     // close both sockets now
	evPumpEnd                  // a pump ended
)

// A change is an event with what it carries.
type change struct {
	ev                  event
	p                   *pump  // evEOF, evPeerGone, evPumpEnd: the pump it is about
	reason              string // evClose, evPeerGone, evTear: why the tunnel ends, a Reason constant or Close's reason
	detail              string // evClose: free text about reason, sent in the close frames instead of it
	err                 error  // evTear: what ended it
	toClient, toBackend uint16 // evClose: the close codes
}

// actions are what advance asks its caller to do once tn.mu is released.
type actions uint16

const (
	actShutDst    actions = 1 << iota // FIN to the pump's dst
	actSendClose                      // a close frame to each side, then evCloseFrames
	actLinger                         // FIN both ways, read deadlines at the end of the linger
	actTear                           // close both sockets
	actTearLater                      // tear down from a new goroutine: the caller may be inside a read of a socket that Close waits for
	actWake                           // run parked pumps, so they see a deadline or a closed socket
	actBoundWrite                     // the close timeout bounds the write to the pump's src, which hung up
	actTellPeer                       // a close frame to the pump's dst, whose own peer broke
	actFinish                         // both pumps ended: finish
)

// phase returns where the tunnel's end is.
func (tn *Tunnel) phase() phase { return phase(tn.ph.Load()) }

// advance applies c to the tunnel's end and returns what to do after
// unlocking. It is the only writer of tn.ph, tn.eofs and tn.running.
func (tn *Tunnel) advance(c change) actions {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	cfg := tn.cfg
	ph := tn.phase()
	switch c.ev {
	case evClose:
		if ph != phaseOpen {
			return 0
		}
		tn.ph.Store(uint32(phaseClosing))
		e := tn.endingLocked()
		e.reason, e.detail = c.reason, c.detail
		tn.addTimer(time.AfterFunc(cfg.CloseTimeout, func() { tn.teardown(nil) }))
		return actSendClose
	case evCloseFrames:
		if ph > phaseClosing || !tn.closeHandshakeDone() {
			return 0
		}
		tn.ph.Store(uint32(phaseLingering))
		if tn.eofs > 0 {
			return actLinger | actTearLater
		}
		return actLinger | actWake
	case evEOF:
		tn.eofs++
		if tn.eofs == 1 && cfg.HalfCloseTimeout > 0 && ph < phaseTorn {
			tn.addTimer(time.AfterFunc(cfg.HalfCloseTimeout, func() {
				tn.end(change{ev: evTear, reason: ReasonHalfCloseTimeout})
			}))
		}
		switch {
		case tn.closeHandshakeDone():
			return actShutDst | tn.tearLocked(nil)
		case tn.up.flags.has(fSrcClosed) && tn.down.flags.has(fSrcClosed):
			return actShutDst | actBoundWrite
		}
		return actShutDst
	case evPeerGone:
		tn.setReasonLocked(c.reason)
		if ph >= phaseTorn {
			return 0
		}
		return actTellPeer
	case evTear:
		if c.reason != "" {
			tn.setReasonLocked(c.reason)
		}
		return tn.tearLocked(c.err)
	case evPumpEnd:
		tn.running--
		if tn.running > 0 {
			return 0
		}
		a := tn.tearLocked(nil)
		tn.ph.Store(uint32(phaseDone))
		return a | actFinish
	}
	return 0
}

// tearLocked moves the tunnel to torn, keeping err as what ended it unless
// an error came first. Once torn it does nothing. tn.mu is held.
func (tn *Tunnel) tearLocked(err error) actions {
	if tn.phase() >= phaseTorn {
		return 0
	}
	tn.ph.Store(uint32(phaseTorn))
	if e := tn.endingLocked(); e.err == nil {
		e.err = err
	}
	return actTear | actWake
}

// end applies c to the tunnel's end and runs the actions advance returns,
// in the order the table lists them.
func (tn *Tunnel) end(c change) {
	a := tn.advance(c)
	if a&actShutDst != 0 {
		c.p.shutDst()
	}
	if a&actSendClose != 0 {
		text := c.reason
		if c.detail != "" {
			text = c.detail
		}
		tn.down.inject(wsframe.AppendControl(nil, wsframe.OpClose, wsframe.ClosePayload(c.toClient, text), nil), true)
		tn.up.inject(wsframe.AppendControl(nil, wsframe.OpClose, wsframe.ClosePayload(c.toBackend, text), wsframe.NewMask()), true)
		tn.end(change{ev: evCloseFrames})
	}
	if a&actLinger != 0 {
		// Nothing may follow the close frames: FIN both ways, and wait a
		// little for the peers' own FIN, which avoids the reset (and lost
		// close frame) that closing with unread bytes causes.
		deadline := time.Now().Add(tn.cfg.CloseTimeout)
		tn.up.shutDst()
		tn.down.shutDst()
		tn.client.SetReadDeadline(deadline)
		tn.back.SetReadDeadline(deadline)
	}
	if a&actTearLater != 0 {
		go tn.teardown(nil)
	}
	if a&actTear != 0 {
		tn.closeSockets()
	}
	if a&actWake != 0 {
		tn.up.wake()
		tn.down.wake()
	}
	if a&actBoundWrite != 0 {
		c.p.src().SetWriteDeadline(time.Now().Add(tn.cfg.CloseTimeout))
	}
	if a&actTellPeer != 0 {
		c.p.tellPeerGone(c.reason)
	}
	if a&actFinish != 0 {
		tn.finishAfterClose()
	}
}

// Close sends a close frame to each side, at a frame boundary, with the
// codes given and reason as its text, and gives the peers the close
// timeout to answer before the sockets are closed. Result.Reason is then
// reason. The first call wins; later ones do nothing.
func (tn *Tunnel) Close(toClient, toBackend uint16, reason string) {
	tn.closeDetail(toClient, toBackend, reason, "")
}

// closeDetail is Close with free text about the reason, which the close
// frames carry instead of the reason.
func (tn *Tunnel) closeDetail(toClient, toBackend uint16, reason, detail string) {
	tn.end(change{ev: evClose, toClient: toClient, toBackend: toBackend, reason: reason, detail: detail})
}

// teardown closes both connections now, err being what ended the tunnel.
// The pumps then end, and the last one to end finishes the tunnel. It is
// safe to call any number of times from anywhere but inside a pump's read
// (see actTearLater).
func (tn *Tunnel) teardown(err error) { tn.end(change{ev: evTear, err: err}) }

// Abort closes both connections now, without close frames, recording
// reason as why.
func (tn *Tunnel) Abort(reason string) { tn.end(change{ev: evTear, reason: reason}) }

// closeHandshakeDone reports whether each side sent a close frame and was
// sent one: read is not enough, a close frame read may still be on its way
// out, behind the last messages before it; written is not enough under the
// loop driver, it may still wait in the socket's backlog (fCloseOut).
func (tn *Tunnel) closeHandshakeDone() bool {
	const both = fSrcClosed | fCloseOut
	return tn.up.flags.v.Load()&both == both && tn.down.flags.v.Load()&both == both
}

// OwesCloseAnswer reports whether the client was sent a close frame and
// has not answered it yet.
func (tn *Tunnel) OwesCloseAnswer() bool {
	return tn.down.flags.has(fSentClose) && !tn.up.flags.has(fSrcClosed)
}

// endingPolitely reports whether a close handshake is under way, started
// by the tunnel or by both peers: a read deadline then ends the tunnel
// without an error.
func (tn *Tunnel) endingPolitely() bool {
	return tn.phase() >= phaseClosing || (tn.up.flags.has(fSrcClosed) && tn.down.flags.has(fSrcClosed))
}

// closeSockets closes both connections. A running pump may be writing to
// one socket while it holds the other's read lock (see rawReader), and
// Close waits for a socket's users. Closing the client wakes whatever waits
// on it, writes included; a write to the backend, by the pump whose read
// lock that Close waits for, needs a deadline in the past first. A TLS
// client is read through tls.Conn.Read, which holds no lock of the socket
// while the pump writes.
func (tn *Tunnel) closeSockets() {
	if tn.up.parkable && !tn.up.srcTLS() {
		tn.back.SetDeadline(longAgo)
	}
	tn.client.Close()
	tn.back.Close()
}

// longAgo is a deadline that has passed.
var longAgo = time.Unix(1, 0)

// shutDst closes the write half of dst (TCP FIN), once.
func (p *pump) shutDst() {
	if p.flags.setOnce(fDstShut) {
		closeWrite(p.dst())
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// pumpDone is called by each pump as it ends, with nil for a clean EOF.
func (tn *Tunnel) pumpDone(p *pump, err error) {
	switch {
	case err == nil:
		tn.end(change{ev: evEOF, p: p})
	case isTimeout(err) && tn.endingPolitely():
		// The read deadline after a completed close handshake.
		tn.teardown(nil)
	default:
		if p.srcFailed && !errors.Is(err, net.ErrClosed) {
			tn.end(change{ev: evPeerGone, p: p, reason: p.goneReason()})
		}
		tn.teardown(err)
	}
	tn.end(change{ev: evPumpEnd, p: p})
}

// goneReason is the close reason when the pump's src broke.
func (p *pump) goneReason() string {
	if p == &p.t.down {
		return ReasonBackendConnectionLost
	}
	return ReasonClientConnectionLost
}

// tellPeerGone writes a close frame to the side still standing when the
// other one broke (a reset, not an orderly end): a client whose backend
// crashed reads 1011 rather than a bare TCP close (1006), a backend whose
// client vanished reads 1001. It happens at a frame boundary only, and
// never waits longer than the close timeout.
func (p *pump) tellPeerGone(reason string) {
	code, mask := uint16(wsframe.CloseGoingAway), wsframe.NewMask()
	if p == &p.t.down {
		code, mask = wsframe.CloseInternalError, nil
	}
	p.dst().SetWriteDeadline(time.Now().Add(p.t.cfg.CloseTimeout))
	p.inject(wsframe.AppendControl(nil, wsframe.OpClose, wsframe.ClosePayload(code, reason), mask), true)
}

// isTimeout reports whether err is a deadline that ran out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
