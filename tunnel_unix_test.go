//go:build unix

package wsproxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	engine "github.com/wsproxy/wsproxy/internal/tunnel"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// The tests below put a tunnel in this state: the backend's last
// messages (n of size bytes) and its close frame came in one write, and the
// proxy, which read them all at once, is blocked writing them to a client
// that reads slowly; the client then sends its close frame and hangs up
// (a FIN; Chromium ends its HTTP/2 stream the same way).
const hangUpN, hangUpSize = 100, 200

func hangUpMessage(i int) []byte { return bytes.Repeat([]byte{byte(i)}, hangUpSize) }

// hangUpWithTailPending sets up that state and returns the proxy and the
// client, which has read the first message.
func hangUpWithTailPending(t *testing.T, opts ...Option) (*Proxy, *wstest.Conn, *net.TCPConn) {
	t.Helper()
	var tail []byte
	for i := range hangUpN {
		tail = wstest.AppendFrame(tail, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: hangUpMessage(i)}, false)
	}
	tail = wsframe.AppendControl(tail, wsframe.OpClose, wsframe.ClosePayload(4000, "done"), nil)
	require.Less(t, len(tail), engine.ReadSize, "one read of the proxy's takes the whole tail")
	backend := upgradeBackend(t, func(c *wstest.Conn) {
		if _, _, err := c.ReadMessage(); err != nil { // "go"
			return
		}
		c.Conn.Write(tail)
		io.Copy(io.Discard, c.Conn) // the client's close frame, then its FIN
	})
	p, err := New([]string{backend}, opts...)
	require.NoError(t, err)
	// Small socket buffers between the proxy and the client, so that the
	// tail cannot fit in them.
	srv := httptest.NewUnstartedServer(p)
	accepted := make(chan *net.TCPConn, 1)
	srv.Listener = smallBufferListener{srv.Listener, accepted}
	srv.Start()
	t.Cleanup(func() {
		p.Close()
		srv.Close()
	})

	// The client's receive buffer is set before it connects: a window
	// once advertised does not shrink.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10) })
		return err
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr := srv.Listener.Addr().String()
	conn, err := d.DialContext(ctx, "tcp", addr)
	require.NoError(t, err)
	c, _, err := wstest.Handshake(ctx, conn, addr, "/", nil)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	tc := conn.(*net.TCPConn)
	require.NoError(t, c.WriteMessage(wsframe.OpBinary, []byte("go")))
	// The first message here means the proxy read the tail and is writing
	// it, close frame included (one write: see pump.process). Once the
	// proxy's socket to the client is full, that write waits for the client
	// to read. Then close and hang up without reading on.
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, msg, err := c.ReadMessage()
	require.NoError(t, err)
	require.Equal(t, hangUpMessage(0), msg)
	watched := <-accepted
	waitSendQueueFull(t, watched, "the proxy's socket to the client never filled: the tail fits in the buffers")
	watched.Close()
	require.NoError(t, c.WriteClose(4000, "done"))
	require.NoError(t, tc.CloseWrite())
	return p, c, tc
}

// TestLastFramesBeforeClientHangUp: the proxy passes the backend's last
// messages and close frame on before it ends the tunnel. It once tore the
// tunnel down as soon as it had read both close frames, written or not:
// the client lost the tail (and over HTTP/2, Chromium saw a reset stream).
func TestLastFramesBeforeClientHangUp(t *testing.T) {
	t.Parallel()
	p, c, tc := hangUpWithTailPending(t)
	require.Eventually(t, func() bool { return hungUpTunnels(p) == 1 }, 5*time.Second, time.Millisecond,
		"the proxy read the client's close frame and FIN")
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := 1; i < hangUpN; i++ {
		op, msg, err := c.ReadMessage()
		require.NoError(t, err, "message %d of %d", i, hangUpN)
		require.Equal(t, byte(wsframe.OpBinary), op)
		require.Equal(t, hangUpMessage(i), msg, "message %d", i)
	}
	f, err := c.ReadFrame()
	require.NoError(t, err, "the backend's close frame")
	assert.Equal(t, byte(wsframe.OpClose), f.Op)
	_, err = c.ReadFrame()
	assert.ErrorIs(t, err, io.EOF, "then the proxy's FIN")
}

// TestHangUpWithoutReading: a client that hangs up after its close frame
// and never reads gets the close timeout to take the rest, even with
// half-closed tunnels kept open without limit; then the tunnel ends.
func TestHangUpWithoutReading(t *testing.T) {
	t.Parallel()
	closed := make(chan CloseInfo, 1)
	_, _, _ = hangUpWithTailPending(t, WithCloseTimeout(200*time.Millisecond), WithHalfCloseTimeout(0),
		WithHooks(Hooks{OnClose: func(ci CloseInfo) { closed <- ci }}))
	select {
	case ci := <-closed:
		assert.Equal(t, 4000, ci.ClientToBackend.CloseCode)
		assert.Less(t, ci.Duration, 5*time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("the tunnel stayed open, its last write blocked")
	}
}

// smallBufferListener gives accepted connections 4 KiB socket buffers and
// sends a watchCopy of them on accepted while it has room.
type smallBufferListener struct {
	net.Listener
	accepted chan<- *net.TCPConn
}

func (l smallBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetReadBuffer(4 << 10)
		tc.SetWriteBuffer(4 << 10)
		if len(l.accepted) < cap(l.accepted) {
			if w := watchCopy(tc); w != nil {
				l.accepted <- w
			}
		}
	}
	return c, err
}
