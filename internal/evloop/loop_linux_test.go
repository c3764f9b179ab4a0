package evloop

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRegSize guards the registration's size: every idle socket of the
// loop driver carries one inside its own value (Register), so a byte more
// here is a byte more per socket, and 40 keeps the tunnel package's pair of
// sockets in its size class.
func TestRegSize(t *testing.T) {
	assert.LessOrEqual(t, unsafe.Sizeof(Reg{}), uintptr(40))
}

// post runs f on l and waits for it.
func post(t testing.TB, l *Loop, f func()) {
	t.Helper()
	done := make(chan struct{})
	require.NoError(t, l.Post(func() { f(); close(done) }))
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("a posted func did not run")
	}
}

// nop is a handler for sockets whose events do not matter.
var nop = HandlerFunc(func(*Reg, Events) {})

func TestPostRunsInOrderPerGoroutine(t *testing.T) {
	t.Parallel()
	l, err := NewLoop()
	require.NoError(t, err)
	const posters, each = 4, 1000
	var got [posters][]int // appended on the loop only: no lock, as the race detector checks
	var wg sync.WaitGroup
	for p := range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				assert.NoError(t, l.Post(func() { got[p] = append(got[p], i) }))
			}
		}()
	}
	wg.Wait()
	post(t, l, func() {})
	for p := range posters {
		want := make([]int, each)
		for i := range want {
			want[i] = i
		}
		assert.Equal(t, want, got[p], "poster %d", p)
	}
}

func TestPostFromTheLoopRunsAfterward(t *testing.T) {
	t.Parallel()
	l, err := NewLoop()
	require.NoError(t, err)
	var order []string
	done := make(chan struct{})
	require.NoError(t, l.Post(func() {
		order = append(order, "outer start")
		assert.NoError(t, l.Post(func() {
			order = append(order, "inner")
			close(done)
		}))
		order = append(order, "outer end")
	}))
	<-done
	assert.Equal(t, []string{"outer start", "outer end", "inner"}, order)
}

// Handlers and posted funcs share one goroutine: state they both touch
// needs no lock. The race detector fails this test if they ever overlap.
func TestHandlersAndPostsNeverOverlap(t *testing.T) {
	t.Parallel()
	l, err := NewLoop()
	require.NoError(t, err)
	c, fd := dupServer(t)
	var shared int
	buf := make([]byte, 4096)
	r, err := l.Add(fd, HandlerFunc(func(r *Reg, ev Events) {
		shared++
		for {
			if _, err := Read(r.Fd(), buf); err != nil {
				return
			}
		}
	}))
	require.NoError(t, err)
	defer r.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 500 {
			c.Write([]byte("tick"))
		}
	}()
	go func() {
		defer wg.Done()
		for range 500 {
			assert.NoError(t, l.Post(func() { shared++ }))
		}
	}()
	wg.Wait()
	var n int
	post(t, l, func() { n = shared })
	assert.GreaterOrEqual(t, n, 501) // every post, at least one event
}

// loopGoroutines returns the stacks of goroutines serving loops.
func loopGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "evloop.(*Loop).serve(") {
			out = append(out, g)
		}
	}
	return out
}

// An idle loop is a goroutine parked in the netpoller (state "IO wait",
// waiting in runtime_pollWait), not one blocked in a system call, and it
// uses no CPU. Not parallel, so that the CPU it measures is the idle
// process's.
func TestIdleLoopIsParkedInTheNetpoller(t *testing.T) {
	l, err := NewLoop()
	require.NoError(t, err)
	_, fd := dupServer(t)
	r, err := l.Add(fd, nop)
	require.NoError(t, err)
	defer r.Close()

	parked := func() bool {
		gs := loopGoroutines()
		for _, g := range gs {
			if !strings.Contains(g, "[IO wait") || !strings.Contains(g, "internal/poll.runtime_pollWait") {
				return false
			}
		}
		return len(gs) > 0
	}
	require.True(t, waitFor(testTimeout, parked), "loop goroutines: %q", loopGoroutines())

	const window = 200 * time.Millisecond
	before := cpuTime(t)
	time.Sleep(window) // the measurement itself, not ordering
	used := cpuTime(t) - before
	t.Logf("process CPU while the loop idled for %v: %v", window, used)
	assert.Less(t, used, window/10, "an idle loop should not spin")
	assert.True(t, parked(), "still parked after the window: %q", loopGoroutines())
}

// cpuTime is the process's user plus system CPU time so far.
func cpuTime(t testing.TB) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A loop with nothing registered stops, giving back its goroutine and both
// descriptors, and starts again at the next Add. The descriptors checked
// are this loop's own: loops of earlier tests (or of an earlier -count
// round) may still be lingering towards their stop, so the process's count
// moves on its own. Not parallel, so that no other test's new loop takes
// the numbers this one gave back.
func TestLoopStopsWhenIdleAndRestarts(t *testing.T) {
	l := &Loop{linger: time.Millisecond}
	stopped := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.run == nil
	}
	for round := range 2 {
		_, fd := dupServer(t)
		writable := make(chan struct{}, 1)
		r, err := l.Add(fd, HandlerFunc(func(_ *Reg, ev Events) {
			if ev&Writable != 0 {
				select {
				case writable <- struct{}{}:
				default:
				}
			}
		}))
		require.NoError(t, err, "round %d", round)
		select {
		case <-writable:
		case <-time.After(testTimeout):
			t.Fatalf("round %d: no event for a fresh socket", round)
		}
		l.mu.Lock()
		run := l.run
		l.mu.Unlock()
		require.NotNil(t, run, "round %d: stopped with a registration", round)
		assert.Equal(t, "anon_inode:[eventpoll]", fdLink(run.epfd), "round %d: the loop's epoll descriptor", round)
		assert.Equal(t, "anon_inode:[eventfd]", fdLink(run.efd), "round %d: the loop's eventfd", round)
		r.Close()
		require.True(t, waitFor(testTimeout, stopped), "round %d: the loop did not stop", round)
		assert.True(t, waitFor(testTimeout, func() bool {
			return fdLink(run.epfd) != "anon_inode:[eventpoll]" && fdLink(run.efd) != "anon_inode:[eventfd]"
		}), "round %d: the loop's descriptors %d and %d are still open", round, run.epfd, run.efd)
	}
}

// fdLink is what /proc/self/fd says descriptor fd is, or "" if it is not
// open.
func fdLink(fd int) string {
	link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	return link
}

// A loop used for posts alone stops too, after its last post.
func TestPostOnlyLoopStops(t *testing.T) {
	t.Parallel()
	l := &Loop{linger: time.Millisecond}
	for range 3 {
		post(t, l, func() {})
	}
	assert.True(t, waitFor(testTimeout, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.run == nil
	}))
}

// The data of every epoll event names a slot and a generation: once a
// registration is closed, an event for it that is still on its way finds
// its slot empty or owned by a newer registration of another generation,
// and reaches nobody.
func TestStaleEventReachesNobody(t *testing.T) {
	t.Parallel()
	l, err := NewLoop()
	require.NoError(t, err)
	_, fd1 := dupServer(t)
	old, err := l.Add(fd1, nop)
	require.NoError(t, err)
	old.Close()
	post(t, l, func() {}) // the close has run
	_, fd2 := dupServer(t)
	fresh, err := l.Add(fd2, nop)
	require.NoError(t, err)
	defer fresh.Close()
	require.Equal(t, old.slot, fresh.slot, "the slot is reused")

	l.mu.Lock()
	defer l.mu.Unlock()
	assert.Nil(t, l.lookupLocked(old.slot, old.gen), "the closed registration's event")
	assert.Same(t, fresh, l.lookupLocked(fresh.slot, fresh.gen))
}

// Two sockets become readable while the loop is busy, so that one
// epoll_wait returns both. Whichever handler runs first closes the other:
// the other's event, in the same batch, must not reach its handler.
func TestCloseByAnEarlierHandlerOfTheBatch(t *testing.T) {
	t.Parallel()
	l, err := NewLoop()
	require.NoError(t, err)
	ca, fda := dupServer(t)
	cb, fdb := dupServer(t)
	var regs [2]*Reg
	var ran []int
	handler := func(i int) Handler {
		return HandlerFunc(func(_ *Reg, ev Events) {
			if ev&Readable == 0 {
				return
			}
			ran = append(ran, i)
			regs[1-i].Close()
		})
	}
	post(t, l, func() {
		var err error
		regs[0], err = l.Add(fda, handler(0))
		assert.NoError(t, err)
		regs[1], err = l.Add(fdb, handler(1))
		assert.NoError(t, err)
	})
	require.NotNil(t, regs[0])
	require.NotNil(t, regs[1])
	defer regs[0].Close()
	defer regs[1].Close()
	post(t, l, func() {
		// On the loop, so nothing is dispatched until both have data.
		ca.Write([]byte("a"))
		cb.Write([]byte("b"))
		assert.True(t, waitFor(testTimeout, func() bool { return hasData(fda) && hasData(fdb) }))
	})
	post(t, l, func() {}) // a round after the batch
	assert.Len(t, ran, 1, "handlers run: %v", ran)
}

// hasData reports whether the socket has bytes to read, without taking
// them.
func hasData(fd int) bool {
	var b [1]byte
	n, _, err := syscall.Recvfrom(fd, b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err == nil && n == 1
}

// Registrations are closed from another goroutine while their sockets
// receive, and new sockets take the freed descriptor numbers at once. Each
// client writes only its own mark, so a handler that ever read a socket
// that is not its own (a reused number) sees a foreign byte, and one whose
// descriptor was closed under it sees EBADF.
func TestCloseDuringTrafficNeverReachesAReusedFd(t *testing.T) {
	t.Parallel()
	l, err := NewLoop()
	require.NoError(t, err)
	var foreign, badErrs, reused, read atomic.Int64
	type conn struct {
		c    net.Conn
		reg  *Reg
		done chan struct{}
	}
	closedFds := map[int]bool{}
	open := func(mark byte) conn {
		c, fd := dupServer(t)
		if closedFds[fd] {
			reused.Add(1)
		}
		buf := make([]byte, 512)
		r, err := l.Add(fd, HandlerFunc(func(r *Reg, ev Events) {
			for {
				n, err := Read(r.Fd(), buf)
				read.Add(int64(n))
				for _, b := range buf[:n] {
					if b != mark {
						foreign.Add(1)
					}
				}
				if err != nil {
					if !errors.Is(err, ErrWouldBlock) && !errors.Is(err, io.EOF) {
						badErrs.Add(1)
					}
					return
				}
			}
		}))
		require.NoError(t, err)
		done := make(chan struct{})
		go func() {
			defer close(done)
			msg := bytes.Repeat([]byte{mark}, 100)
			for {
				if _, err := c.Write(msg); err != nil {
					return
				}
				// Paced: with every P always busy, Go polls the network
				// only every 10ms, and each new connection would wait.
				time.Sleep(20 * time.Microsecond)
			}
		}()
		return conn{c, r, done}
	}
	const live, churn = 8, 300
	conns := make([]conn, live)
	marks := make([]byte, live) // each live socket's own
	for i := range conns {
		marks[i] = byte(i)
		conns[i] = open(marks[i])
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range churn {
		k := rng.IntN(live)
		closedFds[conns[k].reg.Fd()] = true
		conns[k].reg.Close()
		conns[k].c.Close()
		<-conns[k].done
		marks[k] += live // stays apart from the others' modulo live
		conns[k] = open(marks[k])
	}
	for _, c := range conns {
		c.reg.Close()
		c.c.Close()
		<-c.done
	}
	post(t, l, func() {})
	assert.Zero(t, foreign.Load(), "bytes read from another socket")
	assert.Zero(t, badErrs.Load(), "reads that failed (a descriptor closed under a handler)")
	assert.Positive(t, reused.Load(), "no descriptor number was reused: the test proved nothing")
	assert.Positive(t, read.Load())
	t.Logf("%d of %d new sockets took a number just closed; %d bytes read", reused.Load(), churn, read.Load())
}

func TestAddFailureLeavesTheFdToTheCaller(t *testing.T) {
	t.Parallel()
	l, err := NewLoop()
	require.NoError(t, err)
	f, err := os.CreateTemp(t.TempDir(), "regular")
	require.NoError(t, err)
	defer f.Close()
	_, err = l.Add(int(f.Fd()), nop)
	assert.ErrorIs(t, err, syscall.EPERM) // epoll does not take regular files
	_, err = f.Write([]byte("still open"))
	assert.NoError(t, err)
	assert.Zero(t, l.load.Load())
}

func TestGroupPicksTheLeastLoadedAndStartsLoopsLazily(t *testing.T) {
	t.Parallel()
	g, err := NewGroup(3)
	require.NoError(t, err)
	var regs []*Reg
	defer func() {
		for _, r := range regs {
			r.Close()
		}
	}()
	for i, want := range []int{0, 1, 2, 0, 1} {
		l := g.Pick()
		assert.Same(t, &g.loops[want], l, "pick %d", i)
		_, fd := dupServer(t)
		r, err := l.Add(fd, nop)
		require.NoError(t, err)
		regs = append(regs, r)
		if i == 0 {
			running := func(l *Loop) bool { l.mu.Lock(); defer l.mu.Unlock(); return l.run != nil }
			assert.True(t, running(&g.loops[0]))
			assert.False(t, running(&g.loops[1]), "a loop nobody picked has started")
		}
	}
	regs[0].Close() // loop 0 now has one, loop 1 two, loop 2 one
	post(t, &g.loops[0], func() {})
	assert.Same(t, &g.loops[0], g.Pick())
}

func TestGroupSize(t *testing.T) {
	t.Parallel()
	g, err := NewGroup(0)
	require.NoError(t, err)
	assert.Len(t, g.loops, max(1, runtime.GOMAXPROCS(0)/2))
}

func TestEventsFromEpollBits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give uint32
		want Events
	}{
		{"data", syscall.EPOLLIN, Readable},
		{"room", syscall.EPOLLOUT, Writable},
		{"data and room", syscall.EPOLLIN | syscall.EPOLLOUT, Readable | Writable},
		{"fin", syscall.EPOLLIN | syscall.EPOLLRDHUP, Readable | ReadClosed},
		{"reset", syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR,
			Readable | Writable | ReadClosed | HangUp | Error},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, events(tt.give))
		})
	}
}
