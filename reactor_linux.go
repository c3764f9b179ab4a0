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
// There is one reactor per process. It exists only while something is
// parked: its goroutine, epoll instance and wake-up pipe go away when the
// last pump leaves, so an idle process (or a test's leak check) sees none.
type reactor struct {
	mu     sync.Mutex
	epfd   int // -1 when not running
	wake   [2]int
	gen    uint64 // counts epoll instances, so a pump knows if its registration is still there
	seq    uint64
	parked map[uint64]*pump
}

var theReactor = reactor{epfd: -1}

const wakeToken = 0 // event data of the wake-up pipe; pump tokens start at 1

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
		r.stopIfIdleLocked()
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
	r.stopIfIdleLocked()
	return true
}

func (r *reactor) startLocked() bool {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	var wake [2]int
	if err := syscall.Pipe2(wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return false
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN} // Fd, Pad = wakeToken
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, wake[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(wake[0])
		syscall.Close(wake[1])
		return false
	}
	r.epfd, r.wake = epfd, wake
	r.gen++
	if r.parked == nil {
		r.parked = make(map[uint64]*pump)
	}
	go r.loop(epfd, wake[0], r.gen)
	return true
}

// stopIfIdleLocked wakes the loop so it can go away when nothing is parked.
func (r *reactor) stopIfIdleLocked() {
	if len(r.parked) == 0 && r.epfd >= 0 {
		syscall.Write(r.wake[1], []byte{1})
	}
}

func (r *reactor) loop(epfd, wake int, gen uint64) {
	events := make([]syscall.EpollEvent, 128)
	var ready []*pump
	for {
		n, err := syscall.EpollWait(epfd, events, -1)
		if err != nil && err != syscall.EINTR {
			n = 0
		}
		ready = ready[:0]
		r.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if token == wakeToken {
				var b [64]byte
				syscall.Read(wake, b[:])
				continue
			}
			if p := r.parked[token]; p != nil {
				delete(r.parked, token)
				ready = append(ready, p)
			}
		}
		stop := len(r.parked) == 0 && r.gen == gen
		if stop {
			syscall.Close(epfd)
			syscall.Close(r.wake[0])
			syscall.Close(r.wake[1])
			r.epfd = -1
		}
		r.mu.Unlock()
		for _, p := range ready {
			go p.run()
		}
		if stop {
			return
		}
	}
}
