package wsproxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// A Resolver produces the current target list (see Target for the syntax
// of each string) from a source such as DNS, a service registry or a file.
// WithDiscovery calls it periodically and applies its answer with
// SetTargets. Resolve is never called concurrently with itself.
type Resolver interface {
	Resolve(ctx context.Context) ([]string, error)
}

// ResolverFunc adapts a function to the Resolver interface.
type ResolverFunc func(ctx context.Context) ([]string, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(ctx context.Context) ([]string, error) { return f(ctx) }

// WithDiscovery keeps the target list in sync with r, asking it every
// interval and applying the answer with SetTargets, so removed targets
// drain (WithDrainTimeout). A failed lookup, an empty answer or an invalid
// target keeps the last good set and is logged as a warning. When New gets
// no targets, it asks r once, bounded by the dial timeout (not by interval:
// a short interval must not make New fail on a busy machine), and fails if
// that fails. Each later lookup is bounded by interval.
// Default: none; the targets change only with SetTargets.
func WithDiscovery(r Resolver, interval time.Duration) Option {
	return optionFunc(func(c *config) {
		if r == nil || interval <= 0 {
			c.errorf("WithDiscovery", "want a Resolver and a positive interval, got %v", interval)
			return
		}
		if v, ok := r.(interface{ validate() error }); ok {
			if err := v.validate(); err != nil {
				c.errs = append(c.errs, wrap(ErrBadOption, "WithDiscovery", err))
				return
			}
		}
		c.lb.discovery, c.lb.discoveryEvery = r, interval
	})
}

// WithDrainTimeout closes the tunnels of a target removed by SetTargets or
// discovery d after its removal, politely, with close code 1001 and reason
// ReasonTargetRemoved ("target removed") to both sides. Until then, and without a timeout, they
// keep running; Stats lists the target as Draining while any is open.
// Default: 0, tunnels of removed targets run until they end.
func WithDrainTimeout(d time.Duration) Option {
	return durationOption("WithDrainTimeout", d, func(c *config) { c.lb.drainTimeout = d })
}

// DNSResolver returns a Resolver for the A and AAAA records of the host in
// target, a target string such as "ws://chat.internal:8080/ws weight=2":
// each address becomes one target with the host replaced by the address and
// everything else kept. res is the resolver to ask; nil means
// net.DefaultResolver. For wss targets, set WithTLSConfig's ServerName,
// since the target's host is then an address.
func DNSResolver(res *net.Resolver, target string) Resolver {
	return &dnsResolver{res: cmp.Or(res, net.DefaultResolver), target: target}
}

// dnsResolver looks up addresses, or SRV records when srv is set.
type dnsResolver struct {
	res    *net.Resolver
	target string
	srv    bool
}

func (d *dnsResolver) Resolve(ctx context.Context) ([]string, error) {
	if d.srv {
		return d.resolveSRV(ctx)
	}
	u, params, err := splitTarget(d.target)
	if err != nil {
		return nil, err
	}
	addrs, err := lookupAddrs(ctx, d.res, u.Hostname())
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, withHost(u, a.Unmap().String(), u.Port())+params)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// SRVResolver returns a Resolver for the SRV records of the host in target,
// a target string such as "ws://_chat._tcp.example.com/ws": each record
// becomes a target at the addresses of its host (looked up with the same
// resolver) and its port, with the path, query and parameters of target.
// A record's SRV weight becomes the target's weight (weight=0 counts as 1);
// records of the lowest priority are the primaries, the others backups.
// res nil means net.DefaultResolver.
func SRVResolver(res *net.Resolver, target string) Resolver {
	return &dnsResolver{res: cmp.Or(res, net.DefaultResolver), target: target, srv: true}
}

func (s *dnsResolver) resolveSRV(ctx context.Context) ([]string, error) {
	u, params, err := splitTarget(s.target)
	if err != nil {
		return nil, err
	}
	if err := s.checkSRVParams(params); err != nil {
		return nil, err
	}
	_, srvs, err := s.res.LookupSRV(ctx, "", "", u.Hostname())
	if err != nil {
		return nil, err
	}
	if len(srvs) == 0 {
		return nil, fmt.Errorf("wsproxy: no SRV records for %s", u.Hostname())
	}
	lowest := srvs[0].Priority
	for _, r := range srvs {
		lowest = min(lowest, r.Priority)
	}
	var out []string
	for _, r := range srvs {
		addrs, err := lookupAddrs(ctx, s.res, r.Target)
		if err != nil {
			return nil, err
		}
		extra := params + " weight=" + strconv.Itoa(max(int(r.Weight), 1))
		if r.Priority != lowest {
			extra += " backup"
		}
		for _, a := range addrs {
			out = append(out, withHost(u, a.Unmap().String(), strconv.Itoa(int(r.Port)))+extra)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// lookupAddrs returns the A and AAAA records of host. Unlike LookupNetIP's
// "ip", which answers with one family when the other's query failed, it
// fails when either query failed for any reason but the name having no
// addresses of that family: a DNS server that fails the A query for a
// moment must not drain every IPv4 backend. No addresses of a family is a
// DNS error that IsNotFound, or, for a name the hosts file lists with the
// other family only, a *net.AddrError ("no suitable address").
func lookupAddrs(ctx context.Context, res *net.Resolver, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	type answer struct {
		addrs []netip.Addr
		err   error
	}
	v6 := make(chan answer, 1)
	go func() {
		addrs, err := res.LookupNetIP(ctx, "ip6", host)
		v6 <- answer{addrs, err}
	}()
	addrs4, err4 := res.LookupNetIP(ctx, "ip4", host)
	a6 := <-v6
	for _, err := range []error{err4, a6.err} {
		var dnsErr *net.DNSError
		var addrErr *net.AddrError
		if err != nil && !(errors.As(err, &dnsErr) && dnsErr.IsNotFound) && !errors.As(err, &addrErr) {
			return nil, err
		}
	}
	if err4 != nil && a6.err != nil {
		return nil, err4
	}
	return append(addrs4, a6.addrs...), nil
}

func (s *dnsResolver) checkSRVParams(params string) error {
	if strings.Contains(params, "weight=") || strings.Contains(params, "backup") {
		return fmt.Errorf("%w %q: weight and backup come from the SRV records", ErrBadTarget, s.target)
	}
	return nil
}

// validate checks the target string as New would check a static target,
// so a typo fails New rather than every lookup after it.
func (d *dnsResolver) validate() error {
	if _, err := parseTarget(d.target); err != nil {
		return err
	}
	if d.srv {
		_, params, _ := splitTarget(d.target)
		return d.checkSRVParams(params)
	}
	return nil
}

// splitTarget separates a target string's URL from its parameters (returned
// with a leading space, or empty).
func splitTarget(target string) (*url.URL, string, error) {
	fields := strings.Fields(target)
	if len(fields) == 0 {
		return nil, "", fmt.Errorf("%w %q: empty", ErrBadTarget, target)
	}
	u, err := url.Parse(fields[0])
	if err != nil || u.Hostname() == "" {
		return nil, "", fmt.Errorf("%w %q: no host to resolve", ErrBadTarget, target)
	}
	var params string
	if len(fields) > 1 {
		params = " " + strings.Join(fields[1:], " ")
	}
	return u, params, nil
}

func withHost(u *url.URL, host, port string) string {
	v := *u
	if port == "" {
		v.Host = host
		if strings.Contains(host, ":") {
			v.Host = "[" + host + "]"
		}
	} else {
		v.Host = net.JoinHostPort(host, port)
	}
	return v.String()
}

// initialTargets asks the discovery resolver for the first target list when
// New got none.
func initialTargets(c *config, targets []string) ([]string, error) {
	if len(targets) > 0 || c.lb.discovery == nil || len(c.errs) > 0 {
		return targets, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(c.dialTimeout, defaultDialTimeout))
	defer cancel()
	ts, err := c.lb.discovery.Resolve(ctx)
	if err != nil {
		return nil, discoveryError(err)
	}
	return ts, nil
}

// discoveryError is the error of New when the first lookup failed.
func discoveryError(err error) error { return wrap(ErrNoTargets, "discovery", err) }

func (p *Proxy) runDiscovery(ctx context.Context, r Resolver, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.refresh(ctx, r, every)
	}
}

// refresh asks r once and applies a good answer.
func (p *Proxy) refresh(ctx context.Context, r Resolver, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ts, err := r.Resolve(ctx)
	if err == nil && len(ts) == 0 {
		err = errors.New("empty answer")
	}
	if err == nil {
		err = p.SetTargets(ts)
	}
	if err != nil && ctx.Err() != context.Canceled {
		p.log.Warn("wsproxy: discovery failed, keeping the last good targets", "err", err)
	}
}

// retireLocked marks the targets of old that cur lacks as removed and
// tracks those with open tunnels as draining; targets in cur that were
// draining are back in service. p.lb.mu is held.
func (p *Proxy) retireLocked(old, cur *targetSet) {
	if p.lb.draining == nil {
		p.lb.draining = make(map[*Target]*time.Timer)
	}
	in := make(map[*Target]bool, len(cur.all))
	for _, t := range cur.all {
		in[t] = true
		if tm, ok := p.lb.draining[t]; ok {
			if tm != nil {
				tm.Stop()
			}
			delete(p.lb.draining, t)
		}
		t.removed.Store(false)
	}
	gone := false
	for _, t := range old.all {
		if in[t] {
			continue
		}
		// pick checks removed after taking a slot, so a tunnel is either
		// refused there or counted in Open here.
		t.removed.Store(true)
		gone = true
		if t.Open() == 0 {
			continue
		}
		var tm *time.Timer
		if d := p.cfg.lb.drainTimeout; d > 0 && !p.lb.stopped {
			tm = time.AfterFunc(d, func() { p.closeTunnelsTo(t, ReasonTargetRemoved) })
		}
		p.lb.draining[t] = tm
	}
	if len(cur.all) == 1 {
		cur.all[0].health.succeeded() // a lone target is never passively down
	}
	if p.http != nil && gone {
		p.http.tr.CloseIdleConnections() // keep-alive connections to removed targets
	}
	p.pruneDrainingLocked()
}

// pruneDrainingLocked forgets removed targets whose last tunnel closed.
func (p *Proxy) pruneDrainingLocked() {
	for t, tm := range p.lb.draining {
		if t.Open() == 0 {
			if tm != nil {
				tm.Stop()
			}
			delete(p.lb.draining, t)
		}
	}
}

// drainingTargets returns the removed targets that still have tunnels.
func (p *Proxy) drainingTargets() []*Target {
	p.lb.mu.Lock()
	defer p.lb.mu.Unlock()
	p.pruneDrainingLocked()
	out := make([]*Target, 0, len(p.lb.draining))
	for t := range p.lb.draining {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *Target) int { return strings.Compare(a.raw, b.raw) })
	return out
}

// closeTunnelsTo closes every tunnel to t politely, with 1001 to both sides.
func (p *Proxy) closeTunnelsTo(t *Target, reason string) {
	if !t.removed.Load() {
		return // added back since the timer was armed
	}
	t.retire()
	p.mu.Lock()
	var open []*tunnel
	for tn := range p.tunnels.all() {
		if tn.target == t {
			open = append(open, tn)
		}
	}
	p.mu.Unlock()
	for _, tn := range open {
		tn.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, reason)
	}
}
