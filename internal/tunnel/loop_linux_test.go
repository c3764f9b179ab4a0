package tunnel

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/evloop"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// The tests below are about the loop driver (loop_linux.go); the tests of
// tunnel_test.go run under either (WSPROXY_TEST_DRIVER).

// TestSockSize guards what an idle tunnel of the loop driver holds beside
// the tunnel itself: its two sockets, one allocation of 256 bytes, a size
// class of Go's. A field more moves every tunnel to the next class (288);
// what only an ending socket needs goes in sockEnd.
func TestSockSize(t *testing.T) {
	assert.LessOrEqual(t, unsafe.Sizeof(sock{}), uintptr(128))
	assert.LessOrEqual(t, unsafe.Sizeof(sockPair{}), uintptr(256))
}

// loopConfig is c with the loop driver and a close timeout.
func loopConfig(c Config) *Config {
	c.Driver = DriverLoops
	if c.CloseTimeout == 0 {
		c.CloseTimeout = time.Second
	}
	return &c
}

// socksOf returns the tunnel's two loop sockets, failing the test if the
// tunnel is not in a loop.
func socksOf(t *testing.T, tn *Tunnel) (client, back *sock) {
	t.Helper()
	cs, ok := tn.client.(*sock)
	require.True(t, ok, "the tunnel runs in an event loop")
	return cs, tn.back.(*sock)
}

// smallPair is tcpPair with 4 KiB socket buffers on both ends, so that a
// few KiB fill the path and the tunnel's writes wait.
func smallPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	return sizedPair(t, 4<<10)
}

// sizedPair is tcpPair with socket buffers of size bytes on both ends, set
// before the connection exists (a receive window once advertised does not
// shrink).
func sizedPair(t *testing.T, size int) (net.Conn, net.Conn) {
	t.Helper()
	sized := func(_, _ string, rc syscall.RawConn) error {
		var err error
		cerr := rc.Control(func(fd uintptr) {
			err = errors.Join(syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size),
				syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, size))
		})
		return errors.Join(cerr, err)
	}
	return pairWith(t, net.ListenConfig{Control: sized}, net.Dialer{Control: sized})
}

// stream writes messages of random sizes, total bytes of payload in all,
// from a seeded generator, and returns the checksum of the payloads in
// order with the number of messages, or the write error.
type streamSum struct {
	sum      [32]byte
	messages int
	err      error
}

func writeStream(c *wstest.Conn, seed uint64, total int) streamSum {
	r := rand.New(rand.NewPCG(seed, seed))
	h := sha256.New()
	var res streamSum
	for sent := 0; sent < total; {
		msg := make([]byte, min(1+r.IntN(40<<10), total-sent))
		for i := range msg {
			msg[i] = byte(r.Uint32())
		}
		if res.err = c.WriteMessage(wsframe.OpBinary, msg); res.err != nil {
			return res
		}
		h.Write(msg)
		sent += len(msg)
		res.messages++
	}
	copy(res.sum[:], h.Sum(nil))
	return res
}

// readStream reads total bytes of message payload and returns their
// checksum and count.
func readStream(c *wstest.Conn, total int) streamSum {
	h := sha256.New()
	var res streamSum
	for got := 0; got < total; {
		_, msg, err := c.ReadMessage()
		if err != nil {
			res.err = err
			return res
		}
		h.Write(msg)
		got += len(msg)
		res.messages++
	}
	copy(res.sum[:], h.Sum(nil))
	return res
}

// TestLoopBackPressure: peers that send MBs both ways while not reading
// fill the tunnel's destinations; the tunnel then stops reading its
// sources and holds at most one read per direction; once the peers read,
// every byte arrives, in order.
func TestLoopBackPressure(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := startedOn(t, loopConfig(Config{}), nil, smallPair, smallPair)
	cs, bs := socksOf(t, tn)
	const total = 4 << 20
	up, down := make(chan streamSum, 1), make(chan streamSum, 1)
	go func() { up <- writeStream(client, 1, total) }()
	go func() { down <- writeStream(backend, 2, total) }()

	require.Eventually(t, func() bool { return cs.holding() && bs.holding() }, 5*time.Second, time.Millisecond,
		"both destinations are full and hold a backlog")
	for _, s := range []*sock{cs, bs} {
		s.mu.Lock()
		held := len(s.backlog)
		s.mu.Unlock()
		assert.LessOrEqual(t, held, ReadSize+bufHeadroom, "a backlog is at most one read and a control frame")
	}
	u, d := tn.Traffic()
	assert.Less(t, u.Bytes, int64(total), "the tunnel stopped reading the client")
	assert.Less(t, d.Bytes, int64(total), "the tunnel stopped reading the backend")

	gotUp, gotDown := make(chan streamSum, 1), make(chan streamSum, 1)
	go func() { gotUp <- readStream(backend, total) }()
	go func() { gotDown <- readStream(client, total) }()
	for _, pair := range [][2]chan streamSum{{up, gotUp}, {down, gotDown}} {
		sent, got := <-pair[0], <-pair[1]
		require.NoError(t, sent.err)
		require.NoError(t, got.err)
		assert.Equal(t, sent.messages, got.messages)
		assert.Equal(t, sent.sum, got.sum, "every byte passed, in order")
	}

	require.NoError(t, client.WriteClose(wsframe.CloseNormal, ""))
	closedWith(t, wsframe.CloseNormal, backend, client)
	client.Close()
	backend.Close()
	r := res.wait(t)
	assert.NoError(t, r.Err)
	assert.Equal(t, "", r.Reason)
	assert.Greater(t, r.Up.Bytes, int64(total), "the payloads and their headers were written")
	assert.Greater(t, r.Down.Bytes, int64(total))
}

// TestLoopHalfClose: a FIN from the client reaches the backend (after what
// the client sent before it), while the backend still sends to the client;
// the backend's FIN then ends the tunnel without an error.
func TestLoopHalfClose(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := started(t, loopConfig(Config{}), nil)
	socksOf(t, tn)
	require.NoError(t, client.WriteMessage(wsframe.OpText, []byte("last words")))
	require.NoError(t, client.Conn.(*net.TCPConn).CloseWrite())
	_, got, err := backend.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "last words", string(got))
	_, err = backend.ReadFrame()
	assert.ErrorIs(t, err, io.EOF, "the client's FIN is passed on")

	require.NoError(t, backend.WriteMessage(wsframe.OpText, []byte("still here")))
	_, got, err = client.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "still here", string(got))
	assert.Equal(t, 1, tn.State().EOFs)

	require.NoError(t, backend.Conn.(*net.TCPConn).CloseWrite())
	_, err = client.ReadFrame()
	assert.ErrorIs(t, err, io.EOF)
	r := res.wait(t)
	assert.NoError(t, r.Err)
	assert.Equal(t, "", r.Reason)
	assert.EqualValues(t, 1, r.Up.Messages)
	assert.EqualValues(t, 1, r.Down.Messages)
}

// TestLoopCloseFromTimerWhileWriting: a timer closes the tunnel while the
// loop is writing a flood to a client that does not read: the client
// still gets whole messages in order, then the close frame, and the
// tunnel ends with the timer's reason.
func TestLoopCloseFromTimerWhileWriting(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := startedOn(t, loopConfig(Config{}), nil, smallPair, tcpPair)
	cs, _ := socksOf(t, tn)
	message := func(i int) []byte {
		b := bytes.Repeat([]byte{byte(i)}, 1000+i%7)
		binary.BigEndian.PutUint32(b, uint32(i))
		return b
	}
	go func() {
		for i := 0; ; i++ {
			if backend.WriteMessage(wsframe.OpBinary, message(i)) != nil {
				return
			}
		}
	}()
	backendClosed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := backend.ReadMessage(); err != nil {
				backendClosed <- err // the close frame, answered
				return
			}
		}
	}()
	require.Eventually(t, cs.holding, 5*time.Second, time.Millisecond, "the client's socket is full")
	time.AfterFunc(0, func() { tn.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, "from a timer") })

	for i := 0; ; i++ {
		_, got, err := client.ReadMessage()
		var ce *wstest.CloseError
		if errors.As(err, &ce) {
			assert.Equal(t, wsframe.CloseGoingAway, ce.Code)
			assert.Positive(t, i, "messages came before the close frame")
			client.Close()
			break
		}
		require.NoError(t, err)
		require.Equal(t, message(i), got, "message %d is whole and in order", i)
	}
	var ce *wstest.CloseError
	assert.ErrorAs(t, <-backendClosed, &ce)
	r := res.wait(t)
	assert.Equal(t, "from a timer", r.Reason)
	assert.NoError(t, r.Err)
}

// TestLoopLinger: after a finished close handshake the tunnel sends FIN
// both ways and waits the close timeout for the peers' own; peers that
// keep their sockets open are then closed, without an error.
func TestLoopLinger(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := started(t, loopConfig(Config{CloseTimeout: 50 * time.Millisecond}), nil)
	socksOf(t, tn)
	require.NoError(t, client.WriteClose(4001, "done"))
	closedWith(t, 4001, backend) // answered
	closedWith(t, 4001, client)  // the answer
	for _, peer := range []*wstest.Conn{client, backend} {
		_, err := peer.ReadFrame()
		assert.ErrorIs(t, err, io.EOF, "the tunnel's FIN")
	}
	r := res.wait(t)
	assert.NoError(t, r.Err, "the linger's deadline is an orderly end")
	assert.Equal(t, "", r.Reason)
	assert.Equal(t, 4001, r.Up.CloseCode)
}

// TestBoundWriteToHungUpClient: the backend's last messages and its close
// frame wait for a client that sent its own close frame and hung up
// without reading; the close timeout bounds that write, under either
// driver alike, and what never left is not counted.
func TestBoundWriteToHungUpClient(t *testing.T) {
	t.Parallel()
	for _, driver := range []Driver{DriverGoroutines, DriverLoops} {
		t.Run(map[Driver]string{DriverGoroutines: "goroutines", DriverLoops: "loops"}[driver], func(t *testing.T) {
			t.Parallel()
			cfg := &Config{CloseTimeout: 50 * time.Millisecond, Driver: driver}
			tn, client, backend, res := startedOn(t, cfg, nil, smallPair, tcpPair)
			assert.Equal(t, driver == DriverLoops, isLoopSock(tn.client))
			var tail []byte
			for i := range 100 {
				tail = wstest.AppendFrame(tail, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: bytes.Repeat([]byte{byte(i)}, 200)}, false)
			}
			tail = wsframe.AppendControl(tail, wsframe.OpClose, wsframe.ClosePayload(4000, "bye"), nil)
			require.Less(t, len(tail), ReadSize)
			_, err := backend.Conn.Write(tail)
			require.NoError(t, err)
			require.Eventually(t, func() bool { return tn.State().Down.CloseRead }, 5*time.Second, time.Millisecond)
			require.NoError(t, client.WriteClose(4000, "bye"))
			require.NoError(t, client.Conn.(*net.TCPConn).CloseWrite())
			r := res.wait(t)
			assert.NoError(t, r.Err)
			assert.Equal(t, "", r.Reason)
			assert.Less(t, r.Down.Bytes, int64(len(tail)), "the client took only part of the tail")
			assert.Equal(t, 4000, r.Up.CloseCode)
		})
	}
}

// TestLoopManyTunnels: tunnels spread over the loops, and each echoes on
// its own while the others do.
func TestLoopManyTunnels(t *testing.T) {
	t.Parallel()
	const n, rounds = 30, 20
	type run struct {
		tn              *Tunnel
		client, backend *wstest.Conn
		res             ends
	}
	runs := make([]run, n)
	usedLoops := map[*evloop.Loop]bool{}
	for i := range runs {
		tn, client, backend, res := started(t, loopConfig(Config{}), nil)
		cs, _ := socksOf(t, tn)
		usedLoops[cs.reg.Loop()] = true
		runs[i] = run{tn, client, backend, res}
		go wstest.Echo(backend)
	}
	assert.Greater(t, len(usedLoops), 1, "tunnels spread over the loops")
	errs := make(chan error, n)
	for i, r := range runs {
		go func() {
			for j := range rounds {
				msg := []byte{byte(i), byte(j)}
				if err := r.client.WriteMessage(wsframe.OpBinary, msg); err != nil {
					errs <- err
					return
				}
				if _, got, err := r.client.ReadMessage(); err != nil || !bytes.Equal(got, msg) {
					errs <- errors.Join(err, errors.New("echo differs"))
					return
				}
			}
			errs <- r.client.WriteClose(wsframe.CloseNormal, "")
		}()
	}
	for range n {
		require.NoError(t, <-errs)
	}
	for _, r := range runs {
		res := r.res.wait(t)
		assert.NoError(t, res.Err)
		assert.EqualValues(t, rounds, res.Up.Messages)
		assert.EqualValues(t, rounds, res.Down.Messages)
	}
}

// TestLoopIdleTunnelsHoldNoGoroutine: a thousand idle tunnels cost no
// goroutine each (only the loops'), and each still passes a message.
func TestLoopIdleTunnelsHoldNoGoroutine(t *testing.T) {
	const n = 1000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	pair := func() (net.Conn, net.Conn) {
		a, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		b, err := ln.Accept()
		require.NoError(t, err)
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	}
	type idle struct {
		tn                      *Tunnel
		clientPeer, backendPeer net.Conn
		res                     ends
	}
	tunnels := make([]idle, n)
	for i := range tunnels {
		clientPeer, clientSide := pair()
		backSide, backendPeer := pair()
		tunnels[i] = idle{tn: new(Tunnel), clientPeer: clientPeer, backendPeer: backendPeer, res: make(ends, 1)}
		tunnels[i].tn.Init(loopConfig(Config{}), tunnels[i].res, clientSide, backSide)
	}
	before := runtime.NumGoroutine()
	for _, it := range tunnels {
		it.tn.Start(nil, nil)
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), before+loopCount, "no goroutine per idle tunnel")
	for i, it := range tunnels {
		msg := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: []byte{byte(i)}}, true)
		_, err := it.clientPeer.Write(msg)
		require.NoError(t, err)
		backend := wstest.NewConn(it.backendPeer, bufio.NewReader(it.backendPeer), false)
		_, got, err := backend.ReadMessage()
		require.NoError(t, err)
		require.Equal(t, []byte{byte(i)}, got)
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), before+loopCount, "passing bytes starts no goroutine either")
	for _, it := range tunnels {
		it.tn.Abort("done")
	}
	for _, it := range tunnels {
		assert.Equal(t, "done", it.res.wait(t).Reason)
	}
}

// TestLoopAddresses: the loop's sockets answer the addresses of the
// connections they were taken out of.
func TestLoopAddresses(t *testing.T) {
	t.Parallel()
	clientPeer, clientSide := tcpPair(t)
	backSide, backendPeer := tcpPair(t)
	want := clientSide.RemoteAddr().String()
	wantLocal := clientSide.LocalAddr().String()
	tn := new(Tunnel)
	res := make(ends, 1)
	tn.Init(loopConfig(Config{}), res, clientSide, backSide)
	tn.Start(nil, nil)
	socksOf(t, tn)
	assert.Equal(t, clientPeer.LocalAddr().String(), tn.Client().RemoteAddr().String())
	assert.Equal(t, want, tn.Client().RemoteAddr().String())
	assert.Equal(t, wantLocal, tn.Client().LocalAddr().String())
	assert.Equal(t, backendPeer.LocalAddr().String(), tn.back.RemoteAddr().String())
	tn.Abort("done")
	res.wait(t)
}
