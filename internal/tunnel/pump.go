package tunnel

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// A pump moves one direction. It reads frames from src and writes them to
// dst, tracking frame boundaries so that the tunnel can write a control frame
// of its own between two frames, never inside one. Its fields are what a
// pump must remember while parked; what a running pump needs only while it
// runs lives in its goroutine (see rawReader).
type pump struct {
	t *Tunnel

	// Read state, owned by the pump's goroutine.
	frames    wsframe.Tracker // where src's stream is: the current frame, the carried tail
	broken    bool            // framing was lost after a protocol error: discard everything
	srcFailed bool            // reading src failed (not an EOF): the src side broke

	fromClient bool // src is the client: its frames are masked, and frames the tunnel writes to dst must be masked
	spliceOK   bool // plain TCP on both ends: large payloads can skip user space
	midFrame   bool // the bytes written to dst end inside a frame; guarded by mu

	// Idle parking (see reactor_linux.go): plain TCP sources and TLS over
	// TCP park on Linux; HTTP/2 streams and other systems wait in their
	// goroutine.
	parkable bool
	epGen    uint8  // the reactor generation the socket is registered with (wraps: a stale match costs a failed EPOLL_CTL_MOD)
	token    uint32 // the reactor's name for the pump while parked

	// Write state, guarded by mu: whoever holds mu may write to dst.
	mu      sync.Mutex
	flags   pumpFlags     // fHasPending, fSentClose, fDstShut, fSrcClosed, fCloseOut; src's close code
	pending *pendingFrame // a control frame to write at the next boundary

	// Observed facts, read by the tunnel and Stats.
	bytes    atomic.Int64 // bytes written to dst, the tunnel's own frames included
	messages atomic.Int64 // data messages forwarded
}

// dir is the pump's index in the clock: 0 up, 1 down.
func (p *pump) dir() int {
	if p.fromClient {
		return 0
	}
	return 1
}

// sawRead stamps a read from src at now (from tn.now).
func (p *pump) sawRead(now int64) {
	if c := p.t.clock; c != nil {
		c.lastRead[p.dir()].Store(now)
	}
}

// pumpFlags are a pump's facts that other goroutines read, in one word:
// the bits below, and above closeCodeShift the code of the close frame src
// sent (1005 if it had none, 0 before), which a word of its own would cost
// every tunnel 16 bytes (TestTunnelSize).
type pumpFlags struct{ v atomic.Uint32 }

const closeCodeShift = 16

const (
	fHasPending uint32 = 1 << iota // pending holds a frame
	fSentClose                     // a close frame was written to dst; nothing follows it
	fDstShut                       // dst's write half is closed
	fSrcClosed                     // src sent a close frame
	fCloseOut                      // the close frame written to dst left the tunnel (see sentClose)
)

func (f *pumpFlags) has(bit uint32) bool { return f.v.Load()&bit != 0 }
func (f *pumpFlags) set(bit uint32)      { f.v.Or(bit) }
func (f *pumpFlags) clear(bit uint32)    { f.v.And(^bit) }

// setOnce sets bit and reports whether this call set it.
func (f *pumpFlags) setOnce(bit uint32) bool { return f.v.Or(bit)&bit == 0 }

// setCloseCode records the code of src's close frame, unless one was
// recorded before.
func (f *pumpFlags) setCloseCode(code uint16) {
	for {
		old := f.v.Load()
		if old>>closeCodeShift != 0 || f.v.CompareAndSwap(old, old|uint32(code)<<closeCodeShift) {
			return
		}
	}
}

func (f *pumpFlags) closeCode() int { return int(f.v.Load() >> closeCodeShift) }

// A pendingFrame is a control frame of the tunnel's waiting for a frame
// boundary.
type pendingFrame struct {
	frame   []byte
	isClose bool
}

// src is the connection the pump reads, dst the one it writes.
func (p *pump) src() net.Conn {
	if p.fromClient {
		return p.t.client
	}
	return p.t.back
}

func (p *pump) dst() net.Conn {
	if p.fromClient {
		return p.t.back
	}
	return p.t.client
}

// Tunnel buffers are taken from a pool only while bytes are being moved;
// the headroom in front lets a carried partial frame be prepended without a
// second copy.
const (
	bufHeadroom = 256 // > wsframe.MaxControlFrame
	bufSize     = ReadSize
)

// ReadSize is the most a pump reads from its source at once.
const ReadSize = 32 << 10

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, bufHeadroom+bufSize)
	return &b
}}

var errProtocol = errors.New("websocket protocol error")

// begin starts the pump: a plain TCP source with nothing to pass yet
// parks at once, so a fresh idle tunnel never holds a goroutine. A TLS
// source reads first: crypto/tls may hold whole records it read from the
// socket along with the handshake, which no readability of the socket
// would announce (see loopTLS).
func (p *pump) begin(initial []byte) {
	if len(initial) == 0 && p.parkable && !p.srcTLS() && theReactor.park(p) {
		return
	}
	go p.run(initial)
}

// srcTLS reports whether src is a TLS connection.
func (p *pump) srcTLS() bool {
	_, ok := p.src().(*tls.Conn)
	return ok
}

// wake runs a parked pump now, because the tunnel is ending.
func (p *pump) wake() {
	if theReactor.unpark(p) {
		go p.run(nil)
	}
}

func (p *pump) traffic() Traffic {
	return Traffic{Bytes: p.bytes.Load(), Messages: p.messages.Load(), CloseCode: p.flags.closeCode()}
}

// run is the pump's goroutine: read, track frames, write, until src ends
// or the pump parks.
func (p *pump) run(initial []byte) {
	err := p.loop(initial)
	if err == errParked {
		return // the reactor runs the pump again when bytes come
	}
	p.t.pumpDone(p, p.endErr(err))
}

// endErr is what a pump whose reading ended with err reports: a clean end
// inside a frame is an unexpected EOF.
func (p *pump) endErr(err error) error {
	if p.frames.Carried() > 0 && err == nil {
		return fmt.Errorf("%w: connection ended inside a frame", io.ErrUnexpectedEOF)
	}
	return err
}

// loop passes the bytes src sent before the hijack, then what it sends.
func (p *pump) loop(initial []byte) error {
	if err := p.passEarly(initial); err != nil {
		return err
	}
	return p.loopSrc()
}

// passEarly passes the bytes src sent before the hijack.
func (p *pump) passEarly(initial []byte) error {
	for len(initial) > 0 {
		bp := bufPool.Get().(*[]byte)
		n := copy((*bp)[bufHeadroom:], initial)
		initial = initial[n:]
		err := p.chunk(*bp, n)
		bufPool.Put(bp)
		if err != nil {
			return err
		}
	}
	return nil
}

// loopRead is the loop of a pump that waits in src's Read, holding its
// buffer: HTTP/2 streams, and every source where pumps cannot park.
func (p *pump) loopRead() error {
	for {
		rerr, err := p.readChunk()
		switch {
		case err != nil:
			return err
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			p.srcFailed = true
			return rerr
		}
		if p.canSplice() {
			if err := p.splice(); err != nil {
				return err
			}
		}
	}
}

// readChunk reads src once into a pooled buffer and passes what came
// (chunk); the buffer goes back before it returns. rerr is the read's
// error, err the error passing the bytes on.
func (p *pump) readChunk() (rerr, err error) {
	bp := bufPool.Get().(*[]byte)
	n, rerr := p.src().Read((*bp)[bufHeadroom:])
	if n > 0 {
		err = p.chunk(*bp, n)
	}
	bufPool.Put(bp)
	return rerr, err
}

// canSplice reports whether the rest of the current frame's payload should
// bypass user space. After a close frame went to dst nothing more may reach
// it: the rest of the frame takes the buffered path, which drops it.
func (p *pump) canSplice() bool {
	return p.frames.Remaining() >= spliceMin && p.spliceOK && !p.broken && !p.flags.has(fSentClose)
}

// spliceMin is the payload still to pass in the current frame from which
// the pump lets the kernel move it between two TCP sockets (splice(2) on
// Linux, through net.TCPConn.ReadFrom, or the loop's own pipes) instead of
// copying it through a buffer. Below it, the extra system calls cost more
// than the copy saves.
const spliceMin = 16 << 10

// splice passes the rest of the current frame's payload. It holds no lock:
// the stream is mid-frame, so the tunnel's own frames wait in pending
// until the frame ends.
func (p *pump) splice() error {
	lr := &io.LimitedReader{R: p.src(), N: int64(p.frames.Remaining())}
	n, err := p.dst().(*net.TCPConn).ReadFrom(lr)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil // the idle deadline: the loop parks or goes on
	}
	p.spliced(n)
	return err
}

// splicedTotal counts the payload bytes every tunnel of the process has
// spliced, so that a test can tell the splice paths ran: the bytes
// arriving whole would not show it.
var splicedTotal atomic.Int64

// spliced accounts for n bytes of the current frame's payload that the
// kernel moved from src to dst, past the tracker, and writes the tunnel's
// pending control frame once the frame is through. Both drivers splice
// (splice_linux.go for the loops).
func (p *pump) spliced(n int64) {
	splicedTotal.Add(n)
	p.frames.Skip(uint64(n))
	p.bytes.Add(n)
	now := p.t.now()
	p.sawRead(now)
	p.t.sawFrame(now)
	if p.frames.Remaining() == 0 {
		p.mu.Lock()
		p.midFrame = false
		p.mu.Unlock()
		if p.flags.has(fHasPending) {
			p.writePending()
		}
	}
}

// chunk processes n fresh bytes at buf[bufHeadroom:], after the carried
// tail of the previous chunk.
func (p *pump) chunk(buf []byte, n int) error {
	now := p.t.now()
	p.sawRead(now)
	if p.broken {
		return nil
	}
	start := p.frames.Restore(buf, bufHeadroom)
	err := p.process(buf[start:bufHeadroom+n], now)
	if errors.Is(err, errProtocol) || errors.Is(err, wsframe.ErrTooBig) {
		// Framing is lost or the peer broke a limit: tell both sides, then
		// drain what the peer still sends until the tunnel is torn down.
		p.broken = true
		code, reason, detail := uint16(wsframe.CloseProtocolError), ReasonProtocolError, err.Error()
		if errors.Is(err, wsframe.ErrTooBig) {
			code, reason, detail = wsframe.CloseMessageTooBig, ReasonMessageTooBig, ""
		}
		go p.t.closeDetail(code, code, reason, detail)
		return nil
	}
	return err
}

// process walks the frames in data (wsframe.Tracker), writes what is to be
// forwarded to dst and carries the unconsumed tail (a partial header or
// control frame) over to the next chunk. Data payloads pass untouched;
// control frames come whole, so the tunnel can read close codes and take its
// own pongs out of the stream.
func (p *pump) process(data []byte, now int64) error {
	i, seg := 0, 0 // data[seg:i] is read and not yet written
	forwarded := false
	rules := wsframe.Rules{Masked: p.fromClient, MaxMessage: uint64(p.t.cfg.MaxMessageSize)}
	for i < len(data) {
		ev, n := p.frames.Next(data[i:], rules)
		switch ev.Kind {
		case wsframe.More:
			p.frames.Carry(data[i:])
			if forwarded {
				p.t.sawFrame(now)
			}
			return p.flush(data[seg:i], false)
		case wsframe.Invalid:
			p.flush(data[seg:i], false)
			return invalidFrame(ev.Err)
		case wsframe.DataFrame:
			if ev.Fin {
				p.messages.Add(1)
			}
		case wsframe.Control:
			switch p.control(data[i:i+n], ev.OpCode) {
			case dropFrame:
				if err := p.flush(data[seg:i], false); err != nil {
					return err
				}
				i += n
				seg = i
				continue
			case closeFrame:
				i += n
				err := p.flush(data[seg:i], true)
				seg = i
				p.t.sawFrame(now)
				p.t.end(change{ev: evCloseFrames})
				if err != nil {
					return err
				}
				continue
			}
		}
		i += n
		forwarded = true
		if p.frames.Remaining() == 0 && p.flags.has(fHasPending) {
			if err := p.flush(data[seg:i], false); err != nil {
				return err
			}
			seg = i
			p.writePending()
		}
	}
	if forwarded {
		p.t.sawFrame(now)
	}
	return p.flush(data[seg:i], false)
}

// What process does with a control frame from src.
const (
	passFrame  = iota // forward it
	dropFrame         // a pong answering the tunnel's ping: the peer never sent the ping
	closeFrame        // a close frame: forward it, and nothing after it
)

// control looks at a whole control frame from src and says what to do
// with it; a close frame's code is recorded.
func (p *pump) control(frame []byte, op byte) int {
	var buf [wsframe.MaxControlPayload]byte
	pl := wsframe.ControlPayload(frame, &buf)
	switch op {
	case wsframe.OpPong:
		if p.t.isOwnPong(pl) {
			return dropFrame
		}
	case wsframe.OpClose:
		code, _ := wsframe.ParseClose(pl)
		p.flags.setCloseCode(code)
		p.flags.set(fSrcClosed)
		return closeFrame
	}
	return passFrame
}

// invalidFrame is the error of a frame that breaks a rule: the size limit
// as it is, anything else as a protocol error whose text, sent to the
// peers as the close reason, names the rule.
func invalidFrame(err error) error {
	if errors.Is(err, wsframe.ErrTooBig) {
		return err
	}
	return fmt.Errorf("%w: %s", errProtocol, strings.TrimPrefix(err.Error(), "wsframe: "))
}

// flush writes b to dst unless a close frame already went there. isClose
// marks b as ending with a close frame from src.
func (p *pump) flush(b []byte, isClose bool) error {
	if len(b) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.flags.has(fSentClose) {
		return nil
	}
	n, err := p.dst().Write(b)
	p.bytes.Add(int64(n))
	p.midFrame = p.frames.Remaining() > 0
	if isClose && err == nil {
		p.sentClose()
	}
	return err
}

// inject writes a control frame of the tunnel's to dst: now if dst is at a
// frame boundary, else as soon as the pump reaches one. A close frame
// replaces a pending ping; nothing is written after a close frame.
func (p *pump) inject(frame []byte, isClose bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.flags.has(fSentClose) {
		return
	}
	if !p.midFrame {
		p.writeLocked(frame, isClose)
		return
	}
	if p.pending != nil && p.pending.isClose {
		return
	}
	p.pending = &pendingFrame{frame: frame, isClose: isClose}
	p.flags.set(fHasPending)
}

func (p *pump) writePending() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending != nil && !p.flags.has(fSentClose) {
		p.writeLocked(p.pending.frame, p.pending.isClose)
	}
	p.pending = nil
	p.flags.clear(fHasPending)
	if p.flags.has(fSentClose) {
		p.t.end(change{ev: evCloseFrames})
	}
}

func (p *pump) writeLocked(frame []byte, isClose bool) {
	// Stamp a ping before writing it: its pong may be read before Write
	// returns, and must count as an answer.
	if c := p.t.clock; c != nil && !isClose {
		c.pingSent[p.dir()].Store(time.Now().UnixNano())
	}
	n, err := p.dst().Write(frame)
	p.bytes.Add(int64(n))
	if err == nil && isClose {
		p.sentClose()
	}
}

// sentClose records that a close frame was written to dst: nothing may
// follow it (fSentClose), and it has left the tunnel (fCloseOut) unless dst
// holds it back. A socket of the loop driver takes what the kernel does not
// into a backlog; the close frame is out once the backlog drained, and the
// loop then sets fCloseOut and reports evCloseFrames (sock.flushBacklog). mu is
// held.
func (p *pump) sentClose() {
	p.flags.set(fSentClose)
	if !holdsBack(p.dst()) {
		p.flags.set(fCloseOut)
	}
}
