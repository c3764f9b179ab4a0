package wsproxy

import (
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// mustTargets parses target strings for policy tests that need no proxy.
func mustTargets(t testing.TB, ss ...string) []*Target {
	t.Helper()
	out := make([]*Target, len(ss))
	for i, s := range ss {
		tg, err := parseTarget(s)
		require.NoError(t, err)
		out[i] = tg
	}
	return out
}

func keyRequest(key string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if key != "" {
		r.Header.Set("X-User", key)
	}
	return r
}

func TestRoundRobinSplitsEvenly(t *testing.T) {
	t.Parallel()
	a, b := newEcho(t), newEcho(t)
	p, url := newProxy(t, []string{a, b})
	for range 30 {
		dial(t, url)
	}
	assert.Equal(t, map[string]int{a: 15, b: 15}, openByTarget(p))
}

func TestRoundRobinWeights(t *testing.T) {
	t.Parallel()
	a, b, c := newEcho(t), newEcho(t), newEcho(t)
	p, url := newProxy(t, []string{a + " weight=3", b, c})
	for range 25 {
		dial(t, url)
	}
	assert.Equal(t, map[string]int{a + " weight=3": 15, b: 5, c: 5}, openByTarget(p))
}

// TestRoundRobinInstancesShareTargets: a user's balancer that delegates to
// two RoundRobins gives both the same *Targets, from many goroutines at
// once. Each keeps its own rotation (the race detector checks that no state
// is shared), and each still picks a a b a c a a for weights 5:1:1.
func TestRoundRobinInstancesShareTargets(t *testing.T) {
	t.Parallel()
	ts := mustTargets(t, "ws://a weight=5", "ws://b", "ws://c")
	rr1, rr2 := RoundRobin(), RoundRobin()
	var wg sync.WaitGroup
	for _, b := range []Balancer{rr1, rr2, rr1, rr2} {
		wg.Go(func() {
			for range 700 {
				b.Pick(nil, ts)
			}
		})
	}
	wg.Wait()
	// 1400 picks each, a multiple of the cycle of 7: both are back at the start.
	for _, b := range []Balancer{rr1, rr2} {
		var got []string
		for range 7 {
			got = append(got, b.Pick(nil, ts).URL.Host)
		}
		assert.Equal(t, []string{"a", "a", "b", "a", "c", "a", "a"}, got)
	}
}

// TestRoundRobinForgetsRemovedTargets: the state of targets that are gone
// does not pile up as discovery replaces them.
func TestRoundRobinForgetsRemovedTargets(t *testing.T) {
	t.Parallel()
	b := RoundRobin().(*roundRobin)
	for i := range 100 {
		b.Pick(nil, mustTargets(t, fmt.Sprintf("ws://a%d", i), fmt.Sprintf("ws://b%d", i)))
	}
	assert.LessOrEqual(t, len(b.current), 2*2+8+2)
}

func TestLeastConnAvoidsBusyTarget(t *testing.T) {
	t.Parallel()
	a, b := newEcho(t), newEcho(t)
	p, url := newProxy(t, []string{a}, WithBalancer(LeastConn()))
	for range 4 {
		dial(t, url)
	}
	require.NoError(t, p.SetTargets([]string{a, b}))
	for range 4 {
		dial(t, url)
	}
	assert.Equal(t, map[string]int{a: 4, b: 4}, openByTarget(p), "the new target takes every tunnel until it caught up")
	for range 2 {
		dial(t, url)
	}
	assert.Equal(t, map[string]int{a: 5, b: 5}, openByTarget(p), "then they take turns")
}

func TestLeastConnPolicy(t *testing.T) {
	t.Parallel()
	ts := mustTargets(t, "ws://a", "ws://b weight=2", "ws://c")
	b := LeastConn()

	counts := make(map[*Target]int)
	for range 300 {
		counts[b.Pick(nil, ts)]++
	}
	assert.Equal(t, map[*Target]int{ts[0]: 100, ts[1]: 100, ts[2]: 100}, counts, "equal loads (all zero) take turns")

	ts[0].open.Store(2)
	ts[1].open.Store(3) // 1.5 per unit of weight
	ts[2].open.Store(1)
	for range 5 {
		assert.Same(t, ts[2], b.Pick(nil, ts))
	}
	ts[2].open.Store(2)
	for range 5 {
		assert.Same(t, ts[1], b.Pick(nil, ts), "weight 2 with 3 open is less loaded than weight 1 with 2")
	}
}

func TestPowerOfTwoNeverPicksTheBusiest(t *testing.T) {
	t.Parallel()
	ts := mustTargets(t, "ws://a", "ws://b", "ws://c")
	ts[0].open.Store(10)
	ts[1].open.Store(1)
	ts[2].open.Store(2)
	b := PowerOfTwo()
	counts := make(map[*Target]int)
	for range 600 {
		counts[b.Pick(nil, ts)]++
	}
	assert.Zero(t, counts[ts[0]])
	// b wins every pair it is in (2/3 of them); c only the pair {a, c}.
	t.Logf("open 10/1/2: picks %d/%d/%d", counts[ts[0]], counts[ts[1]], counts[ts[2]])
	assert.InDelta(t, 400, counts[ts[1]], 60)
	assert.InDelta(t, 200, counts[ts[2]], 60)
	assert.Same(t, ts[0], b.Pick(nil, ts[:1]))
}

func TestConsistentHashKeepsKeyOnTarget(t *testing.T) {
	t.Parallel()
	ts := mustTargets(t, "ws://a", "ws://b", "ws://c", "ws://d")
	b := ConsistentHash(HeaderKey("X-User"), WithLoadFactor(0))
	for i := range 200 {
		r := keyRequest("user-" + strconv.Itoa(i))
		first := b.Pick(r, ts)
		for range 3 {
			assert.Same(t, first, b.Pick(r, ts))
		}
	}
}

func TestConsistentHashMovesFewKeys(t *testing.T) {
	t.Parallel()
	const keys = 4000
	four := mustTargets(t, "ws://10.0.0.1:80", "ws://10.0.0.2:80", "ws://10.0.0.3:80", "ws://10.0.0.4:80")
	five := append(append([]*Target(nil), four...), mustTargets(t, "ws://10.0.0.5:80")...)
	b := ConsistentHash(HeaderKey("X-User"))

	before := make([]*Target, keys)
	perTarget := make(map[*Target]int)
	for i := range keys {
		before[i] = b.Pick(keyRequest(strconv.Itoa(i)), four)
		perTarget[before[i]]++
	}
	for _, tg := range four {
		assert.InDelta(t, keys/4, perTarget[tg], keys/4*0.1, "even spread over %s", tg)
	}

	moved := 0
	for i := range keys {
		if got := b.Pick(keyRequest(strconv.Itoa(i)), five); got != before[i] {
			moved++
			assert.Same(t, five[4], got, "a key only ever moves to the new target")
		}
	}
	assert.InDelta(t, keys/5, moved, keys/5*0.15, "about 1/5 of the keys move to the fifth target")
	t.Logf("4 targets: %v keys each; adding a fifth moved %d of %d keys (%.1f%%)",
		[]int{perTarget[four[0]], perTarget[four[1]], perTarget[four[2]], perTarget[four[3]]}, moved, keys, 100*float64(moved)/keys)

	// Removing a target moves exactly its keys.
	three := []*Target{four[0], four[1], four[3]}
	moved = 0
	for i := range keys {
		got := b.Pick(keyRequest(strconv.Itoa(i)), three)
		if before[i] != four[2] {
			assert.Same(t, before[i], got)
		} else {
			moved++
		}
	}
	assert.Equal(t, perTarget[four[2]], moved)
}

func TestConsistentHashWeights(t *testing.T) {
	t.Parallel()
	ts := mustTargets(t, "ws://a weight=3", "ws://b")
	b := ConsistentHash(HeaderKey("X-User"))
	n := 0
	for i := range 4000 {
		if b.Pick(keyRequest(strconv.Itoa(i)), ts) == ts[0] {
			n++
		}
	}
	assert.InDelta(t, 3000, n, 120, "weight 3 of 4 gets 3/4 of the keys")
	t.Logf("weights 3:1 over 4000 keys: %d:%d", n, 4000-n)
}

func TestConsistentHashLoadBound(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		give    float64
		wantMax int
	}{
		{name: "1.25", give: 1.25, wantMax: 13},              // ceil(1.25 * 20 / 2)
		{name: "strict 1", give: 1, wantMax: 10},             // fair share exactly
		{name: "no bound", give: 0, wantMax: 20},             // the hot key stays put
		{name: "loose 1.5 of three", give: 1.5, wantMax: 10}, // three targets, see below
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := mustTargets(t, "ws://a", "ws://b")
			if tt.name == "loose 1.5 of three" {
				ts = mustTargets(t, "ws://a", "ws://b", "ws://c") // ceil(1.5 * 20 / 3)
			}
			b := ConsistentHash(HeaderKey("X-User"), WithLoadFactor(tt.give))
			r := keyRequest("hot")
			for range 20 {
				b.Pick(r, ts).open.Add(1)
			}
			most := 0
			for _, tg := range ts {
				most = max(most, tg.Open())
			}
			assert.Equal(t, tt.wantMax, most)
		})
	}
}

func TestConsistentHashEmptyKeyRoundRobin(t *testing.T) {
	t.Parallel()
	ts := mustTargets(t, "ws://a", "ws://b")
	b := ConsistentHash(HeaderKey("X-User"))
	var got []*Target
	for range 4 {
		got = append(got, b.Pick(keyRequest(""), ts))
	}
	assert.Equal(t, []*Target{ts[0], ts[1], ts[0], ts[1]}, got)
}

func TestConsistentHashReplicasAgree(t *testing.T) {
	t.Parallel()
	a, b, c := newEcho(t), newEcho(t), newEcho(t)
	targets := []string{a, b, c + " weight=2"}
	balancer := func() Option { return WithBalancer(ConsistentHash(HeaderKey("X-User"))) }

	// Three independent proxies, as three replicas behind a load balancer.
	var (
		proxies []*Proxy
		urls    []string
		mu      sync.Mutex
		chosen  [3]map[string]string
	)
	for i := range 3 {
		chosen[i] = make(map[string]string)
		got := chosen[i]
		p, url := newProxy(t, targets, balancer(), WithHooks(Hooks{OnUpgrade: func(ti TunnelInfo) {
			mu.Lock()
			got[ti.Path] = ti.Target
			mu.Unlock()
		}}))
		proxies = append(proxies, p)
		urls = append(urls, url)
	}
	for k := range 8 {
		key := fmt.Sprintf("user-%d", k)
		for i := range 3 {
			dial(t, urls[i]+"/"+key, "X-User: "+key)
		}
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		mu.Lock()
		defer mu.Unlock()
		// OnUpgrade runs just after the client got its 101: wait for all.
		for i := range chosen {
			assert.Len(c, chosen[i], 8)
		}
	}, 5*time.Second, 5*time.Millisecond)
	mu.Lock()
	assert.Equal(t, chosen[0], chosen[1])
	assert.Equal(t, chosen[0], chosen[2])
	assert.Len(t, chosen[0], 8)
	mu.Unlock()

	// The same for many keys at the policy level, over each replica's own
	// *Target values.
	for i := range 1000 {
		r := keyRequest(strconv.Itoa(i))
		var names []string
		for _, p := range proxies {
			names = append(names, p.cfg.balancer.Pick(r, p.set.Load().primary).raw)
		}
		assert.Equal(t, names[0], names[1])
		assert.Equal(t, names[0], names[2])
	}
}

func TestKeyFunctions(t *testing.T) {
	t.Parallel()
	req := func(mod func(r *http.Request)) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/ws?room=42&a%20b=c+d&empty=", nil)
		r.RemoteAddr = "192.0.2.7:5555"
		if mod != nil {
			mod(r)
		}
		return r
	}
	tests := []struct {
		name string
		key  func(*http.Request) string
		give *http.Request
		want string
	}{
		{name: "client ip", key: ClientIPKey(), give: req(nil), want: "192.0.2.7"},
		{name: "client ipv6", key: ClientIPKey(), give: req(func(r *http.Request) { r.RemoteAddr = "[2001:db8::1]:80" }), want: "2001:db8::/64"},
		{name: "client ipv6 mapped ipv4", key: ClientIPKey(), give: req(func(r *http.Request) { r.RemoteAddr = "[::ffff:192.0.2.9]:80" }), want: "192.0.2.9"},
		{name: "unix socket peer", key: ClientIPKey(), give: req(func(r *http.Request) { r.RemoteAddr = "@" }), want: "@"},
		{name: "header", key: HeaderKey("x-tenant"), give: req(func(r *http.Request) { r.Header.Add("X-Tenant", "acme") }), want: "acme"},
		{name: "missing header", key: HeaderKey("X-Tenant"), give: req(nil), want: ""},
		{name: "cookie", key: CookieKey("sid"), give: req(func(r *http.Request) { r.Header.Set("Cookie", "a=1; sid=xyz; b=2") }), want: "xyz"},
		{name: "quoted cookie", key: CookieKey("sid"), give: req(func(r *http.Request) { r.Header.Set("Cookie", `sid="q"`) }), want: "q"},
		{name: "cookie prefix is not the cookie", key: CookieKey("sid"), give: req(func(r *http.Request) { r.Header.Set("Cookie", "xsid=1") }), want: ""},
		{name: "query", key: QueryKey("room"), give: req(nil), want: "42"},
		{name: "escaped query", key: QueryKey("a b"), give: req(nil), want: "c d"},
		{name: "empty query value", key: QueryKey("empty"), give: req(nil), want: ""},
		{name: "missing query", key: QueryKey("nope"), give: req(nil), want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, tt.key(tt.give))
		})
	}
}

func TestLoadFactorValidated(t *testing.T) {
	t.Parallel()
	for _, f := range []float64{0.5, -1, math.NaN(), math.Inf(1)} {
		_, err := New([]string{"ws://127.0.0.1:1"}, WithBalancer(ConsistentHash(ClientIPKey(), WithLoadFactor(f))))
		assert.ErrorIs(t, err, ErrBadOption, "factor %v", f)
	}
	_, err := New([]string{"ws://127.0.0.1:1"}, WithBalancer(ConsistentHash(nil)))
	assert.ErrorIs(t, err, ErrBadOption)
}

// policies are the balancers under test, each with 8 targets of mixed
// weights and loads.
func policies() []struct {
	name string
	b    Balancer
} {
	return []struct {
		name string
		b    Balancer
	}{
		{"RoundRobin", RoundRobin()},
		{"LeastConn", LeastConn()},
		{"PowerOfTwo", PowerOfTwo()},
		{"ConsistentHash", ConsistentHash(HeaderKey("X-User"))},
		{"ConsistentHashNoBound", ConsistentHash(HeaderKey("X-User"), WithLoadFactor(0))},
		{"ConsistentHashCookie", ConsistentHash(CookieKey("sid"))},
	}
}

func benchTargets(tb testing.TB) []*Target {
	tb.Helper()
	var ss []string
	for i := range 8 {
		ss = append(ss, fmt.Sprintf("ws://10.0.0.%d:80 weight=%d", i+1, i%3+1))
	}
	ts := mustTargets(tb, ss...)
	for i, t := range ts {
		t.open.Store(int64(i * 7 % 5))
	}
	return ts
}

func TestPickDoesNotAllocate(t *testing.T) {
	ts := benchTargets(t)
	r := keyRequest("user-1")
	r.Header.Set("Cookie", "theme=dark; sid=abc")
	for _, pol := range policies() {
		allocs := testing.AllocsPerRun(100, func() { pol.b.Pick(r, ts) })
		assert.Zero(t, allocs, pol.name)
	}
}

func BenchmarkPick(b *testing.B) {
	for _, pol := range policies() {
		b.Run(pol.name, func(b *testing.B) {
			ts := benchTargets(b)
			b.ReportAllocs()
			keys := make([]string, 1024)
			for i := range keys {
				keys[i] = "user-" + strconv.Itoa(i)
			}
			b.RunParallel(func(pb *testing.PB) {
				r := keyRequest("user-1")
				r.Header.Set("Cookie", "theme=dark; sid=abc")
				i := 0
				for pb.Next() {
					i++
					r.Header["X-User"][0] = keys[i&1023]
					pol.b.Pick(r, ts)
				}
			})
		})
	}
}
