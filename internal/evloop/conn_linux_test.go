package evloop

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wstest"
)

// dialTest dials addr (host:port) into a new loop and closes the Conn when
// the test ends.
func dialTest(t *testing.T, addr string) *Conn {
	t.Helper()
	l, err := NewLoop()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, l, netip.MustParseAddrPort(addr), 0)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDialReadWrite(t *testing.T) {
	t.Parallel()
	c := dialTest(t, echoBackend(t))
	assert.Equal(t, c.RemoteAddrPort().String(), c.RemoteAddr().String())
	require.NotNil(t, c.LocalAddr())
	assert.Equal(t, "127.0.0.1", c.LocalAddr().(*net.TCPAddr).IP.String())

	// More than the socket buffers hold at once: Write waits for room, and
	// Read for bytes, through the loop's events.
	msg := []byte(strings.Repeat("0123456789abcdef", 1<<16))
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.CloseWrite()
		}
		done <- err
	}()
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.NoError(t, <-done)
	assert.Equal(t, msg, got)
}

func TestDialSocketOptions(t *testing.T) {
	t.Parallel()
	c := dialTest(t, echoBackend(t))
	fd := c.reg.Fd()
	for _, tt := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"TCP_NODELAY", syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 15},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 15},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, 9},
	} {
		got, err := syscall.GetsockoptInt(fd, tt.level, tt.opt)
		require.NoError(t, err, tt.name)
		assert.Equal(t, tt.want, got, tt.name)
	}
	flags, err := fcntl(fd, syscall.F_GETFL)
	require.NoError(t, err)
	assert.NotZero(t, flags&syscall.O_NONBLOCK, "non-blocking")
	flags, err = fcntl(fd, syscall.F_GETFD)
	require.NoError(t, err)
	assert.NotZero(t, flags&syscall.FD_CLOEXEC, "close-on-exec")
}

func fcntl(fd, cmd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func TestDialIPv6(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	defer ln.Close()
	go func() {
		if s, err := ln.Accept(); err == nil {
			s.Write([]byte("hi"))
			s.Close()
		}
	}()
	c := dialTest(t, ln.Addr().String())
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, "hi", string(got))
}

func TestDialRefused(t *testing.T) {
	t.Parallel()
	ln := listen(t)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	l, err := NewLoop()
	require.NoError(t, err)
	_, err = Dial(context.Background(), l, addr, 0)
	var oe *net.OpError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, "dial", oe.Op)
	assert.Equal(t, addr.String(), oe.Addr.String())
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
}

func TestDialContextEndsTheConnect(t *testing.T) {
	t.Parallel()
	addr := wstest.Unanswered(t)
	l, err := NewLoop()
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = Dial(ctx, l, addr, 0)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())

	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		time.Sleep(10 * time.Millisecond)
		cancel()
	}()
	_, err = Dial(ctx, l, addr, 0)
	assert.ErrorIs(t, err, context.Canceled)

	_, err = Dial(ctx, l, addr, 0) // ended before: no socket at all
	assert.ErrorIs(t, err, context.Canceled)
}

// Not parallel: it counts the process's sockets.
func TestDialLeavesNoSocket(t *testing.T) {
	up := netip.MustParseAddrPort(echoBackend(t))
	silent := wstest.Unanswered(t)
	ln := listen(t)
	refusing := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	l, err := NewLoop()
	require.NoError(t, err)
	before := wstest.OpenFDs(t, wstest.IsSocket)
	for range 20 {
		_, err := Dial(context.Background(), l, refusing, 0)
		require.Error(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err = Dial(ctx, l, silent, 0)
		cancel()
		require.Error(t, err)
		c, err := Dial(context.Background(), l, up, 0)
		require.NoError(t, err)
		require.NoError(t, c.Close())
	}
	// The loop closes the descriptors of closed registrations.
	assert.True(t, waitFor(testTimeout, func() bool { return wstest.OpenFDs(t, wstest.IsSocket) <= before }),
		"%d sockets before, %d after", before, wstest.OpenFDs(t, wstest.IsSocket))
}

func TestConnDeadlines(t *testing.T) {
	t.Parallel()
	silent := serve(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	c := dialTest(t, silent)

	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Millisecond)))
	_, err := c.Read(make([]byte, 10))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())

	// A deadline moved into the past wakes a waiting Read, as a context's
	// end does in a handshake.
	require.NoError(t, c.SetReadDeadline(time.Time{}))
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		read <- err
	}()
	time.Sleep(5 * time.Millisecond)
	require.NoError(t, c.SetDeadline(time.Unix(1, 0)))
	assert.ErrorIs(t, <-read, os.ErrDeadlineExceeded)
	_, err = c.Write([]byte("x"))
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)

	require.NoError(t, c.SetDeadline(time.Time{}))
	n, err := c.Write([]byte("x"))
	assert.NoError(t, err)
	assert.Equal(t, 1, n)
}

func TestConnCloseWakesRead(t *testing.T) {
	t.Parallel()
	silent := serve(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	c := dialTest(t, silent)
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		read <- err
	}()
	time.Sleep(5 * time.Millisecond)
	require.NoError(t, c.Close())
	assert.ErrorIs(t, <-read, net.ErrClosed)
	assert.NoError(t, c.Close(), "a second Close")
	_, err := c.Write([]byte("x"))
	assert.ErrorIs(t, err, net.ErrClosed)
	assert.Nil(t, c.LocalAddr())
}

func TestConnPeerCloses(t *testing.T) {
	t.Parallel()
	addr := serve(t, func(c *net.TCPConn) { c.Write([]byte("bye")) })
	c := dialTest(t, addr)
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, "bye", string(got))
}

// Adopt hands the socket over to another handler in the same loop, with
// the registration as it is: the descriptor stays, the Conn lets go.
func TestAdopt(t *testing.T) {
	t.Parallel()
	addr := serve(t, func(c *net.TCPConn) {
		c.Write([]byte("early"))
		c.Read(make([]byte, 1))
		c.Write([]byte("late"))
		io.Copy(io.Discard, c)
	})
	c := dialTest(t, addr)
	fd := c.reg.Fd()
	// "early" arrives, and its event goes to the Conn.
	require.True(t, waitFor(testTimeout, func() bool { return hasData(fd) }))

	got := make(chan string, 8)
	read := func(fd int) {
		buf := make([]byte, 64)
		if n, _ := Read(fd, buf); n > 0 {
			got <- string(buf[:n])
		}
	}
	r := new(Reg)
	c.Adopt(r, HandlerFunc(func(reg *Reg, ev Events) {
		if ev&Readable != 0 {
			read(reg.Fd())
		}
	}))
	assert.Equal(t, fd, r.Fd())
	assert.Same(t, c.Loop(), r.Loop())
	require.NoError(t, c.Close(), "Close after Adopt does nothing")
	_, err := c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, net.ErrClosed)

	// What came before Adopt is the new owner's to read: it must assume
	// the socket readable. What comes after reaches the new handler.
	post(t, r.Loop(), func() { read(r.Fd()) })
	_, err = Write(r.Fd(), []byte("x"))
	require.NoError(t, err)
	var all string
	for all != "earlylate" && len(all) < len("earlylate") {
		select {
		case s := <-got:
			all += s
		case <-time.After(testTimeout):
			t.Fatal("nothing read")
		}
	}
	assert.Equal(t, "earlylate", all)
	r.Close()
}

// TestAdoptRearms: the peer's last bytes and its FIN arrive while the
// Conn is registered, and the loop hands their edge to the Conn. A handler
// that adopts the socket and reads only on its own events (no read on the
// assumption that the socket is readable) still hears of them: Adopt
// re-arms the registration. Without it, the edge is spent and a reader
// that follows the short-read rule waits for one that never comes.
func TestAdoptRearms(t *testing.T) {
	t.Parallel()
	next := make(chan struct{})
	addr := serve(t, func(c *net.TCPConn) {
		c.Write([]byte("a"))
		<-next
		c.Write([]byte("bc"))
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	c := dialTest(t, addr)
	buf := make([]byte, 1)
	n, err := c.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "a", string(buf[:n]))
	close(next)
	// The loop took the edge of "bc" and the FIN, for the Conn (a wake-up
	// kept for its next Read).
	require.True(t, waitFor(testTimeout, func() bool { return len(c.wake.read) == 1 }))

	got := make(chan string, 1)
	var all []byte
	r := new(Reg)
	c.Adopt(r, HandlerFunc(func(reg *Reg, ev Events) {
		if ev&Readable == 0 {
			return
		}
		for {
			b := make([]byte, 64)
			n, err := Read(reg.Fd(), b)
			all = append(all, b[:n]...)
			switch {
			case err == io.EOF:
				got <- string(all)
				return
			case err != nil:
				return // ErrWouldBlock: the next edge
			}
		}
	}))
	defer r.Close()
	select {
	case s := <-got:
		assert.Equal(t, "bc", s, "what came before Adopt, then the end of the stream")
	case <-time.After(testTimeout):
		t.Fatal("the adopted handler never heard of the bytes and the FIN that came before Adopt")
	}
}
