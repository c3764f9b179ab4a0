package interop

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coder "github.com/coder/websocket"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/gorilla/websocket"
	xnet "golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// Every backend speaks the same small protocol:
//   - a data message is echoed with its type;
//   - the text message "close:CODE:REASON" makes the backend close with
//     that code and reason;
//   - the close code and reason a client sends are recorded under the id
//     from the request's query (?id=...), so the test can ask what arrived:
//     in process for Go backends, with a "report:ID" text message (answered
//     "CODE REASON" or "none") for the Node and Python ones.

// backendSpec is one column of the matrix.
type backendSpec struct {
	name string
	// deflate: the backend negotiates permessage-deflate.
	deflate bool
	// noFragments, when set, says why a fragmented message cannot be
	// echoed as one message.
	noFragments string
	// closeReason is the reason the client must see after "close:4002:server bye".
	closeReason string
	start       func(t *testing.T) (*backend, error)
}

// backend is a running backend.
type backend struct {
	url    string // ws://127.0.0.1:port
	report func(ctx context.Context, id string) (closeInfo, bool, error)
}

type closeInfo struct {
	code   int
	reason string
}

// registry holds what in-process backends saw of client close frames.
type registry struct {
	mu sync.Mutex
	m  map[string]closeInfo
}

func (r *registry) put(id string, code int, reason string) {
	if id == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[string]closeInfo)
	}
	if _, ok := r.m[id]; !ok {
		r.m[id] = closeInfo{code, reason}
	}
}

func (r *registry) report(_ context.Context, id string) (closeInfo, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ci, ok := r.m[id]
	return ci, ok, nil
}

// closeCommand parses "close:CODE:REASON".
func closeCommand(text bool, p []byte) (int, string, bool) {
	if !text || !bytes.HasPrefix(p, []byte("close:")) {
		return 0, "", false
	}
	codeStr, reason, _ := strings.Cut(string(p[len("close:"):]), ":")
	code, err := strconv.Atoi(codeStr)
	if err != nil {
		return 0, "", false
	}
	return code, reason, true
}

var backends = []backendSpec{
	{name: "gorilla", deflate: true, closeReason: "server bye", start: startGorilla},
	{name: "coder", deflate: true, closeReason: "server bye", start: startCoder},
	{name: "gobwas", deflate: true, closeReason: "server bye", start: startGobwas},
	{
		name:        "x/net",
		noFragments: "x/net/websocket hands each frame of a fragmented message to the handler as a message of its own",
		closeReason: "", // Conn.WriteClose sends a code only
		start:       startXNet,
	},
	{name: "node-ws", deflate: true, closeReason: "server bye", start: startNode},
	{name: "python", deflate: true, closeReason: "server bye", start: startPython},
}

func serveGo(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return "ws://" + srv.Listener.Addr().String()
}

func startGorilla(t *testing.T) (*backend, error) {
	reg := &registry{}
	up := websocket.Upgrader{
		EnableCompression: true,
		Subprotocols:      []string{"chat.v1"},
		CheckOrigin:       func(*http.Request) bool { return true },
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		id := r.URL.Query().Get("id")
		c.SetCloseHandler(func(code int, text string) error {
			reg.put(id, code, text)
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
			return nil
		})
		for {
			typ, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			if code, reason, ok := closeCommand(typ == websocket.TextMessage, p); ok {
				_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
				continue // read until the client's close
			}
			if err := c.WriteMessage(typ, p); err != nil {
				return
			}
		}
	})
	return &backend{url: serveGo(t, h), report: reg.report}, nil
}

func startCoder(t *testing.T) (*backend, error) {
	reg := &registry{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := coder.Accept(w, r, &coder.AcceptOptions{
			Subprotocols:       []string{"chat.v1"},
			InsecureSkipVerify: true,
			CompressionMode:    coder.CompressionContextTakeover,
		})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(64 << 20)
		id := r.URL.Query().Get("id")
		ctx := r.Context()
		for {
			typ, p, err := c.Read(ctx)
			if err != nil {
				var ce coder.CloseError
				if errors.As(err, &ce) {
					reg.put(id, int(ce.Code), ce.Reason)
				}
				return
			}
			if code, reason, ok := closeCommand(typ == coder.MessageText, p); ok {
				_ = c.Close(coder.StatusCode(code), reason)
				return
			}
			if err := c.Write(ctx, typ, p); err != nil {
				return
			}
		}
	})
	return &backend{url: serveGo(t, h), report: reg.report}, nil
}

func startGobwas(t *testing.T) (*backend, error) {
	reg := &registry{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	serve := func(conn net.Conn) {
		defer conn.Close()
		var id string
		ext := wsflate.Extension{Parameters: wsflate.DefaultParameters}
		u := ws.Upgrader{
			Protocol:  func(p []byte) bool { return string(p) == "chat.v1" },
			Negotiate: ext.Negotiate,
			OnRequest: func(uri []byte) error {
				if u, err := url.ParseRequestURI(string(uri)); err == nil {
					id = u.Query().Get("id")
				}
				return nil
			},
		}
		br := bufio.NewReader(conn)
		if _, err := u.Upgrade(struct {
			io.Reader
			io.Writer
		}{br, conn}); err != nil {
			return
		}
		_, deflate := ext.Accepted()
		fc := &frameConn{conn: conn, br: br, deflate: deflate}
		for {
			op, p, err := fc.recv()
			var ce *closeErr
			if errors.As(err, &ce) {
				reg.put(id, ce.code, ce.reason)
				return
			}
			if err != nil {
				return
			}
			if code, reason, ok := closeCommand(op == ws.OpText, p); ok {
				_, _ = fc.closeAndWait(code, reason)
				return
			}
			if err := fc.send(op, p); err != nil {
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); serve(conn) }()
		}
	}()
	return &backend{url: "ws://" + ln.Addr().String(), report: reg.report}, nil
}

// xnetMsg carries a message with its frame type through xnet.Codec.
type xnetMsg struct {
	typ  byte
	data []byte
}

var xnetCodec = xnet.Codec{
	Marshal: func(v any) ([]byte, byte, error) { m := v.(xnetMsg); return m.data, m.typ, nil },
	Unmarshal: func(data []byte, typ byte, v any) error {
		m := v.(*xnetMsg)
		m.typ, m.data = typ, data
		return nil
	},
}

func startXNet(t *testing.T) (*backend, error) {
	reg := &registry{}
	srv := xnet.Server{
		Handshake: func(cfg *xnet.Config, r *http.Request) error {
			offered := cfg.Protocol
			cfg.Protocol = nil
			for _, p := range offered {
				if p == "chat.v1" {
					cfg.Protocol = []string{p}
				}
			}
			return nil
		},
		Handler: func(c *xnet.Conn) {
			// Without Close the server drops the TCP connection without
			// answering the client's close frame.
			defer c.Close()
			c.MaxPayloadBytes = 64 << 20
			for {
				var m xnetMsg
				if err := xnetCodec.Receive(c, &m); err != nil {
					return
				}
				if code, _, ok := closeCommand(m.typ == xnet.TextFrame, m.data); ok {
					_ = c.WriteClose(code)
					for xnetCodec.Receive(c, &m) == nil {
					}
					return
				}
				if err := xnetCodec.Send(c, m); err != nil {
					return
				}
			}
		},
	}
	hs := httptest.NewUnstartedServer(srv)
	// x/net/websocket does not expose the close frames it reads, so the
	// backend's side of the connection is watched on the socket instead.
	hs.Listener = sniffListener{hs.Listener, reg}
	hs.Start()
	t.Cleanup(hs.Close)
	return &backend{url: "ws://" + hs.Listener.Addr().String(), report: reg.report}, nil
}

type sniffListener struct {
	net.Listener
	reg *registry
}

func (l sniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, reg: l.reg}, nil
}

// sniffConn records the first close frame a client sends, following the
// frames of the byte stream the server reads.
type sniffConn struct {
	net.Conn
	reg      *registry
	buf      []byte
	id       string
	inFrames bool
	skip     int
	done     bool
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.done {
		c.feed(p[:n])
	}
	return n, err
}

func (c *sniffConn) feed(b []byte) {
	k := min(c.skip, len(b))
	c.skip -= k
	c.buf = append(c.buf, b[k:]...)
	if !c.inFrames {
		i := bytes.Index(c.buf, []byte("\r\n\r\n"))
		if i < 0 {
			return
		}
		if f := strings.Fields(string(c.buf[:bytes.IndexByte(c.buf, '\r')])); len(f) == 3 {
			if u, err := url.ParseRequestURI(f[1]); err == nil {
				c.id = u.Query().Get("id")
			}
		}
		c.buf, c.inFrames = c.buf[i+4:], true
	}
	for len(c.buf) >= 2 {
		hl := wsframe.HeaderLen(c.buf[1])
		if len(c.buf) < hl {
			return
		}
		h, _, err := wsframe.ParseHeader(c.buf[:hl])
		if err != nil {
			c.done = true
			return
		}
		total := hl + int(h.Length)
		if h.OpCode == wsframe.OpClose {
			if len(c.buf) < total {
				return
			}
			payload := append([]byte(nil), c.buf[hl:total]...)
			wsframe.Mask(h.Mask, 0, payload)
			code, reason := 1005, ""
			if len(payload) >= 2 {
				c16, r := wsframe.ParseClose(payload)
				code, reason = int(c16), r
			}
			c.reg.put(c.id, code, reason)
			c.done = true
			return
		}
		if len(c.buf) >= total {
			c.buf = c.buf[total:]
			continue
		}
		c.skip = total - len(c.buf)
		c.buf = c.buf[:0]
	}
}

// startProcess runs a backend program that prints its port on its first
// line of output, and kills it when the test ends.
func startProcess(t *testing.T, name string, args ...string) (*backend, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		if s.Scan() {
			line <- s.Text()
		}
		close(line)
		for s.Scan() {
		}
	}()
	select {
	case l, ok := <-line:
		port, err := strconv.Atoi(strings.TrimSpace(l))
		if !ok || err != nil {
			return nil, fmt.Errorf("%s did not print its port (got %q)", name, l)
		}
		u := fmt.Sprintf("ws://127.0.0.1:%d", port)
		return &backend{url: u, report: func(ctx context.Context, id string) (closeInfo, bool, error) { return askReport(ctx, u, id) }}, nil
	case <-time.After(15 * time.Second):
		return nil, fmt.Errorf("%s did not start within 15s", name)
	}
}

// askReport asks an out-of-process backend, directly, what close frame it
// received on the connection with the given id.
func askReport(ctx context.Context, u, id string) (closeInfo, bool, error) {
	c, _, err := websocket.DefaultDialer.DialContext(ctx, u+"/report", nil)
	if err != nil {
		return closeInfo{}, false, err
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte("report:"+id)); err != nil {
		return closeInfo{}, false, err
	}
	_, p, err := c.ReadMessage()
	if err != nil {
		return closeInfo{}, false, err
	}
	if string(p) == "none" {
		return closeInfo{}, false, nil
	}
	codeStr, reason, _ := strings.Cut(string(p), " ")
	code, err := strconv.Atoi(codeStr)
	return closeInfo{code, reason}, err == nil, err
}

// Paths of the out-of-process pieces, relative to this package.
var (
	nodeDir       = "node"
	pythonBackend = filepath.Join("python", "backend.py")
	systemPython  = "/usr/bin/python3" // Debian's, which has python3-websockets
	chromiumPath  = "/usr/bin/chromium"
)

func startNode(t *testing.T) (*backend, error) {
	if err := need(nodeDeps()...); err != nil {
		return nil, err
	}
	return startProcess(t, "node", filepath.Join(nodeDir, "backend.mjs"))
}

func startPython(t *testing.T) (*backend, error) {
	if err := need(pythonDeps()...); err != nil {
		return nil, err
	}
	return startProcess(t, systemPython, pythonBackend)
}
