package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/internal/leakcheck"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// config sizes the soak. The defaults are the full size without the race
// detector; under -race (2 cores, with the other packages' tests running
// beside it) the tunnel count stays but each tunnel sends an eighth as
// often and fewer clients stall and send large messages at once, which
// keeps the run near a minute and a half. -short is a smoke run.
//
//	go test -race -run Soak ./internal/soak                  CI size (scripts/test.sh)
//	scripts/soak.sh                                          full size, 120s, no -race
//	SOAK_TUNNELS=5000 SOAK_DURATION=5m SOAK_SEED=7 go test -count=1 -timeout 30m -run Soak -v ./internal/soak
type config struct {
	tunnels   int           // SOAK_TUNNELS: clients, each keeping one tunnel open
	duration  time.Duration // SOAK_DURATION: chaos and tail, once every tunnel is open
	tail      time.Duration // the end of duration without chaos, for clients to settle
	seed      uint64        // SOAK_SEED: every schedule and size; timing still varies
	backends  int
	think     time.Duration // mean pause between two messages of a tunnel
	window    int           // unacknowledged messages a tunnel may have
	slowEvery int           // every slowEvery-th client stalls now and then
	stalls    int           // clients stalled at once, at most
	stallMin  time.Duration
	stallMax  time.Duration
	large     int           // messages over 64 KiB in flight at once, at most
	drain     time.Duration // WithDrainTimeout
	// heapLimit bounds HeapInuse during the run. Tunnels, backends and
	// clients together need well under half of it; a proxy that buffered
	// what stalled clients keep sending would pass it within seconds.
	heapLimit uint64
}

func loadConfig(t *testing.T) config {
	cfg := config{
		tunnels:   2000,
		duration:  60 * time.Second,
		seed:      1,
		backends:  4,
		think:     500 * time.Millisecond,
		window:    4,
		slowEvery: 20,
		stalls:    32,
		stallMin:  time.Second,
		stallMax:  3 * time.Second,
		large:     64,
		drain:     2 * time.Second,
		heapLimit: 768 << 20,
	}
	if raceEnabled {
		cfg.think = 4 * time.Second // an eighth of the messages
		cfg.stalls = 8
		cfg.large = 8
	}
	if testing.Short() {
		cfg.tunnels = 200
		cfg.duration = 15 * time.Second
	}
	if v := os.Getenv("SOAK_TUNNELS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "SOAK_TUNNELS")
		require.Positive(t, n, "SOAK_TUNNELS")
		cfg.tunnels = n
	}
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "SOAK_DURATION")
		require.GreaterOrEqual(t, d, 15*time.Second, "SOAK_DURATION: room for every kind of chaos")
		cfg.duration = d
	}
	if v := os.Getenv("SOAK_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "SOAK_SEED")
		cfg.seed = n
	}
	cfg.tail = min(max(cfg.duration/4, 5*time.Second), 20*time.Second)
	return cfg
}

// soak is the shared state of one run.
type soak struct {
	cfg      config
	url      string
	backends []*backend
	bad      violations
	closing  closingTunnels
	stopping atomic.Bool  // Shutdown began: clients do not reconnect
	chaosEnd atomic.Int64 // unix nanoseconds; clients stall only before
	stalls   chan struct{}
	large    chan struct{}

	mu     sync.Mutex
	killed map[string]bool              // backend incarnations that were killed
	closes map[string]wsproxy.CloseInfo // the proxy's OnClose, by tunnel path
	conns  map[*wstest.Conn]struct{}    // client connections open now

	kills, resets, changes atomic.Int64
}

func (s *soak) stallUntil() time.Time { return time.Unix(0, s.chaosEnd.Load()) }

func (s *soak) track(c *wstest.Conn, open bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if open {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

// targets lists every backend but skip (-1 for none).
func (s *soak) targets(skip int) []string {
	var ts []string
	for i, b := range s.backends {
		if i != skip {
			ts = append(ts, b.url())
		}
	}
	return ts
}

// closingTunnels are the tunnels whose backend got a close frame from the
// proxy: the proxy closes them (drain timeout, keepalive) and waits for the
// client's close frame. Until it comes, the proxy reads what the client
// sends and discards it (RFC 6455 §5.5.1: nothing may follow a close
// frame), so back-pressure no longer holds a stalled client's writes.
type closingTunnels struct{ m sync.Map }

type tunnelKey struct{ client, gen uint32 }

func (c *closingTunnels) add(client, gen uint32) { c.m.Store(tunnelKey{client, gen}, true) }

func (c *closingTunnels) has(client, gen uint32) bool {
	_, ok := c.m.Load(tunnelKey{client, gen})
	return ok
}

// violations collects what must never happen, from any goroutine.
type violations struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (v *violations) add(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	if len(v.first) < 20 {
		v.first = append(v.first, fmt.Sprintf(format, args...))
	}
}

// TestSoak runs the scenario of issue 7: cfg.tunnels clients keep tunnels
// through one proxy (LeastConn, passive health, retries, drain timeout) to
// four echo backends, with messages of 0 B to 256 KiB, some fragmented
// with pings in between, each checked by the backend and again by the
// client. Meanwhile backends are killed (RST or FIN, no close frame) and
// restarted on the same port, a target is taken out of the set and put
// back, and slow clients stop reading while writing on. Then the chaos
// stops, every client must be back with a working tunnel, and the proxy
// shuts down. The checks are invariants, not timings: no acknowledged
// message corrupted, duplicated, lost before a later one or reordered;
// every tunnel ended in a way the chaos explains, and the proxy's view of
// it agrees; bounded heap; goroutines, descriptors and heap given back.
func TestSoak(t *testing.T) {
	cfg := loadConfig(t)
	// The runtime keeps the network poller's descriptors for good; let it
	// open them before counting.
	warm, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	warm.Close()
	before := measure()

	s := &soak{
		cfg:    cfg,
		stalls: make(chan struct{}, cfg.stalls),
		large:  make(chan struct{}, cfg.large),
		killed: make(map[string]bool),
		closes: make(map[string]wsproxy.CloseInfo),
		conns:  make(map[*wstest.Conn]struct{}),
	}
	s.chaosEnd.Store(time.Now().UnixNano()) // no stalls during the ramp
	for i := range cfg.backends {
		b, err := startBackend(fmt.Sprintf("b%d", i), &s.bad, &s.closing)
		require.NoError(t, err)
		t.Cleanup(b.stop) // when a require ends the test early; stop again does nothing
		s.backends = append(s.backends, b)
	}
	p, err := wsproxy.New(s.targets(-1),
		wsproxy.WithBalancer(wsproxy.LeastConn()),
		wsproxy.WithPassiveHealth(1, 2*time.Second, time.Second),
		wsproxy.WithRetry(cfg.backends, 0),
		wsproxy.WithDrainTimeout(cfg.drain),
		// Longer than any stall, so that a stalled client still reads
		// its close frame.
		wsproxy.WithCloseTimeout(10*time.Second),
		wsproxy.WithDialTimeout(2*time.Second),
		wsproxy.WithDialer(dialSmallBuffers),
		wsproxy.WithLogger(slog.New(slog.DiscardHandler)),
		wsproxy.WithHooks(wsproxy.Hooks{OnClose: func(ci wsproxy.CloseInfo) {
			s.mu.Lock()
			s.closes[ci.Path] = ci
			s.mu.Unlock()
		}}),
	)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	front := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	served := make(chan struct{})
	go func() {
		defer close(served)
		front.Serve(smallBufferListener{ln})
	}()
	t.Cleanup(func() {
		p.Close()
		front.Close()
	})
	s.url = "ws://" + ln.Addr().String()
	mem := startSampler(250 * time.Millisecond)

	// Ramp: every client opens its first tunnel, spread over a few seconds.
	var r run
	start := time.Now()
	clients := make([]*client, cfg.tunnels)
	var cwg sync.WaitGroup
	for i := range clients {
		c := &client{
			s:    s,
			id:   uint32(i),
			slow: i%cfg.slowEvery == cfg.slowEvery-1,
			rng:  rand.New(rand.NewPCG(cfg.seed, uint64(2*i))),
			wrng: rand.New(rand.NewPCG(cfg.seed, uint64(2*i+1))),
		}
		clients[i] = c
		cwg.Go(c.run)
		time.Sleep(5 * time.Second / time.Duration(cfg.tunnels))
	}
	r.connected = waitFor(120*time.Second, func() bool { return countClients(clients, false) == len(clients) })
	r.ramp = time.Since(start)

	// Chaos, then the tail: no chaos, every client must settle.
	chaosStart := time.Now()
	end := chaosStart.Add(cfg.duration - cfg.tail)
	s.chaosEnd.Store(end.UnixNano())
	var chaos sync.WaitGroup
	st := &chaosState{down: -1, out: -1}
	chaos.Go(func() { s.killer(end, rand.New(rand.NewPCG(cfg.seed, 1<<40)), st) })
	chaos.Go(func() { s.retargeter(p, end, rand.New(rand.NewPCG(cfg.seed, 1<<41)), st) })
	chaos.Wait()
	time.Sleep(time.Until(chaosStart.Add(cfg.duration)))
	settleStart := time.Now()
	r.settled = waitFor(120*time.Second, func() bool { return countClients(clients, true) == len(clients) })
	r.unsettled = len(clients) - countClients(clients, true)
	r.settle = time.Since(settleStart)

	// Shutdown: 1001 to every tunnel, and nothing may be left.
	s.stopping.Store(true)
	shutStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	r.shutdownErr = p.Shutdown(ctx)
	cancel()
	r.shutdown = time.Since(shutStart)
	r.clientsEnded = waitGroup(&cwg, 60*time.Second)
	if !r.clientsEnded {
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		cwg.Wait() // dials in progress end within their 30s
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	front.Shutdown(ctx)
	cancel()
	<-served
	for _, b := range s.backends {
		b.stop()
	}
	r.peak = mem.stop()
	r.stats = p.Stats()
	r.total = time.Since(start)
	r.chaos = cfg.duration - cfg.tail
	r.kills, r.resets, r.changes = s.kills.Load(), s.resets.Load(), s.changes.Load()
	r.tally(s, clients)
	// Only the numbers stay: what the clients and the hooks kept must not
	// count as heap left behind.
	clients, s.closes, s.backends = nil, nil, nil
	r.before, r.after = before, measureAfter(before, 20*time.Second)

	summary := r.summary(cfg)
	fmt.Print(summary)
	// go test hides a passing package's output; scripts/test.sh shows this.
	if path := os.Getenv("WSPROXY_SOAK_REPORT"); path != "" {
		assert.NoError(t, os.WriteFile(path, []byte(summary), 0o644))
	}
	r.check(t, cfg)
}

// countClients counts clients with an open tunnel, and with acked set,
// only those whose open tunnel already echoed a message.
func countClients(clients []*client, acked bool) int {
	n := 0
	for _, c := range clients {
		if t := c.cur.Load(); t != nil && (!acked || t.acked.Load() > 0) {
			n++
		}
	}
	return n
}

func waitFor(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

func waitGroup(wg *sync.WaitGroup, limit time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(limit):
		return false
	}
}

// chaosState keeps the two chaos goroutines apart: at most one backend is
// down and at most another one is out of the target set, so at least two
// of four take new tunnels at any time.
type chaosState struct {
	mu        sync.Mutex
	down, out int // backend index, -1 for none
}

// pick chooses a backend that is neither down nor out, and marks it.
func (st *chaosState) pick(rng *rand.Rand, n int, mark *int) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	for {
		i := rng.IntN(n)
		if i != st.down && i != st.out {
			*mark = i
			return i
		}
	}
}

func (st *chaosState) clear(mark *int) {
	st.mu.Lock()
	*mark = -1
	st.mu.Unlock()
}

// killer kills a backend about six times over the chaos phase, alternating
// at random between RST and FIN, and restarts it on the same port one to
// three seconds later.
func (s *soak) killer(end time.Time, rng *rand.Rand, st *chaosState) {
	every := time.Until(end) / 6
	for {
		wait := every/2 + time.Duration(rng.Int64N(int64(every)))
		downtime := time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))
		if time.Now().Add(wait + downtime).After(end) {
			return
		}
		time.Sleep(wait)
		i := st.pick(rng, len(s.backends), &st.down)
		b := s.backends[i]
		reset := rng.IntN(2) == 0
		s.mu.Lock()
		s.killed[b.incarnation()] = true
		s.mu.Unlock()
		b.kill(reset)
		s.kills.Add(1)
		if reset {
			s.resets.Add(1)
		}
		time.Sleep(downtime)
		if err := b.restart(); err != nil {
			s.bad.add("chaos: %v", err)
		}
		st.clear(&st.down)
	}
}

// retargeter takes a backend out of the target set, waits past the drain
// timeout (its tunnels get 1001 "target removed"), and puts it back.
func (s *soak) retargeter(p *wsproxy.Proxy, end time.Time, rng *rand.Rand, st *chaosState) {
	every := time.Until(end) / 4
	for {
		wait := every/2 + time.Duration(rng.Int64N(int64(every)))
		away := s.cfg.drain + time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))
		if time.Now().Add(wait + away).After(end) {
			return
		}
		time.Sleep(wait)
		i := st.pick(rng, len(s.backends), &st.out)
		if err := p.SetTargets(s.targets(i)); err != nil {
			s.bad.add("SetTargets without %s: %v", s.backends[i].name, err)
		}
		s.changes.Add(1)
		time.Sleep(away)
		if err := p.SetTargets(s.targets(-1)); err != nil {
			s.bad.add("SetTargets with every backend: %v", err)
		}
		s.changes.Add(1)
		st.clear(&st.out)
	}
}

// usage is what the process holds at one moment.
type usage struct {
	goroutines, fds int
	heap            uint64 // HeapInuse
}

func countFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

func measure() usage {
	runtime.GC()
	runtime.GC() // the second frees what sync.Pools kept through the first
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return usage{goroutines: runtime.NumGoroutine(), fds: countFDs(), heap: ms.HeapInuse}
}

// measureAfter gives goroutines and descriptors up to limit to come back
// to what before counted, then measures.
func measureAfter(before usage, limit time.Duration) usage {
	waitFor(limit, func() bool {
		// The runtime caches splice pipes (net.TCPConn.ReadFrom) in a
		// sync.Pool until a GC.
		runtime.GC()
		return runtime.NumGoroutine() <= before.goroutines && countFDs() <= before.fds
	})
	return measure()
}

// sampler records the peaks of heap, goroutines and descriptors.
type sampler struct {
	stopc, done chan struct{}
	peak        usage
}

func startSampler(every time.Duration) *sampler {
	sm := &sampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(sm.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			sm.peak.heap = max(sm.peak.heap, ms.HeapInuse)
			sm.peak.goroutines = max(sm.peak.goroutines, runtime.NumGoroutine())
			sm.peak.fds = max(sm.peak.fds, countFDs())
			select {
			case <-tick.C:
			case <-sm.stopc:
				return
			}
		}
	}()
	return sm
}

func (sm *sampler) stop() usage {
	close(sm.stopc)
	<-sm.done
	return sm.peak
}

// Endings a tunnel may have in this scenario.
const (
	endingShutdown = `close 1001 "shutdown"`
	endingRemoved  = `close 1001 "target removed"`
	endingKilled   = "no close frame: backend killed"
	// A backend killed with a reset: the proxy tells the client with 1011.
	endingKilledReported = `close 1011 "backend connection lost"`
	endingStalled        = "no close frame: polite close timed out at a stalled client"
)

// run is everything measured in one soak.
type run struct {
	ramp, chaos, settle, shutdown, total time.Duration
	connected, settled, clientsEnded     bool
	unsettled                            int
	shutdownErr                          error
	peak, before, after                  usage
	stats                                wsproxy.Stats
	perTarget                            string
	kills, resets, changes               int64

	clients, slow, opened int
	sent, acked           int64
	sentBytes, ackBytes   int64
	endings               map[string]int
	killedBy              map[string]int // killed endings by what the client read
	unexpected            []string
	mismatched            []string // the client's and the proxy's view disagree
	dialFails             map[string]int
	latency               [3]time.Duration // median, p99, max; slow clients not included
	maxSlow               time.Duration
	stallCount, blocked   int
	stallMax              int64
	cut, recovered        int // clients whose tunnel a kill cut, and of those, that acked again later
	echoed                int64
	violations            int
	firstViolations       []string
}

// tally joins what the clients saw with what the proxy reported.
func (r *run) tally(s *soak, clients []*client) {
	r.endings = make(map[string]int)
	r.killedBy = make(map[string]int)
	r.dialFails = make(map[string]int)
	r.clients = len(clients)
	var latency []time.Duration
	defer func() {
		if n := len(latency); n > 0 {
			slices.Sort(latency)
			r.latency = [3]time.Duration{latency[n/2], latency[n*99/100], latency[n-1]}
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range clients {
		if c.slow {
			r.slow++
		}
		r.sent += c.sent.Load()
		r.sentBytes += c.sentBytes.Load()
		r.acked += c.acked
		r.ackBytes += c.ackBytes
		latency = append(latency, c.latency...)
		r.maxSlow = max(r.maxSlow, c.maxSlow)
		r.stallCount += c.stalls
		r.blocked += c.blocked
		r.stallMax = max(r.stallMax, c.stallMax)
		for k, n := range c.dialFails {
			r.dialFails[k] += n
		}
		lastCut := -1
		for i, rec := range c.records {
			r.opened++
			kind, ok := s.classify(rec)
			r.endings[kind]++
			if !ok && len(r.unexpected) < 10 {
				r.unexpected = append(r.unexpected, fmt.Sprintf("%s (backend %s): %s", rec.path, rec.backend, kind))
			}
			switch kind {
			case endingKilled:
				r.killedBy[errKind(rec.end.err)]++
				lastCut = i
			case endingKilledReported:
				r.killedBy["close 1011"]++
				lastCut = i
			}
			ci, seen := s.closes[rec.path]
			switch {
			case !seen:
				r.mismatch("%s: no OnClose from the proxy", rec.path)
			case ci.BackendToClient.Messages < rec.acked || ci.ClientToBackend.Messages < rec.acked:
				r.mismatch("%s: the client acknowledged %d messages, the proxy counted %d up and %d down",
					rec.path, rec.acked, ci.ClientToBackend.Messages, ci.BackendToClient.Messages)
			case rec.end.kind == endClose && ci.Reason != rec.end.reason:
				r.mismatch("%s: the client got %d %q, the proxy's reason is %q", rec.path, rec.end.code, rec.end.reason, ci.Reason)
			case kind == endingKilled && ci.Reason != "" && ci.Reason != wsproxy.ReasonBackendConnectionLost &&
				ci.Reason != wsproxy.ReasonTargetRemoved:
				// "backend connection lost" with no close frame at the
				// client: the backend died inside a frame to it, and a
				// close frame can only follow a whole frame. "target
				// removed": the drain timeout was closing the tunnel (the
				// close timeout outlasts the backend's time out of the set)
				// and its close frame to a client that did not read still
				// waited when the backend was killed; the first reason
				// stands.
				r.mismatch("%s: cut by a killed backend, the proxy's reason is %q", rec.path, ci.Reason)
			}
		}
		if lastCut >= 0 {
			r.cut++
			for _, rec := range c.records[lastCut+1:] {
				if rec.acked > 0 {
					r.recovered++
					break
				}
			}
		}
	}
	if len(s.closes) != r.opened {
		r.mismatch("the proxy reported %d closed tunnels, the clients opened %d", len(s.closes), r.opened)
	}
	var per []string
	for _, ts := range r.stats.Targets {
		name := ts.Target
		for _, b := range s.backends {
			if b.url() == ts.Target {
				name = b.name
			}
		}
		per = append(per, fmt.Sprintf("%s %d", name, ts.Total))
	}
	r.perTarget = strings.Join(per, ", ")
	for _, b := range s.backends {
		r.echoed += b.echoed.Load()
	}
	s.bad.mu.Lock()
	r.violations, r.firstViolations = s.bad.n, s.bad.first
	s.bad.mu.Unlock()
}

func (r *run) mismatch(format string, args ...any) {
	if len(r.mismatched) < 10 {
		r.mismatched = append(r.mismatched, fmt.Sprintf(format, args...))
	} else if len(r.mismatched) == 10 {
		r.mismatched = append(r.mismatched, "...")
	}
}

// classify names how a tunnel ended and says whether the chaos explains it.
// Caller holds s.mu.
func (s *soak) classify(rec tunnelRecord) (kind string, ok bool) {
	ci, seen := s.closes[rec.path]
	switch rec.end.kind {
	case endClose:
		kind = fmt.Sprintf("close %d %q", rec.end.code, rec.end.reason)
		if kind == endingKilledReported {
			return kind, s.killed[rec.backend]
		}
		return kind, kind == endingShutdown || kind == endingRemoved
	case endAbrupt:
		switch {
		case s.killed[rec.backend]:
			return endingKilled, true
		case rec.slow && seen && (ci.Reason == "target removed" || ci.Reason == "shutdown"):
			return endingStalled, true
		}
		return fmt.Sprintf("no close frame (%s), backend %s alive, proxy reason %q, err %v",
			errKind(rec.end.err), rec.backend, ci.Reason, ci.Err), false
	}
	return fmt.Sprintf("violation: %v", rec.end.err), false
}

func errKind(err error) string {
	switch {
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF inside a frame"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	}
	return fmt.Sprintf("%T", err)
}

func (r *run) summary(cfg config) string {
	var b strings.Builder
	row := func(name, format string, args ...any) {
		fmt.Fprintf(&b, "  %-30s %s\n", name, fmt.Sprintf(format, args...))
	}
	mode := "full size"
	if raceEnabled {
		mode = "race detector: tunnels send 1/8 as often"
	}
	fmt.Fprintf(&b, "\nwsproxy soak: %d tunnels, %d backends, seed %d, %s\n", cfg.tunnels, cfg.backends, cfg.seed, mode)
	row("phases", "ramp %v, chaos %v, tail %v, settle %v, shutdown %v; total %v",
		r.ramp.Round(time.Millisecond), r.chaos, cfg.tail, r.settle.Round(time.Millisecond),
		r.shutdown.Round(time.Millisecond), r.total.Round(time.Millisecond))
	row("tunnels opened", "%d by %d clients (%d slow); proxy Total %d, Failures %d, Rejected %d",
		r.opened, r.clients, r.slow, r.stats.Total, r.stats.Failures, r.stats.Rejected)
	row("tunnels per target", "%s", r.perTarget)
	row("messages sent / acknowledged", "%d / %d (%d lost in cut tunnels); backends echoed %d",
		r.sent, r.acked, r.sent-r.acked, r.echoed)
	row("bytes sent / acknowledged", "%s / %s", mib(r.sentBytes), mib(r.ackBytes))
	row("echo latency", "median %v, p99 %v, max %v; slow clients max %v",
		r.latency[0].Round(time.Microsecond), r.latency[1].Round(time.Microsecond),
		r.latency[2].Round(time.Microsecond), r.maxSlow.Round(time.Millisecond))
	row("endings", "%s", formatCounts(r.endings))
	row("  killed: what the client read", "%s", formatCounts(r.killedBy))
	row("clients cut by a kill", "%d, of which %d acknowledged again on a later tunnel", r.cut, r.recovered)
	row("failed dials", "%s", formatCounts(r.dialFails))
	row("backend kills", "%d (%d with RST, %d with FIN), each restarted on its port", r.kills, r.resets, r.kills-r.resets)
	row("target set changes", "%d (SetTargets, drain timeout %v)", r.changes, cfg.drain)
	row("stalls (slow clients)", "%d, writer blocked by back-pressure in %d; most written in one stall before a close %s",
		r.stallCount, r.blocked, mib(r.stallMax))
	row("heap in use", "before %s, peak %s (limit %s), after %s",
		mib(int64(r.before.heap)), mib(int64(r.peak.heap)), mib(int64(cfg.heapLimit)), mib(int64(r.after.heap)))
	row("goroutines", "before %d, peak %d, after %d", r.before.goroutines, r.peak.goroutines, r.after.goroutines)
	row("file descriptors", "before %d, peak %d, after %d", r.before.fds, r.peak.fds, r.after.fds)
	row("violations", "%d", r.violations)
	for _, v := range r.firstViolations {
		fmt.Fprintf(&b, "    %s\n", v)
	}
	return b.String()
}

func formatCounts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(parts, "; ")
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// check asserts the invariants; the summary was printed first, so a failure
// comes with the whole picture.
func (r *run) check(t *testing.T, cfg config) {
	assert.Zero(t, r.violations, "messages corrupted, duplicated, reordered or malformed: %v", r.firstViolations)
	assert.Empty(t, r.unexpected, "endings the chaos does not explain")
	assert.Empty(t, r.mismatched, "the client's and the proxy's view of a tunnel disagree")
	assert.True(t, r.connected, "not every client had a tunnel after the ramp")
	assert.True(t, r.settled, "%d clients had no working tunnel after the tail", r.unsettled)
	assert.Equal(t, r.cut, r.recovered, "clients cut by a killed backend that never got going again")
	assert.NoError(t, r.shutdownErr, "Shutdown")
	assert.True(t, r.clientsEnded, "clients still running a minute after Shutdown")
	assert.Equal(t, r.clients, r.endings[endingShutdown], "every client's last tunnel ends with 1001 from Shutdown")
	for kind := range r.dialFails {
		assert.Contains(t, []string{"HTTP 502", "HTTP 503", "HTTP 504"}, kind, "failed dials")
	}

	// The chaos happened, and had effects.
	assert.Positive(t, r.kills, "backend kills")
	assert.Positive(t, r.endings[endingKilled]+r.endings[endingKilledReported], "tunnels cut by a kill")
	assert.Positive(t, r.changes, "target set changes")
	assert.Positive(t, r.endings[endingRemoved], "tunnels closed by the drain timeout")
	assert.Positive(t, r.stallCount, "stalls")
	if !testing.Short() { // a few short stalls may all fit in the socket buffers
		assert.Positive(t, r.blocked, "stalls in which back-pressure blocked the writer")
	}
	// What a stalled client can write is what the sockets between it and
	// its echo hold (eight of them, the kernel doubling each socketBuffer)
	// and a message or two in the peers' hands; anything beyond that the
	// proxy would have had to keep. Counted until the proxy closes the
	// tunnel (see closingTunnels): then it reads and discards.
	assert.Less(t, r.stallMax, int64(16*2*socketBuffer+4*maxMessage), "bytes a stalled client could write")
	assert.Positive(t, r.acked, "acknowledged messages")

	// The proxy's books.
	assert.Zero(t, r.stats.Open, "tunnels open after Shutdown")
	assert.Equal(t, int64(r.opened), r.stats.Total, "tunnels the proxy counted")
	assert.GreaterOrEqual(t, r.stats.BackendToClient.Messages, r.acked, "messages the proxy passed down")

	// Resources.
	assert.Less(t, r.peak.heap, cfg.heapLimit, "peak HeapInuse")
	assert.LessOrEqual(t, r.after.goroutines, r.before.goroutines, "goroutines after the soak")
	assert.LessOrEqual(t, r.after.fds, r.before.fds, "file descriptors after the soak")
	// Not exactly: the runtime keeps every goroutine's descriptor, and
	// spans stay fragmented.
	assert.Less(t, r.after.heap, r.before.heap+32<<20, "HeapInuse after the soak and a GC")
}
