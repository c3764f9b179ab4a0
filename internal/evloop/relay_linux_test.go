package evloop

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The relay below is what the tests drive evloop with: a TCP proxy whose
// tunnels live in a Group's loops, each socket a raw descriptor, moving
// bytes with the short-read rule, back-pressure and half-close, the way a
// tunnel engine on evloop would.

// relayBufSize is each direction's buffer: what a tunnel can hold while
// its destination is full.
const relayBufSize = 32 << 10

// relayStats counts what the tests want to see happen.
type relayStats struct {
	stalls  atomic.Int64 // a destination was full: its source stopped being read
	resumes atomic.Int64 // a stalled destination took the rest: reading went on
	errs    atomic.Int64 // setting up a tunnel failed
	// onStall is called on the loop at each stall, if set. A test sets it
	// after the relay started: the loop's goroutine reads it with no other
	// ordering than a TCP connection, which the race detector cannot see.
	onStall atomic.Pointer[func()]
}

// tunnel is one relayed connection: two sides, each reading its socket
// and writing to the other's.
type tunnel struct {
	a, b  side
	st    *relayStats
	dead  bool
	ended func()
}

type side struct {
	t    *tunnel
	reg  *Reg
	peer *side
	buf  []byte
	pend []byte // read from this socket, not yet taken by the peer's
	// readable: an edge came and the socket was not drained since, so
	// reading goes on once pend is empty. drain: the edge said the peer
	// closed or failed; read until EOF regardless of short reads.
	readable, drain bool
	eof             bool // read the end of the stream and passed it on
	stalled         bool // pend waits for the peer's socket to take it
}

// startTunnel registers both descriptors on l, which then own them (on an
// error too: startTunnel closes them). It must run on l's goroutine (in a
// posted func), so that no handler runs before both sides know their
// registrations.
func startTunnel(l *Loop, fda, fdb int, st *relayStats, ended func()) error {
	t := &tunnel{st: st, ended: ended}
	t.a = side{t: t, peer: &t.b, buf: make([]byte, relayBufSize)}
	t.b = side{t: t, peer: &t.a, buf: make([]byte, relayBufSize)}
	ra, err := l.Add(fda, &t.a)
	if err != nil {
		closeFds(fda, fdb)
		return err
	}
	rb, err := l.Add(fdb, &t.b)
	if err != nil {
		ra.Close()
		closeFds(fdb)
		return err
	}
	t.a.reg, t.b.reg = ra, rb
	return nil
}

func closeFds(fds ...int) {
	for _, fd := range fds {
		if fd >= 0 {
			syscall.Close(fd)
		}
	}
}

func (s *side) Ready(_ *Reg, ev Events) {
	if s.t.dead {
		return
	}
	if ev&^Writable != 0 {
		s.readable = true
		s.drain = s.drain || ev&(ReadClosed|HangUp|Error) != 0
	}
	if ev&Writable != 0 {
		s.peer.move() // the peer's pending bytes can come into this socket
	}
	s.move()
}

// move carries bytes from s's socket to the peer's until s is drained or
// the peer's socket is full.
func (s *side) move() {
	if len(s.pend) > 0 && !s.flush() {
		return
	}
	for s.readable && !s.t.dead {
		n, err := Read(s.reg.Fd(), s.buf)
		if n > 0 {
			s.readable = n == len(s.buf) || s.drain // the short-read rule
			s.pend = s.buf[:n]
			if !s.flush() {
				s.stall()
				return
			}
			continue
		}
		s.readable = false
		switch {
		case errors.Is(err, ErrWouldBlock):
		case errors.Is(err, io.EOF):
			s.passEOF()
		default:
			s.t.close()
		}
	}
}

// flush writes pend to the peer's socket and reports whether all went.
func (s *side) flush() bool {
	n, err := Write(s.peer.reg.Fd(), s.pend)
	s.pend = s.pend[n:]
	switch {
	case err == nil:
		if s.stalled {
			s.stalled = false
			s.t.st.resumes.Add(1)
		}
		return true
	case errors.Is(err, ErrWouldBlock):
		return false
	}
	s.t.close()
	return false
}

func (s *side) passEOF() {
	s.eof = true
	if ShutdownWrite(s.peer.reg.Fd()) != nil || s.peer.eof {
		s.t.close()
	}
}

func (s *side) stall() {
	if s.t.dead {
		return
	}
	s.stalled = true
	s.t.st.stalls.Add(1)
	if f := s.t.st.onStall.Load(); f != nil {
		(*f)()
	}
}

func (t *tunnel) close() {
	if t.dead {
		return
	}
	t.dead = true
	t.a.reg.Close()
	t.b.reg.Close()
	t.ended()
}

// relay is a proxy listening on loopback that relays every connection to
// backend through g's loops.
type relay struct {
	addr  string
	stats relayStats
	live  sync.WaitGroup
}

// startRelay runs a relay to backend until the test ends; the test then
// waits for every tunnel to have ended.
func startRelay(t testing.TB, g *Group, backend string) *relay {
	t.Helper()
	ln := listen(t)
	r := &relay{addr: ln.Addr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.open(c, g, backend)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		r.live.Wait()
	})
	return r
}

// open dials the backend for client and hands both sockets to a loop as
// raw descriptors, closing their net.Conns.
func (r *relay) open(client net.Conn, g *Group, backend string) {
	defer client.Close()
	bc, err := net.Dial("tcp", backend)
	if err != nil {
		r.stats.errs.Add(1)
		return
	}
	defer bc.Close()
	fda, erra := DupConn(client.(*net.TCPConn))
	fdb, errb := DupConn(bc.(*net.TCPConn))
	if erra != nil || errb != nil {
		closeFds(fda, fdb)
		r.stats.errs.Add(1)
		return
	}
	r.live.Add(1)
	l := g.Pick()
	err = l.Post(func() {
		if err := startTunnel(l, fda, fdb, &r.stats, r.live.Done); err != nil {
			r.stats.errs.Add(1)
			r.live.Done()
		}
	})
	if err != nil {
		closeFds(fda, fdb)
		r.stats.errs.Add(1)
		r.live.Done()
	}
}

func TestRelayHalfClose(t *testing.T) {
	t.Parallel()
	g, err := NewGroup(0)
	require.NoError(t, err)
	// The backend reads to the end first, then answers: its answer can
	// only arrive if the client's FIN went through and the way back stayed
	// open.
	backend := serve(t, func(c *net.TCPConn) {
		got, err := io.ReadAll(c)
		if err == nil && string(got) == "question" {
			c.Write([]byte("answer after your end"))
		}
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	r := startRelay(t, g, backend)
	c, err := net.Dial("tcp", r.addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(testTimeout)))
	_, err = c.Write([]byte("question"))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, "answer after your end", string(got))
	assert.Zero(t, r.stats.errs.Load())
}

func TestRelayEchoManyConns(t *testing.T) {
	t.Parallel()
	g, err := NewGroup(2) // more than one loop even on a small machine
	require.NoError(t, err)
	r := startRelay(t, g, echoBackend(t))
	const conns = 50
	results := make([]echoResult, conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = echoThrough(r.addr, uint64(i), 64<<10+i*(16<<10))
		}()
	}
	wg.Wait()
	for i, res := range results {
		if assert.NoError(t, res.err, "conn %d", i) {
			assert.Equal(t, res.sent, res.got, "conn %d: echoed bytes differ", i)
		}
	}
	assert.Zero(t, r.stats.errs.Load())
}

// echoResult is one connection's run through an echo: a digest of what it
// sent and of what came back, with the counts.
type echoResult struct {
	sent, got digest
	err       error
}

type digest struct {
	n   int64
	sum [sha256.Size]byte
}

// echoThrough writes size seeded random bytes to addr in chunks of random
// sizes, half-closes, and reads everything that comes back until EOF, at
// the same time: a client that writes faster than it reads makes every
// buffer on the way fill and drain.
func echoThrough(addr string, seed uint64, size int) echoResult {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return echoResult{err: err}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	var res echoResult
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		res.sent, werr = writeRandom(c.(*net.TCPConn), seed, size)
	}()
	res.got, res.err = readDigest(c)
	<-done
	if res.err == nil {
		res.err = werr
	}
	return res
}

// writeRandom writes size bytes from a seeded generator in chunks of 1 to
// 64 KiB, then shuts down writing.
func writeRandom(c *net.TCPConn, seed uint64, size int) (digest, error) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	src := rand.NewChaCha8(key)
	rng := rand.New(src)
	h := sha256.New()
	buf := make([]byte, 64<<10)
	left := size
	for left > 0 {
		chunk := buf[:min(left, 1+rng.IntN(len(buf)))]
		src.Read(chunk)
		h.Write(chunk)
		if _, err := c.Write(chunk); err != nil {
			return digest{}, err
		}
		left -= len(chunk)
	}
	d := digest{n: int64(size)}
	h.Sum(d.sum[:0])
	return d, c.CloseWrite()
}

// readDigest reads r to EOF and digests what came.
func readDigest(r io.Reader) (digest, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	d := digest{n: n}
	h.Sum(d.sum[:0])
	return d, err
}

func TestRelayBackPressure(t *testing.T) {
	t.Parallel()
	g, err := NewGroup(1)
	require.NoError(t, err)
	// The backend reads nothing until the relay has found it full, so the
	// relay must stop reading the client and, once the backend reads,
	// resume; what the backend finally reads must be every byte in order.
	full := make(chan struct{})
	var once sync.Once
	received := make(chan echoResult, 1)
	backend := serve(t, func(c *net.TCPConn) {
		select {
		case <-full:
		case <-time.After(testTimeout):
		}
		d, err := readDigest(c)
		received <- echoResult{got: d, err: err}
	})
	r := startRelay(t, g, backend)
	onStall := func() { once.Do(func() { close(full) }) }
	r.stats.onStall.Store(&onStall)

	c, err := net.Dial("tcp", r.addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(testTimeout)))
	// More than the kernel buffers of both hops hold (a few MB here:
	// the receive buffer of a socket nobody reads does not grow).
	sent, err := writeRandom(c.(*net.TCPConn), 7, 16<<20)
	require.NoError(t, err)
	res := <-received
	require.NoError(t, res.err)
	assert.Equal(t, sent, res.got, "bytes lost, added or reordered")
	assert.Positive(t, r.stats.stalls.Load(), "the relay never found the backend full")
	assert.Equal(t, r.stats.stalls.Load(), r.stats.resumes.Load(), "every stall ends in a resume")
}
