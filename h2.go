package wsproxy

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// WebSockets over HTTP/2 (RFC 8441). A browser that already talks HTTP/2 to
// the server opens a WebSocket as a stream of that connection: an extended
// CONNECT with the pseudo-header :protocol websocket, answered by 200, after
// which the stream's DATA frames carry ordinary RFC 6455 frames (masked from
// the client, as over TCP). Go's HTTP/2 server (Go 1.24 onward) advertises
// SETTINGS_ENABLE_CONNECT_PROTOCOL and passes such requests to handlers
// only when the process starts with GODEBUG=http2xconnect=1 in its
// environment; the request then arrives with Method CONNECT, Proto
// "HTTP/2.0", the :protocol value in Header[":protocol"] and the path in
// URL. Without that setting the server refuses :protocol itself and this
// file never runs.
//
// The backend sees an ordinary HTTP/1.1 upgrade with a Sec-WebSocket-Key the
// proxy made, and its 101 is checked against that key. The client's stream
// becomes a net.Conn (h2Conn), so the tunnel, with its frame tracking,
// injected close frames, Shutdown, timeouts and hooks, runs unchanged.

// isH2WebSocket reports whether r is an RFC 8441 WebSocket request: an
// HTTP/2 extended CONNECT whose :protocol is websocket (§4, §5).
func isH2WebSocket(r *http.Request) bool {
	return r.ProtoMajor == 2 && r.Method == http.MethodConnect &&
		strings.EqualFold(r.Header.Get(":protocol"), "websocket")
}

// checkH2Request validates an RFC 8441 request as §5 describes it. The
// HTTP/2 server already checked the pseudo-headers (:scheme and :path are
// present, no connection-specific headers); what is left is the WebSocket
// part of RFC 6455 §4.1 that survives in HTTP/2.
func checkH2Request(r *http.Request) error {
	if _, ok := r.Header["Sec-Websocket-Key"]; ok {
		// RFC 8441 §5: the key and accept exchange is replaced by the
		// :protocol pseudo-header; a key here is a confused client.
		return fmt.Errorf("%w: Sec-WebSocket-Key in an HTTP/2 request (RFC 8441 §5)", ErrBadHandshake)
	}
	if v := r.Header["Sec-Websocket-Version"]; len(v) != 1 || v[0] != "13" {
		return fmt.Errorf("%w: Sec-WebSocket-Version %q, want 13", ErrBadVersion, strings.Join(v, ", "))
	}
	return nil
}

// serveH2 proxies one RFC 8441 WebSocket. The checks, the backend handshake,
// balancing, hooks and timeouts are those of HTTP/1.1; what differs is the
// client side. There is nothing to hijack: the stream is the handler's
// request body and response, so the handler stays here until the tunnel
// ends. Other CONNECT requests go to the fallback handler.
func (p *Proxy) serveH2(w http.ResponseWriter, r *http.Request) {
	if !isH2WebSocket(r) {
		p.serveFallback(w, r)
		return
	}
	if err := checkH2Request(r); err != nil {
		p.reject(w, r, err)
		return
	}
	slot, ok := p.gate(w, r)
	if !ok {
		return
	}
	defer slot.release() // unless the tunnel took it over
	// A middleware that wraps w without Unwrap could buffer or compress the
	// stream; refuse it before a backend is dialled, as for HTTP/1.1.
	rc := http.NewResponseController(w)
	if err := rc.EnableFullDuplex(); err != nil {
		p.reject(w, r, fmt.Errorf("%w: HTTP/2 stream: %w", ErrNotHijackable, err))
		return
	}
	if !p.enter() {
		p.reject(w, r, ErrShuttingDown)
		return
	}
	tn, client := p.openH2(w, r, rc, &slot)
	if tn == nil {
		return
	}
	<-tn.extra.done
	client.handlerDone()
}

// openH2 performs the backend handshake for an RFC 8441 request, answers
// the client and starts the tunnel. It returns a nil tunnel if the request
// was answered otherwise.
func (p *Proxy) openH2(w http.ResponseWriter, r *http.Request, rc *http.ResponseController, slot *admission) (tn *tunnel, client *h2Conn) {
	defer func() {
		if tn == nil {
			p.leave() // a tunnel took the count over in register
		}
	}()

	var aff affinity
	up, err := p.connect(h2BackendView(r), &aff)
	if err != nil {
		p.reject(w, r, err)
		return nil, nil
	}
	defer up.release() // unless the tunnel took it over
	if status := up.resp.StatusCode; status != http.StatusSwitchingProtocols {
		if status < 300 {
			// A 2xx would tell the client its WebSocket is open (RFC 8441
			// §5) when the backend is in fact serving plain HTTP.
			t := up.t
			up.release() // not resp.Body.Close, which would read the body to its end
			// Not a failure of the target: the client chose the path (see
			// notEndpoint).
			t.countRefusal(status)
			p.reject(w, r, &BackendError{Target: t.raw, Op: "upgrade", Err: fmt.Errorf("%w: status %d", errNotEndpoint, status)})
			return nil, nil
		}
		p.refused(w, r, &up)
		return nil, nil
	}

	p.stick(r, &aff, up.t, up.resp.Header)
	if err := write200(w, rc, up.resp, p.cfg.handshakeTimeout); err != nil {
		up.release()
		p.rejected.Add(1)
		p.notifyReject(r, fmt.Errorf("wsproxy: writing 200 to HTTP/2 client: %w", err))
		return nil, nil
	}
	client = newH2Conn(w, r, rc)
	tn = p.launch(r, client, nil, &up, slot, func(tn *tunnel) {
		tn.extraInfo().done = make(chan struct{}) // the handler waits for the tunnel
		client.closeTimeout = p.cfg.closeTimeout
		client.awaitingClose = tn.OwesCloseAnswer
	})
	return tn, client
}

// h2BackendView returns the request the backend handshake is built from:
// the client's, without the :protocol pseudo-header and with a
// Sec-WebSocket-Key of the proxy's own (16 random bytes in base64, RFC 6455
// §4.1), since an HTTP/2 client sends none. The backend's 101 is checked
// against this key.
func h2BackendView(r *http.Request) *http.Request {
	var b [16]byte
	rand.Read(b[:])
	r2 := r.WithContext(r.Context())
	r2.Header = r.Header.Clone()
	delete(r2.Header, ":protocol")
	r2.Header["Sec-Websocket-Key"] = []string{base64.StdEncoding.EncodeToString(b[:])}
	return r2
}

// write200 accepts the extended CONNECT (RFC 8441 §5) with the backend's
// subprotocol, extensions and other end-to-end headers, and whatever a
// middleware put in w.Header(); Sec-WebSocket-Accept has no place in
// HTTP/2 and connection-specific headers are forbidden there (RFC 9113
// §8.2.2). It also clears the server's ReadTimeout and WriteTimeout, which
// HTTP/2 applies per stream and which must not cut the tunnel.
func write200(w http.ResponseWriter, rc *http.ResponseController, resp *http.Response, timeout time.Duration) error {
	h := w.Header()
	answer := answerHeader(h, resp)
	clear(h)
	maps.Copy(h, answer)
	rc.SetReadDeadline(time.Time{})
	if timeout > 0 {
		rc.SetWriteDeadline(time.Now().Add(timeout))
	}
	w.WriteHeader(http.StatusOK)
	err := rc.Flush()
	rc.SetWriteDeadline(time.Time{})
	return err
}

// h2Conn is the client's side of an RFC 8441 tunnel seen as a net.Conn:
// reads come from the request body, writes go to the response and are
// flushed at once, deadlines are the stream's (ResponseController).
//
// The ResponseWriter must not be touched once the handler returns (Go's
// HTTP/2 server recycles it), yet the tunnel may still call Write, Close or
// SetReadDeadline from a timer goroutine as it ends. So every use of w and
// rc checks, under a lock, that the handler has not returned.
type h2Conn struct {
	body   io.ReadCloser
	w      http.ResponseWriter
	rc     *http.ResponseController
	local  net.Addr
	remote net.Addr

	wmu     sync.Mutex // held for a whole Write, so the handler cannot return under it
	smu     sync.Mutex // held for the short calls: Close, deadlines
	done    bool       // the handler returned; set holding both locks
	writing atomic.Bool
	closed  atomic.Bool // Close was called: reads end with net.ErrClosed
	wclosed atomic.Bool // Close or CloseWrite was called: no more writes
	eof     atomic.Bool // CloseWrite ended the reads: they end with io.EOF

	// awaitingClose reports whether the client owes the answer to a close
	// frame; set before the tunnel starts.
	awaitingClose func() bool
	closeTimeout  time.Duration
}

func newH2Conn(w http.ResponseWriter, r *http.Request, rc *http.ResponseController) *h2Conn {
	c := &h2Conn{body: r.Body, w: w, rc: rc, local: stringAddr(""), remote: stringAddr(r.RemoteAddr)}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		c.local = a
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		c.remote = net.TCPAddrFromAddrPort(ap)
	}
	return c
}

// handlerDone is called by the handler before it returns; from then on
// every method fails without touching the ResponseWriter.
func (c *h2Conn) handlerDone() {
	c.wmu.Lock()
	c.smu.Lock()
	c.done = true
	c.smu.Unlock()
	c.wmu.Unlock()
}

func (c *h2Conn) Read(b []byte) (int, error) {
	n, err := c.body.Read(b)
	if err != nil {
		switch {
		case c.eof.Load():
			err = io.EOF
		case c.closed.Load():
			err = net.ErrClosed
		}
	}
	return n, err
}

func (c *h2Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.done || c.wclosed.Load() {
		return 0, net.ErrClosed
	}
	c.writing.Store(true)
	defer c.writing.Store(false)
	if c.wclosed.Load() { // Close may have looked at writing just before it was set
		return 0, net.ErrClosed
	}
	n, err := c.w.Write(b)
	if err == nil {
		err = c.rc.Flush()
	}
	return n, err
}

// Close ends both directions: a blocked Read returns at once, and so does a
// Write stuck on flow control (by a write deadline in the past, which
// resets the stream). The stream itself ends when the handler returns.
func (c *h2Conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.wclosed.Store(true)
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.done {
		return nil
	}
	c.body.Close()
	if c.writing.Load() {
		c.rc.SetWriteDeadline(time.Unix(1, 0))
	}
	return nil
}

// CloseWrite is the tunnel's half-close. An HTTP/2 handler cannot end its
// response and go on reading the request, so the stream ends as a whole
// when the tunnel does; CloseWrite stops the writes and ends the reads with
// io.EOF, as if the client had answered a TCP FIN with its own, which makes
// the tunnel finish and the handler return (END_STREAM). One exception: if
// the client was sent a close frame and has not answered it yet, its answer
// is due, and it gets the close timeout to arrive first.
func (c *h2Conn) CloseWrite() error {
	c.wclosed.Store(true)
	if c.awaitingClose != nil && c.awaitingClose() {
		return c.SetReadDeadline(time.Now().Add(c.closeTimeout))
	}
	if c.eof.Swap(true) {
		return nil
	}
	c.smu.Lock()
	defer c.smu.Unlock()
	if !c.done {
		c.body.Close()
	}
	return nil
}

func (c *h2Conn) SetReadDeadline(t time.Time) error {
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.done {
		return net.ErrClosed
	}
	return c.rc.SetReadDeadline(t)
}

func (c *h2Conn) SetWriteDeadline(t time.Time) error {
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.done {
		return net.ErrClosed
	}
	return c.rc.SetWriteDeadline(t)
}

func (c *h2Conn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *h2Conn) LocalAddr() net.Addr  { return c.local }
func (c *h2Conn) RemoteAddr() net.Addr { return c.remote }

// stringAddr is an address known only by its text.
type stringAddr string

func (a stringAddr) Network() string { return "tcp" }
func (a stringAddr) String() string  { return string(a) }
