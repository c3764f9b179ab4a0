package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// A backend is an echo server on a fixed loopback port that the soak kills
// (listener and every connection closed at once) and restarts on the same
// port. Each life is an incarnation named "b1.3" (backend 1, third life);
// its 101 answers carry the name in X-Soak-Backend so that a client knows
// which incarnation its tunnel reached.
//
// The echo checks what it receives before sending it back: messages of one
// tunnel must arrive whole, in sequence, with the client and tunnel number
// of the request path. It streams every frame back as it came,
// fragmentation and interleaved pings (as pongs) included, reading and
// writing at most echoChunk bytes at a time, so a client that stops
// reading stops its echo too: back-pressure reaches the proxy from both
// sides.
type backend struct {
	name string // "b1"
	addr string // 127.0.0.1:port, the same for every incarnation
	bad  *violations
	// closing learns of every close frame the proxy sends.
	closing *closingTunnels

	mu    sync.Mutex
	life  int
	alive bool
	srv   *http.Server
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup // Serve and every hijacked connection

	echoed atomic.Int64 // messages checked and sent back
}

const echoChunk = 32 << 10

// socketBuffer is the size of every socket buffer in the soak: clients',
// backends' and the proxy's (through its listener and WithDialer). Left to
// itself, loopback grows buffers to tens of MiB each, and the kernel would
// absorb all a stalled client writes: the proxy's back-pressure would never
// be put to the test. With them small, a stall fills the whole chain within
// a fraction of a second, after which the client's writes must block.
const socketBuffer = 128 << 10

func smallBuffers(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetReadBuffer(socketBuffer)
		tc.SetWriteBuffer(socketBuffer)
	}
}

// smallBufferListener gives accepted connections small buffers. It returns
// them as they are (*net.TCPConn), so the proxy can still splice.
type smallBufferListener struct{ net.Listener }

func (l smallBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		smallBuffers(c)
	}
	return c, err
}

// dialSmallBuffers is the proxy's dialer.
func dialSmallBuffers(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: 15 * time.Second}
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		smallBuffers(c)
	}
	return c, err
}

var echoBufs = sync.Pool{New: func() any {
	b := make([]byte, wsframe.MaxHeaderLen+echoChunk)
	return &b
}}

func startBackend(name string, bad *violations, closing *closingTunnels) (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{name: name, addr: ln.Addr().String(), bad: bad, closing: closing}
	b.serve(ln)
	return b, nil
}

func (b *backend) url() string { return "ws://" + b.addr }

func (b *backend) serve(ln net.Listener) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.life++
	b.alive = true
	b.conns = make(map[net.Conn]struct{})
	life := b.life
	b.srv = &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { b.handle(w, r, life) }),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	srv := b.srv
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		srv.Serve(ln)
	}()
}

// incarnation names the current life.
func (b *backend) incarnation() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return fmt.Sprintf("%s.%d", b.name, b.life)
}

// kill closes the listener, the handshakes in progress and every tunnel at
// once, with RST (SO_LINGER 0) when reset is set, else with FIN. Nothing is
// sent first: to the proxy it looks like a crashed process.
func (b *backend) kill(reset bool) {
	b.mu.Lock()
	if !b.alive {
		b.mu.Unlock()
		return
	}
	b.alive = false
	conns := b.conns
	b.conns = nil
	srv := b.srv
	b.mu.Unlock()
	srv.Close()
	for c := range conns {
		if tc, ok := c.(*net.TCPConn); ok && reset {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

// restart listens on the same port again. The port may take a moment to be
// free (the old listener's close is asynchronous to the kernel), hence the
// retries.
func (b *backend) restart() error {
	var err error
	for range 100 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", b.addr); err == nil {
			b.serve(ln)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("restarting %s on %s: %w", b.name, b.addr, err)
}

// stop kills the backend for good and waits for its goroutines.
func (b *backend) stop() {
	b.kill(false)
	b.wg.Wait()
}

func (b *backend) handle(w http.ResponseWriter, r *http.Request, life int) {
	var client, gen uint32
	if _, err := fmt.Sscanf(r.URL.Path, "/soak/c%d/g%d", &client, &gen); err != nil {
		b.bad.add("%s: request for %q", b.name, r.URL.Path)
		http.Error(w, "bad path", http.StatusNotFound)
		return
	}
	key := r.Header.Get("Sec-Websocket-Key")
	if key == "" || r.Header.Get("Sec-Websocket-Version") != "13" {
		b.bad.add("%s: %s: not a WebSocket handshake", b.name, r.URL.Path)
		http.Error(w, "not a websocket handshake", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	b.mu.Lock()
	if !b.alive || b.life != life {
		b.mu.Unlock()
		conn.Close()
		return
	}
	smallBuffers(conn)
	b.conns[conn] = struct{}{}
	b.wg.Add(1)
	b.mu.Unlock()
	defer b.wg.Done()
	defer func() {
		b.mu.Lock()
		delete(b.conns, conn)
		b.mu.Unlock()
		conn.Close()
	}()

	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + wstest.Accept(key) + "\r\n" +
		fmt.Sprintf("X-Soak-Backend: %s.%d\r\n\r\n", b.name, life)
	if _, err := io.WriteString(conn, resp); err != nil {
		return
	}
	e := echo{b: b, conn: conn, br: brw.Reader, client: client, gen: gen, path: r.URL.Path}
	if err := e.run(); err != nil && errors.Is(err, errViolation) {
		b.bad.add("%s: %s: %v", b.name, r.URL.Path, err)
	}
}

var errViolation = errors.New("violation")

// echo is one tunnel's echo loop and the check of its message stream.
type echo struct {
	b            *backend
	conn         net.Conn
	br           *bufio.Reader
	client, gen  uint32
	path         string
	next         uint64 // sequence number the next message must have
	emptyNext    bool   // the next message must be empty
	inMsg        bool   // inside a fragmented message
	hdr          [msgHeaderLen]byte
	nhdr         int
	body         uint64
	crc          uint32
	msgs, frames int64
}

func (e *echo) run() error {
	var hb [wsframe.MaxHeaderLen]byte
	for {
		if _, err := io.ReadFull(e.br, hb[:2]); err != nil {
			return err
		}
		n := wsframe.HeaderLen(hb[1])
		if _, err := io.ReadFull(e.br, hb[2:n]); err != nil {
			return err
		}
		h, _, err := wsframe.ParseHeader(hb[:n])
		if err != nil {
			return fmt.Errorf("%w: frame header: %v", errViolation, err)
		}
		if !h.Masked {
			return fmt.Errorf("%w: unmasked frame from the proxy", errViolation)
		}
		if h.IsControl() {
			if done, err := e.control(h); done || err != nil {
				return err
			}
			continue
		}
		if err := e.data(h); err != nil {
			return err
		}
	}
}

func (e *echo) control(h wsframe.Header) (done bool, err error) {
	var p [wsframe.MaxControlPayload]byte
	pl := p[:h.Length]
	if _, err := io.ReadFull(e.br, pl); err != nil {
		return true, err
	}
	mask(h.Mask, 0, pl)
	switch h.OpCode {
	case wsframe.OpPing:
		_, err := e.conn.Write(appendFrame(nil, true, wsframe.OpPong, pl, false, [4]byte{}))
		return false, err
	case wsframe.OpClose:
		e.b.closing.add(e.client, e.gen)
		// Answer with the same code, then hang up: the server closes the
		// TCP connection first (RFC 6455 §7.1.1).
		e.conn.Write(appendFrame(nil, true, wsframe.OpClose, pl, false, [4]byte{}))
		return true, nil
	}
	return false, nil
}

// data checks and echoes one data frame, a chunk at a time.
func (e *echo) data(h wsframe.Header) error {
	switch {
	case h.OpCode == wsframe.OpContinuation && !e.inMsg:
		return fmt.Errorf("%w: continuation frame outside a message", errViolation)
	case h.OpCode != wsframe.OpContinuation && e.inMsg:
		return fmt.Errorf("%w: new message (op %d) inside a fragmented one", errViolation, h.OpCode)
	case h.OpCode == wsframe.OpBinary:
		e.inMsg, e.nhdr, e.body, e.crc = true, 0, 0, 0
	case h.OpCode != wsframe.OpContinuation:
		return fmt.Errorf("%w: unexpected opcode %d", errViolation, h.OpCode)
	}
	bp := echoBufs.Get().(*[]byte)
	defer echoBufs.Put(bp)
	buf := *bp
	out := wsframe.AppendHeader(buf[:0], wsframe.Header{Fin: h.Fin, OpCode: h.OpCode, Length: h.Length})
	hl := len(out)
	pos, left := 0, h.Length
	for first := true; first || left > 0; first = false {
		k := min(left, echoChunk)
		chunk := buf[hl : hl+int(k)]
		if _, err := io.ReadFull(e.br, chunk); err != nil {
			return err
		}
		mask(h.Mask, pos, chunk)
		pos += int(k)
		left -= k
		e.feed(chunk)
		if _, err := e.conn.Write(buf[:hl+int(k)]); err != nil {
			return err
		}
		hl = 0 // the header goes with the first chunk only
	}
	e.frames++
	if h.Fin {
		e.inMsg = false
		return e.endMessage()
	}
	return nil
}

func (e *echo) feed(b []byte) {
	if e.nhdr < msgHeaderLen {
		n := copy(e.hdr[e.nhdr:], b)
		e.nhdr += n
		b = b[n:]
	}
	e.body += uint64(len(b))
	e.crc = crc32Update(e.crc, b)
}

func (e *echo) endMessage() error {
	if e.emptyNext {
		e.emptyNext = false
		if e.nhdr != 0 {
			return fmt.Errorf("%w: message after seq %d should be empty, has %d+ bytes", errViolation, e.next-1, e.nhdr)
		}
		e.msgs++
		e.b.echoed.Add(1)
		return nil
	}
	h, err := parseHeader(e.hdr[:e.nhdr])
	switch {
	case err != nil:
		return fmt.Errorf("%w: message %d: %v", errViolation, e.next, err)
	case h.client != e.client || h.gen != e.gen:
		return fmt.Errorf("%w: %v on the tunnel of c%d.g%d", errViolation, h, e.client, e.gen)
	case h.seq != e.next:
		return fmt.Errorf("%w: %v where seq %d was due", errViolation, h, e.next)
	case uint64(h.bodyLen) != e.body:
		return fmt.Errorf("%w: %v arrived with %d body bytes", errViolation, h, e.body)
	case h.crc != e.crc:
		return fmt.Errorf("%w: %v arrived with checksum %08x", errViolation, h, e.crc)
	}
	e.next++
	e.emptyNext = h.flags&flagEmptyNext != 0
	e.msgs++
	e.b.echoed.Add(1)
	return nil
}
