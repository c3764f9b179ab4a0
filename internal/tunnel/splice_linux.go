package tunnel

import (
	"errors"
	"runtime"
	"sync"
	"syscall"

	"github.com/wsproxy/wsproxy/internal/evloop"
)

// Under the loop driver, the payload of a large data frame skips user
// space as it does under the goroutine driver (pump.splice): once the
// frame's header has passed and at least spliceMin bytes of its payload
// are still to come, the loop moves them from the source socket into a
// kernel pipe and from the pipe into the destination socket, two
// splice(2) calls that move page references rather than bytes.
//
// The bytes in the pipe are the head of the destination's backlog: they
// count as written (Traffic), a Write that comes meanwhile (the tunnel's
// own control frame at the end of the frame, say) waits behind them in
// the backlog, the next Writable event sends them first, CloseWrite waits
// for them and a close frame behind them is not out until they are. While
// the pipe holds bytes the pump reads no more (back-pressure), so a pipe
// holds at most one splice's worth. A sock holds a pipe only while the
// pipe holds bytes: an empty one goes back to pipePool at once, so no idle
// tunnel keeps one; a pipe whose bytes will never leave (Close, a failed
// write) is closed instead. A pipe that holds bytes is rare (its
// destination is full, mid-frame) and waits in heldPipes, not in the sock,
// which says so in one bit (piped) and stays small.
//
// After a frame ended in a splice the loop reads the next header alone
// (sock.spliced: at most wsframe.MaxHeaderLen bytes), so that a large
// frame behind it is spliced whole instead of after a buffer's worth of
// copied payload.
//
// Every splice runs on the loop, and under the destination's mu, as every
// write to it does; Close may then close the pipe from any goroutine.

// A pipe is a kernel pipe with n bytes in it, spliced in from a source and
// not yet out to the destination.
type pipe struct {
	r, w    int
	n       int
	cleanup runtime.Cleanup // closes both ends if a pooled pipe is dropped
}

// heldPipes holds the pipes with bytes in them, by destination. Its mu is
// taken under a sock's mu, and nothing is taken under it.
var heldPipes struct {
	mu sync.Mutex
	m  map[*sock]*pipe
}

// holdPipeLocked keeps pp, which holds bytes, for s. s.mu is held.
func (s *sock) holdPipeLocked(pp *pipe) {
	heldPipes.mu.Lock()
	if heldPipes.m == nil {
		heldPipes.m = make(map[*sock]*pipe)
	}
	heldPipes.m[s] = pp
	heldPipes.mu.Unlock()
	s.piped = true
}

// heldPipeLocked returns the pipe that holds bytes for s, or nil. s.mu is
// held.
func (s *sock) heldPipeLocked() *pipe {
	if !s.piped {
		return nil
	}
	heldPipes.mu.Lock()
	defer heldPipes.mu.Unlock()
	return heldPipes.m[s]
}

// unholdPipeLocked forgets s's pipe. s.mu is held.
func (s *sock) unholdPipeLocked() {
	heldPipes.mu.Lock()
	delete(heldPipes.m, s)
	heldPipes.mu.Unlock()
	s.piped = false
}

// pipePool keeps empty pipes between splices. A pipe the pool drops (in a
// GC) closes its descriptors in its cleanup, as the runtime's own splice
// pipes do.
var pipePool sync.Pool

// spliceMax is the most one splice asks for: a default pipe's capacity
// (16 pages). The pipe must be emptied before the next one.
const spliceMax = 64 << 10

// getPipe returns an empty pipe, or nil when none can be made (out of
// descriptors): the caller then copies through a buffer.
func getPipe() *pipe {
	if pp, ok := pipePool.Get().(*pipe); ok {
		return pp
	}
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		return nil
	}
	pp := &pipe{r: fds[0], w: fds[1]}
	pp.cleanup = runtime.AddCleanup(pp, closeFDs, fds)
	return pp
}

func closeFDs(fds [2]int) {
	syscall.Close(fds[0])
	syscall.Close(fds[1])
}

// release gives an empty pipe back to the pool, and closes one that still
// holds bytes: they must never reach another tunnel.
func (pp *pipe) release() {
	if pp.n == 0 {
		pipePool.Put(pp)
		return
	}
	pp.cleanup.Stop()
	closeFDs([2]int{pp.r, pp.w})
}

// spliceTo passes up to spliceMax bytes of the current frame's payload
// from s to dst, its reader p's destination, through a pipe, and ends p
// when either side fails. It reports false, having done nothing, when it
// has no pipe: the caller reads instead. Loop.
func (s *sock) spliceTo(dst *sock, p *pump) bool {
	dst.mu.Lock()
	if err := dst.writeErrLocked(); err != nil {
		dst.mu.Unlock()
		s.endRead(err) // as the Write of a read's bytes would have failed
		return true
	}
	if dst.holdingLocked() {
		dst.mu.Unlock()
		return true // the caller waits for dst's Writable event
	}
	pp := getPipe()
	if pp == nil {
		dst.mu.Unlock()
		return false
	}
	n, rerr := evloop.Splice(s.reg.Fd(), pp.w, int(min(p.frames.Remaining(), spliceMax)))
	if n == 0 && errors.Is(rerr, syscall.EINVAL) {
		// A socket the kernel cannot splice from: copy, from now on.
		pp.release()
		dst.mu.Unlock()
		p.spliceOK = false
		return false
	}
	pp.n = n
	var werr error
	if n > 0 {
		var m int
		m, werr = evloop.Splice(pp.r, dst.reg.Fd(), n)
		pp.n -= m
	}
	switch {
	case pp.n == 0:
		pp.release()
	case werr == evloop.ErrWouldBlock:
		dst.holdPipeLocked(pp) // the next Writable event sends the rest
	default:
		pp.release()
		n -= pp.n            // never written
		dst.dropLocked(werr) // every later write fails so
	}
	dst.mu.Unlock()

	if n > 0 {
		p.spliced(int64(n))
		s.spliced = p.frames.Remaining() == 0
	}
	// Only a splice that moved nothing says the socket is drained: a short
	// one may have run out of the pipe's slots (one per page fragment), not
	// of bytes, and no new edge would come for what is left.
	switch {
	case werr != nil && werr != evloop.ErrWouldBlock:
		s.endRead(werr)
	case rerr == evloop.ErrWouldBlock && n == 0:
		s.readable = false
	case rerr == nil && n == 0:
		s.endRead(nil)
	case rerr != nil && rerr != evloop.ErrWouldBlock:
		p.srcFailed = true
		s.endRead(rerr)
	}
	return true
}

// flushPipeLocked sends what s's pipe holds and gives the pipe back once
// it is empty. s.mu is held; loop.
func (s *sock) flushPipeLocked() error {
	pp := s.heldPipeLocked()
	m, err := evloop.Splice(pp.r, s.reg.Fd(), pp.n)
	pp.n -= m
	if pp.n == 0 {
		s.unholdPipeLocked()
		pp.release()
	}
	return err
}

// dropPipeLocked gives up on the bytes in s's pipe and closes it, and
// returns how many bytes it held. s.mu is held.
func (s *sock) dropPipeLocked() int {
	pp := s.heldPipeLocked()
	if pp == nil {
		return 0
	}
	s.unholdPipeLocked()
	n := pp.n
	pp.release()
	return n
}
