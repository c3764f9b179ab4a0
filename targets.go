package wsproxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Targets: what a target string says (Target, parseTarget), the set the
// proxy balances over (targetSet, SetTargets), and the one place a target
// is chosen and its slot taken (pick).

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
	// MaxConns caps the target's open connections: tunnels, handshakes in
	// progress and HTTP requests in flight (WithHTTP); 0 means no cap.
	MaxConns int
	// Backup targets get tunnels only when no primary target can.
	Backup bool

	raw  string         // the string the target was parsed from
	addr string         // host:port to dial
	ip   netip.AddrPort // addr, where its host is an IP literal without a zone: it can be dialled into an event loop
	tls  bool
	hash uint64 // FNV-1a of the URL alone, so a weight change moves no hashed key

	open    atomic.Int64 // open tunnels, handshakes in progress and HTTP requests in flight
	stats   targetCounters
	health  targetHealth
	removed atomic.Bool // dropped by SetTargets; open tunnels drain

	stickyID string                     // its sticky cookie value; set before the target is published
	retired  atomic.Pointer[retirement] // ends its HTTP requests when its drain timeout passes
}

// targetCounters are cumulative counters kept per target.
type targetCounters struct {
	total    atomic.Int64 // tunnels opened
	failures atomic.Int64 // dial or handshake failures
	bytesIn  atomic.Int64 // client to backend, closed tunnels
	bytesOut atomic.Int64 // backend to client, closed tunnels
	msgsIn   atomic.Int64
	msgsOut  atomic.Int64

	refused     atomic.Int64 // upgrades answered with another status than 101
	notEndpoint atomic.Int64 // of those, 2xx, 3xx and 404 (logging.go)

	httpActive   atomic.Int64 // HTTP requests in flight (WithHTTP)
	httpRequests atomic.Int64 // HTTP requests answered by the target
	httpFailures atomic.Int64 // HTTP requests whose connection to it failed
}

// String returns the target string, parameters included.
func (t *Target) String() string { return t.raw }

// Open returns the number of connections open to the target now: tunnels,
// handshakes in progress and HTTP requests in flight (WithHTTP). It is what
// max_conns caps and what LeastConn and PowerOfTwo compare.
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
	t := &Target{URL: u, Weight: 1, raw: strings.Join(fields, " "), hash: fnv1a(fnvOffset, fields[0])}
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
	if ap, err := netip.ParseAddrPort(t.addr); err == nil && ap.Addr().Zone() == "" {
		t.ip = ap
	}

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

// targetSet is an immutable snapshot of the targets; SetTargets swaps it.
type targetSet struct {
	all      []*Target
	primary  []*Target
	backup   []*Target
	byCookie map[string]*Target // sticky cookie values (WithStickyCookie)
}

// parseTargets parses a target list, reusing the *Target of old for every
// string that is still there so that live counts carry over.
func parseTargets(targets []string, old *targetSet) (*targetSet, error) {
	if len(targets) == 0 {
		return nil, ErrNoTargets
	}
	keep := make(map[string]*Target)
	if old != nil {
		for _, t := range old.all {
			keep[t.raw] = t
		}
	}
	set := &targetSet{}
	seen := make(map[string]bool)
	var errs []error
	for _, s := range targets {
		t, err := parseTarget(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[t.raw] {
			errs = append(errs, fmt.Errorf("%w %q: listed twice", ErrBadTarget, s))
			continue
		}
		seen[t.raw] = true
		if prev, ok := keep[t.raw]; ok {
			t = prev
		}
		set.all = append(set.all, t)
		if t.Backup {
			set.backup = append(set.backup, t)
		} else {
			set.primary = append(set.primary, t)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(set.primary) == 0 {
		return nil, fmt.Errorf("%w: every target is a backup", ErrNoTargets)
	}
	return set, nil
}

// SetTargets replaces the target list while traffic flows. New tunnels go
// to the new set at once. A target that stays keeps its counts and health;
// tunnels open to a removed target keep running, or are closed with 1001
// after WithDrainTimeout, and Stats lists it as Draining meanwhile. On error
// the old set stays in place and the error names the bad target.
func (p *Proxy) SetTargets(targets []string) error {
	p.lb.mu.Lock()
	defer p.lb.mu.Unlock()
	old := p.set.Load()
	// A draining target that comes back keeps its live counts.
	known := &targetSet{all: old.all}
	for t := range p.lb.draining {
		known.all = append(known.all[:len(known.all):len(known.all)], t)
	}
	set, err := parseTargets(targets, known)
	if err != nil {
		return err
	}
	p.indexSticky(set)
	p.set.Store(set)
	p.retireLocked(old, set)
	return nil
}

// pick chooses a target among those that can take a tunnel now: healthy
// (or due for a trial after a cool-down), under its cap, not removed and
// not yet tried by this request; backups only when no primary is left. The
// target a sticky cookie names comes first while it can take the request.
// When every target is out by passive health alone, they are all tried
// anyway (nginx's "all peers failed": recovery costs one request, not a
// cool-down). It takes one of the target's connection slots.
func (p *Proxy) pick(r *http.Request, tried []*Target, aff *affinity) (*Target, error) {
	set := p.set.Load()
	now := time.Now().UnixNano()
	if !aff.resolved {
		aff.req = p.balancerRequest(r) // once per request, not per try
		p.resolveAffinity(aff.req, set, aff)
	}
	br := aff.req
	if t := aff.home; t != nil && !aff.hashed && aff.cause == causeNone && !aff.passOver(t, tried, now) {
		if p.take(t, true) {
			return t, nil
		}
		if !aff.passOver(t, tried, now) {
			aff.cause = causeDown // another request holds its trial
		}
	}
	if t := aff.home; t != nil && aff.hashed && aff.cause == causeNone {
		aff.passOver(t, tried, now) // the policy goes on without it
	}
	for _, group := range [][]*Target{set.primary, set.backup} {
		cands := make([]*Target, 0, len(group))
		for _, t := range group {
			if !t.full() && t.health.available(now) && !slices.Contains(tried, t) {
				cands = append(cands, t)
			}
		}
		if t, err := p.pickFrom(br, cands, true); t != nil || err != nil {
			return t, err
		}
	}
	// Nothing is available. If health alone keeps targets out, and only
	// passive health, try them: the backends may be back already.
	var cands []*Target
	for _, t := range set.all {
		if !t.full() && !t.health.activeDown.Load() && !slices.Contains(tried, t) {
			cands = append(cands, t)
		}
	}
	if t, _ := p.pickFrom(br, cands, false); t != nil {
		return t, nil
	}
	return nil, ErrNoTargetAvailable
}

// pickFrom lets the policy choose among cands and takes the chosen
// target's slot, choosing again without a target that filled up, went on
// trial or was removed meanwhile. A nil target and error means none of
// cands could take the request.
func (p *Proxy) pickFrom(r *http.Request, cands []*Target, claim bool) (*Target, error) {
	for len(cands) > 0 {
		t := p.cfg.balancer.Pick(r, cands)
		if t == nil {
			return nil, ErrNoTargetAvailable
		}
		if p.take(t, claim) {
			return t, nil
		}
		cands = removeTarget(cands, t)
	}
	return nil, nil
}

// take claims t's health trial (when claim is set and t is on trial) and
// one of its connection slots, unless SetTargets removed it meanwhile.
func (p *Proxy) take(t *Target, claim bool) bool {
	if claim && !t.health.claim() {
		return false
	}
	if t.tryAcquire() {
		if !t.removed.Load() {
			return true
		}
		t.open.Add(-1)
	}
	if claim {
		t.health.released()
	}
	return false
}

func removeTarget(ts []*Target, t *Target) []*Target {
	for i, x := range ts {
		if x == t {
			return append(ts[:i], ts[i+1:]...)
		}
	}
	return ts[:0]
}
