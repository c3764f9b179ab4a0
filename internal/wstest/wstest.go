// Package wstest is a small, strict WebSocket implementation for tests:
// a client and a server that write and read individual frames, so tests can
// send fragmented messages, pipeline data behind a handshake, and see every
// close code. It is not for production use.
package wstest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// Frame is one WebSocket frame, unmasked.
type Frame struct {
	Fin     bool
	Rsv     byte
	Op      byte
	Payload []byte
}

// CloseError is returned by ReadMessage when the peer sent a close frame.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string { return fmt.Sprintf("websocket closed: %d %q", e.Code, e.Reason) }

// Conn is one side of a WebSocket connection.
type Conn struct {
	net.Conn
	br     *bufio.Reader
	client bool // frames written are masked, frames read must not be
	wmu    sync.Mutex
	// Resp is the server's handshake response (client side only).
	Resp *http.Response
}

// LockWrites holds back every other write (close replies included) until
// UnlockWrites, as a real implementation does while it is in the middle of
// a frame. Use Conn.Conn.Write to write while holding it.
func (c *Conn) LockWrites() { c.wmu.Lock() }

// UnlockWrites ends LockWrites.
func (c *Conn) UnlockWrites() { c.wmu.Unlock() }

// Buffered returns a reader of the bytes read from the connection but not
// yet consumed as frames.
func (c *Conn) Buffered() io.Reader {
	b, _ := c.br.Peek(c.br.Buffered())
	return bytes.NewReader(b)
}

// NewConn wraps an established connection. br may hold bytes already read.
func NewConn(c net.Conn, br *bufio.Reader, client bool) *Conn {
	if br == nil {
		br = bufio.NewReader(c)
	}
	return &Conn{Conn: c, br: br, client: client}
}

// AppendFrame appends the wire form of a frame, masked with a random key
// when mask is true.
func AppendFrame(dst []byte, f Frame, mask bool) []byte {
	h := wsframe.Header{Fin: f.Fin, Rsv: f.Rsv, OpCode: f.Op, Length: uint64(len(f.Payload))}
	if mask {
		h.Masked = true
		rand.Read(h.Mask[:])
	}
	dst = wsframe.AppendHeader(dst, h)
	start := len(dst)
	dst = append(dst, f.Payload...)
	if mask {
		wsframe.Mask(h.Mask, 0, dst[start:])
	}
	return dst
}

// WriteFrame writes one frame.
func (c *Conn) WriteFrame(f Frame) error {
	b := AppendFrame(nil, f, c.client)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.Conn.Write(b)
	return err
}

// WriteMessage writes a whole message in one frame.
func (c *Conn) WriteMessage(op byte, payload []byte) error {
	return c.WriteFrame(Frame{Fin: true, Op: op, Payload: payload})
}

// WriteClose sends a close frame with a code and reason.
func (c *Conn) WriteClose(code int, reason string) error {
	return c.WriteFrame(Frame{Fin: true, Op: wsframe.OpClose, Payload: wsframe.ClosePayload(uint16(code), reason)})
}

// ReadFrame reads one frame and checks its mask bit.
func (c *Conn) ReadFrame() (Frame, error) {
	var hdr [wsframe.MaxHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:2]); err != nil {
		return Frame{}, err
	}
	n := wsframe.HeaderLen(hdr[1])
	if _, err := io.ReadFull(c.br, hdr[2:n]); err != nil {
		return Frame{}, err
	}
	h, _, err := wsframe.ParseHeader(hdr[:n])
	if err != nil {
		return Frame{}, err
	}
	if h.Masked == c.client {
		return Frame{}, fmt.Errorf("wstest: frame masked=%v read by client=%v", h.Masked, c.client)
	}
	if h.Length > 64<<20 {
		return Frame{}, fmt.Errorf("wstest: frame of %d bytes", h.Length)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return Frame{}, err
	}
	if h.Masked {
		wsframe.Mask(h.Mask, 0, p)
	}
	return Frame{Fin: h.Fin, Rsv: h.Rsv, Op: h.OpCode, Payload: p}, nil
}

// ReadMessage reads a whole message, reassembling fragments. It answers
// pings with pongs, skips pongs, and returns a *CloseError for a close frame
// (after answering it, as RFC 6455 §5.5.1 asks).
func (c *Conn) ReadMessage() (op byte, payload []byte, err error) {
	for {
		f, err := c.ReadFrame()
		if err != nil {
			return 0, nil, err
		}
		switch f.Op {
		case wsframe.OpPing:
			if err := c.WriteFrame(Frame{Fin: true, Op: wsframe.OpPong, Payload: f.Payload}); err != nil {
				return 0, nil, err
			}
			continue
		case wsframe.OpPong:
			continue
		case wsframe.OpClose:
			code, reason := wsframe.ParseClose(f.Payload)
			c.WriteFrame(Frame{Fin: true, Op: wsframe.OpClose, Payload: f.Payload})
			return 0, nil, &CloseError{Code: int(code), Reason: reason}
		case wsframe.OpContinuation:
			if op == 0 {
				return 0, nil, errors.New("wstest: continuation without a message")
			}
		default:
			if op != 0 {
				return 0, nil, errors.New("wstest: new message inside a fragmented one")
			}
			op = f.Op
		}
		payload = append(payload, f.Payload...)
		if f.Fin {
			return op, payload, nil
		}
	}
}

// ReadClose reads until a close frame or an error, answering the close
// frame; it returns the close code, or -1 when the connection ended
// without one.
func (c *Conn) ReadClose() int {
	for {
		_, _, err := c.ReadMessage()
		var ce *CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil {
			return -1
		}
	}
}

// NewKey returns a random Sec-WebSocket-Key.
func NewKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// Accept returns the Sec-WebSocket-Accept value for key.
func Accept(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// Request returns the bytes of a client upgrade request for path on host,
// with extra header lines ("Name: value") appended as given.
func Request(host, path, key string, extra ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", path, host)
	fmt.Fprintf(&b, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", key)
	for _, h := range extra {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// Dial opens a WebSocket to a ws:// or wss:// URL. extra header lines are
// added to the request; early, if not nil, is written in the same write as
// the handshake (pipelined data). It fails unless the answer is a valid 101;
// the response is returned in either case when one was read.
func Dial(ctx context.Context, rawURL string, tlsConfig *tls.Config, early []byte, extra ...string) (*Conn, *http.Response, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, nil, err
	}
	if u.Scheme == "wss" || u.Scheme == "https" {
		cfg := &tls.Config{}
		if tlsConfig != nil {
			cfg = tlsConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, nil, err
		}
		conn = tc
	}
	return Handshake(ctx, conn, u.Host, u.RequestURI(), early, extra...)
}

// Handshake opens a WebSocket on conn, a connection the caller dialled
// (with socket options of its own, say), as Dial does after dialling; it
// closes conn when the handshake fails.
func Handshake(ctx context.Context, conn net.Conn, host, path string, early []byte, extra ...string) (*Conn, *http.Response, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	key := NewKey()
	msg := append(Request(host, path, key, extra...), early...)
	if _, err := conn.Write(msg); err != nil {
		conn.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-Websocket-Accept") != Accept(key) {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		conn.Close()
		return nil, resp, fmt.Errorf("wstest: handshake: status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	conn.SetDeadline(time.Time{})
	c := NewConn(conn, br, true)
	c.Resp = resp
	return c, resp, nil
}

// Upgrade answers a server-side upgrade request and returns the connection.
// header lines are added to the 101 response.
func Upgrade(w http.ResponseWriter, r *http.Request, header http.Header) (*Conn, error) {
	key := r.Header.Get("Sec-Websocket-Key")
	if key == "" || r.Header.Get("Sec-Websocket-Version") != "13" {
		http.Error(w, "not a websocket handshake", http.StatusBadRequest)
		return nil, errors.New("wstest: not a websocket handshake")
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
	fmt.Fprintf(&b, "Sec-WebSocket-Accept: %s\r\n", Accept(key))
	for k, vv := range header {
		for _, v := range vv {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	if _, err := conn.Write([]byte(b.String())); err != nil {
		conn.Close()
		return nil, err
	}
	return NewConn(conn, brw.Reader, false), nil
}

// EchoHandler is a backend that sends every data frame back as it came,
// fragmentation included, answers pings, and answers a close frame with the
// same code before closing. It picks the first offered subprotocol.
func EchoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := http.Header{}
		if p := r.Header.Get("Sec-Websocket-Protocol"); p != "" {
			h.Set("Sec-WebSocket-Protocol", strings.TrimSpace(strings.Split(p, ",")[0]))
		}
		c, err := Upgrade(w, r, h)
		if err != nil {
			return
		}
		Echo(c)
	})
}

// Echo runs the echo loop on an established server connection.
func Echo(c *Conn) {
	defer c.Close()
	for {
		f, err := c.ReadFrame()
		if err != nil {
			return
		}
		switch f.Op {
		case wsframe.OpPing:
			f.Op = wsframe.OpPong
		case wsframe.OpPong:
			continue
		case wsframe.OpClose:
			c.WriteFrame(f)
			return
		}
		if err := c.WriteFrame(f); err != nil {
			return
		}
	}
}
