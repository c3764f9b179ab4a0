package wsproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// A tunnel owns both connections of one proxied WebSocket, the two pumps
// that move bytes between them and its place in the proxy's registry.
// Ending it, for whatever reason, goes through teardown, which is safe to
// call any number of times from anywhere.
type tunnel struct {
	p      *Proxy
	target *Target
	client net.Conn
	back   net.Conn

	// What info reports, kept field by field: an idle tunnel holds only
	// what it must (see "Memory of an idle tunnel" in docs/DESIGN.md); the
	// client's address is its connection's unless ending says otherwise.
	path        string
	subprotocol string
	opened      time.Duration // since clockBase: the monotonic clock, in 8 bytes rather than a time.Time's 24

	up   pump // client to backend
	down pump // backend to client

	clock *tunnelClock  // nil unless an idle timeout or keepalive pings are configured
	ph    atomic.Uint32 // the phase of the tunnel's end (see advance, in end.go): written by advance only

	protoMajor, protoMinor uint8 // of the client's request

	mu      sync.Mutex    // guards what follows, and orders advance's decisions
	eofs    uint8         // directions that ended with EOF; advance's
	running uint8         // pumps still running (2 until the first ends); advance's
	holding bool          // the tunnel holds places under the admission limits (ending.slotCS: its client's)
	ending  *tunnelEnding // nil until needed

	prev, next *tunnel // in the proxy's tunnelList, under the proxy's mu
}

// A tunnelList is the proxy's registry of open tunnels: linked through the
// tunnels themselves, so that registering one allocates nothing. The
// proxy's mu guards it.
type tunnelList struct {
	first *tunnel
	n     int
}

func (l *tunnelList) add(tn *tunnel) {
	tn.prev, tn.next = nil, l.first
	if l.first != nil {
		l.first.prev = tn
	}
	l.first = tn
	l.n++
}

// remove takes tn out; it must be in the list.
func (l *tunnelList) remove(tn *tunnel) {
	if tn.prev != nil {
		tn.prev.next = tn.next
	} else {
		l.first = tn.next
	}
	if tn.next != nil {
		tn.next.prev = tn.prev
	}
	tn.prev, tn.next = nil, nil
	l.n--
}

func (l *tunnelList) all() iter.Seq[*tunnel] {
	return func(yield func(*tunnel) bool) {
		for tn := l.first; tn != nil; tn = tn.next {
			if !yield(tn) {
				return
			}
		}
	}
}

// A pump moves one direction. It reads frames from src and writes them to
// dst, tracking frame boundaries so that the proxy can write a control frame
// of its own between two frames, never inside one. Its fields are what a
// pump must remember while parked; what a running pump needs only while it
// runs lives in its goroutine (see rawReader).
type pump struct {
	t *tunnel

	// Read state, owned by the pump's goroutine.
	frames    wsframe.Tracker // where src's stream is: the current frame, the carried tail
	broken    bool            // framing was lost after a protocol error: discard everything
	srcFailed bool            // reading src failed (not an EOF): the src side broke

	fromClient bool // src is the client: its frames are masked, and frames the proxy writes to dst must be masked
	spliceOK   bool // plain TCP on both ends: large payloads can skip user space
	midFrame   bool // the bytes written to dst end inside a frame; guarded by mu

	// Idle parking (see reactor_linux.go): only plain TCP sources on Linux
	// park; TLS, HTTP/2 streams and other systems wait in their goroutine.
	parkable bool
	epGen    uint8  // the reactor generation the socket is registered with (wraps: a stale match costs a failed EPOLL_CTL_MOD)
	token    uint32 // the reactor's name for the pump while parked

	// Write state, guarded by mu: whoever holds mu may write to dst.
	mu      sync.Mutex
	pending *pendingFrame // a control frame to write at the next boundary
	flags   pumpFlags     // fHasPending, fSentClose, fDstShut, fSrcClosed

	// Observed facts, read by the tunnel and Stats.
	closeCode atomic.Int32 // code of the close frame src sent (1005 if it had none)
	bytes     atomic.Int64 // bytes written to dst, the proxy's own frames included
	messages  atomic.Int64 // data messages forwarded
}

// A tunnelClock holds the times the idle timeout and the keepalive pings
// go by, all unix nanoseconds. Only tunnels that have either get one: the
// others never look at the clock while passing bytes.
type tunnelClock struct {
	pingID     uint32          // first half of every ping payload the proxy sends
	lastActive atomic.Int64    // the last frame passed between the peers
	lastRead   [2]atomic.Int64 // by direction (pump.dir): the last byte read from src
	pingSent   [2]atomic.Int64 // by direction: the proxy's last ping written to dst
}

// A tunnelEnding holds what ending a tunnel involves, which an idle tunnel
// need not carry: the timers to stop, why it ended, the per-client
// admission entry to give back, the channel the HTTP/2 handler waits on;
// and the client's address where a middleware changed it. It is allocated
// the first time one of them is set. tn.mu guards it.
type tunnelEnding struct {
	remoteAddr    string        // the request's RemoteAddr, where it is not the client connection's (a middleware set it)
	hasRemoteAddr bool          // remoteAddr is set
	slotCS        *clientState  // with holding: the client's entry under per-client limits, if any
	done          chan struct{} // closed when the tunnel finished, if set before start (the HTTP/2 handler waits on it)
	timers        []*time.Timer // stopped when the tunnel ends
	reason        string        // why the proxy ended the tunnel, a Reason constant; "" when it did not
	detail        string        // free text about reason (CloseInfo.Detail)
	err           error         // the first error that ended it
}

// endingLocked returns the tunnel's tunnelEnding, made on first use. tn.mu is
// held.
func (tn *tunnel) endingLocked() *tunnelEnding {
	if tn.ending == nil {
		tn.ending = new(tunnelEnding)
	}
	return tn.ending
}

// setReasonLocked records why the proxy ends the tunnel, unless a reason
// was given before. tn.mu is held.
func (tn *tunnel) setReasonLocked(reason string) {
	if e := tn.endingLocked(); e.reason == "" {
		e.reason = reason
	}
}

// dir is the pump's index in the tunnelClock: 0 up, 1 down.
func (p *pump) dir() int {
	if p.fromClient {
		return 0
	}
	return 1
}

// now returns the time to stamp the tunnel's clock with, or 0 when the
// tunnel has no clock.
func (tn *tunnel) now() int64 {
	if tn.clock == nil {
		return 0
	}
	return time.Now().UnixNano()
}

// sawRead stamps a read from src at now (from tn.now).
func (p *pump) sawRead(now int64) {
	if c := p.t.clock; c != nil {
		c.lastRead[p.dir()].Store(now)
	}
}

// sawFrame stamps a frame passed between the peers at now.
func (tn *tunnel) sawFrame(now int64) {
	if c := tn.clock; c != nil {
		c.lastActive.Store(now)
	}
}

// pumpFlags are a pump's facts that other goroutines read, in one word.
type pumpFlags struct{ v atomic.Uint32 }

const (
	fHasPending uint32 = 1 << iota // pending holds a frame
	fSentClose                     // a close frame was written to dst; nothing follows it
	fDstShut                       // dst's write half is closed
	fSrcClosed                     // src sent a close frame
)

func (f *pumpFlags) has(bit uint32) bool { return f.v.Load()&bit != 0 }
func (f *pumpFlags) set(bit uint32)      { f.v.Or(bit) }
func (f *pumpFlags) clear(bit uint32)    { f.v.And(^bit) }

// setOnce sets bit and reports whether this call set it.
func (f *pumpFlags) setOnce(bit uint32) bool { return f.v.Or(bit)&bit == 0 }

// A pendingFrame is a control frame of the proxy's waiting for a frame
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
	bufSize     = 32 << 10
)

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, bufHeadroom+bufSize)
	return &b
}}

var errProtocol = errors.New("websocket protocol error")

func newTunnel(p *Proxy, t *Target, client net.Conn, back net.Conn, info TunnelInfo) *tunnel {
	tn := &tunnel{p: p, target: t, client: client, back: back,
		path: info.Path, subprotocol: info.Subprotocol, opened: info.Start.Sub(clockBase)}
	if ra := client.RemoteAddr(); ra == nil || ra.String() != info.RemoteAddr {
		e := tn.endingLocked() // not started: nothing else sees tn yet
		e.remoteAddr, e.hasRemoteAddr = info.RemoteAddr, true
	}
	tn.protoMajor, tn.protoMinor, _ = parseProto(info.Proto)
	tn.running = 2
	tn.up = pump{t: tn, fromClient: true}
	tn.down = pump{t: tn}
	_, clientTCP := client.(*net.TCPConn)
	_, backTCP := back.(*net.TCPConn)
	tn.up.spliceOK = clientTCP && backTCP
	tn.down.spliceOK = tn.up.spliceOK
	tn.up.parkable = canPark && clientTCP
	tn.down.parkable = canPark && backTCP
	if p.cfg.idleTimeout > 0 || p.cfg.pingInterval > 0 {
		tn.clock = &tunnelClock{pingID: rand.Uint32()}
		now := info.Start.UnixNano()
		tn.clock.lastActive.Store(now)
		tn.clock.lastRead[0].Store(now)
		tn.clock.lastRead[1].Store(now)
	}
	return tn
}

// info describes the tunnel to hooks and logs.
func (tn *tunnel) info() TunnelInfo {
	proto := "HTTP/1.1"
	if tn.protoMajor != 1 || tn.protoMinor != 1 {
		proto = "HTTP/" + strconv.Itoa(int(tn.protoMajor)) + "." + strconv.Itoa(int(tn.protoMinor))
	}
	tn.mu.Lock()
	e := tn.ending
	var remoteAddr string
	if e != nil && e.hasRemoteAddr {
		remoteAddr = e.remoteAddr
	}
	tn.mu.Unlock()
	if e == nil || !e.hasRemoteAddr {
		remoteAddr = tn.client.RemoteAddr().String()
	}
	return TunnelInfo{Target: tn.target.raw, RemoteAddr: remoteAddr, Path: tn.path, Proto: proto,
		Subprotocol: tn.subprotocol, Start: clockBase.Add(tn.opened)}
}

// clockBase is the origin of tunnel.opened. A time.Time from time.Now
// carries a monotonic reading, and so do clockBase.Add and Sub.
var clockBase = time.Now()

// parseProto parses "HTTP/x.y" with single digits, as net/http accepts it.
func parseProto(proto string) (major, minor uint8, ok bool) {
	if len(proto) != 8 || proto[:5] != "HTTP/" || proto[6] != '.' ||
		proto[5] < '0' || proto[5] > '9' || proto[7] < '0' || proto[7] > '9' {
		return 1, 1, false
	}
	return proto[5] - '0', proto[7] - '0', true
}

// holdSlot makes the tunnel the holder of the admission's places, stored
// as a flag and, for per-client limits, an entry in tunnelEnding, since most
// tunnels have none. Called before start.
func (tn *tunnel) holdSlot(a admission) {
	tn.holding = a.l != nil
	if a.cs != nil {
		tn.endingLocked().slotCS = a.cs // not started: nothing else sees tn yet
	}
}

// releaseSlot gives the tunnel's places back. Called once, after the pumps
// are done, so nothing writes tn.ending any more.
func (tn *tunnel) releaseSlot() {
	if !tn.holding {
		return
	}
	a := admission{l: &tn.p.limits}
	if tn.ending != nil {
		a.cs = tn.ending.slotCS
	}
	a.release()
}

// addTimer keeps t to be stopped when the tunnel ends. tn.mu is held.
func (tn *tunnel) addTimer(t *time.Timer) {
	e := tn.endingLocked()
	e.timers = append(e.timers, t)
}

// start runs the pumps and the timers, each pump first passing the bytes
// its source sent before the hijack. The caller's goroutine is free to
// return: an idle tunnel holds no handler stack.
func (tn *tunnel) start(clientBuf, backBuf []byte) {
	cfg := &tn.p.cfg
	tn.mu.Lock()
	if cfg.maxLifetime > 0 {
		tn.addTimer(time.AfterFunc(cfg.maxLifetime, func() {
			tn.politeClose(wsframe.CloseGoingAway, wsframe.CloseGoingAway, ReasonMaxLifetime)
		}))
	}
	if cfg.idleTimeout > 0 {
		var idle *time.Timer
		idle = time.AfterFunc(cfg.idleTimeout, func() {
			since := time.Duration(time.Now().UnixNano() - tn.clock.lastActive.Load())
			if since >= cfg.idleTimeout {
				tn.politeClose(wsframe.CloseGoingAway, wsframe.CloseGoingAway, ReasonIdleTimeout)
				return
			}
			idle.Reset(cfg.idleTimeout - since)
		})
		tn.addTimer(idle)
	}
	if cfg.pingInterval > 0 {
		var ping *time.Timer
		ping = time.AfterFunc(cfg.pingInterval, func() {
			if tn.keepalive() {
				ping.Reset(cfg.pingInterval)
			}
		})
		tn.addTimer(ping)
	}
	tn.mu.Unlock()
	tn.up.begin(clientBuf)
	tn.down.begin(backBuf)
}

// begin starts the pump: parked if it has nothing to do yet, so a fresh
// idle tunnel never holds a goroutine.
func (p *pump) begin(initial []byte) {
	if len(initial) == 0 && p.parkable && theReactor.park(p) {
		return
	}
	go p.run(initial)
}

// wake runs a parked pump now, because the tunnel is ending.
func (p *pump) wake() {
	if theReactor.unpark(p) {
		go p.run(nil)
	}
}

// keepalive checks that each peer sent something since the last ping it
// got, then pings both. It reports whether the tunnel is still alive.
func (tn *tunnel) keepalive() bool {
	interval := tn.p.cfg.pingInterval.Nanoseconds()
	now := time.Now().UnixNano()
	c := tn.clock
	dead := func(reader, writer *pump) bool {
		sent := c.pingSent[writer.dir()].Load()
		return sent != 0 && c.lastRead[reader.dir()].Load() < sent && now-sent >= interval
	}
	switch {
	case dead(&tn.down, &tn.up):
		tn.politeClose(wsframe.CloseInternalError, wsframe.CloseGoingAway, ReasonBackendNotResponding)
		return false
	case dead(&tn.up, &tn.down):
		tn.politeClose(wsframe.CloseGoingAway, wsframe.CloseGoingAway, ReasonClientNotResponding)
		return false
	}
	var payload [8]byte
	binary.BigEndian.PutUint32(payload[:4], tn.clock.pingID)
	binary.BigEndian.PutUint32(payload[4:], uint32(now))
	tn.down.inject(wsframe.AppendControl(nil, wsframe.OpPing, payload[:], nil), false)
	tn.up.inject(wsframe.AppendControl(nil, wsframe.OpPing, payload[:], newMask()), false)
	return true
}

func newMask() *[4]byte {
	var m [4]byte
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	return &m
}

// isOwnPong reports whether a pong payload answers one of the proxy's pings.
func (tn *tunnel) isOwnPong(payload []byte) bool {
	return tn.clock != nil && len(payload) == 8 && binary.BigEndian.Uint32(payload) == tn.clock.pingID
}

// finish runs once, after both pumps ended: stop the timers, settle the
// counts, tell the hooks and the log, leave the registry.
func (tn *tunnel) finish() {
	tn.mu.Lock()
	var reason, detail string
	var err error
	if e := tn.ending; e != nil {
		for _, t := range e.timers {
			t.Stop()
		}
		reason, detail, err = e.reason, e.detail, e.err
	}
	tn.mu.Unlock()
	if err != nil && (errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF)) && reason != "" {
		err = nil
	}
	info := CloseInfo{
		TunnelInfo:      tn.info(),
		Duration:        time.Since(clockBase) - tn.opened,
		ClientToBackend: tn.up.traffic(),
		BackendToClient: tn.down.traffic(),
		Reason:          reason,
		Detail:          detail,
		Err:             err,
	}
	tn.p.tunnelClosed(tn, info)
	if tn.ending != nil && tn.ending.done != nil {
		close(tn.ending.done)
	}
}

func (p *pump) traffic() Traffic {
	return Traffic{Bytes: p.bytes.Load(), Messages: p.messages.Load(), CloseCode: int(p.closeCode.Load())}
}

// run is the pump's goroutine: read, track frames, write, until src ends
// or the pump parks.
func (p *pump) run(initial []byte) {
	err := p.loop(initial)
	if err == errParked {
		return // the reactor runs the pump again when bytes come
	}
	if p.frames.Carried() > 0 && err == nil {
		err = fmt.Errorf("%w: connection ended inside a frame", io.ErrUnexpectedEOF)
	}
	p.t.pumpDone(p, err)
}

// loop passes the bytes src sent before the hijack, then what it sends.
func (p *pump) loop(initial []byte) error {
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
	return p.loopSrc()
}

// loopRead is the loop of a pump that waits in src's Read, holding its
// buffer: TLS, HTTP/2 streams, and every source where pumps cannot park.
func (p *pump) loopRead() error {
	for {
		bp := bufPool.Get().(*[]byte)
		n, rerr := p.src().Read((*bp)[bufHeadroom:])
		var err error
		if n > 0 {
			err = p.chunk(*bp, n)
		}
		bufPool.Put(bp)
		if err != nil {
			return err
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
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

// canSplice reports whether the rest of the current frame's payload should
// bypass user space. After a close frame went to dst nothing more may reach
// it: the rest of the frame takes the buffered path, which drops it.
func (p *pump) canSplice() bool {
	return p.frames.Remaining() >= spliceMin && p.spliceOK && !p.broken && !p.flags.has(fSentClose)
}

// parkAfter is how long a pump waits for bytes in its goroutine before it
// parks in the reactor. A busy tunnel never waits that long; a burst of
// traffic across many idle tunnels (a broadcast) wakes a goroutine for each,
// and the shorter they linger, the fewer stacks are alive at once. Longer
// spares tunnels with messages a little further apart the reactor's hop
// (some tens of microseconds of CPU per message).
var parkAfter = 100 * time.Millisecond

// spliceMin is the payload still to pass in the current frame from which
// the pump lets the kernel move it between two TCP sockets (splice(2) on
// Linux, through net.TCPConn.ReadFrom) instead of copying it through a
// buffer. Below it, the extra system calls cost more than the copy saves.
const spliceMin = 16 << 10

// splice passes the rest of the current frame's payload. It holds no lock:
// the stream is mid-frame, so the proxy's own frames wait in pending
// until the frame ends.
func (p *pump) splice() error {
	lr := &io.LimitedReader{R: p.src(), N: int64(p.frames.Remaining())}
	n, err := p.dst().(*net.TCPConn).ReadFrom(lr)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil // the idle deadline: the loop parks or goes on
	}
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
	return err
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
		go p.t.politeCloseDetail(code, code, reason, detail)
		return nil
	}
	return err
}

// process walks the frames in data (wsframe.Tracker), writes what is to be
// forwarded to dst and carries the unconsumed tail (a partial header or
// control frame) over to the next chunk. Data payloads pass untouched;
// control frames come whole, so the proxy can read close codes and take its
// own pongs out of the stream.
func (p *pump) process(data []byte, now int64) error {
	i, seg := 0, 0 // data[seg:i] is read and not yet written
	forwarded := false
	rules := wsframe.Rules{Masked: p.fromClient, MaxMessage: uint64(p.t.p.cfg.maxMessageSize)}
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
	dropFrame         // a pong answering the proxy's ping: the peer never sent the ping
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
		p.closeCode.CompareAndSwap(0, int32(code))
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
		p.flags.set(fSentClose)
	}
	return err
}

// inject writes a control frame of the proxy's to dst: now if dst is at a
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
		p.flags.set(fSentClose)
	}
}
