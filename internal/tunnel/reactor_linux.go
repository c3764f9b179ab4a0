package tunnel

import (
	"sync"
	"syscall"
)

// The reactor holds the pumps of idle tunnels without a goroutine each: a
// parked pump's socket is registered, one-shot, with an epoll instance, and
// when it becomes readable the reactor starts a new goroutine for the pump.
// A busy pump never parks, so its bytes keep the direct path through Go's
// netpoller; only a pump that found nothing to read for Config.ParkAfter (or a
// new tunnel with nothing to read yet) pays one extra hop when bytes come.
//
// There is one reactor per process. It exists only while it has work: its
// goroutine and epoll instance go away once nothing has been parked for a
// whole reactorLinger, so an idle process (or a test's leak check) sees
// none, while a stream of short-lived tunnels does not create and destroy
// it for each one.
type reactor struct {
	mu   sync.Mutex
	epfd int   // -1 when not running
	gen  uint8 // counts epoll instances (wrapping), so a pump knows if its registration is still there
	// parked pumps by token-1: a slot table rather than a map, 8 bytes a
	// parked pump; free holds the empty slots.
	parked  []*pump
	free    []uint32
	nparked int
}

var theReactor = reactor{epfd: -1}

// reactorLinger is how long the reactor waits, empty, before it goes away.
const reactorLinger = 500 // milliseconds, EpollWait's unit

// park registers p's socket and reports whether the pump is now parked;
// the caller's goroutine must then return without touching p again. On
// false the caller simply goes on waiting the ordinary way.
func (r *reactor) park(p *pump) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epfd < 0 && !r.startLocked() {
		return false
	}
	rc := parkableConn(p.src())
	if rc == nil {
		return false
	}
	r.slot(p)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	ev.Fd = int32(p.token)
	// Registering a socket that already has bytes fires at once (epoll is
	// level-triggered for the check done on ADD and MOD), so no wake-up is
	// lost between the pump's last look and this call.
	var err error
	cerr := rc.Control(func(fd uintptr) {
		op := syscall.EPOLL_CTL_MOD
		if p.epGen != r.gen {
			op = syscall.EPOLL_CTL_ADD
		}
		err = syscall.EpollCtl(r.epfd, op, int(fd), &ev)
		if err == syscall.ENOENT {
			err = syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if cerr != nil || err != nil {
		r.free = append(r.free, p.token-1)
		return false
	}
	p.epGen = r.gen
	r.parked[p.token-1] = p
	r.nparked++
	return true
}

// slot gives p a free slot of the table: its token is the slot's index + 1.
// An event for a slot's earlier pump can still be on its way; it then wakes
// the slot's new pump, which finds nothing to read and parks again.
func (r *reactor) slot(p *pump) {
	if n := len(r.free); n > 0 {
		p.token = r.free[n-1] + 1
		r.free = r.free[:n-1]
		return
	}
	r.parked = append(r.parked, nil)
	p.token = uint32(len(r.parked))
}

// at returns the pump parked under token, or nil.
func (r *reactor) at(token uint32) *pump {
	if token == 0 || int(token) > len(r.parked) {
		return nil
	}
	return r.parked[token-1]
}

// take removes the pump with token from the table and returns it, or nil.
func (r *reactor) take(token uint32) *pump {
	p := r.at(token)
	if p != nil {
		r.parked[token-1] = nil
		r.free = append(r.free, token-1)
		r.nparked--
	}
	return p
}

// holds reports whether p is parked here.
func (r *reactor) holds(p *pump) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.at(p.token) == p
}

// unpark takes p out of the reactor if it is parked there, and reports
// whether it was: the caller then owns the pump and must run it.
func (r *reactor) unpark(p *pump) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at(p.token) != p {
		return false
	}
	r.take(p.token)
	return true
}

func (r *reactor) startLocked() bool {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	r.epfd = epfd
	r.gen++
	go r.loop(epfd)
	return true
}

func (r *reactor) loop(epfd int) {
	events := make([]syscall.EpollEvent, 128)
	var ready []*pump
	idle := false // nothing was parked at the end of the last round either
	for {
		n, err := syscall.EpollWait(epfd, events, reactorLinger)
		if err != nil {
			n = 0 // EINTR: look again
		}
		ready = ready[:0]
		r.mu.Lock()
		for _, ev := range events[:n] {
			if p := r.take(uint32(ev.Fd)); p != nil {
				ready = append(ready, p)
			}
		}
		empty := r.nparked == 0
		stop := empty && idle && n == 0
		if stop {
			syscall.Close(epfd)
			r.epfd = -1
			r.parked, r.free = nil, nil // all empty: a peak's table goes too
		}
		r.mu.Unlock()
		idle = empty
		for _, p := range ready {
			go p.run(nil)
		}
		if stop {
			return
		}
	}
}
