package tunnel

import (
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// The tests below are about splicing under the loop driver
// (splice_linux.go): large payloads through pipes, with everything the
// buffered path promises.

// frameStream writes a seeded mix of messages as raw frames: large and
// small, whole and fragmented (fragments of any size, a small one between
// large ones), masked when c is the client. It returns the checksum of
// the payloads in order, the number of messages, and the bytes written on
// the wire.
func frameStream(c *wstest.Conn, seed uint64, messages int, masked bool) (streamSum, int64) {
	r := rand.New(rand.NewPCG(seed, seed))
	sizes := []int{64 << 10, 100, 3 << 20, 17 << 10, 16<<10 - 1, 1 << 20, 300 << 10, 5}
	h := sha256.New()
	var res streamSum
	var wire int64
	for i := range messages {
		payload := make([]byte, sizes[i%len(sizes)]+r.IntN(1000))
		for j := range payload {
			payload[j] = byte(r.Uint32())
		}
		h.Write(payload)
		var frames []byte
		op := byte(wsframe.OpBinary)
		for rest := payload; ; op = wsframe.OpContinuation {
			n := len(rest)
			if i%3 == 1 { // fragmented: a third, then 40 bytes, then the rest
				n = min(n, max(len(payload)/3, 40))
			}
			frames = wstest.AppendFrame(frames, wstest.Frame{Fin: n == len(rest), Op: op, Payload: rest[:n]}, masked)
			rest = rest[n:]
			if len(rest) == 0 {
				break
			}
		}
		if _, res.err = c.Conn.Write(frames); res.err != nil {
			return res, wire
		}
		wire += int64(len(frames))
		res.messages++
	}
	copy(res.sum[:], h.Sum(nil))
	return res, wire
}

// readMessages reads n messages and returns their checksum and count.
func readMessages(c *wstest.Conn, n int) streamSum {
	h := sha256.New()
	var res streamSum
	for range n {
		_, msg, err := c.ReadMessage()
		if err != nil {
			res.err = err
			return res
		}
		h.Write(msg)
		res.messages++
	}
	copy(res.sum[:], h.Sum(nil))
	return res
}

// closeFrameLen is the wire length of a close frame with code and reason.
func closeFrameLen(code uint16, reason string, masked bool) int64 {
	var mask *[4]byte
	if masked {
		mask = wsframe.NewMask()
	}
	return int64(len(wsframe.AppendControl(nil, wsframe.OpClose, wsframe.ClosePayload(code, reason), mask)))
}

// TestLoopSpliceBothWays: messages from 5 bytes to 3 MiB, whole and
// fragmented, pass both ways at once, the client's masked, with small
// socket buffers (so that splices stop halfway and wait) and with
// ordinary ones; every byte arrives in order and the counts are exact.
func TestLoopSpliceBothWays(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		pair func(*testing.T) (net.Conn, net.Conn)
	}{
		{"small buffers", smallPair},
		{"default buffers", tcpPair},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tn, client, backend, res := startedOn(t, loopConfig(Config{}), nil, tt.pair, tt.pair)
			socksOf(t, tn)
			const messages = 24
			type sent struct {
				sum  streamSum
				wire int64
			}
			up, down := make(chan sent, 1), make(chan sent, 1)
			go func() { s, w := frameStream(client, 1, messages, true); up <- sent{s, w} }()
			go func() { s, w := frameStream(backend, 2, messages, false); down <- sent{s, w} }()
			gotUp, gotDown := make(chan streamSum, 1), make(chan streamSum, 1)
			go func() { gotUp <- readMessages(backend, messages) }()
			go func() { gotDown <- readMessages(client, messages) }()
			wire := map[string]int64{}
			for name, pair := range map[string][2]any{"up": {up, gotUp}, "down": {down, gotDown}} {
				s, got := <-pair[0].(chan sent), <-pair[1].(chan streamSum)
				require.NoError(t, s.sum.err)
				require.NoError(t, got.err)
				assert.Equal(t, messages, got.messages, name)
				assert.Equal(t, s.sum.sum, got.sum, "%s: every byte passed, in order", name)
				wire[name] = s.wire
			}

			require.NoError(t, client.WriteClose(4000, "bye"))
			closedWith(t, 4000, backend, client)
			client.Close()
			backend.Close()
			r := res.wait(t)
			assert.NoError(t, r.Err)
			assert.EqualValues(t, messages, r.Up.Messages)
			assert.EqualValues(t, messages, r.Down.Messages)
			assert.Equal(t, wire["up"]+closeFrameLen(4000, "bye", true), r.Up.Bytes, "every byte the client sent")
			assert.Equal(t, wire["down"]+closeFrameLen(4000, "bye", false), r.Down.Bytes, "every byte the backend sent")
		})
	}
}

// TestSplicesLargePayloads: under both drivers, between two TCP sockets,
// the payload of large frames passes through the kernel (splicedTotal)
// but for the first buffer's worth of each, both ways. Not parallel: the
// count is then this test's alone.
func TestSplicesLargePayloads(t *testing.T) {
	for name, driver := range map[string]Driver{"loops": DriverLoops, "goroutines": DriverGoroutines} {
		t.Run(name, func(t *testing.T) {
			tn, client, backend, res := startedOn(t, &Config{Driver: driver, CloseTimeout: time.Second}, nil, tcpPair, tcpPair)
			if driver == DriverLoops {
				socksOf(t, tn)
			}
			const frames, size = 4, 1 << 20
			before := splicedTotal.Load()
			payload := make([]byte, size)
			errs := make(chan error, 2)
			send := func(c *wstest.Conn) {
				for range frames {
					if err := c.WriteMessage(wsframe.OpBinary, payload); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}
			go send(client)
			go send(backend)
			for _, c := range []*wstest.Conn{backend, client} {
				for range frames {
					_, msg, err := c.ReadMessage()
					require.NoError(t, err)
					require.Len(t, msg, size)
				}
			}
			require.NoError(t, <-errs)
			require.NoError(t, <-errs)
			spliced := splicedTotal.Load() - before
			assert.GreaterOrEqual(t, spliced, int64(2*frames*(size-64<<10)), "payload bytes spliced")
			assert.LessOrEqual(t, spliced, int64(2*frames*size))

			require.NoError(t, client.WriteClose(4000, "bye"))
			closedWith(t, 4000, backend, client)
			client.Close()
			backend.Close()
			assert.NoError(t, res.wait(t).Err)
		})
	}
}

// midPair is tcpPair with 64 KiB socket buffers, room for a read's worth
// of bytes that a large frame's splices then fill.
func midPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	return sizedPair(t, 64<<10)
}

// heldPipe waits until s holds spliced bytes in a pipe and returns how
// many.
func heldPipe(t *testing.T, s *sock) (held int) {
	t.Helper()
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if pp := s.heldPipeLocked(); pp != nil {
			held = pp.n
		}
		return s.piped
	}, 5*time.Second, time.Millisecond, "the destination is full and its pipe holds bytes")
	return held
}

// pipesHolding counts the process's open pipes with bytes in them: a
// pooled pipe is empty.
func pipesHolding(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	holding := 0
	for _, e := range ents {
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || !strings.HasPrefix(link, "pipe:") {
			continue
		}
		fd, err := strconv.Atoi(e.Name())
		require.NoError(t, err)
		var n int32 // FIONREAD, which is TIOCINQ on Linux: the bytes in the pipe
		_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
		if errno == 0 && n > 0 {
			holding++
		}
	}
	return holding
}

// bigFrame is the wire form of one message of n pseudo-random bytes.
func bigFrame(n int, masked bool) (frame, payload []byte) {
	payload = make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range payload {
		payload[i] = byte(r.Uint32())
	}
	return wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: payload}, masked), payload
}

// TestLoopSpliceBackPressure: a backend that does not read fills its
// socket while a 4 MiB frame is spliced; the tunnel holds the rest of one
// splice in the pipe, with nothing in the buffered backlog, stops reading
// the client and counts what it holds; once the backend reads, the frame
// arrives whole.
func TestLoopSpliceBackPressure(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := startedOn(t, loopConfig(Config{}), nil, tcpPair, midPair)
	_, bs := socksOf(t, tn)
	frame, payload := bigFrame(4<<20, true)
	written := make(chan error, 1)
	go func() { _, err := client.Conn.Write(frame); written <- err }()

	held := heldPipe(t, bs)
	assert.Positive(t, held)
	assert.LessOrEqual(t, held, spliceMax, "a pipe holds at most one splice")
	bs.mu.Lock()
	assert.Empty(t, bs.backlog, "the payload waits in the pipe, not in a buffer")
	bs.mu.Unlock()
	up, _ := tn.Traffic()
	assert.Less(t, up.Bytes, int64(len(frame)), "the tunnel stopped reading the client")

	_, got, err := backend.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, payload, got)
	require.NoError(t, <-written)

	require.NoError(t, client.WriteClose(wsframe.CloseNormal, ""))
	closedWith(t, wsframe.CloseNormal, backend, client)
	client.Close()
	backend.Close()
	r := res.wait(t)
	assert.NoError(t, r.Err)
	assert.Equal(t, int64(len(frame))+closeFrameLen(wsframe.CloseNormal, "", true), r.Up.Bytes)
	assert.EqualValues(t, 1, r.Up.Messages)
}

// TestLoopSpliceHoldsWrites: while the pipe holds the part of a frame
// the backend's socket did not take, a write (a control frame of the
// tunnel's, say) waits behind it in the backlog, even once the socket has
// room again, and a FIN waits behind both; the backend gets the frame's
// bytes, then the write, then the end of the stream.
func TestLoopSpliceHoldsWrites(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := startedOn(t, loopConfig(Config{}), nil, tcpPair, midPair)
	_, bs := socksOf(t, tn)
	frame, _ := bigFrame(4<<20, true)
	go client.Conn.Write(frame) // fails once the tunnel is gone
	heldPipe(t, bs)

	// On the loop, so that no Writable event can flush the pipe meanwhile:
	// let the backend read until the socket has room, then write.
	type outcome struct {
		pollErr      error
		held         bool
		backlog      []byte
		shutWaits    bool
		writeErr     error
		closeErr     error
		writtenBytes int
	}
	done := make(chan outcome, 1)
	got := make(chan []byte, 1)
	require.NoError(t, bs.reg.Loop().Post(func() {
		var o outcome
		go func() { b, _ := io.ReadAll(backend.Conn); got <- b }()
		o.pollErr = waitWritable(bs.reg.Fd())
		tn.up.mu.Lock()
		o.writtenBytes, o.writeErr = bs.Write([]byte("X"))
		tn.up.mu.Unlock()
		o.closeErr = bs.CloseWrite()
		bs.mu.Lock()
		o.held, o.backlog, o.shutWaits = bs.piped, bs.backlog, bs.shutWanted && !bs.shut
		bs.mu.Unlock()
		done <- o
	}))
	o := <-done
	require.NoError(t, o.pollErr)
	require.True(t, o.held, "the pipe still holds bytes")
	require.NoError(t, o.writeErr)
	require.NoError(t, o.closeErr)
	assert.Equal(t, 1, o.writtenBytes)
	assert.Equal(t, []byte("X"), o.backlog, "the write waits behind the pipe")
	assert.True(t, o.shutWaits, "the FIN waits behind both")

	b := <-got
	require.NotEmpty(t, b)
	assert.Equal(t, byte('X'), b[len(b)-1], "the write came last, then the FIN")
	assert.Equal(t, frame[:len(b)-1], b[:len(b)-1], "the frame's bytes came first, in order")
	tn.Abort("done")
	res.wait(t)
}

// waitWritable waits up to five seconds for the socket fd to have room.
func waitWritable(fd int) error {
	const pollOut = 0x4
	pfd := struct {
		fd              int32
		events, revents int16
	}{fd: int32(fd), events: pollOut}
	timeout := syscall.Timespec{Sec: 5}
	_, _, errno := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&timeout)), 0, 0, 0)
	switch {
	case errno != 0:
		return errno
	case pfd.revents&pollOut == 0:
		return errors.New("the socket did not become writable")
	}
	return nil
}

// TestLoopSpliceEnds: a tunnel that ends while its pipe holds bytes
// (the backend hangs up without reading, the tunnel is closed, or
// aborted) closes the pipe, never hands it on, and counts only what the
// backend's socket took. Not parallel: it counts the process's pipes.
func TestLoopSpliceEnds(t *testing.T) {
	for _, tt := range []struct {
		name       string
		end        func(tn *Tunnel, backend *wstest.Conn)
		wantReason string
		wantErr    bool
	}{
		{"backend hangs up", func(_ *Tunnel, backend *wstest.Conn) { backend.Close() }, "", true},
		{"close", func(tn *Tunnel, _ *wstest.Conn) { tn.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, "closed") }, "closed", false},
		{"abort", func(tn *Tunnel, _ *wstest.Conn) { tn.Abort("aborted") }, "aborted", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := loopConfig(Config{CloseTimeout: 50 * time.Millisecond})
			tn, client, backend, res := startedOn(t, cfg, nil, tcpPair, midPair)
			_, bs := socksOf(t, tn)
			frame, _ := bigFrame(4<<20, true)
			go client.Conn.Write(frame) // fails once the tunnel is gone
			heldPipe(t, bs)
			require.Positive(t, pipesHolding(t))

			tt.end(tn, backend)
			r := res.wait(t)
			assert.Equal(t, tt.wantReason, r.Reason)
			if tt.wantErr {
				assert.True(t, errors.Is(r.Err, syscall.ECONNRESET) || errors.Is(r.Err, syscall.EPIPE), "the backend's reset: %v", r.Err)
			} else {
				assert.NoError(t, r.Err)
				took, err := io.Copy(io.Discard, backend.Conn) // to the tunnel's FIN
				require.NoError(t, err)
				assert.Equal(t, took, r.Up.Bytes, "what the backend got, and not what the pipe held")
			}
			assert.Less(t, r.Up.Bytes, int64(len(frame)))
			assert.Zero(t, pipesHolding(t), "the pipe that held bytes is closed, not pooled")
		})
	}
}

// TestLoopSpliceMessageTooBig: a fragmented message whose first fragment
// is spliced and whose second breaks MaxMessageSize: the first passes
// whole, then both sides get 1009, the rest is dropped, and the counts
// are exact.
func TestLoopSpliceMessageTooBig(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := started(t, loopConfig(Config{MaxMessageSize: 256 << 10}), nil)
	socksOf(t, tn)
	_, first := bigFrame(200<<10, true)
	stream := wstest.AppendFrame(nil, wstest.Frame{Op: wsframe.OpBinary, Payload: first}, true)
	firstLen := int64(len(stream))
	stream = wstest.AppendFrame(stream, wstest.Frame{Fin: true, Op: wsframe.OpContinuation, Payload: make([]byte, 100<<10)}, true)
	go client.Conn.Write(stream)

	f, err := backend.ReadFrame()
	require.NoError(t, err)
	assert.Equal(t, first, f.Payload, "the fragment within the limit passed")
	closedWith(t, wsframe.CloseMessageTooBig, backend, client)
	client.Close()
	backend.Close()
	r := res.wait(t)
	assert.Equal(t, ReasonMessageTooBig, r.Reason)
	assert.Equal(t, firstLen+closeFrameLen(wsframe.CloseMessageTooBig, ReasonMessageTooBig, true), r.Up.Bytes)
	assert.Equal(t, closeFrameLen(wsframe.CloseMessageTooBig, ReasonMessageTooBig, false), r.Down.Bytes)
	assert.Zero(t, r.Up.Messages)
}
