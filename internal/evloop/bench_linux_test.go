package evloop

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkRelayEcho measures 128-byte round trips from a client through a
// relay to an echo backend and back, with the relay on evloop and, for
// comparison, as two goroutines with io.Copy per tunnel, and with no relay
// at all ("direct"), whose cost the other two include: client and backend
// run in the same process. cpu-ns/op is the process's user plus system
// time per round trip (getrusage), steadier than wall time on a shared
// machine; the relay's own cost is the difference to direct.
func BenchmarkRelayEcho(b *testing.B) {
	for _, conns := range []int{1, 50} {
		for _, mode := range []string{"direct", "evloop", "goroutines"} {
			b.Run(fmt.Sprintf("%s/conns=%d", mode, conns), func(b *testing.B) {
				backend := echoBackend(b)
				addr := backend
				switch mode {
				case "evloop":
					g, err := NewGroup(0)
					require.NoError(b, err)
					addr = startRelay(b, g, backend).addr
				case "goroutines":
					addr = startCopyRelay(b, backend)
				}
				benchEcho(b, addr, conns)
			})
		}
	}
}

// benchEcho runs the round trips on conns connections at once.
func benchEcho(b *testing.B, addr string, conns int) {
	b.ReportAllocs()
	b.SetBytes(2 * 128)
	b.SetParallelism((conns + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	start := cpuTime(b)
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		msg := make([]byte, 128)
		got := make([]byte, 128)
		for pb.Next() {
			if _, err := c.Write(msg); err != nil {
				b.Error(err)
				return
			}
			if _, err := io.ReadFull(c, got); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

// startCopyRelay is the goroutine design evloop replaces: per tunnel two
// goroutines, each an io.Copy that passes the end of the stream on.
func startCopyRelay(t testing.TB, backend string) string {
	return serve(t, func(c *net.TCPConn) {
		bc, err := net.DialTimeout("tcp", backend, testTimeout)
		if err != nil {
			return
		}
		defer bc.Close()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(bc, c)
			bc.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(c, bc)
		c.CloseWrite()
		wg.Wait()
	})
}

// BenchmarkPostWake measures a Post from another goroutine to a parked
// loop until the func has run: the eventfd write, the netpoller waking the
// loop's goroutine, the epoll_wait that finds the eventfd.
func BenchmarkPostWake(b *testing.B) {
	l, err := NewLoop()
	require.NoError(b, err)
	_, fd := dupServer(b)
	r, err := l.Add(fd, nop) // keeps the loop from stopping
	require.NoError(b, err)
	defer r.Close()
	done := make(chan struct{}, 1)
	f := func() { done <- struct{}{} }
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		if err := l.Post(f); err != nil {
			b.Fatal(err)
		}
		<-done
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}
