package wsproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func benchRequest(b *testing.B) *http.Request {
	b.Helper()
	raw := string(wstest.Request("app.example", "/chat?room=1", wstest.NewKey(),
		"Origin: http://app.example", "Cookie: session=abc", "User-Agent: bench",
		"Sec-WebSocket-Protocol: chat.v1", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"))
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		b.Fatal(err)
	}
	r.RemoteAddr = "192.0.2.10:5555"
	return r
}

// BenchmarkHandshakePath measures the proxy's own work per upgrade, without
// sockets: checking the client's request and the origin, building and
// writing the backend request, and validating the 101.
func BenchmarkHandshakePath(b *testing.B) {
	p, err := New([]string{"ws://10.0.0.1:9001/base"})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	r := benchRequest(b)
	t := p.set.Load().all[0]
	w := bufio.NewWriterSize(io.Discard, 1024)
	resp := &http.Response{StatusCode: 101, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{
		"Upgrade":              {"websocket"},
		"Connection":           {"Upgrade"},
		"Sec-Websocket-Accept": {computeAccept(r.Header.Get("Sec-Websocket-Key"))},
	}}
	b.ReportAllocs()
	for b.Loop() {
		if err := checkClientRequest(r); err != nil {
			b.Fatal(err)
		}
		if err := p.checkOrigin(r); err != nil {
			b.Fatal(err)
		}
		req, err := p.newBackendRequest(r, t)
		if err != nil {
			b.Fatal(err)
		}
		req.writeTo(w)
		if err := checkUpgradeResponse(resp, req); err != nil {
			b.Fatal(err)
		}
	}
}

// benchProxy runs an echo backend and a proxy in front of it on loopback
// and returns the proxy's URL; the cleanup stops all three.
func benchProxy(b *testing.B) string {
	b.Helper()
	backend := &http.Server{Handler: wstest.EchoHandler()}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go backend.Serve(bl)
	p, err := New([]string{"ws://" + bl.Addr().String()})
	if err != nil {
		b.Fatal(err)
	}
	front := &http.Server{Handler: p}
	fl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go front.Serve(fl)
	b.Cleanup(func() {
		front.Close()
		p.Close()
		backend.Close()
	})
	return "ws://" + fl.Addr().String()
}

// BenchmarkHandshake is a whole upgrade through the proxy on loopback:
// client handshake, backend handshake, 101, close.
func BenchmarkHandshake(b *testing.B) {
	url := benchProxy(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c, _, err := wstest.Dial(ctx, url, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkTunnelEcho sends messages through the proxy to an echo backend
// and reads them back, one at a time.
func BenchmarkTunnelEcho(b *testing.B) {
	for _, size := range []int{128, 64 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			url := benchProxy(b)
			c, _, err := wstest.Dial(context.Background(), url, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			msg := make([]byte, size)
			b.SetBytes(int64(2 * size))
			b.ReportAllocs()
			for b.Loop() {
				if err := c.WriteMessage(wsframe.OpBinary, msg); err != nil {
					b.Fatal(err)
				}
				if _, err := c.ReadFrame(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
