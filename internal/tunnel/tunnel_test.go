package tunnel

import (
	"bufio"
	"errors"
	"net"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/leakcheck"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func TestMain(m *testing.M) {
	testDriver = driverFromEnv()
	loopCount = 3 // more loops than this machine would have, so tunnels spread
	leakcheck.Main(m)
}

// testDriver is the driver of the tests' tunnels whose Config names none:
// WSPROXY_TEST_DRIVER=goroutine or loop.
var testDriver Driver

func driverFromEnv() Driver {
	switch os.Getenv("WSPROXY_TEST_DRIVER") {
	case "goroutine":
		return DriverGoroutines
	case "loop":
		return DriverLoops
	}
	return DriverAuto
}

// The engine's tests drive a Tunnel with no proxy around it: two loopback
// TCP connections, a WebSocket client on one and a backend on the other.

// ends is an Owner that hands the Result over.
type ends chan Result

func (e ends) TunnelEnded(r Result) { e <- r }

// wait returns the tunnel's Result, failing the test if it does not end
// within a few seconds.
func (e ends) wait(t *testing.T) Result {
	t.Helper()
	select {
	case r := <-e:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("the tunnel did not end")
		return Result{}
	}
}

// tcpPair returns the two ends of one loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	return pairWith(t, net.ListenConfig{}, net.Dialer{})
}

// pairWith is tcpPair with the dialing end made by d, the accepted one
// by a listener from lc.
func pairWith(t *testing.T, lc net.ListenConfig, d net.Dialer) (net.Conn, net.Conn) {
	t.Helper()
	a, b := wstest.TCPPairWith(t, lc, d)
	return a, b
}

// started runs a tunnel under cfg between a fresh client and backend,
// the client having sent early before the hijack, and returns it, the
// WebSocket ends of the peers and the channel its Result arrives on.
func started(t *testing.T, cfg *Config, early []byte) (tn *Tunnel, client, backend *wstest.Conn, res ends) {
	t.Helper()
	return startedOn(t, cfg, early, tcpPair, tcpPair)
}

// startedOn is started on the connections clientPair and backPair make
// (tcpPair for both in started): the first of each pair is the client's
// side (the client's peer, the tunnel's backend socket).
func startedOn(t *testing.T, cfg *Config, early []byte, clientPair, backPair func(*testing.T) (net.Conn, net.Conn)) (tn *Tunnel, client, backend *wstest.Conn, res ends) {
	t.Helper()
	clientPeer, clientSide := clientPair(t)
	backSide, backendPeer := backPair(t)
	res = make(ends, 1)
	if cfg.Driver == DriverAuto {
		cfg.Driver = testDriver
	}
	tn = new(Tunnel)
	tn.Init(cfg, res, clientSide, backSide)
	tn.Start(early, nil)
	client = wstest.NewConn(clientPeer, bufio.NewReader(clientPeer), true)
	backend = wstest.NewConn(backendPeer, bufio.NewReader(backendPeer), false)
	return tn, client, backend, res
}

// closedWith reads a close frame with code on each peer (answering it) and
// returns the reason texts.
func closedWith(t *testing.T, code int, peers ...*wstest.Conn) []string {
	t.Helper()
	var reasons []string
	for _, peer := range peers {
		_, _, err := peer.ReadMessage()
		var ce *wstest.CloseError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, code, ce.Code)
		reasons = append(reasons, ce.Reason)
	}
	return reasons
}

// echoAndClose sends msgs through the tunnel to an echoing backend, each
// echoed whole, then closes from the client with 4000, and returns the
// tunnel's result after checking that it ended cleanly with every message
// counted each way.
func echoAndClose(t *testing.T, client, backend *wstest.Conn, res ends, msgs ...string) Result {
	t.Helper()
	go wstest.Echo(backend)
	for _, msg := range msgs {
		require.NoError(t, client.WriteMessage(wsframe.OpBinary, []byte(msg)))
		_, got, err := client.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, msg, string(got))
	}
	require.NoError(t, client.WriteClose(4000, "bye"))
	closedWith(t, 4000, client)
	client.Close()
	r := res.wait(t)
	assert.NoError(t, r.Err)
	assert.EqualValues(t, len(msgs), r.Up.Messages)
	assert.EqualValues(t, len(msgs), r.Down.Messages)
	return r
}

func TestEngineEchoAndCounts(t *testing.T) {
	t.Parallel()
	_, client, backend, res := started(t, &Config{CloseTimeout: time.Second}, nil)
	r := echoAndClose(t, client, backend, res, "one", "two", string(make([]byte, 70<<10)))
	assert.Equal(t, "", r.Reason, "the peers ended it")
	assert.Equal(t, 4000, r.Up.CloseCode)
	assert.Equal(t, 4000, r.Down.CloseCode, "the backend's echo of the close frame")
}

// TestEngineClose: Close sends each side its code and the reason, and the
// Result carries the reason once the peers answered.
func TestEngineClose(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := started(t, &Config{CloseTimeout: time.Second}, nil)
	tn.Close(wsframe.CloseGoingAway, wsframe.CloseInternalError, "going")
	assert.True(t, tn.OwesCloseAnswer(), "the close frame went out at once; the client has not answered")
	assert.Equal(t, []string{"going"}, closedWith(t, wsframe.CloseGoingAway, client))
	assert.Equal(t, []string{"going"}, closedWith(t, wsframe.CloseInternalError, backend))
	r := res.wait(t)
	assert.Equal(t, "going", r.Reason)
	assert.NoError(t, r.Err)
	assert.False(t, tn.OwesCloseAnswer(), "the client answered")
}

// TestEngineAbort: Abort closes both sockets at once, without close frames.
func TestEngineAbort(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := started(t, &Config{CloseTimeout: time.Second}, nil)
	tn.Abort("stop")
	for _, peer := range []net.Conn{client.Conn, backend.Conn} {
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := peer.Read(make([]byte, 16))
		assert.Zero(t, n, "no close frame")
		assert.Error(t, err)
	}
	assert.Equal(t, "stop", res.wait(t).Reason)
}

// TestEngineEarlyBytes: what each side sent before the hijack is passed
// first, in order.
func TestEngineEarlyBytes(t *testing.T) {
	t.Parallel()
	early := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("early")}, true)
	tn, client, backend, _ := started(t, &Config{CloseTimeout: time.Second}, early)
	require.NoError(t, client.WriteMessage(wsframe.OpText, []byte("late")))
	for _, want := range []string{"early", "late"} {
		_, got, err := backend.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, want, string(got))
	}
	tn.Abort("done")
}

// TestEngineLimits: the rules of Config hold without a proxy: an unmasked
// client frame is a protocol error, a message over MaxMessageSize is 1009,
// and the idle timeout closes politely.
func TestEngineLimits(t *testing.T) {
	t.Parallel()
	t.Run("unmasked", func(t *testing.T) {
		t.Parallel()
		_, client, backend, res := started(t, &Config{CloseTimeout: time.Second}, nil)
		frame := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("x")}, false)
		_, err := client.Conn.Write(frame)
		require.NoError(t, err)
		closedWith(t, wsframe.CloseProtocolError, client, backend)
		assert.Equal(t, ReasonProtocolError, res.wait(t).Reason)
	})
	t.Run("too big", func(t *testing.T) {
		t.Parallel()
		_, client, backend, res := started(t, &Config{CloseTimeout: time.Second, MaxMessageSize: 10}, nil)
		require.NoError(t, client.WriteMessage(wsframe.OpBinary, make([]byte, 11)))
		closedWith(t, wsframe.CloseMessageTooBig, client, backend)
		assert.Equal(t, ReasonMessageTooBig, res.wait(t).Reason)
	})
	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		_, client, backend, res := started(t, &Config{CloseTimeout: time.Second, IdleTimeout: 50 * time.Millisecond}, nil)
		closedWith(t, wsframe.CloseGoingAway, client, backend)
		r := res.wait(t)
		assert.Equal(t, ReasonIdleTimeout, r.Reason)
		assert.False(t, errors.Is(r.Err, net.ErrClosed))
	})
}

// TestPumpSize guards a pump's 80 bytes: the tunnel holds two, and the
// proxy's tunnel around it fills its size class (the root package's
// TestTunnelSize).
func TestPumpSize(t *testing.T) {
	assert.LessOrEqual(t, unsafe.Sizeof(pump{}), uintptr(80))
}
