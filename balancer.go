package wsproxy

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// A Balancer chooses the target of each new tunnel.
//
// Pick gets the targets that may take a tunnel right now (healthy, under
// their connection cap, not draining; backups only when no primary is left),
// never an empty slice, and returns one of them, or nil to refuse the
// request with 503. Health, caps, backups and retries are the proxy's job,
// so a policy only ranks. Pick is called from many goroutines at once.
type Balancer interface {
	Pick(r *http.Request, targets []*Target) *Target
}

// A Target is one backend with its live state. Its exported fields are set
// from the target string and never change; the proxy keeps the same *Target
// across SetTargets as long as the same string stays in the list, so counts
// and health survive a reload.
//
// A target string is a URL with scheme ws, wss, http or https, optionally
// followed by space-separated parameters in the style of nginx's upstream
// servers:
//
//	ws://10.0.0.1:8080/chat weight=3 max_conns=1000
//	ws://10.0.0.9:8080 backup
type Target struct {
	// URL is the backend's address; its path prefixes request paths and its
	// query is prepended to theirs.
	URL *url.URL
	// Weight is the target's share for weighted policies. Default 1.
	Weight int
	// MaxConns caps the target's open tunnels; 0 means no cap.
	MaxConns int
	// Backup targets get tunnels only when no primary target can.
	Backup bool

	raw  string // the string the target was parsed from
	addr string // host:port to dial
	tls  bool

	open  atomic.Int64 // open tunnels, including handshakes in progress
	stats targetCounters

	// rrCurrent is the smooth weighted round-robin state, guarded by the
	// round-robin balancer's mutex.
	rrCurrent int64
}

// targetCounters are cumulative counters kept per target.
type targetCounters struct {
	total    atomic.Int64 // tunnels opened
	failures atomic.Int64 // dial or handshake failures
	bytesIn  atomic.Int64 // client to backend, closed tunnels
	bytesOut atomic.Int64 // backend to client, closed tunnels
	msgsIn   atomic.Int64
	msgsOut  atomic.Int64
}

// String returns the target string, parameters included.
func (t *Target) String() string { return t.raw }

// Open returns the number of tunnels open to the target now, handshakes in
// progress included.
func (t *Target) Open() int { return int(t.open.Load()) }

// full reports whether the target is at its connection cap.
func (t *Target) full() bool { return t.MaxConns > 0 && t.open.Load() >= int64(t.MaxConns) }

// tryAcquire takes a connection slot unless the target is at its cap.
func (t *Target) tryAcquire() bool {
	for {
		n := t.open.Load()
		if t.MaxConns > 0 && n >= int64(t.MaxConns) {
			return false
		}
		if t.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// parseTarget parses one target string.
func parseTarget(s string) (*Target, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return nil, fmt.Errorf("%w %q: empty", ErrBadTarget, s)
	}
	u, err := url.Parse(fields[0])
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrBadTarget, s, err)
	}
	t := &Target{URL: u, Weight: 1, raw: strings.Join(fields, " ")}
	switch strings.ToLower(u.Scheme) {
	case "ws", "http":
	case "wss", "https":
		t.tls = true
	case "":
		return nil, fmt.Errorf("%w %q: missing scheme (want ws, wss, http or https)", ErrBadTarget, s)
	default:
		return nil, fmt.Errorf("%w %q: scheme %q is not ws, wss, http or https", ErrBadTarget, s, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%w %q: missing host", ErrBadTarget, s)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w %q: user info in a target URL is not supported (set Authorization with WithRewrite)", ErrBadTarget, s)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("%w %q: fragment in a target URL", ErrBadTarget, s)
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if t.tls {
			port = "443"
		}
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("%w %q: bad port %q", ErrBadTarget, s, port)
	}
	t.addr = net.JoinHostPort(u.Hostname(), port)

	for _, f := range fields[1:] {
		key, val, hasVal := strings.Cut(f, "=")
		switch {
		case key == "backup" && !hasVal:
			t.Backup = true
		case key == "weight" && hasVal:
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 1_000_000 {
				return nil, fmt.Errorf("%w %q: weight %q is not a number from 1 to 1000000", ErrBadTarget, s, val)
			}
			t.Weight = n
		case key == "max_conns" && hasVal:
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("%w %q: max_conns %q is not a number of 0 or more", ErrBadTarget, s, val)
			}
			t.MaxConns = n
		default:
			return nil, fmt.Errorf("%w %q: unknown parameter %q (want weight=N, max_conns=N or backup)", ErrBadTarget, s, f)
		}
	}
	return t, nil
}

// RoundRobin returns the default policy: smooth weighted round robin, as in
// nginx's upstream module. With weights 5:1:1 it picks a a b a c a a, never
// five of the same target in a row, so a burst of reconnects spreads out.
func RoundRobin() Balancer { return &roundRobin{} }

type roundRobin struct {
	mu sync.Mutex
}

// Pick implements nginx's smooth weighted round robin: every candidate's
// current weight grows by its weight, the largest is chosen and pays back the
// sum of all weights.
func (b *roundRobin) Pick(_ *http.Request, targets []*Target) *Target {
	b.mu.Lock()
	defer b.mu.Unlock()
	var (
		best  *Target
		total int64
	)
	for _, t := range targets {
		w := int64(t.Weight)
		t.rrCurrent += w
		total += w
		if best == nil || t.rrCurrent > best.rrCurrent {
			best = t
		}
	}
	if best != nil {
		best.rrCurrent -= total
	}
	return best
}
