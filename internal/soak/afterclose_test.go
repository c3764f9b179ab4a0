package soak

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// TestNothingAfterCloseFrame is what the soak found at a Shutdown under
// load: once the proxy has written its close frame to the backend, it
// drops the client's next frame header (pump.flush checks sentClose) but
// still splices that frame's payload (pump.splice does not), so the
// backend reads headerless bytes after the close frame. A backend that
// has answered and hung up makes the splice fail with EPIPE, which tears
// the tunnel down before the close frame still pending towards the client
// went out: the client gets a reset instead of 1001.
//
// Here the client, told to close, first sends one more 256 KiB message,
// which RFC 6455 §5.5.1 allows until it sends its own close frame; the
// backend must read nothing after the proxy's close frame.
func TestNothingAfterCloseFrame(t *testing.T) {
	gotClose := make(chan struct{})
	after := make(chan int64, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := wstest.Upgrade(w, r, nil)
		if err != nil {
			after <- -1
			return
		}
		defer c.Close()
		for {
			f, err := c.ReadFrame()
			if err != nil {
				after <- -1
				return
			}
			if f.Op == wsframe.OpClose {
				break
			}
		}
		close(gotClose)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := io.Copy(io.Discard, io.MultiReader(c.Buffered(), c.Conn))
		after <- n
	}))
	defer backend.Close()

	p, err := wsproxy.New([]string{"ws://" + backend.Listener.Addr().String()})
	require.NoError(t, err)
	front := httptest.NewServer(p)
	defer front.Close()
	defer p.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := wstest.Dial(ctx, "ws://"+front.Listener.Addr().String()+"/", nil, nil)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))

	go p.Shutdown(ctx)
	f, err := c.ReadFrame()
	require.NoError(t, err)
	require.Equal(t, byte(wsframe.OpClose), f.Op, "want the proxy's close frame")
	select {
	case <-gotClose:
	case <-ctx.Done():
		t.Fatal("the backend got no close frame")
	}
	_, err = c.Conn.Write(appendFrame(nil, true, wsframe.OpBinary, make([]byte, 256<<10), true, [4]byte{1, 2, 3, 4}))
	require.NoError(t, err)
	require.NoError(t, c.WriteClose(wsframe.CloseGoingAway, ""))
	assert.Equal(t, int64(0), <-after, "bytes the backend read after the proxy's close frame")
}
