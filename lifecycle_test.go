package wsproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = 150 * time.Millisecond
	tests := []struct {
		name     string
		traffic  func(c *wstest.Conn, stop <-chan struct{}) // keeps the tunnel busy until stop
		opts     []Option
		wantIdle bool
	}{
		{name: "no traffic", wantIdle: true},
		{name: "client messages", traffic: every(30*time.Millisecond, func(c *wstest.Conn) error {
			return c.WriteMessage(wsframe.OpText, []byte("tick"))
		})},
		{name: "client pings", traffic: every(30*time.Millisecond, func(c *wstest.Conn) error {
			return c.WriteFrame(wstest.Frame{Fin: true, Op: wsframe.OpPing, Payload: []byte("hb")})
		})},
		{name: "proxy pings do not count", opts: []Option{WithPingInterval(50 * time.Millisecond)}, wantIdle: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hook, closed := closeInfoHook()
			_, url := newProxy(t, []string{newEcho(t)}, append(tt.opts, WithIdleTimeout(idle), hook)...)
			c := dial(t, url)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			if tt.traffic != nil {
				wg.Add(1)
				go func() { defer wg.Done(); tt.traffic(c, stop) }()
			}
			code := make(chan int, 1)
			go func() { code <- c.ReadClose() }()
			select {
			case got := <-code:
				close(stop)
				wg.Wait()
				require.True(t, tt.wantIdle, "closed with %d although not idle", got)
				assert.Equal(t, wsframe.CloseGoingAway, got)
				ci := <-closed
				assert.Equal(t, "idle timeout", ci.Reason)
				assert.GreaterOrEqual(t, ci.Duration, idle)
			case <-time.After(6 * idle):
				close(stop)
				wg.Wait()
				assert.False(t, tt.wantIdle, "not closed after %v idle", 6*idle)
			}
		})
	}
}

// TestIdleTimeoutBackendTraffic: traffic in one direction only keeps the
// tunnel alive: idle means idle both ways.
func TestIdleTimeoutBackendTraffic(t *testing.T) {
	t.Parallel()
	backend, _ := closeRecorder(t, func(c *wstest.Conn) {
		for range 10 {
			if c.WriteMessage(wsframe.OpText, []byte("news")) != nil {
				return
			}
			time.Sleep(30 * time.Millisecond) // the pacing under test: busy one way, below the idle timeout
		}
	})
	_, url := newProxy(t, []string{backend}, WithIdleTimeout(150*time.Millisecond))
	c := dial(t, url)
	start := time.Now()
	for range 10 {
		_, msg, err := c.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, "news", string(msg))
	}
	// Once the backend stops, the idle timeout applies.
	assert.Equal(t, wsframe.CloseGoingAway, c.ReadClose())
	assert.Greater(t, time.Since(start), 300*time.Millisecond)
}

func every(d time.Duration, f func(c *wstest.Conn) error) func(*wstest.Conn, <-chan struct{}) {
	return func(c *wstest.Conn, stop <-chan struct{}) {
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if f(c) != nil {
					return
				}
			}
		}
	}
}

func TestMaxLifetime(t *testing.T) {
	t.Parallel()
	backend, backendCodes := closeRecorder(t, nil)
	hook, closed := closeInfoHook()
	_, url := newProxy(t, []string{backend}, WithMaxLifetime(100*time.Millisecond), hook)
	c := dial(t, url)
	assert.Equal(t, wsframe.CloseGoingAway, c.ReadClose())
	assert.Equal(t, wsframe.CloseGoingAway, <-backendCodes)
	ci := <-closed
	assert.Equal(t, "max lifetime", ci.Reason)
	assert.NoError(t, ci.Err)
}

// TestShutdownManyTunnels: 200 tunnels, some in the middle of a fragmented
// message and some in the middle of a frame. Every client and backend gets a
// 1001 close frame at a frame boundary; nobody sees a corrupted frame.
func TestShutdownManyTunnels(t *testing.T) {
	t.Parallel()
	const n = 200
	release := make(chan struct{})
	var scripts atomic.Int64
	backend, backendCodes := closeRecorder(t, func(c *wstest.Conn) {
		switch scripts.Add(1) % 3 {
		case 0:
			// First fragment of a message; the rest never comes.
			c.WriteFrame(wstest.Frame{Op: wsframe.OpText, Payload: []byte("frag-1")})
		case 1:
			// Half of a 1000-byte frame; the other half comes after the
			// proxy asked to close: the close must wait for it.
			frame := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: make([]byte, 1000)}, false)
			c.LockWrites()
			c.Conn.Write(frame[:500])
			go func() {
				defer c.UnlockWrites()
				<-release
				c.Conn.Write(frame[500:])
			}()
		}
	})
	p, url := newProxy(t, []string{backend}, WithCloseTimeout(5*time.Second))
	clients := make([]*wstest.Conn, n)
	for i := range clients {
		clients[i] = dial(t, url)
	}
	require.Eventually(t, func() bool { return scripts.Load() == n }, 5*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return p.Stats().Open == n }, 5*time.Second, 5*time.Millisecond)

	type result struct {
		frames []wstest.Frame
		err    error
	}
	results := make(chan result, n)
	for _, c := range clients {
		go func() {
			var r result
			for {
				f, err := c.ReadFrame()
				if err != nil {
					r.err = err
					break
				}
				r.frames = append(r.frames, f)
				if f.Op == wsframe.OpClose {
					c.WriteFrame(f) // answer, as a client does
					break
				}
			}
			results <- r
		}()
	}
	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownDone <- p.Shutdown(ctx)
	}()
	require.Eventually(t, func() bool { return closesQueued(p) }, 5*time.Second, time.Millisecond,
		"Shutdown queued its close frames behind the frames under way")
	close(release) // the half-sent frames complete now

	for range n {
		r := <-results
		require.NoError(t, r.err)
		last := r.frames[len(r.frames)-1]
		require.Equal(t, byte(wsframe.OpClose), last.Op)
		code, _ := wsframe.ParseClose(last.Payload)
		assert.Equal(t, uint16(wsframe.CloseGoingAway), code)
		for _, f := range r.frames[:len(r.frames)-1] {
			switch f.Op {
			case wsframe.OpText:
				assert.Equal(t, wstest.Frame{Op: wsframe.OpText, Payload: []byte("frag-1")}, f)
			case wsframe.OpBinary:
				assert.Equal(t, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: make([]byte, 1000)}, f)
			default:
				t.Errorf("unexpected frame %+v", f)
			}
		}
	}
	for range n {
		assert.Equal(t, wsframe.CloseGoingAway, <-backendCodes)
	}
	select {
	case err := <-shutdownDone:
		assert.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	assert.Equal(t, 0, p.Stats().Open)
}

// TestShutdownStalledMidFrame: a backend that stops in the middle of a
// frame cannot get a close frame in; the tunnel is cut after the close
// timeout and Shutdown still returns.
func TestShutdownStalledMidFrame(t *testing.T) {
	t.Parallel()
	// A backend that stalls in the middle of a frame.
	backend := scriptedSilentBackend(t, func(c *wstest.Conn) {
		frame := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: make([]byte, 100)}, false)
		c.Write(frame[:50])
	})
	p, url := newProxy(t, []string{backend}, WithCloseTimeout(100*time.Millisecond))
	c := dial(t, url)
	require.Eventually(t, func() bool { return p.Stats().BackendToClient.Bytes == 50 }, 5*time.Second, 5*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, p.Shutdown(ctx))
	// The client got the 50 bytes, then the connection ended: no close
	// frame was spliced into the frame.
	got, err := io.ReadAll(io.MultiReader(c.Buffered(), c.Conn))
	assert.NoError(t, err)
	assert.Len(t, got, 50)
}

func TestKeepalive(t *testing.T) {
	t.Parallel()
	t.Run("dead backend", func(t *testing.T) {
		t.Parallel()
		stuck := scriptedSilentBackend(t, nil) // answers no ping
		hook, closed := closeInfoHook()
		_, url := newProxy(t, []string{stuck}, WithPingInterval(100*time.Millisecond), hook)
		c := dial(t, url)
		start := time.Now()
		assert.Equal(t, wsframe.CloseInternalError, c.ReadClose())
		assert.Less(t, time.Since(start), 2*time.Second)
		assert.Equal(t, "backend not responding", (<-closed).Reason)
	})
	t.Run("dead client", func(t *testing.T) {
		t.Parallel()
		backend, codes := closeRecorder(t, nil)
		_, url := newProxy(t, []string{backend}, WithPingInterval(100*time.Millisecond))
		c := dial(t, url)
		_ = c // never reads, so never answers a ping
		select {
		case code := <-codes:
			assert.Equal(t, wsframe.CloseGoingAway, code)
		case <-time.After(3 * time.Second):
			t.Fatal("dead client not detected")
		}
	})
	t.Run("proxy pongs are consumed", func(t *testing.T) {
		t.Parallel()
		_, url := newProxy(t, []string{newEcho(t)}, WithPingInterval(100*time.Millisecond))
		c := dial(t, url)
		var pings, pongs, echoes int
		deadline := time.Now().Add(500 * time.Millisecond)
		require.NoError(t, c.WriteFrame(wstest.Frame{Fin: true, Op: wsframe.OpPing, Payload: []byte("mine")}))
		for time.Now().Before(deadline) {
			require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("x")))
			f, err := c.ReadFrame()
			require.NoError(t, err)
			switch f.Op {
			case wsframe.OpPing:
				pings++
				c.WriteFrame(wstest.Frame{Fin: true, Op: wsframe.OpPong, Payload: f.Payload})
			case wsframe.OpPong:
				pongs++
				assert.Equal(t, "mine", string(f.Payload), "only the pong to the client's own ping")
			case wsframe.OpText:
				echoes++
			}
			time.Sleep(5 * time.Millisecond) // pacing: the proxy's pings come between the echoes
		}
		assert.Positive(t, pings, "the proxy pings the client")
		assert.Equal(t, 1, pongs)
		assert.Positive(t, echoes)
	})
}

// TestExactCounts: the close hook reports exactly the bytes each side read
// and the messages and close codes each side sent.
func TestExactCounts(t *testing.T) {
	t.Parallel()
	hook, closed := closeInfoHook()
	p, url := newProxy(t, []string{newEcho(t)}, hook)
	c := dial(t, url)
	sizes := []int{0, 10, 200, 70_000}
	var up, down int64
	for _, n := range sizes {
		require.NoError(t, c.WriteMessage(wsframe.OpBinary, make([]byte, n)))
		up += int64(frameLen(n, true))
	}
	// One message in two fragments.
	require.NoError(t, c.WriteFrame(wstest.Frame{Op: wsframe.OpText, Payload: []byte("ab")}))
	require.NoError(t, c.WriteFrame(wstest.Frame{Fin: true, Op: wsframe.OpContinuation, Payload: []byte("c")}))
	up += int64(frameLen(2, true) + frameLen(1, true))
	for range len(sizes) + 2 {
		f, err := c.ReadFrame()
		require.NoError(t, err)
		down += int64(frameLen(len(f.Payload), false))
	}
	assert.Equal(t, up, p.Stats().ClientToBackend.Bytes)
	require.NoError(t, c.WriteClose(1000, "done"))
	up += int64(frameLen(6, true))
	f, err := c.ReadFrame()
	require.NoError(t, err)
	require.Equal(t, byte(wsframe.OpClose), f.Op)
	down += int64(frameLen(len(f.Payload), false))
	ci := <-closed
	assert.Equal(t, Traffic{Bytes: up, Messages: int64(len(sizes) + 1), CloseCode: 1000}, ci.ClientToBackend)
	assert.Equal(t, Traffic{Bytes: down, Messages: int64(len(sizes) + 1), CloseCode: 1000}, ci.BackendToClient)
	assert.NoError(t, ci.Err)
	s := p.Stats()
	assert.Equal(t, ci.ClientToBackend.Bytes, s.ClientToBackend.Bytes)
	assert.Equal(t, ci.BackendToClient.Messages, s.Targets[0].BackendToClient.Messages)
}

func frameLen(payload int, masked bool) int {
	n := 2 + payload
	switch {
	case payload > 0xffff:
		n += 8
	case payload >= 126:
		n += 2
	}
	if masked {
		n += 4
	}
	return n
}

func TestStatsMatchOpenTunnels(t *testing.T) {
	t.Parallel()
	a, b := newEcho(t), newEcho(t)
	p, url := newProxy(t, []string{a, b})
	var conns []*wstest.Conn
	for range 6 {
		conns = append(conns, dial(t, url))
	}
	// Open counts a tunnel from the start of its handshake; Total counts it
	// once the client has its 101, which may be a moment after the client
	// read it.
	require.Eventually(t, func() bool { return p.Stats().Total == 6 }, 5*time.Second, time.Millisecond)
	s := p.Stats()
	assert.Equal(t, 6, s.Open)
	assert.Equal(t, 3, s.Targets[0].Open)
	assert.Equal(t, 3, s.Targets[1].Open)
	for _, c := range conns[:4] {
		c.WriteClose(1000, "")
		c.ReadClose()
		c.Close()
	}
	require.Eventually(t, func() bool { return p.Stats().Open == 2 }, 5*time.Second, 5*time.Millisecond)
	s = p.Stats()
	assert.Equal(t, 2, s.Targets[0].Open+s.Targets[1].Open)
	assert.Equal(t, int64(6), s.Targets[0].Total+s.Targets[1].Total)
}

func TestHalfCloseTimeout(t *testing.T) {
	t.Parallel()
	backend := neverHalfCloses(t)
	hook, closed := closeInfoHook()
	_, url := newProxy(t, []string{backend}, WithHalfCloseTimeout(100*time.Millisecond), hook)
	c := dial(t, url)
	require.NoError(t, c.Conn.(*net.TCPConn).CloseWrite())
	start := time.Now()
	_, err := c.ReadFrame()
	assert.Error(t, err)
	assert.Less(t, time.Since(start), 2*time.Second)
	assert.Equal(t, "half-close timeout", (<-closed).Reason)
}

func TestMaxMessageSize(t *testing.T) {
	t.Parallel()
	backend, codes := closeRecorder(t, nil)
	hook, closed := closeInfoHook()
	_, url := newProxy(t, []string{backend}, WithMaxMessageSize(1000), hook)
	c := dial(t, url)
	require.NoError(t, c.WriteMessage(wsframe.OpText, make([]byte, 1000)))
	// Fragments add up: 600 + 600 is over the limit.
	require.NoError(t, c.WriteFrame(wstest.Frame{Op: wsframe.OpBinary, Payload: make([]byte, 600)}))
	require.NoError(t, c.WriteFrame(wstest.Frame{Fin: true, Op: wsframe.OpContinuation, Payload: make([]byte, 600)}))
	assert.Equal(t, wsframe.CloseMessageTooBig, c.ReadClose())
	assert.Equal(t, wsframe.CloseMessageTooBig, <-codes)
	ci := <-closed
	assert.Equal(t, "message too big", ci.Reason)
	assert.Equal(t, int64(1), ci.ClientToBackend.Messages, "the message within the limit passed")
}

// TestProtocolErrorCloses: an unmasked frame from a client breaks RFC 6455
// §5.1; both sides get 1002.
func TestProtocolErrorCloses(t *testing.T) {
	t.Parallel()
	backend, codes := closeRecorder(t, nil)
	_, url := newProxy(t, []string{backend})
	c := dial(t, url)
	_, err := c.Conn.Write(wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("bare")}, false))
	require.NoError(t, err)
	assert.Equal(t, wsframe.CloseProtocolError, c.ReadClose())
	assert.Equal(t, wsframe.CloseProtocolError, <-codes)
}

// TestPeerResetIsReported: when one side's connection breaks (a reset, as
// when a process crashes), the other side gets a close frame instead of a
// bare TCP close: 1011 for a client whose backend crashed, 1001 for a
// backend whose client vanished.
func TestPeerResetIsReported(t *testing.T) {
	t.Parallel()
	t.Run("backend crashes", func(t *testing.T) {
		t.Parallel()
		crash := make(chan struct{})
		backend := upgradeBackend(t, func(c *wstest.Conn) {
			<-crash
			c.Conn.(*net.TCPConn).SetLinger(0) // the fixture's Close sends a reset
		})
		_, url := newProxy(t, []string{backend})
		c := dial(t, url)
		close(crash)
		assert.Equal(t, wsframe.CloseInternalError, c.ReadClose())
	})
	t.Run("client vanishes", func(t *testing.T) {
		t.Parallel()
		backend, codes := closeRecorder(t, nil)
		_, url := newProxy(t, []string{backend})
		c := dial(t, url)
		c.Conn.(*net.TCPConn).SetLinger(0)
		c.Close()
		select {
		case code := <-codes:
			assert.Equal(t, wsframe.CloseGoingAway, code)
		case <-time.After(5 * time.Second):
			t.Fatal("the backend heard nothing")
		}
	})
}

// TestCloseWhileBothWaysBlocked: neither peer reads, both keep writing, so
// each pump ends up blocked writing to the other side while it holds its
// own socket's read lock (inside rawReader for small frames, in splice for
// large ones). Close still ends the tunnel at once: teardown must never
// wait on a write that cannot finish.
func TestCloseWhileBothWaysBlocked(t *testing.T) {
	t.Parallel()
	for _, size := range []int{1 << 10, 64 << 10} {
		t.Run(fmt.Sprintf("%dB", size), func(t *testing.T) {
			t.Parallel()
			closeWhileBlocked(t, size)
		})
	}
}

func closeWhileBlocked(t *testing.T, size int) {
	t.Helper()
	release := make(chan struct{})
	defer close(release)
	flood := func(c *wstest.Conn, written *atomic.Int64) {
		msg := make([]byte, size)
		for {
			if err := c.WriteMessage(wsframe.OpBinary, msg); err != nil {
				return
			}
			written.Add(int64(len(msg)))
		}
	}
	var backWritten atomic.Int64
	backend := upgradedBackend(t, nil, func(c *wstest.Conn) { // no deadline: it floods until released
		go flood(c, &backWritten)
		<-release
	})
	p, url := newProxy(t, []string{backend})
	c := dial(t, url)
	c.SetDeadline(time.Time{})
	var clientWritten atomic.Int64
	go flood(c, &clientWritten)

	// Wait until both floods stall: every buffer on the way is full. What
	// shows it is that the counts stop growing, so the check needs a span
	// of time; the kernel's "send buffer full" (waitSendQueueFull) would
	// also be true of a proxy that is only slow to be scheduled.
	stalled := func() bool {
		a, b := clientWritten.Load(), backWritten.Load()
		time.Sleep(200 * time.Millisecond)
		return a > 0 && b > 0 && a == clientWritten.Load() && b == backWritten.Load()
	}
	require.Eventually(t, stalled, 10*time.Second, time.Millisecond, "the floods never stalled")

	done := make(chan struct{})
	go func() {
		p.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs while both pumps are blocked writing")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c.Conn)
	assert.NotErrorIs(t, err, os.ErrDeadlineExceeded, "the client connection is closed")
}

// TestShutdownWaitsForOnClose: Shutdown returns only once the OnClose hook
// of every tunnel it closed has returned, so that what a hook records (a
// metric, an audit line) is there when Shutdown returns.
func TestShutdownWaitsForOnClose(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}), make(chan struct{})
	p, url := newProxy(t, []string{newEcho(t)}, WithHooks(Hooks{OnClose: func(CloseInfo) {
		close(entered)
		<-release
	}}))
	c := dial(t, url)
	go c.ReadMessage() // answers the proxy's close frame
	done := make(chan error, 1)
	go func() { done <- p.Shutdown(context.Background()) }()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("OnClose was not called")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while OnClose was running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after OnClose")
	}
}
