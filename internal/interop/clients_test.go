package interop

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	coder "github.com/coder/websocket"
	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/gorilla/websocket"
)

// goConn is what the checks need from a Go client library.
type goConn interface {
	subprotocol() string
	extensions() string
	send(binary bool, p []byte) error
	// sendFragmented sends one message as len(parts)+1 frames or more.
	sendFragmented(binary bool, p []byte, parts []int) error
	// recv returns the next data message, or *closeErr.
	recv() (binary bool, p []byte, err error)
	// ping sends a ping and returns the payload of the pong.
	ping(payload []byte) ([]byte, error)
	// closeAndWait sends a close frame and waits for the end of the
	// connection.
	closeAndWait(code int, reason string) error
	abort()
}

type goDialFunc func(ctx context.Context, url string, protocols []string) (goConn, error)

// pingByEcho sends pings and sync messages until a pong was seen: libraries
// like gorilla handle pongs only while a read is in progress.
func pingByEcho(c goConn, writePing func() error, pong func() ([]byte, bool)) ([]byte, error) {
	if err := writePing(); err != nil {
		return nil, err
	}
	for range 5 {
		if p, ok := pong(); ok {
			return p, nil
		}
		if err := c.send(false, []byte("after-ping")); err != nil {
			return nil, err
		}
		if _, _, err := c.recv(); err != nil {
			return nil, err
		}
	}
	if p, ok := pong(); ok {
		return p, nil
	}
	return nil, errors.New("no pong after 5 round trips")
}

type pongBox struct {
	mu sync.Mutex
	p  []byte
	ok bool
}

func (b *pongBox) set(p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.p, b.ok = append([]byte(nil), p...), true
}

func (b *pongBox) get() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.p, b.ok
}

// gorilla/websocket

type gorillaConn struct {
	c    *websocket.Conn
	ext  string
	pong pongBox
}

func dialGorilla(ctx context.Context, url string, protocols []string) (goConn, error) {
	// gorilla sends a message as several frames when it does not fit the
	// write buffer (4 KiB by default); 1 MiB keeps every plain message in one
	// frame, so that backends that cannot reassemble fragments still echo it.
	d := websocket.Dialer{EnableCompression: true, Subprotocols: protocols, HandshakeTimeout: 10 * time.Second, WriteBufferSize: 1 << 20}
	c, resp, err := d.DialContext(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.NetConn().SetDeadline(dl)
	}
	g := &gorillaConn{c: c, ext: resp.Header.Get("Sec-WebSocket-Extensions")}
	c.SetPongHandler(func(s string) error { g.pong.set([]byte(s)); return nil })
	return g, nil
}

func (g *gorillaConn) subprotocol() string { return g.c.Subprotocol() }
func (g *gorillaConn) extensions() string  { return g.ext }
func (g *gorillaConn) abort()              { g.c.Close() }

func gorillaType(binary bool) int {
	if binary {
		return websocket.BinaryMessage
	}
	return websocket.TextMessage
}

func (g *gorillaConn) send(binary bool, p []byte) error {
	return g.c.WriteMessage(gorillaType(binary), p)
}

// sendFragmented writes through NextWriter; gorilla emits a frame each time
// its 1 MiB write buffer fills, so a 2.5 MiB message leaves as three frames
// whatever parts says.
func (g *gorillaConn) sendFragmented(binary bool, p []byte, parts []int) error {
	w, err := g.c.NextWriter(gorillaType(binary))
	if err != nil {
		return err
	}
	for _, n := range parts {
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	if _, err := w.Write(p); err != nil {
		return err
	}
	return w.Close()
}

func (g *gorillaConn) recv() (bool, []byte, error) {
	typ, p, err := g.c.ReadMessage()
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return false, nil, &closeErr{ce.Code, ce.Text}
	}
	return typ == websocket.BinaryMessage, p, err
}

func (g *gorillaConn) ping(payload []byte) ([]byte, error) {
	return pingByEcho(g, func() error {
		return g.c.WriteControl(websocket.PingMessage, payload, time.Now().Add(5*time.Second))
	}, g.pong.get)
}

func (g *gorillaConn) closeAndWait(code int, reason string) error {
	defer g.c.Close()
	if err := g.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(5*time.Second)); err != nil {
		return err
	}
	for {
		if _, _, err := g.c.ReadMessage(); err != nil {
			return nil
		}
	}
}

// coder/websocket

type coderConn struct {
	c   *coder.Conn
	ctx context.Context
	ext string
}

func dialCoder(ctx context.Context, url string, protocols []string) (goConn, error) {
	c, resp, err := coder.Dial(ctx, url, &coder.DialOptions{
		Subprotocols:    protocols,
		CompressionMode: coder.CompressionContextTakeover,
	})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(64 << 20)
	return &coderConn{c: c, ctx: ctx, ext: resp.Header.Get("Sec-WebSocket-Extensions")}, nil
}

func (k *coderConn) subprotocol() string { return k.c.Subprotocol() }
func (k *coderConn) extensions() string  { return k.ext }
func (k *coderConn) abort()              { k.c.CloseNow() }

func coderType(binary bool) coder.MessageType {
	if binary {
		return coder.MessageBinary
	}
	return coder.MessageText
}

func (k *coderConn) send(binary bool, p []byte) error {
	return k.c.Write(k.ctx, coderType(binary), p)
}

// sendFragmented writes through Writer, which sends a frame per Write.
func (k *coderConn) sendFragmented(binary bool, p []byte, parts []int) error {
	w, err := k.c.Writer(k.ctx, coderType(binary))
	if err != nil {
		return err
	}
	for _, n := range parts {
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	if _, err := w.Write(p); err != nil {
		return err
	}
	return w.Close()
}

func (k *coderConn) recv() (bool, []byte, error) {
	typ, p, err := k.c.Read(k.ctx)
	var ce coder.CloseError
	if errors.As(err, &ce) {
		return false, nil, &closeErr{int(ce.Code), ce.Reason}
	}
	return typ == coder.MessageBinary, p, err
}

// ping uses Conn.Ping, which needs a concurrent reader to see the pong, and
// whose payload is chosen by the library: the check is that it returns.
func (k *coderConn) ping(payload []byte) ([]byte, error) {
	done := make(chan error, 1)
	go func() { done <- k.c.Ping(k.ctx) }()
	// Keep reading until Ping returns: its pong is only seen while a read
	// is in progress, and the goroutine may write the ping late.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		select {
		case err := <-done:
			if err != nil {
				return nil, err
			}
			return payload, nil
		default:
		}
		if err := k.send(false, []byte("after-ping")); err != nil {
			return nil, err
		}
		if _, _, err := k.recv(); err != nil {
			return nil, err
		}
	}
	select {
	case err := <-done:
		if err != nil {
			return nil, err
		}
		return payload, nil
	case <-time.After(2 * time.Second):
		return nil, errors.New("Ping did not return while reading for 5s")
	}
}

func (k *coderConn) closeAndWait(code int, reason string) error {
	err := k.c.Close(coder.StatusCode(code), reason)
	// Close reports the peer's close frame as an error when its code
	// differs from ours (x/net answers 1000); the handshake still completed.
	var ce coder.CloseError
	if errors.As(err, &ce) {
		return nil
	}
	return err
}

// gobwas/ws, at the frame level

type gobwasConn struct {
	fc    *frameConn
	proto string
	ext   string
	pong  pongBox
}

func dialGobwas(ctx context.Context, url string, protocols []string) (goConn, error) {
	d := ws.Dialer{
		Protocols:  protocols,
		Extensions: []httphead.Option{wsflate.DefaultParameters.Option()},
		Timeout:    10 * time.Second,
	}
	conn, br, hs, err := d.Dial(ctx, url)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	var names []string
	deflate := false
	for _, e := range hs.Extensions {
		names = append(names, e.String())
		if string(e.Name) == wsflate.ExtensionName {
			deflate = true
		}
	}
	g := &gobwasConn{fc: &frameConn{conn: conn, br: br, client: true, deflate: deflate}, proto: hs.Protocol, ext: strings.Join(names, ", ")}
	g.fc.onPong = g.pong.set
	return g, nil
}

func (g *gobwasConn) subprotocol() string { return g.proto }
func (g *gobwasConn) extensions() string  { return g.ext }
func (g *gobwasConn) abort()              { g.fc.conn.Close() }

func gobwasOp(binary bool) ws.OpCode {
	if binary {
		return ws.OpBinary
	}
	return ws.OpText
}

func (g *gobwasConn) send(binary bool, p []byte) error { return g.fc.send(gobwasOp(binary), p) }

func (g *gobwasConn) sendFragmented(binary bool, p []byte, parts []int) error {
	return g.fc.send(gobwasOp(binary), p, parts...)
}

func (g *gobwasConn) recv() (bool, []byte, error) {
	op, p, err := g.fc.recv()
	return op == ws.OpBinary, p, err
}

func (g *gobwasConn) ping(payload []byte) ([]byte, error) {
	return pingByEcho(g, func() error { return g.fc.writeControl(ws.OpPing, payload) }, g.pong.get)
}

func (g *gobwasConn) closeAndWait(code int, reason string) error {
	defer g.fc.conn.Close()
	_, err := g.fc.closeAndWait(code, reason)
	return err
}

// payload returns the test message of n bytes: letters for text,
// pseudo-random bytes for binary.
func payload(n int, binary bool) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		if binary {
			b[i] = byte(x)
		} else {
			b[i] = 'a' + byte(x%26)
		}
	}
	return b
}

func diff(wantBinary bool, want []byte, gotBinary bool, got []byte) string {
	switch {
	case gotBinary != wantBinary:
		return fmt.Sprintf("got binary=%v, want binary=%v", gotBinary, wantBinary)
	case len(got) != len(want):
		return fmt.Sprintf("got %d bytes, want %d", len(got), len(want))
	case !bytes.Equal(got, want):
		for i := range got {
			if got[i] != want[i] {
				return fmt.Sprintf("byte %d differs", i)
			}
		}
	}
	return ""
}
