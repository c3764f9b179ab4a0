package interop

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy"
)

// syncBuffer is a bytes.Buffer for a logger used from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestClientGoneIsNotABackendFailure: a client that hangs up while the
// backend has not yet answered its upgrade is the client's doing. The proxy
// already treats it so for health (the target is released, not marked
// failed) and for HTTP requests (a client that left is not reported), but
// the upgrade path logs it at WARN as "wsproxy: backend failed" with err
// "context canceled", naming a healthy backend. Seen with Socket.IO behind
// a proxy without stickiness: each abandoned upgrade probe logged one.
func TestClientGoneIsNotABackendFailure(t *testing.T) {
	// A backend that reads the upgrade request and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gotRequest := make(chan struct{}, 1)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		var got []byte
		for !bytes.Contains(got, []byte("\r\n\r\n")) {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			got = append(got, buf[:n]...)
		}
		gotRequest <- struct{}{}
		_, _ = c.Read(buf) // until the proxy gives up
	}()

	var logs syncBuffer
	rejected := make(chan error, 1)
	p, err := wsproxy.New([]string{"ws://" + ln.Addr().String()},
		wsproxy.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		wsproxy.WithHooks(wsproxy.Hooks{OnReject: func(_ *http.Request, err error) { rejected <- err }}))
	require.NoError(t, err)
	srv := httptest.NewServer(p)
	t.Cleanup(func() { srv.Close(); p.Close() })

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	_, err = c.Write([]byte("GET /ws HTTP/1.1\r\nHost: " + srv.Listener.Addr().String() +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
	require.NoError(t, err)
	select {
	case <-gotRequest:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend got no upgrade request")
	}
	c.Close()

	select {
	case err := <-rejected:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("no OnReject after the client hung up")
	}
	assert.False(t, strings.Contains(logs.String(), "backend failed"), "WARN records: %s", logs.String())
	assert.Zero(t, p.Stats().Targets[0].Failures, "failures counted against the target")
}
