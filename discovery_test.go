package wsproxy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/wsproxy/wsproxy/internal/dnstest"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// syncBuffer is a log destination safe for concurrent writes.
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

// liveTargets returns the target strings in service (not draining).
func liveTargets(p *Proxy) []string {
	var out []string
	for _, ts := range p.Stats().Targets {
		if !ts.Draining {
			out = append(out, ts.Target)
		}
	}
	return out
}

func portOf(t *testing.T, url string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(hostOf(url))
	require.NoError(t, err)
	return port
}

func TestDNSDiscovery(t *testing.T) {
	t.Parallel()
	echo := newEcho(t)
	port := portOf(t, echo)
	dns := dnstest.New(t)
	dns.SetAddrs("backends.test.", "127.0.0.1")
	var logs syncBuffer
	p, url := newProxy(t, nil,
		WithDiscovery(DNSResolver(dns.Resolver(), "ws://backends.test:"+port+"/ws weight=2"), 10*time.Millisecond),
		WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))

	one := "ws://127.0.0.1:" + port + "/ws weight=2"
	assert.Equal(t, []string{one}, liveTargets(p), "New resolved the first set")
	echoOnce(t, url)

	dns.SetAddrs("backends.test.", "127.0.0.2", "::1", "127.0.0.1")
	want := []string{one, "ws://127.0.0.2:" + port + "/ws weight=2", "ws://[::1]:" + port + "/ws weight=2"}
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, want, liveTargets(p)) }, 5*time.Second, 5*time.Millisecond)

	dns.SetFail(true)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "discovery failed") }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, want, liveTargets(p), "a failed lookup keeps the last good set")

	dns.SetFail(false)
	dns.SetFailType(dnsmessage.TypeA, true)
	failures := strings.Count(logs.String(), "discovery failed")
	require.Eventually(t, func() bool { return strings.Count(logs.String(), "discovery failed") > failures }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, want, liveTargets(p), "a failed A query with a good AAAA answer keeps the last good set")

	dns.SetFailType(dnsmessage.TypeA, false)
	dns.SetAddrs("backends.test.", "127.0.0.2")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, []string{"ws://127.0.0.2:" + port + "/ws weight=2"}, liveTargets(p))
	}, 5*time.Second, 5*time.Millisecond)
	ts := targetStats(p, one)
	assert.True(t, ts.Draining, "the first target still has the tunnel opened above")
	assert.Equal(t, 1, ts.Open)
}

func TestSRVDiscovery(t *testing.T) {
	t.Parallel()
	a, b := newEcho(t), newEcho(t)
	dns := dnstest.New(t)
	dns.SetSRV("_ws._tcp.svc.test.",
		net.SRV{Target: "b1.test.", Port: uint16(mustAtoi(t, portOf(t, a))), Priority: 10, Weight: 3},
		net.SRV{Target: "b2.test.", Port: uint16(mustAtoi(t, portOf(t, b))), Priority: 20, Weight: 0})
	dns.SetAddrs("b1.test.", "127.0.0.1")
	dns.SetAddrs("b2.test.", "127.0.0.1")

	r := SRVResolver(dns.Resolver(), "ws://_ws._tcp.svc.test/chat max_conns=100")
	got, err := r.Resolve(context.Background())
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{
		a + "/chat max_conns=100 weight=3",
		b + "/chat max_conns=100 weight=1 backup",
	}, got)

	p, url := newProxy(t, nil, WithDiscovery(r, time.Hour))
	echoOnce(t, url)
	assert.Equal(t, int64(1), targetStats(p, a+"/chat max_conns=100 weight=3").Total)

	_, err = SRVResolver(dns.Resolver(), "ws://_ws._tcp.svc.test weight=2").Resolve(context.Background())
	assert.ErrorIs(t, err, ErrBadTarget)
	_, err = New(nil, WithDiscovery(SRVResolver(dns.Resolver(), "ws://_none._tcp.svc.test"), time.Hour))
	assert.ErrorIs(t, err, ErrNoTargets, "New fails when the first lookup fails")
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n := 0
	for _, c := range s {
		require.True(t, c >= '0' && c <= '9')
		n = n*10 + int(c-'0')
	}
	return n
}

func TestCustomResolverBadAnswerKeepsSet(t *testing.T) {
	t.Parallel()
	a := newEcho(t)
	answers := make(chan []string, 1)
	r := ResolverFunc(func(ctx context.Context) ([]string, error) {
		select {
		case ts := <-answers:
			return ts, nil
		default:
			return nil, errors.New("registry unreachable")
		}
	})
	var logs syncBuffer
	p, _ := newProxy(t, []string{a}, WithDiscovery(r, 5*time.Millisecond), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	answers <- []string{"ftp://nope"}
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "ftp://nope") }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, []string{a}, liveTargets(p))
}

func TestSetTargetsErrorKeepsOldSet(t *testing.T) {
	t.Parallel()
	a := newEcho(t)
	tests := []struct {
		name string
		give []string
		want error
	}{
		{name: "empty", give: nil, want: ErrNoTargets},
		{name: "bad scheme", give: []string{a, "ftp://x"}, want: ErrBadTarget},
		{name: "bad weight", give: []string{a + " weight=0"}, want: ErrBadTarget},
		{name: "twice", give: []string{a, a}, want: ErrBadTarget},
		{name: "only backups", give: []string{a + " backup"}, want: ErrNoTargets},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, _ := newProxy(t, []string{a})
			err := p.SetTargets(tt.give)
			assert.ErrorIs(t, err, tt.want)
			assert.Equal(t, []string{a}, liveTargets(p))
		})
	}
}

func TestSetTargetsUnderLoadLosesNoTunnel(t *testing.T) {
	t.Parallel()
	a, b, c := newEcho(t), newEcho(t), newEcho(t)
	p, url := newProxy(t, []string{a, b}, WithBalancer(LeastConn()))
	sets := [][]string{{a, b}, {b, c}, {a, c}, {c}, {a, b, c}, {a}}

	const workers, each = 4, 8
	errs := make(chan error, workers*each+100)
	conns := make(chan *wstest.Conn, workers*each)
	stop := make(chan struct{})
	swapped := make(chan int)
	go func() {
		n := 0
		defer func() { swapped <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := p.SetTargets(sets[n%len(sets)]); err != nil {
				errs <- err
			}
			n++
			// Pacing, not ordering: the swaps spread over the dials
			// instead of starving them of the lock.
			time.Sleep(200 * time.Microsecond)
		}
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				conn, _, err := wstest.Dial(ctx, url, nil, nil)
				cancel()
				if err != nil {
					errs <- err
					continue
				}
				conns <- conn
				if err := conn.WriteMessage(wsframe.OpText, []byte("x")); err != nil {
					errs <- err
				} else if _, _, err := conn.ReadMessage(); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	n := <-swapped
	close(errs)
	close(conns)
	for err := range errs {
		assert.NoError(t, err)
	}
	var all []*wstest.Conn
	for conn := range conns {
		all = append(all, conn)
		t.Cleanup(func() { conn.Close() })
	}
	require.Len(t, all, workers*each)
	t.Logf("%d target swaps during %d handshakes", n, len(all))

	// The last swap left some targets out; their tunnels keep running.
	require.NoError(t, p.SetTargets([]string{a}))
	for _, conn := range all {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		require.NoError(t, conn.WriteMessage(wsframe.OpText, []byte("still here")))
		_, got, err := conn.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, "still here", string(got))
	}
	open := 0
	for _, ts := range p.Stats().Targets {
		open += ts.Open
		if ts.Target != a && ts.Open > 0 {
			assert.True(t, ts.Draining, ts.Target)
		}
	}
	assert.Equal(t, workers*each, open)
}

func TestSetTargetsDrainTimeout(t *testing.T) {
	t.Parallel()
	a, b := newEcho(t), newEcho(t)
	p, url := newProxy(t, []string{a, b}, WithDrainTimeout(30*time.Millisecond))
	ca, cb := dial(t, url), dial(t, url) // round robin: one each
	require.Equal(t, map[string]int{a: 1, b: 1}, openByTarget(p))

	require.NoError(t, p.SetTargets([]string{b}))
	assert.True(t, targetStats(p, a).Draining)
	assert.Equal(t, 1, targetStats(p, a).Open)

	_, _, err := ca.ReadMessage()
	var ce *wstest.CloseError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 1001, ce.Code)
	assert.Equal(t, "target removed", ce.Reason)
	require.Eventually(t, func() bool { return len(p.Stats().Targets) == 1 }, 5*time.Second, 5*time.Millisecond, "gone once drained")

	require.NoError(t, cb.WriteMessage(wsframe.OpText, []byte("b")))
	_, got, err := cb.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "b", string(got))
}

func TestSetTargetsReAddedKeepsCounts(t *testing.T) {
	t.Parallel()
	a, b := newEcho(t), newEcho(t)
	p, url := newProxy(t, []string{a, b})
	ca := dial(t, url)
	dial(t, url)
	// Total counts a tunnel just after its 101 went out.
	require.Eventually(t, func() bool { return p.Stats().Total == 2 }, 5*time.Second, time.Millisecond)
	require.NoError(t, p.SetTargets([]string{b}))
	require.True(t, targetStats(p, a).Draining)
	require.NoError(t, p.SetTargets([]string{a, b}))
	ts := targetStats(p, a)
	assert.False(t, ts.Draining)
	assert.Equal(t, 1, ts.Open)
	assert.Equal(t, int64(1), ts.Total)

	require.NoError(t, ca.WriteMessage(wsframe.OpText, []byte("a")))
	_, got, err := ca.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "a", string(got))
}

// TestDiscoveryFirstLookupSlowerThanInterval: New's own lookup is bounded by
// the dial timeout, not the interval, so a short interval on a busy machine
// (a lookup slower than it) does not make New fail.
func TestDiscoveryFirstLookupSlowerThanInterval(t *testing.T) {
	t.Parallel()
	echo := newEcho(t)
	slow := ResolverFunc(func(ctx context.Context) ([]string, error) {
		select {
		case <-time.After(50 * time.Millisecond):
			return []string{echo}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	p, url := newProxy(t, nil, WithDiscovery(slow, 5*time.Millisecond))
	assert.Equal(t, []string{echo}, liveTargets(p))
	echoOnce(t, url)
}

// A name the hosts file lists with one family only resolves to it: the
// other family's lookup finds no suitable address, which is not a failure.
func TestDNSResolverHostsFile(t *testing.T) {
	t.Parallel()
	dns := dnstest.New(t)
	got, err := DNSResolver(dns.Resolver(), "ws://localhost:8080/ws").Resolve(context.Background())
	require.NoError(t, err)
	assert.Contains(t, got, "ws://127.0.0.1:8080/ws")
}

func TestDNSResolverAddressLiteral(t *testing.T) {
	t.Parallel()
	for _, target := range []string{"ws://127.0.0.1:8080/ws weight=2", "ws://[::1]:8080/ws"} {
		got, err := DNSResolver(nil, target).Resolve(context.Background())
		require.NoError(t, err)
		assert.Equal(t, []string{target}, got, "an address resolves to itself, without a query")
	}
}
