package evloop

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// listen returns a loopback listener that the test closes.
func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dupServer returns a loopback connection whose server end is a raw
// descriptor (owned by the caller) and whose client end a net.Conn.
func dupServer(t testing.TB) (*net.TCPConn, int) {
	t.Helper()
	c, s := wstest.TCPPair(t)
	fd, err := DupConn(s)
	require.NoError(t, err)
	s.Close()
	return c, fd
}

// serve accepts connections until the test ends and runs handle on each in
// its own goroutine, closing the connection after; the test waits for all.
func serve(t testing.TB, handle func(*net.TCPConn)) string {
	t.Helper()
	ln := listen(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echoBackend echoes every byte and passes a half-close back: once the
// client has shut down writing and everything was echoed, it does too.
func echoBackend(t testing.TB) string {
	return serve(t, func(c *net.TCPConn) {
		if _, err := io.Copy(c, c); err == nil {
			c.CloseWrite()
			io.Copy(io.Discard, c) // until the relay closes
		}
	})
}

// waitFor polls cond until it holds or d has passed, and reports which.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// testTimeout bounds every blocking step of a test, so that a bug shows as
// a failure rather than a hang.
const testTimeout = 30 * time.Second
