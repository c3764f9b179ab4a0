package wsproxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	engine "github.com/wsproxy/wsproxy/internal/tunnel"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// The tests here are about upgrades whose backend is dialled into an event
// loop (dialsInLoop); every other test with a ws://127.0.0.1 target takes
// that path too, unless the goroutine driver is forced.

func TestDialsInLoop(t *testing.T) {
	t.Parallel()
	loops := engineDriver != engine.DriverGoroutines
	plain := &http.Request{ProtoMajor: 1, ProtoMinor: 1}
	overTLS := &http.Request{ProtoMajor: 1, ProtoMinor: 1, TLS: &tls.ConnectionState{}}
	overH2 := &http.Request{ProtoMajor: 2}
	userDial := WithDialer(func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	})
	tests := []struct {
		name   string
		target string
		opts   []Option
		req    *http.Request
		want   bool
	}{
		{"ws at an IPv4 address", "ws://127.0.0.1:9000", nil, plain, loops},
		{"http at an IPv6 address", "http://[::1]:9000/x", nil, plain, loops},
		{"default port", "ws://10.0.0.1", nil, plain, loops},
		{"wss", "wss://127.0.0.1:9000", nil, plain, false},
		{"hostname", "ws://localhost:9000", nil, plain, false},
		{"zoned IPv6", "ws://[fe80::1%25lo]:9000", nil, plain, false},
		{"user dialer", "ws://127.0.0.1:9000", []Option{userDial}, plain, false},
		{"TLS client", "ws://127.0.0.1:9000", nil, overTLS, false},
		{"HTTP/2 client", "ws://127.0.0.1:9000", nil, overH2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New([]string{tt.target}, tt.opts...)
			require.NoError(t, err)
			defer p.Close()
			assert.Equal(t, tt.want, p.dialsInLoop(tt.req, p.set.Load().all[0]))
		})
	}
}

func TestLoopDialTimeout(t *testing.T) {
	t.Parallel()
	target := "ws://" + wstest.Unanswered(t).String()
	hook, errs := rejects()
	_, url := newProxy(t, []string{target}, hook, WithDialTimeout(30*time.Millisecond))
	resp, _, _ := rawRequest(t, url, upgradeRequest(url))
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	err := within(t, errs, "no rejection")
	require.ErrorIs(t, err, ErrDial)
	var be *BackendError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, "dial", be.Op)
	assert.True(t, be.Timeout())
}

// A client that leaves while the backend's connect is in progress ends the
// connect: the handshake is given up at once, not when a timeout passes.
func TestLoopDialClientLeaves(t *testing.T) {
	t.Parallel()
	target := "ws://" + wstest.Unanswered(t).String()
	hook, errs := rejects()
	p, url := newProxy(t, []string{target}, hook)
	conn, err := net.Dial("tcp", hostOf(url))
	require.NoError(t, err)
	_, err = conn.Write([]byte(upgradeRequest(url)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return p.Stats().Open == 1 }, 5*time.Second, time.Millisecond)
	conn.Close()
	err = within(t, errs, "no rejection")
	assert.ErrorIs(t, err, context.Canceled)
	assert.Eventually(t, func() bool { return p.Stats().Open == 0 }, 5*time.Second, time.Millisecond)
	assert.Zero(t, targetStats(p, target).Failures, "the client left: not the backend's fault")
}

func TestLoopDialBackendClosesBefore101(t *testing.T) {
	t.Parallel()
	target := rawBackend(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf)
	})
	hook, errs := rejects()
	_, url := newProxy(t, []string{target}, hook)
	resp, _, _ := rawRequest(t, url, upgradeRequest(url))
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	err := within(t, errs, "no rejection")
	assert.ErrorIs(t, err, ErrBackendHandshake)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

// A refusal whose body comes in pieces is relayed as it arrives: every
// read of it waits for the loop's word.
func TestLoopDialRelaysARefusalInPieces(t *testing.T) {
	t.Parallel()
	target := rawBackend(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf)
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nnot ")
		time.Sleep(10 * time.Millisecond)
		io.WriteString(c, "today!")
	})
	_, url := newProxy(t, []string{target})
	resp, _, _ := rawRequest(t, url, upgradeRequest(url))
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "not today!", string(body))
}

// Not parallel: it counts the process's sockets. Every way a dialled
// backend ends gives its descriptor back: refused, timed out, closed
// before the 101, refused with a status, and a tunnel that ran.
func TestLoopDialLeavesNoSocket(t *testing.T) {
	refused := "ws://" + refusingAddr(t)
	silent := "ws://" + wstest.Unanswered(t).String()
	early := rawBackend(t, func(c net.Conn) { c.Read(make([]byte, 4096)) })
	forbidden := newBackend(t, statusHandler(http.StatusForbidden))
	echo := newEcho(t)
	front := func(target string) string {
		_, url := newProxy(t, []string{target}, WithDialTimeout(5*time.Millisecond))
		return url
	}
	urls := []string{front(refused), front(silent), front(early), front(forbidden)}
	echoURL := front(echo)
	ask := func(url string) {
		conn, err := net.Dial("tcp", hostOf(url))
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.Write([]byte(upgradeRequest(url)))
		require.NoError(t, err)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, conn) // until the proxy closes it
	}
	tunnel := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := wstest.Dial(ctx, echoURL, nil, nil)
		require.NoError(t, err)
		c.Close()
	}
	tunnel() // the first tunnel starts the loops
	before := wstest.OpenFDs(t, wstest.IsSocket)
	for range 10 {
		for _, url := range urls {
			ask(url)
		}
		tunnel()
	}
	assert.Eventually(t, func() bool { return wstest.OpenFDs(t, wstest.IsSocket) <= before }, 5*time.Second, 5*time.Millisecond,
		"%d sockets before, %d after", before, wstest.OpenFDs(t, wstest.IsSocket))
}
