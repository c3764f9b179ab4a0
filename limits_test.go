package wsproxy

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// closes returns an option that signals each tunnel's end.
func closes() (Option, chan struct{}) {
	ch := make(chan struct{}, 16)
	return WithHooks(Hooks{OnClose: func(CloseInfo) { ch <- struct{}{} }}), ch
}

var trustLoopback = WithTrustedProxies("127.0.0.0/8", "::1")

func TestMaxTunnels(t *testing.T) {
	t.Parallel()
	onReject, errs := rejects()
	onClose, closed := closes()
	_, url := newProxy(t, []string{newEcho(t)}, WithMaxTunnels(2), onReject, onClose, trustLoopback)

	a, _ := dialAs(t, t, url, "192.0.2.1")
	require.NotNil(t, a)
	b, _ := dialAs(t, t, url, "192.0.2.2")
	require.NotNil(t, b)

	_, resp := dialAs(t, t, url, "192.0.2.3")
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	assert.ErrorIs(t, <-errs, ErrTooManyTunnels)

	// A tunnel that ends gives its place back.
	require.NoError(t, a.WriteClose(1000, ""))
	<-closed
	c, _ := dialAs(t, t, url, "192.0.2.3")
	assert.NotNil(t, c)
}

func TestMaxTunnelsPerIP(t *testing.T) {
	t.Parallel()
	onReject, errs := rejects()
	_, url := newProxy(t, []string{newEcho(t)}, WithMaxTunnelsPerIP(1), onReject, trustLoopback)
	parent := t

	tests := []struct {
		name string
		give string // client address
		want int    // status; 101 when the tunnel opens
	}{
		{name: "first client", give: "192.0.2.1", want: http.StatusSwitchingProtocols},
		{name: "first client again", give: "192.0.2.1", want: http.StatusServiceUnavailable},
		{name: "other client", give: "192.0.2.2", want: http.StatusSwitchingProtocols},
		{name: "IPv4-mapped form of the first", give: "::ffff:192.0.2.1", want: http.StatusServiceUnavailable},
		{name: "IPv6 client", give: "2001:db8::1", want: http.StatusSwitchingProtocols},
		{name: "same IPv6 /64", give: "2001:db8::2", want: http.StatusServiceUnavailable},
		{name: "next IPv6 /64", give: "2001:db8:0:1::1", want: http.StatusSwitchingProtocols},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, resp := dialAs(t, parent, url, tt.give) // tunnels stay open for the next cases
			if c != nil {
				assert.Equal(t, tt.want, c.Resp.StatusCode)
				return
			}
			assert.Equal(t, tt.want, resp.StatusCode)
			assert.Equal(t, "1", resp.Header.Get("Retry-After"))
			assert.ErrorIs(t, <-errs, ErrTooManyTunnels)
		})
	}
}

func TestHandshakeRate(t *testing.T) {
	t.Parallel()
	onReject, errs := rejects()
	// One token every ten seconds: none comes back during the test.
	_, url := newProxy(t, []string{newEcho(t)}, WithHandshakeRate(0.1, 2), onReject, trustLoopback)

	for range 2 {
		c, _ := dialAs(t, t, url, "198.51.100.1")
		require.NotNil(t, c)
		c.Close()
	}
	_, resp := dialAs(t, t, url, "198.51.100.1")
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Equal(t, "10", resp.Header.Get("Retry-After"), "seconds until the next token")
	assert.ErrorIs(t, <-errs, ErrRateLimited)

	c, _ := dialAs(t, t, url, "198.51.100.2")
	assert.NotNil(t, c, "another client has its own bucket")
}

// TestAdmissionReleasedWithoutTunnel checks that handshakes that never
// become tunnels (a refusing backend, an unreachable one) give their place
// back: with a cap of one, each attempt still reaches the backend.
func TestAdmissionReleasedWithoutTunnel(t *testing.T) {
	t.Parallel()
	refuse := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	unreachable := "ws://" + refusingAddr(t)

	tests := []struct {
		name string
		give string // target
	}{
		{name: "backend refuses", give: refuse},
		{name: "backend unreachable", give: unreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			onReject, errs := rejects()
			p, url := newProxy(t, []string{tt.give}, onReject, trustLoopback,
				WithMaxTunnels(1), WithMaxTunnelsPerIP(1), WithHandshakeRate(1000, 1000))
			for range 3 {
				_, resp := dialAs(t, t, url, "192.0.2.1")
				require.NotNil(t, resp)
				err := <-errs
				assert.NotErrorIs(t, err, ErrTooManyTunnels)
				assert.NotErrorIs(t, err, ErrRateLimited)
			}
			assert.Eventually(t, func() bool {
				p.limits.mu.Lock()
				defer p.limits.mu.Unlock()
				return p.limits.open == 0
			}, 2*time.Second, 5*time.Millisecond, "every place given back")
		})
	}
}

func TestHandshakeRateRefill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := New([]string{"ws://backend.test"}, WithHandshakeRate(1, 2), WithMaxTunnelsPerIP(5))
		require.NoError(t, err)
		defer p.Close()
		req := func(addr string) *http.Request { return &http.Request{RemoteAddr: addr, Header: http.Header{}} }

		var slots []admission
		for range 2 {
			a, err := p.admit(req("192.0.2.1:1000"))
			require.NoError(t, err)
			slots = append(slots, a)
		}
		_, err = p.admit(req("192.0.2.1:1001"))
		assert.ErrorIs(t, err, ErrRateLimited)
		assert.Equal(t, "1", retryAfter(err))

		time.Sleep(time.Second) // synctest's clock: no real waiting
		a, err := p.admit(req("192.0.2.1:1002"))
		require.NoError(t, err, "a token came back after a second")
		slots = append(slots, a)
		for i := range slots {
			slots[i].release()
			slots[i].release() // twice is harmless
		}

		// The entry stays while its bucket refills, then a sweep drops it.
		p.limits.mu.Lock()
		assert.Len(t, p.limits.clients, 1)
		p.limits.mu.Unlock()
		time.Sleep(sweepEvery)
		b, err := p.admit(req("192.0.2.2:1000"))
		require.NoError(t, err)
		p.limits.mu.Lock()
		_, kept := p.limits.clients[netip.MustParsePrefix("192.0.2.1/32")]
		assert.False(t, kept, "idle entry swept")
		p.limits.mu.Unlock()
		b.release()
		assert.Equal(t, 0, p.limits.open)
	})
}

// TestClientTableBounded fills the per-client table: a new client is then
// refused, until the entries' buckets refill and a sweep frees them.
func TestClientTableBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := New([]string{"ws://backend.test"}, WithHandshakeRate(1, 1))
		require.NoError(t, err)
		defer p.Close()
		for i := range maxClients {
			r := &http.Request{RemoteAddr: fmt.Sprintf("10.%d.%d.1:1000", i>>8, i&0xff)}
			a, err := p.admit(r)
			require.NoError(t, err)
			a.release()
		}
		newcomer := &http.Request{RemoteAddr: "192.0.2.1:1000"}
		_, err = p.admit(newcomer)
		assert.ErrorIs(t, err, ErrRateLimited)

		time.Sleep(sweepFull)
		a, err := p.admit(newcomer)
		require.NoError(t, err)
		a.release()
		p.limits.mu.Lock()
		assert.LessOrEqual(t, len(p.limits.clients), 1)
		p.limits.mu.Unlock()
	})
}

func TestForwardedClient(t *testing.T) {
	t.Parallel()
	trusted := func(a netip.Addr) bool { return netip.MustParsePrefix("10.0.0.0/8").Contains(a) }
	peer := netip.MustParseAddr("10.0.0.1")
	tests := []struct {
		name string
		give []string // X-Forwarded-For headers
		want string
	}{
		{name: "none", give: nil, want: "10.0.0.1"},
		{name: "one client", give: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{name: "forged entries left of the client", give: []string{"1.1.1.1, 203.0.113.9"}, want: "203.0.113.9"},
		{name: "trusted hops skipped", give: []string{"203.0.113.9, 10.0.0.7", "10.0.0.8"}, want: "203.0.113.9"},
		{name: "garbage stops the walk", give: []string{"203.0.113.9, junk, 10.0.0.7"}, want: "10.0.0.7"},
		{name: "mapped IPv4", give: []string{"::ffff:203.0.113.9"}, want: "203.0.113.9"},
		{name: "only trusted", give: []string{"10.0.0.7"}, want: "10.0.0.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, netip.MustParseAddr(tt.want), forwardedClient(tt.give, peer, trusted))
		})
	}
}

func TestLimitOptionsValidated(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give Option
	}{
		{name: "negative global cap", give: WithMaxTunnels(-1)},
		{name: "negative per-IP cap", give: WithMaxTunnelsPerIP(-1)},
		{name: "negative rate", give: WithHandshakeRate(-1, 1)},
		{name: "NaN rate", give: WithHandshakeRate(math.NaN(), 1)},
		{name: "infinite rate", give: WithHandshakeRate(math.Inf(1), 1)},
		{name: "no burst", give: WithHandshakeRate(1, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New([]string{"ws://backend.test"}, tt.give)
			assert.ErrorIs(t, err, ErrBadOption)
		})
	}
}

// TestMaxResponseHeaderBytes: a backend whose 101 carries more header bytes
// than the limit gets 502, never a tunnel.
func TestMaxResponseHeaderBytes(t *testing.T) {
	t.Parallel()
	big := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := wstest.Upgrade(w, r, http.Header{"X-Big": {strings.Repeat("a", 2000)}})
		if err == nil {
			wstest.Echo(c)
		}
	}))
	tests := []struct {
		name string
		give []Option
		want int
	}{
		{name: "over the limit", give: []Option{WithMaxResponseHeaderBytes(1024)}, want: http.StatusBadGateway},
		{name: "default limit", give: nil, want: http.StatusSwitchingProtocols},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			onReject, errs := rejects()
			_, url := newProxy(t, []string{big}, append(tt.give, onReject)...)
			resp, conn, _ := rawRequest(t, url, string(wstest.Request(hostOf(url), "/", wstest.NewKey())))
			defer conn.Close()
			assert.Equal(t, tt.want, resp.StatusCode)
			if tt.want == http.StatusBadGateway {
				assert.ErrorIs(t, <-errs, ErrBackendHandshake)
			}
		})
	}
}

// TestSlowClientCutByReadHeaderTimeout shows the recommended defence
// against slowloris: the server's ReadHeaderTimeout (and ReadTimeout and
// WriteTimeout) cut a client that sends its request slowly, while tunnels
// through the same server outlive all three, since the proxy clears the
// deadlines after the hijack.
func TestSlowClientCutByReadHeaderTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 100 * time.Millisecond
	p, err := New([]string{newEcho(t)})
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(p)
	srv.Config.ReadHeaderTimeout = timeout
	srv.Config.ReadTimeout = timeout
	srv.Config.WriteTimeout = timeout
	srv.Start()
	t.Cleanup(func() {
		p.Close()
		srv.Close()
	})
	url := "ws://" + srv.Listener.Addr().String()

	c := dial(t, url)

	slow, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	defer slow.Close()
	_, err = slow.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n"))
	require.NoError(t, err)
	slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(slow)
	assert.NoError(t, err, "the server closed the slow connection (not our read deadline)")
	assert.Less(t, time.Since(start), 4*time.Second)

	time.Sleep(3 * timeout) // past every server timeout
	require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("still here")))
	_, got, err := c.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "still here", string(got))
}
