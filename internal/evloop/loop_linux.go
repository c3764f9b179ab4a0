package evloop

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Supported reports whether this system has event loops.
const Supported = true

// defaultLinger is how long a loop with nothing registered and nothing
// posted keeps its goroutine and epoll instance: long enough that a stream
// of short tunnels does not create and destroy them for each one, short
// enough that an idle process (or a test's leak check) soon sees none.
const defaultLinger = 500 * time.Millisecond

// Loop is one epoll instance served by one goroutine. Its methods are safe
// to call from any goroutine.
//
// The goroutine and the epoll instance exist only while the loop has work:
// they start at the first Add or Post and go away once nothing has been
// registered or posted for a while (half a second). A Loop is never
// unusable, though: the next Add or Post starts it again, so a *Loop can be
// kept for as long as the program likes.
type Loop struct {
	linger time.Duration // zero: defaultLinger; tests shorten it

	mu sync.Mutex // protects the fields below
	// run is the running epoll instance and goroutine, nil while stopped.
	run *poller
	// regs holds the registrations by slot; free lists empty slots. The
	// slot and a generation go into each epoll event's data, so an event
	// for a registration that is gone (its slot now free or reused) is
	// recognised and dropped instead of reaching the slot's next owner.
	regs []*Reg
	free []uint32
	gen  uint32
	load atomic.Int32 // registrations; written under mu, read freely by Group.Pick
	// queue holds posted work, in order, until the goroutine takes it.
	queue []task
	// parked: the goroutine found nothing to do and is (about to be)
	// parked, so the next Post must wake it through the eventfd. Only that
	// first Post writes; later ones see parked false and just queue.
	parked bool
	// idleSince is when load last dropped to zero (or the loop started);
	// idle wakes the goroutine after linger so it can stop.
	idleSince time.Time
	idle      *time.Timer
}

// task is one posted item: a func to run, or a registration to close.
// Closing has its own field so that Reg.Close allocates nothing.
type task struct {
	f     func()
	close *Reg
}

// NewLoop returns a loop. On Linux it cannot fail: nothing is created until
// the first Add or Post. Elsewhere it returns ErrUnsupported.
func NewLoop() (*Loop, error) {
	return &Loop{}, nil
}

// Add registers the non-blocking socket fd with the loop: from now on h is
// called on the loop's goroutine with the socket's events (the first call
// comes at once, as a fresh socket is writable). The registration owns fd
// and closes it in Reg.Close; if Add fails, fd stays the caller's.
//
// A handler can run before Add returns. Code that must finish setting up
// first (two sockets that refer to each other, say) calls Add from inside a
// posted func or a handler of the same loop: no handler runs until that
// returns.
func (l *Loop) Add(fd int, h Handler) (*Reg, error) {
	r := new(Reg)
	if err := l.Register(r, fd, h); err != nil {
		return nil, err
	}
	return r, nil
}

// Register is Add with the registration in memory of the caller's, a field
// of its own value for the socket, so that a socket costs no allocation of
// its own: thousands of idle sockets are that many objects fewer in the
// heap. r must be a zero Reg, never registered before, and must not be
// copied; after r.Close the loop may still use it for a while, so it is
// not reused either. If Register fails, fd stays the caller's.
func (l *Loop) Register(r *Reg, fd int, h Handler) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, err := l.startLocked()
	if err != nil {
		return err
	}
	l.slotLocked(r, fd, h)
	ev := r.event()
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.releaseLocked(r)
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// event is what r is registered for: every socket event, edge-triggered,
// with r's slot and generation as the event's data.
func (r *Reg) event() syscall.EpollEvent {
	return syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | epollET,
		Fd:     int32(r.slot),
		Pad:    int32(r.gen),
	}
}

// epollET is EPOLLET as a uint32: package syscall spells it as a negative int.
const epollET = 1 << 31

// Post runs f on the loop's goroutine soon, after the events being handled
// now. Funcs posted from one goroutine run in the order posted. Post from a
// handler or a posted func is fine; f then runs after the current round.
// Like a handler, f must not block. A timer is time.AfterFunc with a func
// that posts: the loop keeps no timers of its own. The error is only ever
// that a stopped loop could not start again (out of descriptors, say).
func (l *Loop) Post(f func()) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.startLocked(); err != nil {
		return err
	}
	if l.load.Load() == 0 {
		l.idleSince = time.Now() // a loop used for posts alone lingers from the last
	}
	l.enqueueLocked(task{f: f})
	return nil
}

func (l *Loop) enqueueLocked(t task) {
	l.queue = append(l.queue, t)
	l.wakeLocked()
}

// wakeLocked makes a parked goroutine run a round. The eventfd is written
// with l.mu held, as the goroutine closes it only after deciding, under
// l.mu, to stop: a write outside the lock could reach a closed (and by then
// reused) descriptor.
func (l *Loop) wakeLocked() {
	if !l.parked {
		return
	}
	l.parked = false
	l.run.wake()
}

// slotLocked fills in r and puts it in a free slot, with a new generation.
func (l *Loop) slotLocked(r *Reg, fd int, h Handler) {
	l.gen++
	r.l, r.fd, r.h, r.gen = l, int32(fd), h, l.gen
	if n := len(l.free); n > 0 {
		r.slot = l.free[n-1]
		l.free = l.free[:n-1]
		l.regs[r.slot] = r
	} else {
		r.slot = uint32(len(l.regs))
		l.regs = append(l.regs, r)
	}
	l.load.Add(1)
}

// releaseLocked empties r's slot; with nothing left registered, the loop
// starts lingering towards its stop.
func (l *Loop) releaseLocked(r *Reg) {
	l.regs[r.slot] = nil
	l.free = append(l.free, r.slot)
	if l.load.Add(-1) == 0 {
		l.lingerLocked()
	}
}

// lookupLocked returns the registration an event's data names, or nil when
// it is gone.
func (l *Loop) lookupLocked(slot, gen uint32) *Reg {
	if int(slot) >= len(l.regs) {
		return nil
	}
	r := l.regs[slot]
	if r == nil || r.gen != gen {
		return nil
	}
	return r
}

// lingerLocked notes that the loop has become idle and arranges a wake-up
// once it has been idle for linger, when the goroutine checks again and
// stops if it still is.
func (l *Loop) lingerLocked() {
	l.idleSince = time.Now()
	if l.idle == nil {
		l.idle = time.AfterFunc(l.lingerFor(), l.idleCheck)
		return
	}
	l.idle.Reset(l.lingerFor())
}

func (l *Loop) lingerFor() time.Duration {
	if l.linger == 0 {
		return defaultLinger
	}
	return l.linger
}

// idleCheck runs on the timer's goroutine. A loop that was busy again
// meanwhile (posts count, registrations re-arm the timer when they end)
// is given the rest of its linger.
func (l *Loop) idleCheck() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.run == nil || l.load.Load() != 0 {
		return
	}
	if left := l.lingerFor() - time.Since(l.idleSince); left > 0 {
		l.idle.Reset(left)
		return
	}
	l.wakeLocked() // the goroutine's settle sees it expired and stops
}

// expiredLocked reports whether the loop has had nothing registered and
// nothing posted for linger.
func (l *Loop) expiredLocked() bool {
	return l.load.Load() == 0 && time.Since(l.idleSince) >= l.lingerFor()
}

// startLocked returns the running poller, starting one if the loop is
// stopped.
func (l *Loop) startLocked() (*poller, error) {
	if l.run != nil {
		return l.run, nil
	}
	p, err := newPoller()
	if err != nil {
		return nil, fmt.Errorf("evloop: start a loop: %w", err)
	}
	l.run = p
	l.parked = false
	l.regs, l.free = nil, nil // a peak's table goes with the last instance
	l.lingerLocked()
	go l.serve(p)
	return p, nil
}

// Reg is one socket registered with a loop: 40 bytes (TestRegSize), kept
// small as every idle socket has one.
type Reg struct {
	l      *Loop
	h      Handler
	fd     int32 // a descriptor is a C int
	slot   uint32
	gen    uint32
	closed atomic.Bool
}

// Fd returns the registered descriptor, for Read, Write and ShutdownWrite.
// It stays open (and so cannot be reused for another socket) until the loop
// has closed it, after Close.
func (r *Reg) Fd() int { return int(r.fd) }

// Loop returns the loop the socket is registered with, for Post.
func (r *Reg) Loop() *Loop { return r.l }

// Close deregisters the socket and closes its descriptor. It can be called
// from any goroutine, any number of times. The closing itself happens on
// the loop's goroutine after the events being handled now: no handler is
// called for the socket once Close has returned (except one already
// running on the loop at that moment, when Close comes from another
// goroutine), and the descriptor is never closed while the loop may still
// dispatch an event for it.
func (r *Reg) Close() {
	if r.closed.Swap(true) {
		return
	}
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	l.enqueueLocked(task{close: r})
}

// remove finishes Close on the loop's goroutine.
func (l *Loop) remove(p *poller, r *Reg) {
	l.mu.Lock()
	l.releaseLocked(r)
	l.mu.Unlock()
	// Deleted explicitly: epoll watches the open file, not the number, so
	// a dup of fd held elsewhere would otherwise keep the registration.
	_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, r.Fd(), nil)
	_ = syscall.Close(r.Fd()) // nothing to do about a failed close of a socket
}
