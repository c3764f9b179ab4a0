package tunnel

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy/internal/evloop"
	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// The loop driver runs a tunnel whose two connections are plain TCP in one
// of a few event loops (internal/evloop) instead of two goroutines. Init
// takes both sockets out of their net.Conns (evloop.DupConn) and closes the
// net.Conns, so that an idle tunnel holds two descriptors and two socks, no
// goroutine, no net.Conn and no pollDesc. A sock stands in for the net.Conn
// everywhere the engine writes (pump.flush, inject, writeLocked, end.go's
// actions), and the loop reads it:
//
//   - Reading happens in the sock's handler, on the loop: read into a pooled
//     buffer, pass it on through pump.chunk (the one frame tracker and state
//     machine of both drivers), with evloop's short-read rule.
//   - Write never blocks: what the kernel does not take waits in the sock's
//     backlog, written on the next Writable event. While a pump's
//     destination holds a backlog the pump does not read its source
//     (back-pressure), so a backlog is at most one read and a few control
//     frames. Writes come from the loop and from other goroutines (timers,
//     Close), each under its pump's mu, as in the goroutine driver.
//   - The payload of a large data frame goes through a pipe instead
//     (splice_linux.go); what the pipe holds is the head of the backlog.
//   - A close frame in a backlog has not left the tunnel yet: fCloseOut waits
//     for the backlog to drain, so the close handshake is judged on what the
//     kernel took, as under the goroutine driver. CloseWrite waits for it too.
//   - Deadlines are timers that post to the loop: a read deadline ends the
//     reading pump with os.ErrDeadlineExceeded; a write deadline that passes
//     with a backlog drops it and ends the pump writing the socket with
//     that error, as a blocked write would.
//   - Close may come from any goroutine; the sock takes no more writes at
//     once, and the loop ends the reading pump (net.ErrClosed) and closes
//     the descriptor. The owner hears of the end once both descriptors are
//     closed, from a goroutine of its own, so a hook that blocks holds no
//     loop.
//
// Fields marked "loop" are touched on the loop's goroutine only.
//
// A sock is 128 bytes (TestSockSize), so that a tunnel's two, allocated
// together (sockPair), fill one 256-byte size class: what only a socket
// near its end needs waits behind ending.
type sock struct {
	t   *Tunnel
	reg evloop.Reg // registered in place: no allocation of its own
	// The peer's address, kept from the net.Conn in 26 bytes without a
	// pointer to chase rather than a *net.TCPAddr (80 bytes with its IP).
	peerIP   netip.Addr
	peerPort uint16
	isClient bool // the client's socket: read by t.up, written by t.down

	readable bool // loop: an edge came and the socket was not drained since
	drain    bool // loop: the peer ended or failed: read until EOF, whatever the short-read rule says
	started  bool // loop: Start's bytes were passed; events may be acted on
	done     bool // loop: the pump reading the socket ended
	gone     bool // loop: the registration (and so the descriptor) is being closed
	spliced  bool // loop: a splice ended the last frame read: read the next header alone (splice_linux.go)
	// On the client's sock only (loop): both pumps ended and the owner is
	// to be told once both sockets are gone; told.
	finishWanted, told bool

	mu         sync.Mutex // guards what follows, and every use of the descriptor off the loop
	closed     bool       // Close was called: no more writes
	shutWanted bool       // CloseWrite came while the backlog held bytes
	shut       bool       // the FIN went out
	piped      bool       // a pipe holds spliced payload not yet taken by the kernel, ahead of backlog (splice_linux.go)
	backlog    []byte     // written, not yet taken by the kernel
	ending     *sockEnd   // nil until a deadline is set or a write failed
}

// A sockEnd holds what a socket needs only as it ends: the timers of
// the deadlines, which only a tunnel's end sets, and the error of a failed
// write. sock.mu guards it.
type sockEnd struct {
	werr        error // a write failed: every later write fails so
	read, write *time.Timer
	rgen, wgen  uint32 // count the deadlines set, so a timer that fires late knows it is stale
	writeBy     int64  // unix nanoseconds after which writes fail; 0: never
}

// loops are the process's event loops, made on first use: loopCount of
// them, 0 for evloop's default (GOMAXPROCS/2, at least one).
var loops = sync.OnceValues(func() (*evloop.Group, error) { return evloop.NewGroup(loopCount) })

// loopCount is set by the tests only, before the first tunnel.
var loopCount int

// A sockPair is a tunnel's two sockets in one allocation.
type sockPair struct{ client, back sock }

// moveToLoop takes both sockets out of their net.Conns into one loop and
// reports whether it did. If anything fails, the tunnel stays with its
// net.Conns and the goroutines.
func (tn *Tunnel) moveToLoop() bool {
	g, err := loops()
	if err != nil {
		return false
	}
	l := g.Pick()
	if dc, ok := tn.back.(*evloop.Conn); ok {
		l = dc.Loop() // dialled into a loop (Dial): the tunnel joins it
	}
	pair := new(sockPair)
	cs, bs := &pair.client, &pair.back
	if err := cs.init(tn, l, tn.client, true); err != nil {
		return false
	}
	if err := bs.init(tn, l, tn.back, false); err != nil {
		cs.reg.Close()
		return false
	}
	tn.client.Close()
	tn.back.Close() // nothing, for an adopted evloop.Conn
	tn.client, tn.back = cs, bs
	return true
}

// init registers a copy of c's descriptor with l, or takes over the
// registration of a connection from Dial, which is l's, for the zero sock
// s. Its handler does nothing but note events until Start.
func (s *sock) init(tn *Tunnel, l *evloop.Loop, c net.Conn, isClient bool) error {
	s.t, s.isClient, s.readable = tn, isClient, true
	if dc, ok := c.(*evloop.Conn); ok {
		s.adopt(dc)
		return nil
	}
	fd, err := evloop.DupConn(c.(syscall.Conn))
	if err != nil {
		return err
	}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		s.peerIP, s.peerPort = ap.Addr().Unmap(), ap.Port()
	}
	if err := l.Register(&s.reg, fd, s); err != nil {
		syscall.Close(fd)
		return err
	}
	return nil
}

// startLoop starts a tunnel of the loop driver and reports whether it is
// one: its pumps pass the early bytes, then read as events come.
func (tn *Tunnel) startLoop(clientBuf, backBuf []byte) bool {
	cs, ok := tn.client.(*sock)
	if !ok {
		return false
	}
	bs := tn.back.(*sock)
	// Post fails only when a stopped loop cannot start, and the two
	// registrations keep this one running.
	_ = cs.reg.Loop().Post(func() {
		cs.started, bs.started = true, true
		cs.passEarly(clientBuf)
		bs.passEarly(backBuf)
		cs.pull()
		bs.pull()
	})
	return true
}

// isLoopSock reports whether c is a socket of the loop driver.
func isLoopSock(c net.Conn) bool {
	_, ok := c.(*sock)
	return ok
}

// holdsBack reports whether c holds written bytes back from the kernel.
func holdsBack(c net.Conn) bool {
	s, ok := c.(*sock)
	return ok && s.holding()
}

// finishAfterClose finishes the tunnel: at once under the goroutine
// driver; under the loop driver (where both pumps end on the loop) once
// both descriptors are closed, from a goroutine of its own.
func (tn *Tunnel) finishAfterClose() {
	cs, ok := tn.client.(*sock)
	if !ok {
		tn.finish()
		return
	}
	cs.finishWanted = true
	cs.finishIfGone()
}

// finishIfGone tells the owner, once, when both pumps ended and both
// registrations are closing. The loop closes a descriptor in the order of
// its posted work, so what is posted now runs after both closes. Loop.
func (s *sock) finishIfGone() {
	bs := s.t.back.(*sock)
	if !s.finishWanted || s.told || !s.gone || !bs.gone {
		return
	}
	s.told = true
	tn := s.t
	_ = s.reg.Loop().Post(func() { go tn.finish() })
}

func (s *sock) reader() *pump {
	if s.isClient {
		return &s.t.up
	}
	return &s.t.down
}

func (s *sock) writer() *pump {
	if s.isClient {
		return &s.t.down
	}
	return &s.t.up
}

// peer is the tunnel's other socket: where the reader writes, and what the
// writer reads.
func (s *sock) peer() *sock {
	if s.isClient {
		return s.t.back.(*sock)
	}
	return s.t.client.(*sock)
}

// Ready is the sock's handler, on the loop.
func (s *sock) Ready(_ *evloop.Reg, ev evloop.Events) {
	if ev&^evloop.Writable != 0 {
		s.readable = true
		if ev&(evloop.ReadClosed|evloop.HangUp|evloop.Error) != 0 {
			s.drain = true
		}
	}
	if !s.started {
		return
	}
	if ev&evloop.Writable != 0 && s.flushBacklog() {
		s.peer().pull() // the pump writing s may read again
	}
	s.pull()
}

// passEarly passes the bytes the reader's source sent before the hijack.
// Loop.
func (s *sock) passEarly(b []byte) {
	if err := s.reader().passEarly(b); err != nil {
		s.endRead(err)
	}
}

// pull reads s and passes what it reads on until s is drained, the
// reader's destination holds a backlog (its next Writable event pulls
// again), or the reader ended. Loop.
func (s *sock) pull() {
	if !s.started || s.done || !s.readable {
		return
	}
	p, dst := s.reader(), s.peer()
	var bp *[]byte
	defer func() {
		if bp != nil {
			bufPool.Put(bp)
		}
	}()
	for s.readable && !s.done {
		if dst.holding() {
			return
		}
		if p.canSplice() && s.spliceTo(dst, p) {
			continue
		}
		if bp == nil {
			bp = bufPool.Get().(*[]byte)
		}
		b := (*bp)[bufHeadroom:]
		if s.spliced {
			s.spliced = false
			b = b[:wsframe.MaxHeaderLen]
		}
		n, err := evloop.Read(s.reg.Fd(), b)
		if n > 0 {
			s.readable = n == len(b) || s.drain
			if err := p.chunk(*bp, n); err != nil {
				s.endRead(err)
			}
			continue
		}
		s.readable = false
		switch {
		case errors.Is(err, evloop.ErrWouldBlock):
		case err == io.EOF:
			s.endRead(nil)
		default:
			p.srcFailed = true
			s.endRead(err)
		}
	}
}

// endRead ends the pump reading s, once, as the goroutine driver's pump
// ends when its loop returns err. Loop.
func (s *sock) endRead(err error) {
	if s.done {
		return
	}
	s.done = true
	s.readable = false
	p := s.reader()
	s.t.pumpDone(p, p.endErr(err))
}

// holding reports whether s has a backlog.
func (s *sock) holding() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holdingLocked()
}

// holdingLocked reports whether s has a backlog, in its pipe or its
// buffer. s.mu is held.
func (s *sock) holdingLocked() bool { return s.piped || len(s.backlog) > 0 }

// flushBacklog writes what s holds, on a Writable event, and reports
// whether it all went (the writer was held back and may read again). The
// FIN asked for meanwhile follows, and a close frame among the bytes is
// now out. Loop.
func (s *sock) flushBacklog() bool {
	s.mu.Lock()
	if s.closed || !s.holdingLocked() {
		s.mu.Unlock()
		return false
	}
	var err error
	if s.piped {
		err = s.flushPipeLocked()
	}
	if err == nil && len(s.backlog) > 0 {
		var n int
		n, err = evloop.Write(s.reg.Fd(), s.backlog)
		s.backlog = s.backlog[n:]
	}
	switch {
	case errors.Is(err, evloop.ErrWouldBlock):
		s.mu.Unlock()
		return false
	case err != nil:
		s.dropLocked(err)
		s.mu.Unlock()
		s.peer().endRead(err) // the writer's blocked write failed
		return false
	}
	s.backlog = nil
	if s.shutWanted && !s.shut {
		s.shut = true
		evloop.ShutdownWrite(s.reg.Fd())
	}
	s.mu.Unlock()
	if w := s.writer(); w.flags.has(fSentClose) && w.flags.setOnce(fCloseOut) {
		s.t.end(change{ev: evCloseFrames})
	}
	return true
}

// dropLocked gives up on the backlog because of err, which every later
// write returns; its bytes no longer count as written. s.mu is held.
func (s *sock) dropLocked(err error) {
	s.writer().bytes.Add(-int64(s.dropPipeLocked() + len(s.backlog)))
	s.backlog = nil
	if s.closed {
		return // Write answers net.ErrClosed: no ending to make for err
	}
	if e := s.endingLocked(); e.werr == nil {
		e.werr = err
	}
}

// Write writes b, or keeps what the kernel does not take for the next
// Writable event; it never blocks. The caller holds the writing pump's mu.
func (s *sock) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writeErrLocked(); err != nil {
		return 0, err
	}
	if s.holdingLocked() {
		s.backlog = append(s.backlog, b...)
		return len(b), nil
	}
	n, err := evloop.Write(s.reg.Fd(), b)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, evloop.ErrWouldBlock):
		s.backlog = append([]byte(nil), b[n:]...)
		return len(b), nil
	}
	s.endingLocked().werr = err
	return n, err
}

// writeErrLocked returns why s takes no more bytes, or nil. s.mu is held.
func (s *sock) writeErrLocked() error {
	switch {
	case s.closed:
		return net.ErrClosed
	case s.ending != nil && s.ending.werr != nil:
		return s.ending.werr
	case s.ending != nil && s.ending.writeBy != 0 && time.Now().UnixNano() >= s.ending.writeBy:
		return os.ErrDeadlineExceeded
	}
	return nil
}

// CloseWrite sends a FIN, after the backlog.
func (s *sock) CloseWrite() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed || s.shut:
		return nil
	case s.holdingLocked():
		s.shutWanted = true
		return nil
	}
	s.shut = true
	return evloop.ShutdownWrite(s.reg.Fd())
}

// Close takes no more writes, drops the backlog and has the loop end the
// reading pump and close the descriptor.
func (s *sock) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.dropLocked(net.ErrClosed)
	if d := s.ending; d != nil {
		stop(d.read)
		stop(d.write)
	}
	s.mu.Unlock()
	_ = s.reg.Loop().Post(s.closeOnLoop)
	return nil
}

func stop(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}

func (s *sock) closeOnLoop() {
	s.endRead(net.ErrClosed)
	s.gone = true
	s.reg.Close()
	s.t.client.(*sock).finishIfGone()
}

// SetReadDeadline ends the reading pump with os.ErrDeadlineExceeded at t,
// unless another deadline replaces it first.
func (s *sock) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	d := s.endingLocked()
	s.rearm(&d.read, &d.rgen, t, s.readExpired)
	return nil
}

// SetWriteDeadline makes writes fail after t, and a backlog still held at
// t end the writing pump, as a write blocked until then would.
func (s *sock) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	d := s.endingLocked()
	d.writeBy = 0
	if !t.IsZero() {
		d.writeBy = t.UnixNano()
	}
	s.rearm(&d.write, &d.wgen, t, s.writeExpired)
	return nil
}

// rearm replaces the deadline timer *tm with one that runs expired on the
// loop at t (none for a zero t); gen counts the deadlines set, so that a
// timer that fires late is known as stale. s.mu is held.
func (s *sock) rearm(tm **time.Timer, gen *uint32, t time.Time, expired func(uint32)) {
	*gen++
	stop(*tm)
	*tm = nil
	if !t.IsZero() {
		g := *gen
		*tm = time.AfterFunc(time.Until(t), func() { s.onLoop(func() { expired(g) }) })
	}
}

// SetDeadline sets both deadlines.
func (s *sock) SetDeadline(t time.Time) error {
	return errors.Join(s.SetReadDeadline(t), s.SetWriteDeadline(t))
}

// endingLocked returns the sock's ending, made on first use. s.mu is held.
func (s *sock) endingLocked() *sockEnd {
	if s.ending == nil {
		s.ending = new(sockEnd)
	}
	return s.ending
}

// onLoop runs f on the loop. The registration keeps the loop running
// until Close, and a timer that Close stopped may still call this: then
// the loop is gone for the sock and f finds it closed.
func (s *sock) onLoop(f func()) { _ = s.reg.Loop().Post(f) }

func (s *sock) readExpired(gen uint32) {
	s.mu.Lock()
	current := !s.closed && s.ending.rgen == gen
	s.mu.Unlock()
	if current {
		s.endRead(os.ErrDeadlineExceeded)
	}
}

func (s *sock) writeExpired(gen uint32) {
	s.mu.Lock()
	held := !s.closed && s.ending.wgen == gen && s.holdingLocked()
	if held {
		s.dropLocked(os.ErrDeadlineExceeded)
	}
	s.mu.Unlock()
	if held {
		s.peer().endRead(os.ErrDeadlineExceeded)
	}
}

// errLoopReads is what Read returns: the loop reads a sock, nobody else.
var errLoopReads = errors.New("tunnel: the socket is read by its event loop")

// Read fails: the event loop reads the socket.
func (s *sock) Read([]byte) (int, error) { return 0, errLoopReads }

// RemoteAddr returns the peer's address, kept from the net.Conn.
func (s *sock) RemoteAddr() net.Addr {
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(s.peerIP, s.peerPort))
}

// LocalAddr returns the socket's own address, or nil once it is closed.
func (s *sock) LocalAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	return evloop.LocalAddr(s.reg.Fd())
}
