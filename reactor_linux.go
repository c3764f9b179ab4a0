package wsproxy

import (
	"sync"
	"syscall"
)

// The reactor holds the pumps of idle tunnels without a goroutine each: a
// parked pump's socket is registered, one-shot, with an epoll instance, and
// when it becomes readable the reactor starts a new goroutine for the pump.
// A busy pump never parks, so its bytes keep the direct path through Go's
// netpoller; only a pump that found nothing to read for parkAfter (or a
// new tunnel with nothing to read yet) pays one extra hop when bytes come.
//
// There is one reactor per process. It exists only while it has work: its
// goroutine and epoll instance go away once nothing has been parked for a
// whole reactorLinger, so an idle process (or a test's leak check) sees
// none, while a stream of short-lived tunnels does not create and destroy
// it for each one.
type reactor struct {
	mu     sync.Mutex
	epfd   int    // -1 when not running
	gen    uint64 // counts epoll instances, so a pump knows if its registration is still there
	seq    uint64 // pump tokens; 0 means none yet
	parked map[uint64]*pump
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
	if p.token == 0 {
		r.seq++
		p.token = r.seq
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	ev.Fd, ev.Pad = int32(p.token), int32(p.token>>32)
	// Registering a socket that already has bytes fires at once (epoll is
	// level-triggered for the check done on ADD and MOD), so no wake-up is
	// lost between the pump's last look and this call.
	var err error
	cerr := p.rawSrc.Control(func(fd uintptr) {
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
		return false
	}
	p.epGen = r.gen
	r.parked[p.token] = p
	return true
}

// unpark takes p out of the reactor if it is parked there, and reports
// whether it was: the caller then owns the pump and must run it.
func (r *reactor) unpark(p *pump) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p.token == 0 || r.parked[p.token] != p {
		return false
	}
	delete(r.parked, p.token)
	return true
}

func (r *reactor) startLocked() bool {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	r.epfd = epfd
	r.gen++
	if r.parked == nil {
		r.parked = make(map[uint64]*pump)
	}
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
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if p := r.parked[token]; p != nil {
				delete(r.parked, token)
				ready = append(ready, p)
			}
		}
		empty := len(r.parked) == 0
		stop := empty && idle && n == 0
		if stop {
			syscall.Close(epfd)
			r.epfd = -1
		}
		r.mu.Unlock()
		idle = empty
		for _, p := range ready {
			go p.run()
		}
		if stop {
			return
		}
	}
}
