package evloop

import (
	"encoding/binary"
	"errors"
	"os"
	"syscall"
	"time"
)

// poller is one epoll instance with the eventfd that wakes it. It belongs
// to the goroutine running serve; Add and wake (under Loop.mu) are the only
// uses from other goroutines.
type poller struct {
	epfd int
	efd  int      // eventfd, registered under wakeSlot
	file *os.File // epfd, for the netpoller
	// The rest is touched by the loop's goroutine only.
	events []syscall.EpollEvent
	ready  []readyReg
	spare  []task // the other of the two task slices Loop.queue alternates between
}

type readyReg struct {
	r  *Reg
	ev Events
}

// wakeSlot marks the eventfd's events; registrations have slots from 0 up.
const wakeSlot int32 = -1

// batch is how many events one epoll_wait takes; a full batch means more
// may be waiting.
const batch = 128

// newPoller creates the epoll instance and hands it to Go's netpoller: a
// non-blocking descriptor given to os.NewFile is registered there, and
// RawConn.Read on it then parks the goroutine until the epoll fd is
// readable, which it is while any socket registered in it has an event.
func newPoller() (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	p := &poller{epfd: epfd, efd: -1, events: make([]syscall.EpollEvent, batch)}
	if err := p.init(); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

func (p *poller) init() error {
	if err := syscall.SetNonblock(p.epfd, true); err != nil {
		return os.NewSyscallError("setnonblock", err)
	}
	efd, _, errno := syscall.RawSyscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		return os.NewSyscallError("eventfd2", errno)
	}
	p.efd = int(efd)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | epollET, Fd: wakeSlot}
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, p.efd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	p.file = os.NewFile(uintptr(p.epfd), "epoll")
	// Only a descriptor the netpoller took has deadlines; without it the
	// goroutine could not park.
	if err := p.file.SetReadDeadline(time.Time{}); err != nil {
		return errors.Join(errNotPollable, err)
	}
	return nil
}

var errNotPollable = errors.New("evloop: the netpoller did not take the epoll descriptor")

// close releases the instance. Closing the os.File takes the epoll fd out
// of the netpoller before closing it.
func (p *poller) close() {
	if p.efd >= 0 {
		syscall.Close(p.efd)
	}
	if p.file != nil {
		p.file.Close()
	} else {
		syscall.Close(p.epfd)
	}
}

// wakeOne is the eventfd increment, in the byte order the kernel reads.
var wakeOne = binary.NativeEndian.AppendUint64(nil, 1)

// wake makes the epoll instance readable. EAGAIN (the counter is full) is
// as good as success: the eventfd is readable anyway.
func (p *poller) wake() {
	for {
		_, err := rawWrite(p.efd, wakeOne)
		if err != syscall.EINTR {
			return
		}
	}
}

// drainWake resets the eventfd's counter after its event: edge-triggered,
// the next write makes a new edge either way, but a counter never read
// would one day be full.
func (p *poller) drainWake() {
	var buf [8]byte
	for {
		_, err := rawRead(p.efd, buf[:])
		if err != syscall.EINTR {
			return
		}
	}
}

// serve is the loop's goroutine. RawConn.Read calls round, and parks the
// goroutine in the netpoller each time round returns false.
func (l *Loop) serve(p *poller) {
	defer p.close()
	rc, err := p.file.SyscallConn()
	if err == nil {
		err = rc.Read(func(uintptr) bool { return l.round(p) })
	}
	if err != nil {
		// Only closing p.file could end Read with an error, and nothing
		// but this goroutine closes it; let the next Add start afresh.
		l.mu.Lock()
		if l.run == p {
			l.run = nil
		}
		l.mu.Unlock()
	}
}

// round handles everything that is ready and reports whether the loop
// stops (true) or parks until the epoll fd is readable again (false).
func (l *Loop) round(p *poller) bool {
	for {
		n, err := pollNow(p.epfd, p.events)
		if err != 0 {
			n = 0 // EINTR, the only error on a valid instance and buffer
		}
		tasks := l.collect(p, n)
		l.dispatch(p)
		l.runTasks(p, tasks)
		if n == len(p.events) {
			continue // more may be waiting, and no new edge would tell
		}
		switch l.settle() {
		case parkNow:
			return false
		case stopNow:
			return true
		}
	}
}

// collect turns the events into registrations and takes the posted tasks,
// both under one hold of l.mu.
func (l *Loop) collect(p *poller, n int) []task {
	p.ready = p.ready[:0]
	woken := false
	var tasks []task
	l.mu.Lock()
	l.parked = false // awake: settle checks the queue before parking again
	for _, e := range p.events[:n] {
		if e.Fd == wakeSlot {
			woken = true
			continue
		}
		if r := l.lookupLocked(uint32(e.Fd), uint32(e.Pad)); r != nil {
			p.ready = append(p.ready, readyReg{r, events(e.Events)})
		}
	}
	if len(l.queue) > 0 {
		tasks, l.queue = l.queue, p.spare[:0]
		p.spare = nil
	}
	l.mu.Unlock()
	if woken {
		p.drainWake()
	}
	return tasks
}

// dispatch calls the handlers. A registration closed by an earlier handler
// of the same batch is skipped; its descriptor is still open, as closing
// happens only in runTasks.
func (l *Loop) dispatch(p *poller) {
	for i, rr := range p.ready {
		if !rr.r.closed.Load() {
			rr.r.h.Ready(rr.r, rr.ev)
		}
		p.ready[i] = readyReg{} // let a closed registration go
	}
}

func (l *Loop) runTasks(p *poller, tasks []task) {
	if tasks == nil {
		return
	}
	for _, t := range tasks {
		if t.close != nil {
			l.remove(p, t.close)
		} else {
			t.f()
		}
	}
	clear(tasks)
	p.spare = tasks
}

type verdict int

const (
	again verdict = iota
	parkNow
	stopNow
)

// settle decides, at the end of a round, whether the goroutine parks,
// stops, or goes round again for work posted meanwhile.
func (l *Loop) settle() verdict {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case len(l.queue) > 0:
		return again
	case l.expiredLocked():
		l.run = nil // the next Add or Post starts a new instance
		return stopNow
	default:
		l.parked = true
		if l.load.Load() == 0 {
			// The idle timer may have looked before a post moved
			// idleSince, found the loop awake and let it be: it must
			// look again once the linger from that post is over.
			l.idle.Reset(l.lingerFor() - time.Since(l.idleSince))
		}
		return parkNow
	}
}

// events translates epoll's bits.
func events(e uint32) Events {
	var ev Events
	if e&syscall.EPOLLIN != 0 {
		ev |= Readable
	}
	if e&syscall.EPOLLOUT != 0 {
		ev |= Writable
	}
	if e&syscall.EPOLLRDHUP != 0 {
		ev |= ReadClosed
	}
	if e&syscall.EPOLLHUP != 0 {
		ev |= HangUp
	}
	if e&syscall.EPOLLERR != 0 {
		ev |= Error
	}
	return ev
}
