package wsproxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func TestEchoSizes(t *testing.T) {
	t.Parallel()
	_, url := newProxy(t, []string{newEcho(t)})
	c := dial(t, url)
	for _, size := range []int{0, 125, 126, 65535, 65536, 1 << 20} {
		for _, op := range []byte{wsframe.OpText, wsframe.OpBinary} {
			give := randomBytes(size)
			if op == wsframe.OpText {
				give = bytes.Repeat([]byte("a"), size)
			}
			require.NoError(t, c.WriteMessage(op, give))
			gotOp, got, err := c.ReadMessage()
			require.NoError(t, err, "size %d", size)
			assert.Equal(t, op, gotOp)
			assert.True(t, bytes.Equal(give, got), "size %d op %d: payload differs", size, op)
		}
	}
}

// TestPipelinedPairs writes ten big/small frame pairs without reading, then
// reads all twenty echoes back in order.
func TestPipelinedPairs(t *testing.T) {
	t.Parallel()
	_, url := newProxy(t, []string{newEcho(t)})
	c := dial(t, url)
	var want [][]byte
	for i := 0; i < 10; i++ {
		want = append(want, randomBytes(200_000+i), randomBytes(i+1))
	}
	go func() {
		for _, m := range want {
			if c.WriteMessage(wsframe.OpBinary, m) != nil {
				return
			}
		}
	}()
	for i := range want {
		_, got, err := c.ReadMessage()
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want[i], got), "message %d differs", i)
	}
}

// TestHandshakeAndFrameInOneWrite sends the upgrade request and a first
// frame in a single write: the frame must arrive, once.
func TestHandshakeAndFrameInOneWrite(t *testing.T) {
	t.Parallel()
	_, url := newProxy(t, []string{newEcho(t)})
	early := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("early")}, true)
	early = wstest.AppendFrame(early, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("bird")}, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := wstest.Dial(ctx, url, nil, early)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	for _, want := range []string{"early", "bird"} {
		_, got, err := c.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, want, string(got))
	}
}

// TestBackendEarlyData: a backend that writes a frame right behind its 101,
// in the same write.
func TestBackendEarlyData(t *testing.T) {
	t.Parallel()
	backend := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			wstest.Accept(r.Header.Get("Sec-Websocket-Key")) + "\r\n\r\n"
		msg := wstest.AppendFrame([]byte(resp), wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("hello")}, false)
		conn.Write(msg)
		io.Copy(io.Discard, conn)
	}))
	_, url := newProxy(t, []string{backend})
	c := dial(t, url)
	_, got, err := c.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "hello", string(got))
}

// TestFragmentedMessage passes a message in three fragments with a ping
// between them.
func TestFragmentedMessage(t *testing.T) {
	t.Parallel()
	_, url := newProxy(t, []string{newEcho(t)})
	c := dial(t, url)
	require.NoError(t, c.WriteFrame(wstest.Frame{Op: wsframe.OpText, Payload: []byte("frag")}))
	require.NoError(t, c.WriteFrame(wstest.Frame{Fin: true, Op: wsframe.OpPing, Payload: []byte("p")}))
	require.NoError(t, c.WriteFrame(wstest.Frame{Op: wsframe.OpContinuation, Payload: []byte("men")}))
	require.NoError(t, c.WriteFrame(wstest.Frame{Fin: true, Op: wsframe.OpContinuation, Payload: []byte("ted")}))
	var frames []wstest.Frame
	for len(frames) < 4 {
		f, err := c.ReadFrame()
		require.NoError(t, err)
		frames = append(frames, f)
	}
	assert.Equal(t, []wstest.Frame{
		{Op: wsframe.OpText, Payload: []byte("frag")},
		{Fin: true, Op: wsframe.OpPong, Payload: []byte("p")},
		{Op: wsframe.OpContinuation, Payload: []byte("men")},
		{Fin: true, Op: wsframe.OpContinuation, Payload: []byte("ted")},
	}, frames)
}

// TestCloseCodesPassThrough: the close code and reason each side sends
// arrive intact at the other.
func TestCloseCodesPassThrough(t *testing.T) {
	t.Parallel()
	closed := make(chan CloseInfo, 1)
	_, url := newProxy(t, []string{newEcho(t)}, WithHooks(Hooks{OnClose: func(ci CloseInfo) { closed <- ci }}))
	c := dial(t, url)
	require.NoError(t, c.WriteClose(4001, "bye now"))
	_, _, err := c.ReadMessage()
	var ce *wstest.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, &wstest.CloseError{Code: 4001, Reason: "bye now"}, ce)
	select {
	case ci := <-closed:
		assert.Equal(t, 4001, ci.ClientToBackend.CloseCode)
		assert.Equal(t, 4001, ci.BackendToClient.CloseCode)
		assert.Empty(t, ci.Reason)
	case <-time.After(5 * time.Second):
		t.Fatal("tunnel did not close")
	}
}

// TestTunnelInfo: what OnUpgrade reports comes back in OnClose, with a
// duration measured on the monotonic clock.
func TestTunnelInfo(t *testing.T) {
	t.Parallel()
	upgraded := make(chan TunnelInfo, 1)
	closed := make(chan CloseInfo, 1)
	backend := newEcho(t)
	_, url := newProxy(t, []string{backend}, WithHooks(Hooks{
		OnUpgrade: func(ti TunnelInfo) { upgraded <- ti },
		OnClose:   func(ci CloseInfo) { closed <- ci },
	}))
	before := time.Now()
	c := dial(t, url+"/room/7?x=1")
	up := <-upgraded
	assert.Equal(t, backend, up.Target)
	assert.Equal(t, c.LocalAddr().String(), up.RemoteAddr)
	assert.Equal(t, "/room/7", up.Path)
	assert.Equal(t, "HTTP/1.1", up.Proto)
	assert.False(t, up.Start.Before(before.Add(-time.Millisecond)), "start %v before dial %v", up.Start, before)
	// The tunnel was open at least this long when the client asked to
	// close, and at most as long as since its start when OnClose is seen:
	// Duration must fall in between.
	openBeforeClose := time.Since(up.Start)
	require.NoError(t, c.WriteClose(1000, ""))
	_, _, err := c.ReadMessage()
	require.Error(t, err)
	select {
	case ci := <-closed:
		openAtHook := time.Since(up.Start)
		assert.Equal(t, up, ci.TunnelInfo)
		assert.True(t, ci.Start.Equal(up.Start))
		assert.GreaterOrEqual(t, ci.Duration, openBeforeClose)
		assert.LessOrEqual(t, ci.Duration, openAtHook)
	case <-time.After(5 * time.Second):
		t.Fatal("tunnel did not close")
	}
}

// TestTunnelInfoRemoteAddrFromMiddleware: a RemoteAddr a middleware put in
// the request (a real-IP middleware, say) is what the hooks report, not
// the connection's address.
func TestTunnelInfoRemoteAddrFromMiddleware(t *testing.T) {
	t.Parallel()
	closed := make(chan CloseInfo, 1)
	p, err := New([]string{newEcho(t)}, WithHooks(Hooks{OnClose: func(ci CloseInfo) { closed <- ci }}))
	require.NoError(t, err)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.RemoteAddr = "203.0.113.7:4242"
		p.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		p.Close()
		s.Close()
	})
	c := dial(t, "ws://"+s.Listener.Addr().String())
	require.NoError(t, c.WriteClose(1000, ""))
	c.ReadMessage()
	select {
	case ci := <-closed:
		assert.Equal(t, "203.0.113.7:4242", ci.RemoteAddr)
	case <-time.After(5 * time.Second):
		t.Fatal("tunnel did not close")
	}
}

// TestTunnelSize guards the idle-memory figure: an idle tunnel is mostly
// this struct (the engine's tunnel and both its pumps inside), and 320
// bytes is one of Go's size classes; a field more moves every tunnel to the
// next class (+32 bytes). Grow it knowingly, and move what only some
// tunnels need behind a pointer (tunnelExtra, the engine's ending and
// clock). Under the loop driver the tunnel's two sockets are one more
// allocation (internal/tunnel's TestSockSize).
func TestTunnelSize(t *testing.T) {
	if size := unsafe.Sizeof(tunnel{}); size > 320 {
		t.Fatalf("tunnel is %d bytes, more than the 320 the idle-memory budget allows", size)
	}
}

// TestHalfClose: the client shuts its write side; the backend still sends,
// and the client still receives.
func TestHalfClose(t *testing.T) {
	t.Parallel()
	backendDone := make(chan []byte, 1)
	backend := upgradeBackend(t, func(c *wstest.Conn) {
		got, _ := io.ReadAll(c.Conn) // until the client's half-close
		backendDone <- got
		c.WriteMessage(wsframe.OpText, []byte("after your FIN"))
	})
	_, url := newProxy(t, []string{backend})
	c := dial(t, url)
	require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("last words")))
	require.NoError(t, c.Conn.(*net.TCPConn).CloseWrite())
	select {
	case got := <-backendDone:
		assert.Len(t, got, 2+4+len("last words"))
	case <-time.After(5 * time.Second):
		t.Fatal("backend did not see the half-close")
	}
	_, got, err := c.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "after your FIN", string(got))
	_, err = c.ReadFrame()
	assert.ErrorIs(t, err, io.EOF)
}

// TestHalfCloseFromBackend: the backend shuts its write side; the client
// can still send and the backend still receives.
func TestHalfCloseFromBackend(t *testing.T) {
	t.Parallel()
	backendGot := make(chan string, 1)
	backend := upgradeBackend(t, func(c *wstest.Conn) {
		c.WriteMessage(wsframe.OpText, []byte("bye"))
		c.Conn.(*net.TCPConn).CloseWrite()
		_, msg, _ := c.ReadMessage()
		backendGot <- string(msg)
	})
	_, url := newProxy(t, []string{backend})
	c := dial(t, url)
	_, got, err := c.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "bye", string(got))
	_, err = c.ReadFrame()
	require.ErrorIs(t, err, io.EOF)
	require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("still here")))
	select {
	case msg := <-backendGot:
		assert.Equal(t, "still here", msg)
	case <-time.After(5 * time.Second):
		t.Fatal("backend got nothing after its half-close")
	}
}

func TestIsAddr(t *testing.T) {
	t.Parallel()
	v4 := net.ParseIP("192.0.2.1") // 16 bytes
	tests := []struct {
		name string
		give net.Addr
		s    string
		want bool
	}{
		{"same v4", &net.TCPAddr{IP: v4.To4(), Port: 80}, "192.0.2.1:80", true},
		{"v4 in 16 bytes", &net.TCPAddr{IP: v4, Port: 80}, "192.0.2.1:80", true},
		{"other port", &net.TCPAddr{IP: v4, Port: 80}, "192.0.2.1:81", false},
		{"other ip", &net.TCPAddr{IP: v4, Port: 80}, "192.0.2.2:80", false},
		{"v6", &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 80}, "[2001:db8::1]:80", true},
		{"v6 zone", &net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 80, Zone: "lo"}, "[fe80::1%lo]:80", true},
		{"zone missing", &net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 80}, "[fe80::1%lo]:80", false},
		{"mapped text", &net.TCPAddr{IP: v4, Port: 80}, "[::ffff:192.0.2.1]:80", false},
		{"not an address", &net.TCPAddr{IP: v4, Port: 80}, "client-7", false},
		{"unix", &net.UnixAddr{Name: "/tmp/s", Net: "unix"}, "/tmp/s", true},
		{"nil", nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.give != nil {
				assert.Equal(t, tt.give.String() == tt.s, tt.want, "the oracle: String")
			}
			assert.Equal(t, tt.want, isAddr(tt.give, tt.s))
		})
	}
}
