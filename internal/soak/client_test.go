package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// A client keeps one tunnel through the proxy open for the whole soak: it
// sends messages and checks their echoes, and when a tunnel ends it opens
// the next one, until the proxy shuts down. A slow client now and then
// stops reading for a while and meanwhile writes as fast as it can, which
// only back-pressure through the proxy can stop.
type client struct {
	s    *soak
	id   uint32
	slow bool
	rng  *rand.Rand // the client goroutine's (dialing, reading)
	wrng *rand.Rand // the writer's

	cur atomic.Pointer[tunnel] // the open tunnel, nil between two

	// Written by the client goroutine only, read after it ended.
	records   []tunnelRecord
	dialFails map[string]int
	latency   []time.Duration // echo latencies (slow clients: only maxSlow)
	maxSlow   time.Duration
	acked     int64 // messages echoed intact and in order
	ackBytes  int64
	stalls    int   // times the reader stopped
	blocked   int   // stalls during which a write blocked for stallBlocked
	stallMax  int64 // most bytes written during one stall, before the proxy closed the tunnel

	// Written by the writers.
	sent      atomic.Int64
	sentBytes atomic.Int64
}

// tunnel is the state of one tunnel shared by its reader and writer.
type tunnel struct {
	conn  *wstest.Conn
	gen   uint32
	sent  atomic.Uint64 // sequence numbers handed out
	acked atomic.Uint64 // sequence numbers echoed
	ack   chan struct{} // a nudge for the writer: acked or stalling changed
	done  chan struct{} // the reader ended

	closed bool // guarded by conn's write lock: a close frame went out

	stalling   atomic.Bool
	stallBytes atomic.Int64 // bytes written during the current stall, before the proxy closed the tunnel
	blocked    atomic.Bool  // a write blocked during the current stall
	writing    atomic.Int64 // unix nanoseconds when the write in progress began, 0 if none
	tokens     atomic.Int64 // large-message tokens held by unacknowledged messages
	pings      atomic.Uint64
}

// tunnelRecord is what a client saw of one tunnel.
type tunnelRecord struct {
	path    string
	backend string // the backend incarnation, "b1.3"
	end     ending
	acked   int64 // messages acknowledged on this tunnel
	slow    bool  // a slow client's tunnel, stalled at some point
}

type endKind int

const (
	endClose     endKind = iota // a close frame arrived
	endAbrupt                   // the connection ended without one
	endViolation                // the client saw something that must not happen
)

type ending struct {
	kind    endKind
	code    int
	reason  string
	payload []byte // of the close frame
	err     error
}

// stallBlocked is how long a write must take during a stall to count as
// blocked by back-pressure.
const stallBlocked = 200 * time.Millisecond

func (c *client) run() {
	s := c.s
	c.dialFails = make(map[string]int)
	for gen := uint32(0); !s.stopping.Load(); gen++ {
		path := fmt.Sprintf("/soak/c%d/g%d", c.id, gen)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		conn, resp, err := wstest.Dial(ctx, s.url+path, nil, nil)
		cancel()
		if err != nil {
			c.dialFails[dialFailure(resp, err)]++
			sleep(c.rng, 100*time.Millisecond, 500*time.Millisecond)
			continue
		}
		smallBuffers(conn.Conn)
		rec := c.tunnel(conn, gen, path, resp.Header.Get("X-Soak-Backend"))
		c.records = append(c.records, rec)
		if rec.end.kind == endClose && rec.end.reason == "shutdown" {
			return
		}
		sleep(c.rng, 10*time.Millisecond, 200*time.Millisecond)
	}
}

// dialFailure names why a tunnel could not be opened.
func dialFailure(resp *http.Response, err error) string {
	switch {
	case resp != nil:
		return fmt.Sprintf("HTTP %d", resp.StatusCode)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF instead of an answer"
	}
	return fmt.Sprintf("other (%T)", err)
}

func sleep(rng *rand.Rand, lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(rng.Int64N(int64(hi-lo))))
}

// tunnel runs one tunnel: a writer goroutine, the reader here.
func (c *client) tunnel(conn *wstest.Conn, gen uint32, path, backend string) tunnelRecord {
	t := &tunnel{conn: conn, gen: gen, ack: make(chan struct{}, 1), done: make(chan struct{})}
	c.s.track(conn, true)
	defer c.s.track(conn, false)
	c.cur.Store(t)
	var wg sync.WaitGroup
	wg.Go(func() { c.write(t) })
	ackedBefore := c.acked
	stallsBefore := c.stalls
	end := c.read(t)
	c.cur.Store(nil)
	close(t.done)
	if end.kind == endClose {
		// Answer the close frame, and read until the proxy hangs up (it
		// does first, RFC 6455 §7.1.1). The answer waits for the writer's
		// frame in progress, which after a stall may wait for the echoes
		// to be read: hence reading while answering.
		key := maskKey(c.rng)
		wg.Go(func() {
			t.conn.LockWrites()
			defer t.conn.UnlockWrites()
			if !t.closed {
				t.closed = true
				t.conn.Conn.Write(appendFrame(nil, true, wsframe.OpClose, end.payload, true, key))
			}
		})
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		io.Copy(io.Discard, conn)
	}
	conn.Close()
	wg.Wait()
	for range t.tokens.Load() {
		<-c.s.large
	}
	return tunnelRecord{path: path, backend: backend, end: end, acked: c.acked - ackedBefore, slow: c.stalls > stallsBefore}
}

func (t *tunnel) nudge() {
	select {
	case t.ack <- struct{}{}:
	default:
	}
}

// write sends messages until the tunnel ends: at most window unacknowledged
// ones, a pause between two; while the reader stalls, as fast as it can.
func (c *client) write(t *tunnel) {
	cfg := &c.s.cfg
	rng := c.wrng
	for {
		stalling := t.stalling.Load()
		if !stalling {
			for t.sent.Load()-t.acked.Load() >= uint64(cfg.window) && !t.stalling.Load() {
				select {
				case <-t.ack:
				case <-t.done:
					return
				}
			}
			select {
			case <-time.After(time.Duration(rng.Int64N(2 * int64(cfg.think)))):
			case <-t.done:
				return
			}
			stalling = t.stalling.Load()
		}
		size, token := c.size(stalling)
		seq := t.sent.Load()
		h := msgHeader{client: c.id, gen: t.gen, seq: seq, sent: time.Now().UnixNano()}
		if token {
			h.flags |= flagToken
			t.tokens.Add(1)
		}
		empty := rng.IntN(20) == 0
		if empty {
			h.flags |= flagEmptyNext
		}
		msg := buildMessage(h, size, rng)
		t.sent.Store(seq + 1) // before writing: the echo may come back before Write returns
		c.sent.Add(1)
		c.sentBytes.Add(int64(size))
		start := time.Now()
		t.writing.Store(start.UnixNano())
		err := c.writeMessage(t, msg)
		t.writing.Store(0)
		if err != nil {
			return
		}
		if empty {
			c.sent.Add(1)
			if c.writeMessage(t, nil) != nil {
				return
			}
		}
		// Once the proxy closes the tunnel it discards what the client
		// still sends: those bytes are not back-pressure's to hold.
		if stalling && !c.s.closing.has(c.id, t.gen) {
			t.stallBytes.Add(int64(size))
			if time.Since(start) >= stallBlocked {
				t.blocked.Store(true)
			}
		}
	}
}

// size picks a message size: mostly small, some up to 256 KiB. Messages
// over 64 KiB need a token, which bounds the memory all clients together
// spend on them; a stalling client writes only 256 KiB messages, without.
func (c *client) size(stalling bool) (size int, token bool) {
	rng := c.wrng
	between := func(lo, hi int) int { return lo + rng.IntN(hi-lo+1) }
	if stalling {
		return maxMessage, false
	}
	switch r := rng.IntN(100); {
	case r < 60:
		return between(msgHeaderLen, 512), false
	case r < 85:
		return between(512, 8<<10), false
	case r < 97:
		return between(8<<10, 64<<10), false
	}
	select {
	case c.s.large <- struct{}{}:
		return between(64<<10, maxMessage), true
	default:
		return between(8<<10, 64<<10), false
	}
}

var errClosed = errors.New("close frame sent")

// writeMessage writes msg as one frame, or fragmented into up to four with
// pings between the fragments now and then.
func (c *client) writeMessage(t *tunnel, msg []byte) error {
	rng := c.wrng
	frags := [][]byte{msg}
	if rng.IntN(5) == 0 {
		cuts := []int{0, len(msg)}
		for range 1 + rng.IntN(3) {
			cuts = append(cuts, rng.IntN(len(msg)+1))
		}
		slices.Sort(cuts)
		frags = frags[:0]
		for i := 1; i < len(cuts); i++ {
			frags = append(frags, msg[cuts[i-1]:cuts[i]])
		}
	}
	for i, f := range frags {
		op := byte(wsframe.OpContinuation)
		if i == 0 {
			op = wsframe.OpBinary
		}
		fin := i == len(frags)-1
		if err := c.writeFrame(t, appendFrame(nil, fin, op, f, true, maskKey(rng))); err != nil {
			return err
		}
		if !fin && rng.IntN(3) == 0 || fin && rng.IntN(50) == 0 {
			var p [8]byte
			n := t.pings.Add(1) - 1
			for j := range p {
				p[j] = byte(n >> (8 * (7 - j)))
			}
			if err := c.writeFrame(t, appendFrame(nil, true, wsframe.OpPing, p[:], true, maskKey(rng))); err != nil {
				return err
			}
		}
	}
	return nil
}

func maskKey(rng *rand.Rand) [4]byte {
	v := rng.Uint32()
	return [4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
}

// writeFrame writes one whole frame, never after a close frame.
func (c *client) writeFrame(t *tunnel, frame []byte) error {
	t.conn.LockWrites()
	defer t.conn.UnlockWrites()
	if t.closed {
		return errClosed
	}
	_, err := t.conn.Conn.Write(frame)
	return err
}

// read checks every echo until the tunnel ends and says how it ended.
func (c *client) read(t *tunnel) ending {
	var (
		msg         []byte
		inMsg       bool
		next        uint64 // the sequence number due
		expectEmpty bool
		pongs       uint64
		nextStall   = time.Now().Add(time.Duration(c.rng.Int64N(int64(5 * time.Second))))
	)
	violation := func(format string, args ...any) ending {
		err := fmt.Errorf("c%d.g%d: "+format, append([]any{c.id, t.gen}, args...)...)
		c.s.bad.add("client %v", err)
		return ending{kind: endViolation, err: err}
	}
	for {
		if c.slow && time.Now().After(nextStall) {
			c.stall(t)
			nextStall = time.Now().Add(3*time.Second + time.Duration(c.rng.Int64N(int64(5*time.Second))))
		}
		f, err := t.conn.ReadFrame()
		if err != nil {
			return ending{kind: endAbrupt, err: err}
		}
		switch f.Op {
		case wsframe.OpPing:
			if err := c.writeFrame(t, appendFrame(nil, true, wsframe.OpPong, f.Payload, true, maskKey(c.rng))); err != nil {
				return ending{kind: endAbrupt, err: err}
			}
			continue
		case wsframe.OpPong:
			var n uint64
			for _, b := range f.Payload {
				n = n<<8 | uint64(b)
			}
			if len(f.Payload) != 8 || n != pongs {
				return violation("pong %x where pong %d was due", f.Payload, pongs)
			}
			pongs++
			continue
		case wsframe.OpClose:
			code, reason := wsframe.ParseClose(f.Payload)
			return ending{kind: endClose, code: int(code), reason: reason, payload: f.Payload}
		case wsframe.OpBinary:
			if inMsg {
				return violation("new message inside a fragmented one")
			}
			inMsg = true
			msg = f.Payload
			if !f.Fin {
				msg = append([]byte(nil), f.Payload...)
			}
		case wsframe.OpContinuation:
			if !inMsg {
				return violation("continuation frame outside a message")
			}
			msg = append(msg, f.Payload...)
		default:
			return violation("unexpected opcode %d", f.Op)
		}
		if !f.Fin {
			continue
		}
		inMsg = false
		if expectEmpty {
			if len(msg) != 0 {
				return violation("message of %d bytes where the empty one after seq %d was due", len(msg), next-1)
			}
			expectEmpty = false
			c.acked++
			continue
		}
		h, err := checkMessage(msg)
		switch {
		case err != nil:
			return violation("message %d: %v", next, err)
		case h.client != c.id || h.gen != t.gen:
			return violation("echo of %v", h)
		case h.seq != next:
			return violation("echo of %v where seq %d was due", h, next)
		case h.seq >= t.sent.Load():
			return violation("echo of %v, never sent", h)
		}
		next++
		t.acked.Store(next)
		t.nudge()
		if h.flags&flagToken != 0 {
			t.tokens.Add(-1)
			<-c.s.large
		}
		expectEmpty = h.flags&flagEmptyNext != 0
		lat := time.Duration(time.Now().UnixNano() - h.sent)
		if c.slow {
			c.maxSlow = max(c.maxSlow, lat)
		} else {
			c.latency = append(c.latency, lat)
		}
		c.acked++
		c.ackBytes += int64(len(msg))
		msg = nil
	}
}

// stall stops reading for a while, if the soak is still in its chaos phase
// and not too many clients stall already.
func (c *client) stall(t *tunnel) {
	s := c.s
	if !time.Now().Before(s.stallUntil()) {
		return
	}
	select {
	case s.stalls <- struct{}{}:
	default:
		return
	}
	defer func() { <-s.stalls }()
	t.stallBytes.Store(0)
	t.blocked.Store(false)
	t.stalling.Store(true)
	t.nudge()
	time.Sleep(s.cfg.stallMin + time.Duration(c.rng.Int64N(int64(s.cfg.stallMax-s.cfg.stallMin))))
	t.stalling.Store(false)
	c.stalls++
	if w := t.writing.Load(); t.blocked.Load() || w != 0 && time.Since(time.Unix(0, w)) >= stallBlocked {
		c.blocked++
	}
	c.stallMax = max(c.stallMax, t.stallBytes.Load())
}
